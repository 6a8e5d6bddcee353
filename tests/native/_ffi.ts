/**
 * A tiny, test-only binding of native/mkchat.h (the real one is engine/ffi.ts; these tests talk to the C ABI directly
 * so that they check the library alone). Struct layouts are x86-64/aarch64 LP64 and are checked against the header's
 * field order in the comments.
 *
 * @module
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";

export const LIB_PATH: string = Deno.env.get("MKCHAT_TEST_LIB") ??
  fileURLToPath(new URL("../../native/build/libmkchat.so", import.meta.url));

export const MK = {
  OK: 0,
  FINISH_STOP: 1,
  FINISH_LENGTH: 2,
  FINISH_CONTEXT: 3,
  FINISH_CANCELLED: 4,
  ERR_INVALID: -1,
  ERR_IO: -2,
  ERR_WEIGHTS: -3,
  ERR_NO_DEVICE: -4,
  ERR_TIMEOUT: -8,
  ERR_STATE: -9,
  ERR_CONTEXT: -10,
  ERR_INTERNAL: -11,
  DTYPE_BF16: 0,
  DTYPE_F16: 1,
  DTYPE_F32: 2,
  DEVICE_CPU: 0,
  DEVICE_CUDA: 1,
  CPU_REFERENCE: 0,
  CPU_INTERPRETER: 1,
} as const;

const SYMBOLS = {
  mk_abi_version: { parameters: [], result: "i32" },
  mk_build_info: { parameters: [], result: "pointer" },
  mk_last_error: { parameters: ["pointer"], result: "pointer" },
  mk_default_engine_params: { parameters: ["buffer"], result: "void" },
  mk_default_sampling_params: { parameters: ["buffer"], result: "void" },
  mk_cuda_available: { parameters: ["buffer", "i32"], result: "i32" },
  mk_engine_create: { parameters: ["buffer", "buffer", "buffer"], result: "i32" },
  mk_engine_free: { parameters: ["pointer"], result: "void" },
  // (engine, name, path, offset u64, nbytes u64, dtype i32, d0 i64, d1 i64)
  mk_engine_add_tensor: {
    parameters: ["pointer", "buffer", "buffer", "u64", "u64", "i32", "i64", "i64"],
    result: "i32",
  },
  mk_engine_load: { parameters: ["pointer"], result: "i32" },
  mk_engine_set_program: { parameters: ["pointer", "buffer", "i32"], result: "i32" },
  mk_engine_device_info: { parameters: ["pointer", "buffer", "buffer", "i32"], result: "i32" },
  mk_engine_position: { parameters: ["pointer"], result: "i32" },
  mk_engine_truncate: { parameters: ["pointer", "i32"], result: "i32" },
  mk_engine_prefill: { parameters: ["pointer", "buffer", "i32", "buffer"], result: "i32" },
  mk_engine_generate: {
    parameters: ["pointer", "buffer", "i32", "buffer", "buffer", "buffer"],
    result: "i32",
  },
  // the same symbol, run on a worker thread, so that a test can cancel it while it runs
  mk_engine_generate_async: {
    name: "mk_engine_generate",
    parameters: ["pointer", "pointer", "i32", "pointer", "pointer", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  mk_measure_read_bandwidth: { parameters: ["pointer", "buffer"], result: "i32" },
} as const;

export type Lib = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];
let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;

/** The library's symbols (opened once); throws when native/build/libmkchat.so was not built. */
export function native(): Lib {
  if (!lib) {
    if (!existsSync(LIB_PATH)) throw new Error(`${LIB_PATH} is missing: run deno task build`);
    lib = Deno.dlopen(LIB_PATH, SYMBOLS);
  }
  return lib.symbols;
}

export function cstr(s: string): Uint8Array<ArrayBuffer> {
  const b = new TextEncoder().encode(s);
  const out = new Uint8Array(b.length + 1);
  out.set(b);
  return out;
}

export function lastError(engine: Deno.PointerValue): string {
  const p = native().mk_last_error(engine);
  return p ? Deno.UnsafePointerView.getCString(p) : "";
}

// ---------------------------------------------------------------------------------------------------------------------
// structs

/** mk_model_config's fields, camelCase. */
export interface ModelConfig {
  vocabSize: number;
  dim: number;
  hiddenDim: number;
  nLayers: number;
  nHeads: number;
  nKvHeads: number;
  headDim: number;
  maxPosition: number;
  rmsEps: number;
  ropeTheta: number;
  ropeType: number;
  ropeFactor: number;
  ropeLowFreqFactor: number;
  ropeHighFreqFactor: number;
  ropeOriginalMaxPosition: number;
  tieEmbeddings: boolean;
}

