/**
 * `mkchat selftest`: is the engine right, and how fast is it — in one run, on this machine.
 *
 * (a) Check: the engine under test and the CPU reference engine are fed the same tokens (the reference's greedy
 *     choices) one step at a time; each step's logits are compared by relative L2 error, and the engine's own greedy
 *     generation must pick the reference's tokens (a different pick is forgiven only at a near tie: a top-2 gap
 *     smaller than the engine's own logit error at that step). On a CPU-only run the engine under test is the CPU
 *     interpreter of the instruction program, so the check covers the scheduler too.
 * (b) Measure: a --prompt-tokens prompt, then --gen-tokens greedy tokens with no stop ids; decode µs/token
 *     p50/p90/p99 over the steady state (the first 2 steps skipped), tok/s, time to first token, and on a GPU the
 *     streaming-read ceiling measured now, the µs floor it implies for the weights, and the share reached.
 * @module
 */
import { Engine } from "../engine/engine.ts";
import { ChatTokenizer } from "../engine/tokenizer.ts";
import type { SamplingParams } from "../engine/sampling.ts";
import type { ModelFiles } from "../weights/model_files.ts";
import { EXIT } from "./errors.ts";
import type { DeviceChoice } from "./options.ts";
import { loadEngine, resolveFiles, weightBytesPerStep } from "./load.ts";
import { percentile, stepTimes } from "./stats.ts";
import { err, out, palette, tty } from "./term.ts";

/** Options of `selftest`. */
export interface SelftestOptions {
  model: string;
  device: DeviceChoice;
  json: boolean;
  promptTokens: number;
  genTokens: number;
  verbose: boolean;
}

/** Steps compared against the reference. */
const CHECK_STEPS = 6;
/**
 * Allowed relative L2 error of the logits against the fp32 reference. Both the CPU interpreter and the GPU keep the
 * KV cache in bf16 (native/program.h), so neither is bit-equal to the reference: bf16 rounding of K and V alone gives
 * 8.6e-4 on the tiny model and 8.0e-3 on the Llama-3.2-1B shape (random weights, measured with this command). The
 * GPU also rounds activations to bf16 between ops, hence more room; its bound is to be set against HF transformers
 * bf16's own error on the GPU machine (tests/golden/). A wrong dependency or op gives errors of order 1.
 */
const TOLERANCE = { cpu: 2e-2, cuda: 5e-2 } as const;
/** Decode steps left out of the percentiles (first-step effects: caches, clocks). */
const WARMUP_STEPS = 2;

/** Result of the correctness check. */
export interface CheckResult {
  pass: boolean;
  steps: number;
  relL2: number[];
  maxRelL2: number;
  tolerance: number;
  referenceTokens: number[];
  engineTokens: number[];
  tokensMatched: number;
  nearTies: number;
  reason: string;
}

/** Run the command; returns the exit code. */
export async function selftestCommand(o: SelftestOptions): Promise<number> {
  const files = await resolveFiles(o.model);
  const tokenizer = await ChatTokenizer.load(files);
  const ctx = Math.min(files.config.maxPosition, Math.max(o.promptTokens + o.genTokens + 8, 64));
  // The engine chat would use: the megakernel, or on the CPU the reference engine. It is the one that is timed.
  const engine = await loadEngine(files, { model: o.model, device: o.device, ctx, defaultCtx: ctx, quiet: true });
  try {
    const progress = (s: string) => o.json || !tty.stderr || err(`\r\x1b[2K${s}`);
    progress("checking against the CPU reference…");
    const check = await checkEngine(engine, files, tokenizer);
    progress("measuring…");
    const m = await measure(engine, files, tokenizer, o.promptTokens, o.genTokens);
    progress("");
    const report = {
      model: o.model,
      model_id: files.id,
      device: engine.device,
      device_name: engine.deviceName,
      date: new Date().toISOString(),
      command: ["mkchat", ...Deno.args].join(" "),
      check: {
        pass: check.pass,
        reference: "cpu reference engine (fp32 math)",
        checked: engine.device === "cuda" ? "cuda megakernel" : "cpu interpreter of the instruction program",
        steps: check.steps,
        rel_l2: check.relL2,
        max_rel_l2: check.maxRelL2,
        tolerance: check.tolerance,
        greedy_tokens_matched: check.tokensMatched,
        near_ties: check.nearTies,
        reason: check.reason,
      },
      measure: {
        timed: engine.device === "cuda" ? "cuda megakernel" : "cpu reference engine",
        ...m,
      },
    };
    if (o.json) out(JSON.stringify(report) + "\n");
    else printReport(report, check, m);
    return check.pass ? EXIT.ok : EXIT.error;
  } finally {
    engine.close();
  }
}

/**
 * (a) On a GPU, the megakernel against a fresh CPU reference engine; on the CPU, the CPU interpreter of the
 * instruction program (the GPU's program, run on the CPU) against `engine`, which is the reference.
 */
