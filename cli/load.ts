/**
 * Model → engine + tokenizer, the way every command needs it: resolve the reference (pulling with a progress bar
 * when it is not cached), load the engine on the chosen device (a note when `auto` falls back to the CPU), load the
 * tokenizer.
 * @module
 */
import { parseModelRef } from "../weights/model_ref.ts";
import { resolveModel } from "../weights/resolve.ts";
import type { ModelFiles } from "../weights/model_files.ts";
import { Engine } from "../engine/engine.ts";
import { ChatTokenizer } from "../engine/tokenizer.ts";
import { defaultSampling, type SamplingParams, validateSampling } from "../engine/sampling.ts";
import { UsageError } from "./errors.ts";
import type { DeviceChoice, SamplingChoice } from "./options.ts";
import { ProgressDisplay } from "./progress.ts";
import { note } from "./term.ts";
import type { BandwidthModel } from "./stats.ts";

/** A loaded model, ready to generate. Close the engine when done. */
export interface Loaded {
  files: ModelFiles;
  engine: Engine;
  tokenizer: ChatTokenizer;
}

/** How to load. */
export interface LoadOptions {
  model: string;
  device: DeviceChoice;
  /** KV-cache positions; undefined: min(default, what the model supports) */
  ctx: number | undefined;
  defaultCtx: number;
  /** CPU engine mode (selftest compares the two) */
  cpuMode?: "reference" | "interpreter";
  /** no note about the device fallback (selftest prints the device itself) */
  quiet?: boolean;
}

/** Resolve the model's files (pulling them if needed) and validate them. */
export async function resolveFiles(model: string): Promise<ModelFiles> {
  const ref = parseModelRef(model);
  const progress = new ProgressDisplay();
  try {
    return await resolveModel(ref, { onProgress: (p) => progress.report(p) });
  } finally {
    progress.finish();
  }
}

/** The KV-cache size to ask for: the flag if given (checked against the model), else the default, capped. */
export function chooseCtx(files: ModelFiles, ctx: number | undefined, defaultCtx: number): number {
  const max = files.config.maxPosition;
  if (ctx === undefined) return Math.min(defaultCtx, max);
  if (ctx > max) throw new UsageError(`--ctx must be at most ${max} for ${files.id}, got ${ctx}`);
  return ctx;
}

/** Load an engine for already-resolved files. */
export async function loadEngine(files: ModelFiles, opts: LoadOptions): Promise<Engine> {
  const ctx = chooseCtx(files, opts.ctx, opts.defaultCtx);
  const engine = await Engine.load(files, { device: opts.device, ctx, cpuMode: opts.cpuMode });
  // The engine says why "auto" chose the CPU; --device cpu is how to say that it is meant.
  if (engine.note !== null && !opts.quiet) note(`${engine.note} (--device cpu to choose it)`);
  return engine;
}

/** Resolve, load the engine and the tokenizer. */
export async function loadModel(opts: LoadOptions): Promise<Loaded> {
  const files = await resolveFiles(opts.model);
  const tokenizer = await ChatTokenizer.load(files);
  const engine = await loadEngine(files, opts);
  return { files, engine, tokenizer };
}

/** Bytes a decode step streams: every tensor, except the embedding table when a separate LM head exists. */
export function weightBytesPerStep(files: ModelFiles): number {
  const hasLmHead = files.tensors.some((t) => t.name === "lm_head.weight");
  let total = 0;
  for (const t of files.tensors) {
    // Only one row of the embedding is read per token unless it doubles as the LM head.
    if (t.name === "model.embed_tokens.weight" && hasLmHead) continue;
    total += t.nbytes;
  }
  return total;
}

/** KV-cache bytes a step reads per token of context (k and v, bf16). */
export function kvBytesPerToken(files: ModelFiles): number {
  const c = files.config;
  return c.nLayers * c.nKvHeads * c.headDim * 2 * 2;
}

/** The bandwidth model for the stats line, measuring the ceiling now (GPU only; null on the CPU). */
export async function bandwidthModel(loaded: Loaded): Promise<BandwidthModel | null> {
  if (loaded.engine.device !== "cuda") return null;
  const ceilingGBs = await loaded.engine.measureReadBandwidthGBs();
  return { weightBytes: weightBytesPerStep(loaded.files), kvBytesPerToken: kvBytesPerToken(loaded.files), ceilingGBs };
}

/** Command-line sampling choice over the model's defaults → the engine's parameters for one reply. */
export function samplingParams(
  choice: SamplingChoice,
  files: ModelFiles,
  stopIds: number[],
  logprobs = 0,
): SamplingParams {
  const base = defaultSampling(files.generationConfig, stopIds);
  return validateSampling({
    ...base,
    temperature: choice.temperature ?? base.temperature,
    topP: choice.topP ?? base.topP,
    topK: choice.topK ?? base.topK,
    seed: choice.seed ?? base.seed,
    maxTokens: choice.maxTokens ?? base.maxTokens,
    logprobs,
  });
}
