/**
 * What the engine tests share around a generation: whether a usable GPU is here, running a generation to its end,
 * and cancelling one after its n-th token.
 * @module
 */

import type { Engine, GeneratedToken, GenerateResult } from "../../engine/engine.ts";
import { nativeBuffer } from "../../engine/ffi.ts";
import { loadLibrary } from "../../engine/library.ts";

/** Whether the native library has a CUDA engine and a GPU it can run on (the CUDA tests are skipped otherwise). */
export const cudaUsable: boolean = await (async () => {
  try {
    const { lib } = await loadLibrary();
    return lib.symbols.mk_cuda_available(new Uint8Array(nativeBuffer(256), 0, 256), 256) === 1;
  } catch {
    return false;
  }
})();

/** Every token of `gen` and its result. */
export async function drain(
  gen: AsyncGenerator<GeneratedToken, GenerateResult>,
): Promise<{ seen: GeneratedToken[]; result: GenerateResult }> {
  const seen: GeneratedToken[] = [];
  while (true) {
    const next = await gen.next();
    if (next.done) return { seen, result: next.value };
    seen.push(next.value);
  }
}

/** Runs `gen` to its end, calling `engine.cancel()` once its `after`-th token arrived; `ms`: from cancel() to the end. */
export async function cancelAfter(
  engine: Engine,
  gen: AsyncGenerator<GeneratedToken, GenerateResult>,
  after: number,
): Promise<{ result: GenerateResult; ms: number }> {
  let n = 0, cancelledAt = 0;
  while (true) {
    const next = await gen.next();
    if (next.done) return { result: next.value, ms: performance.now() - cancelledAt };
    if (++n === after) {
      cancelledAt = performance.now();
      engine.cancel();
    }
  }
}
