/**
 * Engine: one native mk_engine (CPU reference engine or CUDA megakernel) behind an async TypeScript API.
 *
 * Every long native call (load, prefill, generate, bandwidth) is a nonblocking FFI call: it runs on a Deno worker
 * thread while the event loop keeps serving timers, signals and the terminal. The engine is used by one native call
 * at a time: calls queue on an internal promise chain, and a second generate while one runs is refused.
 *
 * A generation streams through memory shared with the native thread: the `mk_stream` header (n_tokens published by
 * native with a release store, cancel written by us) and the per-token arrays, all in buffers this object keeps alive
 * until the native call has returned. We poll n_tokens every ~2 ms.
 *
 * @module
 */

import type { ModelFiles } from "../weights/model_files.ts";
import { MkError, unwrap } from "./errors.ts";
import {
  addressOf,
  cString,
  MK_CPU_INTERPRETER,
  MK_CPU_REFERENCE,
  MK_DEVICE_CPU,
  MK_DEVICE_CUDA,
  MK_DTYPE,
  type MkLibrary,
  nativeBuffer,
  readCBuffer,
  Status,
  STREAM,
  STREAM_ARRAYS,
  writeEngineParams,
  writeModelConfig,
} from "./ffi.ts";
import { loadLibrary } from "./library.ts";
import { buildProgram } from "./scheduler.ts";
import { type SamplingParams, writeSamplingParams } from "./sampling.ts";

/** Where the engine runs. */
export type Device = "cpu" | "cuda";

/** One generated token, as soon as it is known. */
export interface GeneratedToken {
  /** Token id. */
  id: number;
  /** When it became known, µs since the generate call began (device clock on CUDA). */
  tUs: number;
  /** Log-probability of this token under the raw (T = 1) distribution; only with `logprobs > 0`. */
  logprob?: number;
  /** The `logprobs` most likely tokens as [id, logprob]; only with `logprobs > 0`. */
  top?: [number, number][];
}

/** How a generation ended, and its timings. */
export interface GenerateResult {
  /** stop: a stop id (the last token); length: maxTokens; interrupted: cancel(); context: the KV cache is full. */
  finish: "stop" | "length" | "interrupted" | "context";
  /** Every generated token id, the stop id included. */
  tokens: number[];
  /** Prompt tokens this call prefilled. */
  nPrefill: number;
  /** µs from the call to the first generated token. */
  prefillUs: number;
  /** µs from the first to the last generated token. */
  decodeUs: number;
  /** µs between consecutive generated tokens (tokens.length - 1 entries). */
  stepUs: number[];
}

/** Options of Engine.load(). */
export interface EngineOptions {
  /**
   * "auto" picks CUDA when a usable GPU is there and the CUDA engine accepts the model, else the CPU (with `note`
   * saying why); "cuda" surfaces the CUDA engine's refusal as an MkError.
   */
  device: "auto" | Device;
  /** KV cache positions (1..max_position_embeddings). */
  ctx: number;
  /** CPU worker threads (0 or absent: all cores). */
  threads?: number;
  /** CPU engine: the plain forward pass (default) or the CPU interpreter of the scheduler's program. */
  cpuMode?: "reference" | "interpreter";
  /** CPU interpreter: 0 runs queues in order; another value draws a random valid interleaving each step. */
  interleaveSeed?: number;
  /** CUDA device ordinal (default 0). */
  gpuIndex?: number;
  /** CUDA: a counter wait longer than this aborts with MkError("timeout") (default: the library's, 5000). */
  timeoutMs?: number;
}

const FINISH: Record<number, GenerateResult["finish"]> = {
  [Status.FINISH_STOP]: "stop",
  [Status.FINISH_LENGTH]: "length",
  [Status.FINISH_CONTEXT]: "context",
  [Status.FINISH_CANCELLED]: "interrupted",
};

/** How often a running generation is polled for new tokens. */
const POLL_MS = 2;

function pickDevice(lib: MkLibrary, wanted: EngineOptions["device"]): { device: Device; note: string | null } {
  const buf = new Uint8Array(nativeBuffer(256), 0, 256);
  const usable = lib.symbols.mk_cuda_available(buf, buf.length) === 1;
  const probe = readCBuffer(buf);
  if (wanted === "cpu") return { device: "cpu", note: null };
  if (usable) return { device: "cuda", note: null };
  if (wanted === "cuda") throw new MkError("no-device", `--device cuda: no usable GPU: ${probe}`);
  return { device: "cpu", note: `no usable GPU (${probe}); running on the CPU` };
}

