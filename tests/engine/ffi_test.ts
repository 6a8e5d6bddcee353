/**
 * engine/ffi.ts against the compiled library: the struct sizes and field offsets written in TypeScript must be the
 * ones the C compiler chose (sizes from the struct_size the library's default-params functions write, or from the
 * "expected N" of its struct_size check; offsets from the defaults it writes at them).
 */

import { assert, assertEquals } from "./_assert.ts";
import {
  ENGINE_PARAMS,
  MK_ABI_VERSION,
  MODEL_CONFIG,
  nativeBuffer,
  readCPointer,
  SAMPLING_PARAMS,
  STREAM,
  STREAM_ARRAYS,
  writeModelConfig,
} from "../../engine/ffi.ts";
import { loadLibrary } from "../../engine/library.ts";
import { tinyModel } from "./_model.ts";

const { lib } = await loadLibrary();

/** The sizeof the library reports in its "struct_size N, expected M" error. */
function expectedSize(message: string): number {
  const m = /expected (\d+)/.exec(message);
  assert(m, `no size in ${JSON.stringify(message)}`);
  return Number(m[1]);
}

Deno.test("mk_abi_version() is the ABI version ffi.ts mirrors", () => {
  assertEquals(lib.symbols.mk_abi_version(), MK_ABI_VERSION);
});

Deno.test("ENGINE_PARAMS matches mk_default_engine_params()'s size and field offsets", () => {
  const bytes = new Uint8Array(nativeBuffer(64), 0, 64).fill(0xee);
  lib.symbols.mk_default_engine_params(bytes);
  const v = new DataView(bytes.buffer);
  assertEquals(v.getUint32(ENGINE_PARAMS.struct_size, true), ENGINE_PARAMS.size);
  assertEquals(bytes[ENGINE_PARAMS.size], 0xee, "the library wrote past the size ffi.ts assumes");
  assertEquals(v.getInt32(ENGINE_PARAMS.device, true), 0); // MK_DEVICE_CPU
  assertEquals(v.getInt32(ENGINE_PARAMS.ctx_len, true), 4096);
  assertEquals(v.getInt32(ENGINE_PARAMS.cpu_mode, true), 0);
  assertEquals(v.getInt32(ENGINE_PARAMS.timeout_ms, true), 5000);
  assertEquals(v.getUint32(ENGINE_PARAMS.interleave_seed, true), 0);
});

Deno.test("SAMPLING_PARAMS matches mk_default_sampling_params()'s size and field offsets", () => {
  const bytes = new Uint8Array(nativeBuffer(128), 0, 128).fill(0xee);
  lib.symbols.mk_default_sampling_params(bytes);
  const v = new DataView(bytes.buffer);
  assertEquals(v.getUint32(SAMPLING_PARAMS.struct_size, true), SAMPLING_PARAMS.size);
  assertEquals(bytes[SAMPLING_PARAMS.size], 0xee, "the library wrote past the size ffi.ts assumes");
  assertEquals(v.getFloat32(SAMPLING_PARAMS.temperature, true), 0);
  assertEquals(v.getFloat32(SAMPLING_PARAMS.top_p, true), 1);
  assertEquals(v.getInt32(SAMPLING_PARAMS.max_tokens, true), 256);
  assertEquals(v.getInt32(SAMPLING_PARAMS.logprobs, true), 0);
});

Deno.test("MODEL_CONFIG.size is sizeof(mk_model_config)", () => {
  const cfg = writeModelConfig({
    vocabSize: 8,
    dim: 8,
    hiddenDim: 8,
    nLayers: 1,
    nHeads: 1,
    nKvHeads: 1,
    headDim: 8,
    maxPosition: 8,
    rmsEps: 1e-5,
    ropeTheta: 10000,
    ropeType: 0,
    ropeFactor: 1,
    ropeLowFreqFactor: 1,
    ropeHighFreqFactor: 1,
    ropeOriginalMaxPosition: 8,
    tieEmbeddings: true,
  });
  new DataView(cfg.buffer).setUint32(MODEL_CONFIG.struct_size, 4, true); // too small on purpose
  const params = new Uint8Array(nativeBuffer(ENGINE_PARAMS.size), 0, ENGINE_PARAMS.size);
  lib.symbols.mk_default_engine_params(params);
  const out = new BigUint64Array(nativeBuffer(8), 0, 1);
  const status = lib.symbols.mk_engine_create(cfg, params, out);
  assert(status < 0);
  assertEquals(expectedSize(readCPointer(lib.symbols.mk_last_error(null))), MODEL_CONFIG.size);
});

Deno.test("STREAM.size and STREAM_ARRAYS.size are sizeof(mk_stream) and sizeof(mk_stream_arrays)", async () => {
  const files = await tinyModel();
  // A generate whose stream/arrays claim to be too small fails before any work, naming the real sizes.
  const cfg = writeModelConfig(files.config);
  const params = new Uint8Array(nativeBuffer(ENGINE_PARAMS.size), 0, ENGINE_PARAMS.size);
  lib.symbols.mk_default_engine_params(params);
  new DataView(params.buffer).setInt32(ENGINE_PARAMS.ctx_len, 64, true);
  const out = new BigUint64Array(nativeBuffer(8), 0, 1);
  assertEquals(lib.symbols.mk_engine_create(cfg, params, out), 0);
  const e = Deno.UnsafePointer.create(out[0]);
  try {
    const sp = new Uint8Array(nativeBuffer(SAMPLING_PARAMS.size), 0, SAMPLING_PARAMS.size);
    lib.symbols.mk_default_sampling_params(sp);
    new DataView(sp.buffer).setInt32(SAMPLING_PARAMS.max_tokens, 1, true);
    const prompt = new Int32Array(nativeBuffer(4), 0, 1);
    const stream = new Uint8Array(nativeBuffer(STREAM.size), 0, STREAM.size);
    const arrays = new Uint8Array(nativeBuffer(STREAM_ARRAYS.size), 0, STREAM_ARRAYS.size);
    new DataView(stream.buffer).setUint32(0, 4, true);
    new DataView(arrays.buffer).setUint32(0, STREAM_ARRAYS.size, true);
    assert(await lib.symbols.mk_engine_generate(e, prompt, 1, sp, stream, arrays) < 0);
    assertEquals(expectedSize(readCPointer(lib.symbols.mk_last_error(e))), STREAM.size);
    new DataView(stream.buffer).setUint32(0, STREAM.size, true);
    new DataView(arrays.buffer).setUint32(0, 4, true);
    assert(await lib.symbols.mk_engine_generate(e, prompt, 1, sp, stream, arrays) < 0);
    assertEquals(expectedSize(readCPointer(lib.symbols.mk_last_error(e))), STREAM_ARRAYS.size);
  } finally {
    lib.symbols.mk_engine_free(e);
  }
});