export function packConfig(c: ModelConfig, structSize = 68): Uint8Array<ArrayBuffer> {
  const b = new ArrayBuffer(68), v = new DataView(b);
  const i32 = [structSize, c.vocabSize, c.dim, c.hiddenDim, c.nLayers, c.nHeads, c.nKvHeads, c.headDim, c.maxPosition];
  i32.forEach((x, k) => v.setInt32(4 * k, x, true));
  v.setFloat32(36, c.rmsEps, true);
  v.setFloat32(40, c.ropeTheta, true);
  v.setInt32(44, c.ropeType, true);
  v.setFloat32(48, c.ropeFactor, true);
  v.setFloat32(52, c.ropeLowFreqFactor, true);
  v.setFloat32(56, c.ropeHighFreqFactor, true);
  v.setInt32(60, c.ropeOriginalMaxPosition, true);
  v.setInt32(64, c.tieEmbeddings ? 1 : 0, true);
  return new Uint8Array(b);
}

export interface EngineParams {
  ctxLen?: number;
  nThreads?: number;
  cpuMode?: number;
  interleaveSeed?: number;
  device?: number;
  timeoutMs?: number;
  structSize?: number;
}

export function packEngineParams(p: EngineParams): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(32);
  native().mk_default_engine_params(b);
  const v = new DataView(b.buffer);
  if (p.structSize !== undefined) v.setUint32(0, p.structSize, true);
  if (p.device !== undefined) v.setInt32(4, p.device, true);
  if (p.ctxLen !== undefined) v.setInt32(8, p.ctxLen, true);
  if (p.nThreads !== undefined) v.setInt32(12, p.nThreads, true);
  if (p.cpuMode !== undefined) v.setInt32(16, p.cpuMode, true);
  if (p.timeoutMs !== undefined) v.setInt32(24, p.timeoutMs, true);
  if (p.interleaveSeed !== undefined) v.setUint32(28, p.interleaveSeed, true);
  return b;
}

export interface Sampling {
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: bigint;
  maxTokens?: number;
  stopIds?: number[];
  logprobs?: number;
  structSize?: number;
}

export function packSampling(s: Sampling): Uint8Array<ArrayBuffer> {
  const b = new Uint8Array(100);
  native().mk_default_sampling_params(b);
  const v = new DataView(b.buffer);
  if (s.structSize !== undefined) v.setUint32(0, s.structSize, true);
  if (s.temperature !== undefined) v.setFloat32(4, s.temperature, true);
  if (s.topP !== undefined) v.setFloat32(8, s.topP, true);
  if (s.topK !== undefined) v.setInt32(12, s.topK, true);
  if (s.seed !== undefined) {
    v.setUint32(16, Number(s.seed & 0xffffffffn), true);
    v.setUint32(20, Number((s.seed >> 32n) & 0xffffffffn), true);
  }
  if (s.maxTokens !== undefined) v.setInt32(24, s.maxTokens, true);
  const stops = s.stopIds ?? [];
  v.setInt32(28, stops.length, true);
  stops.slice(0, 16).forEach((x, k) => v.setInt32(32 + 4 * k, x, true));
  if (s.logprobs !== undefined) v.setInt32(96, s.logprobs, true);
  return b;
}

/** The stream header and the arrays of one generation, in memory the native side writes. */
export class Stream {
  readonly header = new Uint8Array(40);
  readonly arraysStruct = new Uint8Array(48);
  readonly tokens: Int32Array<ArrayBuffer>;
  readonly tUs: Float64Array<ArrayBuffer>;
  readonly logprob: Float32Array<ArrayBuffer>;
  readonly topIds: Int32Array<ArrayBuffer>;
  readonly topLogprobs: Float32Array<ArrayBuffer>;
  constructor(readonly capacity: number, readonly k: number) {
    this.tokens = new Int32Array(capacity);
    this.tUs = new Float64Array(capacity);
    this.logprob = new Float32Array(capacity);
    this.topIds = new Int32Array(Math.max(1, capacity * k));
    this.topLogprobs = new Float32Array(Math.max(1, capacity * k));
    const h = new DataView(this.header.buffer);
    h.setUint32(0, 40, true);
    const a = new DataView(this.arraysStruct.buffer);
    a.setUint32(0, 48, true);
    a.setInt32(4, capacity, true);
    const ptr = (x: ArrayBufferView) => BigInt(Deno.UnsafePointer.value(Deno.UnsafePointer.of(x as BufferSource)));
    a.setBigUint64(8, ptr(this.tokens), true);
    a.setBigUint64(16, ptr(this.tUs), true);
    a.setBigUint64(24, ptr(this.logprob), true);
    a.setBigUint64(32, ptr(this.topIds), true);
    a.setBigUint64(40, ptr(this.topLogprobs), true);
  }
  private get h(): DataView {
    return new DataView(this.header.buffer);
  }
  get nTokens(): number {
    return Atomics.load(new Int32Array(this.header.buffer), 1);
  }
  cancel(): void {
    Atomics.store(new Int32Array(this.header.buffer), 2, 1);
  }
  get finish(): number {
    return this.h.getInt32(12, true);
  }
  get nPrefill(): number {
    return this.h.getInt32(16, true);
  }
  get position(): number {
    return this.h.getInt32(20, true);
  }
  get prefillUs(): number {
    return this.h.getFloat64(24, true);
  }
  get decodeUs(): number {
    return this.h.getFloat64(32, true);
  }
  generated(): number[] {
    return Array.from(this.tokens.subarray(0, this.nTokens));
  }
}