/** MkError codes with which the CUDA engine refuses a model or a GPU it cannot run (create, load or program). */
const CUDA_REFUSALS: ReadonlySet<string> = new Set(["invalid", "unsupported-device", "no-device"]);

/**
 * Whether a failure to open the engine on CUDA should be retried on the CPU, and the one-line note that says why:
 * only when the device was "auto" (an explicit `--device cuda` surfaces the error) and the CUDA engine refused the
 * model or the GPU (an unsupported shape, an unsupported device, no device after all). Anything else (bad weights,
 * I/O, out of memory, a CUDA fault) is not the CPU's to fix, so it surfaces: null.
 */
export function cpuFallbackNote(wanted: EngineOptions["device"], tried: Device, error: unknown): string | null {
  if (wanted !== "auto" || tried !== "cuda") return null;
  if (!(error instanceof MkError) || !CUDA_REFUSALS.has(error.code)) return null;
  const why = error.message.replace(/\s+/g, " ").trim() || error.code;
  return `the CUDA engine cannot run this model here (${why}); running on the CPU`;
}

function sleep(ms: number): { done: Promise<void>; cancel: () => void } {
  let id: ReturnType<typeof setTimeout> | undefined;
  const done = new Promise<void>((resolve) => id = setTimeout(resolve, ms));
  return { done, cancel: () => clearTimeout(id) };
}

/** A loaded model on a device, ready to prefill and generate. */
export class Engine {
  /** Where it runs. */
  readonly device: Device;
  /** The device as the library names it ("NVIDIA H200", "cpu (16 threads)"). */
  readonly deviceName: string;
  /** KV cache positions. */
  readonly ctx: number;
  /** Milliseconds load() took (library, tensors, upload, program). */
  readonly loadMs: number;
  /** A line for the user about a choice made for them (e.g. "auto" fell back to the CPU), else null. */
  readonly note: string | null;
  /** Rows of the logits (the model's vocabulary). */
  readonly vocabSize: number;

  #lib: MkLibrary;
  #handle: Deno.PointerObject | null;
  #position = 0;
  /** The tail of the queue of native calls: each call waits for the previous one to settle. */
  #tail: Promise<void> = Promise.resolve();
  /** Calls queued or running. */
  #pending = 0;
  /** The mk_stream header (as int32 words) of the running generation, for cancel(). */
  #stream: Int32Array | null = null;
  #generating = false;

  private constructor(
    lib: MkLibrary,
    handle: Deno.PointerObject,
    fields: { device: Device; deviceName: string; ctx: number; loadMs: number; note: string | null; vocab: number },
  ) {
    this.#lib = lib;
    this.#handle = handle;
    this.device = fields.device;
    this.deviceName = fields.deviceName;
    this.ctx = fields.ctx;
    this.loadMs = fields.loadMs;
    this.note = fields.note;
    this.vocabSize = fields.vocab;
  }

  /**
   * Creates the native engine for `files` on the chosen device, declares every tensor, loads them (off the event
   * loop) and, where the device runs the instruction program (CUDA, CPU interpreter), installs the program built by
   * engine/scheduler.ts for the device's queue count.
   */
  static async load(files: ModelFiles, opts: EngineOptions): Promise<Engine> {
    const t0 = performance.now();
    const cfg = files.config;
    if (!Number.isInteger(opts.ctx) || opts.ctx < 1 || opts.ctx > cfg.maxPosition) {
      throw new MkError("usage", `--ctx must be an integer in [1, ${cfg.maxPosition}] for ${files.id}`);
    }
    if (opts.threads !== undefined && (!Number.isInteger(opts.threads) || opts.threads < 0)) {
      throw new MkError("usage", "--threads must be an integer >= 0 (0 = all cores)");
    }
    const { lib } = await loadLibrary();
    const { device, note } = pickDevice(lib, opts.device);
    try {
      return await Engine.#open(lib, files, opts, device, note, t0);
    } catch (e) {
      const fallback = cpuFallbackNote(opts.device, device, e);
      if (fallback === null) throw e;
      return await Engine.#open(lib, files, opts, "cpu", fallback, t0);
    }
  }

