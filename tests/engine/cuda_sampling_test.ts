/**
 * The megakernel's on-device sampler (native/cuda/ops/sample.cuh) against the CPU reference engine on the same
 * weights: greedy tokens and their log-probabilities agree, top-k = 1 is greedy, temperature sampling (Gumbel-max over
 * the whole vocabulary) and top-p sampling (over the merged top-64 candidates) are repeatable for a seed and only pick
 * tokens the distribution allows. Skipped where no usable GPU is present (CI).
 */
import { assert, assertEquals } from "./_assert.ts";
import { Engine, type GeneratedToken } from "../../engine/engine.ts";
import { defaultSampling, type SamplingParams } from "../../engine/sampling.ts";
import { smallModel } from "./_model.ts";
import { cancelAfter, cudaUsable, drain } from "./_generate.ts";

const PROMPT = [128000, 9906, 1917, 11, 1268, 527, 499, 30];

function params(extra: Partial<SamplingParams>): SamplingParams {
  return { ...defaultSampling(null), temperature: 0, topP: 1, topK: 0, seed: 1, maxTokens: 12, stopIds: [], ...extra };
}

async function run(engine: Engine, sp: SamplingParams): Promise<GeneratedToken[]> {
  await engine.truncate(0);
  return (await drain(engine.generate(PROMPT, sp))).seen;
}

Deno.test({
  name: "the CUDA sampler agrees with the CPU reference and is repeatable for a seed",
  ignore: !cudaUsable,
  async fn(t) {
    const files = await smallModel();
    using gpu = await Engine.load(files, { device: "cuda", ctx: 256 });
    using cpu = await Engine.load(files, { device: "cpu", ctx: 256 });
    await t.step("greedy tokens and their log-probabilities match the CPU reference", async () => {
      const g = await run(gpu, params({ logprobs: 5 }));
      const c = await run(cpu, params({ logprobs: 5 }));
      assertEquals(g.map((x) => x.id), c.map((x) => x.id));
      g.forEach((x, i) => {
        assert(Math.abs(x.logprob! - c[i].logprob!) < 2e-2, `token ${i}: logprob ${x.logprob} vs ${c[i].logprob}`);
        assertEquals(x.top!.length, 5);
        assertEquals(x.top![0][0], x.id, "the greedy token heads its top list");
        for (let k = 1; k < 5; k++) assert(x.top![k][1] <= x.top![k - 1][1], "top list sorted by logprob");
        const cpuTop = new Set(c[i].top!.map(([id]) => id));
        assert(x.top!.filter(([id]) => cpuTop.has(id)).length >= 4, `token ${i}: top-5 lists differ`);
      });
    });
    await t.step("top-k 1 at temperature 1 is greedy", async () => {
      const greedy = (await run(gpu, params({}))).map((x) => x.id);
      assertEquals((await run(gpu, params({ temperature: 1, topK: 1, seed: 5 }))).map((x) => x.id), greedy);
    });
    for (
      const [name, extra] of [
        ["temperature only (Gumbel-max over the vocabulary)", { temperature: 1 }],
        ["temperature + top-p 0.9", { temperature: 0.7, topP: 0.9 }],
        ["temperature + top-k 8", { temperature: 1, topK: 8 }],
      ] as const
    ) {
      await t.step(`${name}: same seed, same tokens; another seed, other tokens; every token allowed`, async () => {
        const a = await run(gpu, params({ ...extra, seed: 11, logprobs: 20 }));
        const b = await run(gpu, params({ ...extra, seed: 11, logprobs: 20 }));
        const c = await run(gpu, params({ ...extra, seed: 12 }));
        assertEquals(a.map((x) => x.id), b.map((x) => x.id));
        assert(a.some((x, i) => x.id !== c[i].id), "a different seed drew the same 12 tokens");
        for (const x of a) {
          assert(x.id >= 0 && x.id < files.config.vocabSize);
          assert(Number.isFinite(x.logprob!) && x.logprob! <= 0);
          if ("topK" in extra) {
            const rank = x.top!.findIndex(([id]) => id === x.id);
            assert(rank >= 0 && rank < 8, `a top-8 draw has rank ${rank}`);
          }
        }
      });
    }
  },
});

Deno.test({
  name: "Engine.cancel() stops a CUDA generation within 100 ms and the cache stays consistent",
  ignore: !cudaUsable,
  async fn() {
    const files = await smallModel();
    using gpu = await Engine.load(files, { device: "cuda", ctx: 4096 });
    const { result, ms } = await cancelAfter(gpu, gpu.generate(PROMPT, params({ maxTokens: 4000 })), 20);
    assertEquals(result.finish, "interrupted");
    assert(ms < 100, `stopped ${ms.toFixed(1)} ms after cancel()`);
    assert(result.tokens.length < 4000, "every token was generated");
    // SAMPLE reads the host's flag on the device, with no host round trip: the cache holds exactly the tokens delivered.
    assertEquals(gpu.position, PROMPT.length + result.tokens.length - 1);
    const after = await drain(gpu.generate([result.tokens.at(-1)!], params({ maxTokens: 2 })));
    assertEquals(after.seen.length, 2);
  },
});