async function checkEngine(engine: Engine, files: ModelFiles, tokenizer: ChatTokenizer): Promise<CheckResult> {
  const prompt = checkPrompt(tokenizer);
  const ctx = prompt.length + CHECK_STEPS + 2;
  if (engine.device === "cuda") {
    const ref = await Engine.load(files, { device: "cpu", ctx, cpuMode: "reference" });
    try {
      return await checkAgainst(engine, ref, prompt, TOLERANCE.cuda);
    } finally {
      ref.close();
    }
  }
  const interp = await Engine.load(files, { device: "cpu", ctx, cpuMode: "interpreter" });
  try {
    return await checkAgainst(interp, engine, prompt, TOLERANCE.cpu);
  } finally {
    interp.close();
  }
}

function checkPrompt(tokenizer: ChatTokenizer): number[] {
  return tokenizer.encode("The quick brown fox jumps over the lazy dog. Once upon a time", { addBos: true });
}

/**
 * Compare the logits of `engine` with those of `ref` over CHECK_STEPS steps (both fed the reference's greedy
 * tokens), then `engine`'s own greedy generation with the reference's tokens. Leaves both engines empty.
 */
export async function checkAgainst(
  engine: Engine,
  ref: Engine,
  prompt: number[],
  tolerance: number,
): Promise<CheckResult> {
  const relL2: number[] = [];
  const referenceTokens: number[] = [];
  const errors: number[] = [];
  const gaps: number[] = [];
  await engine.truncate(0);
  await ref.truncate(0);
  let feed = prompt;
  for (let step = 0; step < CHECK_STEPS; step++) {
    const want = await ref.prefill(feed, true);
    const got = await engine.prefill(feed, true);
    if (!want || !got) throw new Error("prefill returned no logits");
    const d = compare(got, want);
    relL2.push(d.relL2);
    errors.push(d.rmsErr);
    const top = top2(want);
    gaps.push(top.gap);
    referenceTokens.push(top.id);
    feed = [top.id];
  }
  await ref.truncate(0);
  // The engine's own greedy path (sampling on the device on CUDA) must follow the reference.
  await engine.truncate(0);
  const engineTokens: number[] = [];
  const gen = engine.generate(prompt, greedy(CHECK_STEPS));
  for (;;) {
    const r = await gen.next();
    if (r.done) break;
    engineTokens.push(r.value.id);
  }
  await engine.truncate(0);
  let tokensMatched = 0;
  let nearTies = 0;
  let tokenFailure = "";
  for (let i = 0; i < referenceTokens.length; i++) {
    if (engineTokens[i] === referenceTokens[i]) {
      tokensMatched++;
      continue;
    }
    // After a forgiven divergence the two continuations differ: nothing further to compare.
    if (gaps[i] < 4 * errors[i]) nearTies++;
    else tokenFailure = `greedy token ${i} is ${engineTokens[i]}, the reference's is ${referenceTokens[i]}`;
    break;
  }
  const maxRelL2 = Math.max(...relL2);
  const logitsOk = maxRelL2 <= tolerance;
  const reason = !logitsOk
    ? `logits differ: relative L2 error ${maxRelL2.toExponential(2)} > ${tolerance}`
    : tokenFailure !== ""
    ? tokenFailure
    : "ok";
  return {
    pass: logitsOk && tokenFailure === "",
    steps: CHECK_STEPS,
    relL2,
    maxRelL2,
    tolerance,
    referenceTokens,
    engineTokens,
    tokensMatched,
    nearTies,
    reason,
  };
}

/** (b) Time a prompt and a greedy generation with no stop ids. */
async function measure(engine: Engine, files: ModelFiles, tokenizer: ChatTokenizer, nPrompt: number, nGen: number) {
  const prompt = promptOfLength(tokenizer, nPrompt);
  await engine.truncate(0);
  const tUs: number[] = [];
  // When each token reached this process (what a user of the CLI sees, the engine's polling included).
  const hostUs: number[] = [];
  const gen = engine.generate(prompt, greedy(nGen));
  let result;
  for (;;) {
    const r = await gen.next();
    if (r.done) {
      result = r.value;
      break;
    }
    tUs.push(r.value.tUs);
    hostUs.push(performance.now() * 1000);
  }
  await engine.truncate(0);
  const steps = stepTimes(tUs, WARMUP_STEPS).sort((a, b) => a - b);
  const mean = steps.reduce((a, b) => a + b, 0) / steps.length;
  const last = hostUs.length - 1;
  const hostMean = last > WARMUP_STEPS ? (hostUs[last] - hostUs[WARMUP_STEPS]) / (last - WARMUP_STEPS) : NaN;
  const weightBytes = weightBytesPerStep(files);
  const figures: Record<string, number | string | null> = {
    prompt_tokens: prompt.length,
    gen_tokens: tUs.length,
    finish: result.finish,
    ttft_ms: tUs.length > 0 ? round(tUs[0] / 1000, 3) : null,
    prefill_tok_s: result.prefillUs > 0 ? round((result.nPrefill * 1e6) / result.prefillUs, 1) : null,
    decode_us_p50: round(percentile(steps, 50), 1),
    decode_us_p90: round(percentile(steps, 90), 1),
    decode_us_p99: round(percentile(steps, 99), 1),
    decode_us_mean: round(mean, 1),
    decode_tok_s: round(1e6 / mean, 2),
    steady_steps: steps.length,
    // Mean step time as the host saw it over the same steps, and its ratio to the engine's own (ideally 1).
    host_decode_us_mean: round(hostMean, 1),
    host_over_engine: round(hostMean / mean, 4),
    weight_bytes: weightBytes,
  };
  if (engine.device === "cuda") {
    const ceiling = await engine.measureReadBandwidthGBs();
    const floorUs = (weightBytes / (ceiling * 1e9)) * 1e6;
    figures.read_bandwidth_gbs = round(ceiling, 1);
    figures.floor_us = round(floorUs, 1);
    figures.share_of_ceiling = round(floorUs / percentile(steps, 50), 4);
  }
  return figures;
}