  /** load() on a chosen device: create, declare and load the tensors, install the program where the device runs it. */
  static async #open(
    lib: MkLibrary,
    files: ModelFiles,
    opts: EngineOptions,
    device: Device,
    note: string | null,
    t0: number,
  ): Promise<Engine> {
    const cfg = files.config;
    const cpuMode = opts.cpuMode === "interpreter" ? MK_CPU_INTERPRETER : MK_CPU_REFERENCE;
    const params = writeEngineParams(lib, {
      device: device === "cuda" ? MK_DEVICE_CUDA : MK_DEVICE_CPU,
      ctxLen: opts.ctx,
      nThreads: opts.threads,
      cpuMode,
      gpuIndex: opts.gpuIndex,
      timeoutMs: opts.timeoutMs,
      interleaveSeed: opts.interleaveSeed,
    });
    const out = new BigUint64Array(nativeBuffer(8), 0, 1);
    unwrap(lib.symbols.mk_engine_create(writeModelConfig(cfg), params, out), lib, null);
    const handle = Deno.UnsafePointer.create(out[0]);
    if (handle === null) throw new MkError("internal", "mk_engine_create returned no engine");
    try {
      for (const t of files.tensors) {
        if (t.shape.length < 1 || t.shape.length > 2) {
          throw new MkError("weights", `${t.path}: tensor ${t.name} has ${t.shape.length} dimensions, expected 1 or 2`);
        }
        const status = lib.symbols.mk_engine_add_tensor(
          handle,
          cString(t.name),
          cString(t.path),
          BigInt(t.offset),
          BigInt(t.nbytes),
          MK_DTYPE[t.dtype],
          BigInt(t.shape[0]),
          BigInt(t.shape[1] ?? 0),
        );
        unwrap(status, lib, handle);
      }
      unwrap(await lib.symbols.mk_engine_load(handle), lib, handle);
      const queues = new Int32Array(nativeBuffer(4), 0, 1);
      const name = new Uint8Array(nativeBuffer(256), 0, 256);
      unwrap(lib.symbols.mk_engine_device_info(handle, queues, name, name.length), lib, handle);
      if (device === "cuda" || cpuMode === MK_CPU_INTERPRETER) {
        const words = buildProgram(cfg, queues[0]);
        unwrap(lib.symbols.mk_engine_set_program(handle, words, words.length), lib, handle);
      }
      const loadMs = performance.now() - t0;
      return new Engine(lib, handle, {
        device,
        deviceName: readCBuffer(name),
        ctx: opts.ctx,
        loadMs,
        note,
        vocab: cfg.vocabSize,
      });
    } catch (e) {
      lib.symbols.mk_engine_free(handle);
      throw e;
    }
  }

  /** Tokens in the KV cache (after the last call that settled). */
  get position(): number {
    return this.#position;
  }

  /** True while a generate() is running. */
  get generating(): boolean {
    return this.#generating;
  }

  /** Waits for the calls queued before it, then holds the engine until the returned function is called. */
  async #acquire(): Promise<{ handle: Deno.PointerObject; release: () => void }> {
    const previous = this.#tail;
    let release!: () => void;
    this.#tail = new Promise<void>((resolve) => release = resolve);
    this.#pending++;
    await previous;
    const done = () => {
      this.#pending--;
      release();
    };
    if (this.#handle === null) {
      done();
      throw new MkError("state", "the engine is closed");
    }
    return { handle: this.#handle, release: done };
  }

  /**
   * Appends `tokens` to the KV cache (off the event loop). With `wantLogits`, returns the vocab logits after the last
   * token. MkError("context") when they do not fit (nothing is appended then).
   */
  async prefill(tokens: number[], wantLogits = false): Promise<Float32Array | null> {
    if (tokens.length === 0) {
      if (wantLogits) throw new MkError("invalid", "prefill of no tokens has no logits");
      return null;
    }
    const ids = Int32Array.from(tokens);
    const nativeIds = new Int32Array(nativeBuffer(4 * ids.length), 0, ids.length);
    nativeIds.set(ids);
    const logits = wantLogits ? new Float32Array(nativeBuffer(4 * this.vocabSize), 0, this.vocabSize) : null;
    const { handle, release } = await this.#acquire();
    try {
      const status = await this.#lib.symbols.mk_engine_prefill(handle, nativeIds, nativeIds.length, logits);
      this.#position = this.#lib.symbols.mk_engine_position(handle);
      unwrap(status, this.#lib, handle);
      return logits;
    } finally {
      release();
    }
  }

  /** Keeps only the first `n` positions of the KV cache (0 clears it). */
  async truncate(n: number): Promise<void> {
    const { handle, release } = await this.#acquire();
    try {
      unwrap(this.#lib.symbols.mk_engine_truncate(handle, n), this.#lib, handle);
      this.#position = this.#lib.symbols.mk_engine_position(handle);
    } finally {
      release();
    }
  }

  /** The device's streaming-read bandwidth in GB/s, measured now (off the event loop). */
  async measureReadBandwidthGBs(): Promise<number> {
    const gbps = new Float64Array(nativeBuffer(8), 0, 1);
    const { handle, release } = await this.#acquire();
    try {
      unwrap(await this.#lib.symbols.mk_measure_read_bandwidth(handle, gbps), this.#lib, handle);
      return gbps[0];
    } finally {
      release();
    }
  }

  /**
   * Prefills `prompt` (at least one token) and generates, yielding each token as soon as the native thread publishes
   * it; returns the GenerateResult. Stopping the iteration early (break) cancels the generation and waits for it,
   * and the cache then holds the prompt and at most the tokens delivered (never one the consumer did not see).
   * A second generate while one runs throws MkError("busy").
   */
  async *generate(prompt: number[], sp: SamplingParams): AsyncGenerator<GeneratedToken, GenerateResult> {
    if (this.#generating) {
      throw new MkError("busy", "a reply is already being generated on this engine; wait for it or cancel it first");
    }
    if (prompt.length === 0) throw new MkError("invalid", "generate needs at least one prompt token");
    this.#generating = true;
    const streamBuf = nativeBuffer(STREAM.size);
    const header = new Int32Array(streamBuf, 0, STREAM.size / 4);
    this.#stream = header;
    try {
      const { handle, release } = await this.#acquire();
      try {
        return yield* this.#run(handle, prompt, sp, streamBuf);
      } finally {
        release();
      }
    } finally {
      this.#stream = null;
      this.#generating = false;
    }
  }

  async *#run(
    handle: Deno.PointerObject,
    prompt: number[],
    sp: SamplingParams,
    streamBuf: ArrayBuffer,
  ): AsyncGenerator<GeneratedToken, GenerateResult> {
    const lib = this.#lib;
    const start = this.#position;
    // room: positions the cache still has after the prompt. The native loop stops with "context" after room + 1
    // tokens (the last one never enters the cache) and needs arrays of max_tokens entries: room + 2 keeps
    // "context" distinguishable from "length" without allocating arrays for a maxTokens that cannot be reached.
    const room = this.ctx - this.#position - prompt.length;
    const capacity = Math.max(1, Math.min(sp.maxTokens, room + 2));
    const k = sp.logprobs;
    // Everything the native thread touches lives in these buffers, referenced from this frame until it returns.
    const promptIds = new Int32Array(nativeBuffer(4 * prompt.length), 0, prompt.length);
    promptIds.set(prompt);
    const spBytes = writeSamplingParams(lib, sp, capacity);
    const tokens = new Int32Array(nativeBuffer(4 * capacity), 0, capacity);
    const tUs = new Float64Array(nativeBuffer(8 * capacity), 0, capacity);
    const logprob = k > 0 ? new Float32Array(nativeBuffer(4 * capacity), 0, capacity) : null;
    const topIds = k > 0 ? new Int32Array(nativeBuffer(4 * capacity * k), 0, capacity * k) : null;
    const topLp = k > 0 ? new Float32Array(nativeBuffer(4 * capacity * k), 0, capacity * k) : null;
    const header = new Int32Array(streamBuf, 0, STREAM.size / 4);
    const view = new DataView(streamBuf);
    view.setUint32(STREAM.struct_size, STREAM.size, true);
    const arrays = new DataView(nativeBuffer(STREAM_ARRAYS.size), 0, STREAM_ARRAYS.size);
    arrays.setUint32(STREAM_ARRAYS.struct_size, STREAM_ARRAYS.size, true);
    arrays.setInt32(STREAM_ARRAYS.capacity, capacity, true);
    arrays.setBigUint64(STREAM_ARRAYS.tokens, addressOf(tokens), true);
    arrays.setBigUint64(STREAM_ARRAYS.t_us, addressOf(tUs), true);
    arrays.setBigUint64(STREAM_ARRAYS.logprob, addressOf(logprob), true);
    arrays.setBigUint64(STREAM_ARRAYS.top_ids, addressOf(topIds), true);
    arrays.setBigUint64(STREAM_ARRAYS.top_logprobs, addressOf(topLp), true);
    const streamBytes = new Uint8Array(streamBuf, 0, STREAM.size);
    const arrayBytes = new Uint8Array(arrays.buffer, 0, STREAM_ARRAYS.size);

    const token = (i: number): GeneratedToken => {
      const t: GeneratedToken = { id: tokens[i], tUs: tUs[i] };
      if (logprob && topIds && topLp) {
        t.logprob = logprob[i];
        t.top = [];
        for (let j = 0; j < k; j++) t.top.push([topIds[i * k + j], topLp[i * k + j]]);
      }
      return t;
    };

    const outcome: { status: number | null; failure: unknown } = { status: null, failure: null };
    const call = lib.symbols.mk_engine_generate(handle, promptIds, prompt.length, spBytes, streamBytes, arrayBytes)
      .then((s) => {
        outcome.status = s;
      }, (e) => {
        outcome.failure = e ?? new Error("mk_engine_generate failed");
      });
    let seen = 0;
    try {
      while (true) {
        const settled = outcome.status !== null || outcome.failure !== null;
        const published = Math.min(Atomics.load(header, STREAM.n_tokens / 4), capacity);
        while (seen < published) yield token(seen++);
        if (settled) break;
        const tick = sleep(POLL_MS);
        await Promise.race([call, tick.done]);
        tick.cancel();
      }
    } finally {
      const stoppedEarly = outcome.status === null && outcome.failure === null;
      if (stoppedEarly) {
        // The consumer stopped early (break, an exception): stop the native call before the buffers can go.
        Atomics.store(header, STREAM.cancel / 4, 1);
        await call;
      }
      this.#position = lib.symbols.mk_engine_position(handle);
      // Before it saw the cancel, the native loop may have fed back a token it published after our last look: drop
      // it, so that the cache is the prompt plus tokens the consumer has seen (a fast CPU engine outran a chat
      // consumer by one token on a 16-core machine).
      const known = start + prompt.length + seen;
      if (stoppedEarly && this.#position > known) {
        unwrap(lib.symbols.mk_engine_truncate(handle, known), lib, handle);
        this.#position = lib.symbols.mk_engine_position(handle);
      }
    }
    if (outcome.failure !== null) throw outcome.failure;
    const status = unwrap(outcome.status!, lib, handle);
    const n = seen;
    const stepUs: number[] = [];
    for (let i = 1; i < n; i++) stepUs.push(tUs[i] - tUs[i - 1]);
    return {
      finish: FINISH[status] ?? "stop",
      tokens: Array.from(tokens.subarray(0, n)),
      nPrefill: view.getInt32(STREAM.n_prefill, true),
      prefillUs: view.getFloat64(STREAM.prefill_us, true),
      decodeUs: view.getFloat64(STREAM.decode_us, true),
      stepUs,
    };
  }

  /** Asks the running generation to stop; the native side ends it within one decode step. No-op when idle. */
  cancel(): void {
    if (this.#stream) Atomics.store(this.#stream, STREAM.cancel / 4, 1);
  }

  /**
   * Frees the native engine. A running generation is cancelled first, and the engine is freed once the native call
   * has returned; calls made after close() throw MkError("state").
   */
  close(): void {
    const handle = this.#handle;
    if (handle === null) return;
    this.#handle = null;
    this.cancel();
    if (this.#pending === 0) this.#lib.symbols.mk_engine_free(handle);
    else this.#tail.then(() => this.#lib.symbols.mk_engine_free(handle));
  }

  /** close(), for `using engine = await Engine.load(…)`. */
  [Symbol.dispose](): void {
    this.close();
  }
}
