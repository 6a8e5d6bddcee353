/**
 * Decode latency of an engine without the CLI around it: the streaming-read ceiling, then a prompt and greedy tokens
 * (no stop ids), per-step µs from the device clock. Used on the GPU machine next to `main.ts selftest`.
 *
 *   deno run -A tests/gpu/bench_decode.ts --model synthetic:llama-3.2-1b --device cuda --prompt 32 --gen 128
 *
 * --variants "A=1 B=2|A=3" times each set of environment variables in turn in the same process (the CUDA backend
 * reads its knobs at every launch: MKCHAT_RING_PAGES, MKCHAT_INFLIGHT_PAGES, MKCHAT_EVICT_FIRST, MKCHAT_BULK_PUBLISH,
 * MKCHAT_ATTN_PREFETCH, MKCHAT_NORM_PREFETCH, MKCHAT_ATTN_SINGLE_MAX and the diagnostic MKCHAT_DIAG; the scheduler's
 * MKCHAT_ATTN_SPLITS, MKCHAT_ATTN_PER_HEAD and MKCHAT_FUSED_MLP only when the program is built, at load).
 *
 * Two builds of the library (e.g. one built here from other sources, carried along): run this once per build with
 * MKCHAT_LIB=<path/to/libmkchat.so>, in turns, in the same device call (PERF_LOG v19: the H200s differ by up to ~9 µs
 * for the same build); tests/gpu/compare_builds.sh does it. Both must read the program that engine/scheduler.ts writes
 * (MKCHAT_ATTN_PER_HEAD=0 for libraries built before v20).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { Engine } from "../../engine/engine.ts";
import { parseModelRef } from "../../weights/model_ref.ts";
import { resolveModel } from "../../weights/resolve.ts";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "synthetic:llama-3.2-1b" },
    device: { type: "string", default: "cuda" },
    prompt: { type: "string", default: "32" },
    gen: { type: "string", default: "128" },
    runs: { type: "string", default: "3" },
    variants: { type: "string", default: "" },
  },
});
const nPrompt = Number(values.prompt), nGen = Number(values.gen);
const files = await resolveModel(parseModelRef(values.model!));
const engine = await Engine.load(files, { device: values.device as "cpu" | "cuda", ctx: 4096 });
const gbs = await engine.measureReadBandwidthGBs();
const weightBytes = files.tensors.reduce((s, t) => s + t.nbytes, 0);
const pct = (xs: number[], p: number) =>
  [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(p * xs.length))];
const variants = values.variants ? values.variants.split("|") : [""];
// Each variant starts from the environment the process began with: the previous variant's settings are undone.
const setByVariant = new Map<string, string | undefined>();
for (let r = 0; r < Number(values.runs) * variants.length; r++) {
  const variant = variants[r % variants.length].trim();
  for (const [k, v] of setByVariant) v === undefined ? Deno.env.delete(k) : Deno.env.set(k, v);
  setByVariant.clear();
  for (const kv of variant.split(/\s+/).filter(Boolean)) {
    const [k, v] = kv.split("=");
    setByVariant.set(k, Deno.env.get(k));
    Deno.env.set(k, v);
  }
  await engine.truncate(0);
  const prompt = Array.from({ length: nPrompt }, (_, i) => (i * 7919 + 13) % files.config.vocabSize);
  const t0 = performance.now();
  const seen: number[] = [];
  const gen = engine.generate(prompt, {
    temperature: 0,
    topP: 1,
    topK: 0,
    seed: 0,
    maxTokens: nGen,
    stopIds: [],
    logprobs: 0,
  });
  let res;
  for (;;) {
    const it = await gen.next();
    if (it.done) {
      res = it.value;
      break;
    }
    seen.push(performance.now() - t0);
  }
  const steady = res.stepUs.slice(2);
  const p50 = pct(steady, 0.5);
  const hostSteps = seen.slice(3).map((t, i) => (t - seen[i + 2]) * 1000);
  console.log(JSON.stringify({
    variant,
    device: engine.deviceName,
    tokens: res.tokens.length,
    ttft_ms: +(res.prefillUs / 1000).toFixed(2),
    step_us_p50: +p50.toFixed(1),
    step_us_p90: +pct(steady, 0.9).toFixed(1),
    step_us_p99: +pct(steady, 0.99).toFixed(1),
    host_observed_us_mean: +(hostSteps.reduce((a, b) => a + b, 0) / hostSteps.length).toFixed(1),
    device_us_mean: +(steady.reduce((a, b) => a + b, 0) / steady.length).toFixed(1),
    read_gbs: +gbs.toFixed(0),
    floor_us: +(weightBytes / gbs / 1e3).toFixed(1),
    share_of_ceiling: +((weightBytes / gbs / 1e3) / p50).toFixed(3),
  }));
}
engine.close();