/** Greedy, no stop ids: the run always produces exactly `n` tokens unless the context fills. */
function greedy(n: number): SamplingParams {
  return { temperature: 0, topP: 1, topK: 0, seed: 0, maxTokens: n, stopIds: [], logprobs: 0 };
}

/** BOS and ordinary text, cut (or repeated) to exactly `n` tokens. */
function promptOfLength(tokenizer: ChatTokenizer, n: number): number[] {
  const text = "In a quiet village by the sea, the fishermen rose before dawn to mend their nets and read the sky. ";
  const unit = tokenizer.encode(text, { addBos: false });
  const ids = tokenizer.bosId === null ? [] : [tokenizer.bosId];
  while (ids.length < n) ids.push(...unit);
  return ids.slice(0, n);
}

/** Relative L2 error of `got` against `want`, and the RMS of the difference (a per-logit error scale). */
export function compare(got: Float32Array, want: Float32Array): { relL2: number; rmsErr: number } {
  let diff = 0;
  let norm = 0;
  for (let i = 0; i < want.length; i++) {
    const d = got[i] - want[i];
    diff += d * d;
    norm += want[i] * want[i];
  }
  return { relL2: Math.sqrt(diff / (norm || 1)), rmsErr: Math.sqrt(diff / want.length) };
}

function top2(v: Float32Array): { id: number; gap: number } {
  let a = -Infinity, b = -Infinity, id = 0;
  for (let i = 0; i < v.length; i++) {
    if (v[i] > a) {
      b = a;
      a = v[i];
      id = i;
    } else if (v[i] > b) b = v[i];
  }
  return { id, gap: a - b };
}

function round(v: number, digits: number): number | null {
  if (!Number.isFinite(v)) return null;
  const f = 10 ** digits;
  return Math.round(v * f) / f;
}

function printReport(
  r: { model_id: string; device: string; device_name: string; check: { checked: string }; measure: { timed: string } },
  check: CheckResult,
  m: Record<string, number | string | null>,
) {
  const c = palette(tty.stdout);
  const verdict = check.pass ? c.green("PASS") : c.red("FAIL");
  const ties = check.nearTies ? " (then a near tie)" : "";
  const lines = [
    `mkchat selftest · ${r.model_id} · ${r.device_name} (${r.device})`,
    `check   ${verdict}  ${r.check.checked} vs the CPU reference over ${check.steps} steps: max relative L2 error ` +
    `${check.maxRelL2.toExponential(2)} (tolerance ${check.tolerance}), greedy tokens ` +
    `${check.tokensMatched}/${check.steps}${ties}` + (check.pass ? "" : ` — ${check.reason}`),
    `decode  ${m.decode_us_p50} µs/token p50 · ${m.decode_us_p90} p90 · ${m.decode_us_p99} p99 · ` +
    `${m.decode_tok_s} tok/s — ${r.measure.timed}, ${m.gen_tokens} greedy tokens after a ${m.prompt_tokens}-token ` +
    `prompt, first ${WARMUP_STEPS} steps skipped`,
    `TTFT    ${m.ttft_ms} ms (prefill ${m.prefill_tok_s} tok/s)`,
    `host    ${m.host_decode_us_mean} µs/token mean as this process received the tokens (${m.host_over_engine}× the ` +
    `engine's ${m.decode_us_mean})`,
  ];
  if (m.read_bandwidth_gbs !== undefined) {
    const share = ((m.share_of_ceiling as number) * 100).toFixed(1);
    const gb = ((m.weight_bytes as number) / 1e9).toFixed(3);
    lines.push(
      `memory  read ceiling ${m.read_bandwidth_gbs} GB/s (measured now) · floor ${m.floor_us} µs/token for ${gb} GB ` +
        `of weights · ${share}% of the ceiling reached`,
    );
  }
  out(lines.join("\n") + "\n");
}
