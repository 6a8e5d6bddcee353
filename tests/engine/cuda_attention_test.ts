/**
 * The megakernel's attention (native/cuda/ops/attn.cuh) at contexts that exercise every path of it, against the CPU
 * reference engine on the same weights: one SM per q head (contexts up to 128 positions, the default for head_dim 64),
 * and with that path turned off: one split walking several K/V tiles, two splits of unequal tile counts, the default
 * split count (one tile per split); a generation that crosses from the first path to the splits at 129 positions; and
 * head_dim 128 (16-position tiles). Each compares the greedy tokens and their log-probabilities after a prompt.
 * Skipped where no usable GPU is present (CI).
 */
import { assert, assertEquals } from "./_assert.ts";
import { Engine, type GeneratedToken } from "../../engine/engine.ts";
import { defaultSampling, type SamplingParams } from "../../engine/sampling.ts";
import { loadModelFolder, type ModelFiles } from "../../weights/model_files.ts";
import { materializeSynthetic } from "../../weights/synthetic.ts";
import { smallModel } from "./_model.ts";
import { cudaUsable } from "./_generate.ts";

// 90 positions: three 32-position tiles for one split (the last one partial), six 16-position tiles at head_dim 128.
const PROMPT = [128000, ...Array.from({ length: 89 }, (_, i) => 1000 + ((i * 7919) % 30000))];
const GREEDY: SamplingParams = {
  ...defaultSampling(null),
  temperature: 0,
  topP: 1,
  topK: 0,
  seed: 1,
  maxTokens: 10,
  stopIds: [],
  logprobs: 1,
};

// 122 positions, then 10 tokens: the last warp of the one-SM path, then the splits from 129 positions on.
const LONG_PROMPT = [128000, ...Array.from({ length: 121 }, (_, i) => 2000 + ((i * 104729) % 60000))];

async function greedy(files: ModelFiles, device: "cpu" | "cuda", prompt = PROMPT): Promise<GeneratedToken[]> {
  using engine = await Engine.load(files, { device, ctx: 512 });
  const seen: GeneratedToken[] = [];
  const gen = engine.generate(prompt, GREEDY);
  for (let next = await gen.next(); !next.done; next = await gen.next()) seen.push(next.value);
  return seen;
}

function assertAgree(gpu: GeneratedToken[], cpu: GeneratedToken[]) {
  assertEquals(gpu.map((x) => x.id), cpu.map((x) => x.id));
  gpu.forEach((x, i) => {
    assert(Math.abs(x.logprob! - cpu[i].logprob!) < 2e-2, `token ${i}: logprob ${x.logprob} vs ${cpu[i].logprob}`);
  });
}

// MKCHAT_ATTN_SPLITS is read when the program is built (engine/scheduler.ts), i.e. in Engine.load();
// MKCHAT_ATTN_SINGLE_MAX at every launch (native/cuda/engine_cuda.cu).
async function withEnv<T>(name: string, value: string | undefined, fn: () => Promise<T>): Promise<T> {
  const before = Deno.env.get(name);
  value === undefined ? Deno.env.delete(name) : Deno.env.set(name, value);
  try {
    return await fn();
  } finally {
    before === undefined ? Deno.env.delete(name) : Deno.env.set(name, before);
  }
}
const withSplits = <T>(splits: string | undefined, fn: () => Promise<T>) =>
  withEnv("MKCHAT_ATTN_SINGLE_MAX", "0", () => withEnv("MKCHAT_ATTN_SPLITS", splits, fn));

Deno.test({
  name: "CUDA attention over several tiles and splits agrees with the CPU reference",
  ignore: !cudaUsable,
  async fn(t) {
    const small = await smallModel();
    const cpu = await greedy(small, "cpu");
    await t.step("one SM per q head (the default here)", async () => assertAgree(await greedy(small, "cuda"), cpu));
    const cases: [string, string | undefined][] = [
      ["one split, three tiles", "1"],
      ["two splits", "2"],
      ["default splits", undefined],
    ];
    for (const [name, splits] of cases) {
      await t.step(name, async () => assertAgree(await withSplits(splits, () => greedy(small, "cuda")), cpu));
    }
    await t.step("from one SM per q head to the splits at 129 positions", async () => {
      assertAgree(await greedy(small, "cuda", LONG_PROMPT), await greedy(small, "cpu", LONG_PROMPT));
    });
    await t.step("head_dim 128: 16-position tiles, one split and the default", async () => {
      const dir = await materializeSynthetic("small-hd128", 3);
      const files = await loadModelFolder(dir, "synthetic:small-hd128@3");
      const ref = await greedy(files, "cpu");
      assertAgree(await withSplits("1", () => greedy(files, "cuda")), ref);
      assertAgree(await greedy(files, "cuda"), ref);
    });
  },
});
