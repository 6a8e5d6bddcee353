/**
 * Teacher-forced logits of an mkchat engine, for the fidelity check against HF transformers (tests/gpu/fidelity.py).
 *
 *   deno run -A tests/gpu/dump_logits.ts --model synthetic:llama-3.2-1b --device cuda --prompt 32 --steps 128 \
 *     --out /tmp/mk_cuda.f32
 *
 * Feeds a fixed, seeded token sequence (prompt + steps tokens): the prompt in one prefill, then one token per call,
 * keeping the logits after each of the `steps` tokens. Writes `<out>` (float32 [steps][vocab], little-endian),
 * `<out>.tokens.json` (the sequence) and prints the model folder, for fidelity.py to load the same weights.
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
    "cpu-mode": { type: "string", default: "reference" },
    prompt: { type: "string", default: "32" },
    steps: { type: "string", default: "128" },
    seed: { type: "string", default: "1234" },
    "timeout-ms": { type: "string", default: "5000" },
    out: { type: "string" },
  },
});
if (!values.out) throw new Error("--out is required");
const nPrompt = Number(values.prompt), steps = Number(values.steps);

const files = await resolveModel(parseModelRef(values.model!));
const vocab = files.config.vocabSize;
// A seeded LCG over the vocabulary: varied ids, reproducible in any language.
let state = Number(values.seed) >>> 0;
const tokens: number[] = [];
for (let i = 0; i < nPrompt + steps; i++) {
  state = (Math.imul(state, 1664525) + 1013904223) >>> 0;
  tokens.push(state % vocab);
}
const engine = await Engine.load(files, {
  device: values.device as "cpu" | "cuda",
  ctx: nPrompt + steps + 8,
  cpuMode: values["cpu-mode"] as "reference" | "interpreter",
  timeoutMs: Number(values["timeout-ms"]),
});
const out = new Float32Array(steps * vocab);
const t0 = performance.now();
await engine.prefill(tokens.slice(0, nPrompt));
for (let s = 0; s < steps; s++) {
  const logits = await engine.prefill([tokens[nPrompt + s]], true);
  out.set(logits!, s * vocab);
}
const ms = performance.now() - t0;
engine.close();
await Deno.writeFile(values.out, new Uint8Array(out.buffer));
await Deno.writeTextFile(`${values.out}.tokens.json`, JSON.stringify({ prompt: nPrompt, steps, tokens }));
console.log(JSON.stringify({ model_dir: files.dir, device: values.device, vocab, steps, ms: Math.round(ms) }));
