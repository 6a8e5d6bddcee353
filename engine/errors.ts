/**
 * Errors of the engine: MkError (defined in weights/errors.ts, re-exported here so that engine users need one import)
 * and `unwrap()`, which turns a negative native status into an MkError carrying the library's last-error text.
 *
 * @module
 */

import { MkError } from "../weights/errors.ts";
import { type MkLibrary, readCPointer, Status } from "./ffi.ts";

export { MkError };

/** The MkError code of each native error status. */
export const STATUS_CODES: Readonly<Record<number, string>> = {
  [Status.ERR_INVALID]: "invalid",
  [Status.ERR_IO]: "io",
  [Status.ERR_WEIGHTS]: "weights",
  [Status.ERR_NO_DEVICE]: "no-device",
  [Status.ERR_UNSUPPORTED_DEVICE]: "unsupported-device",
  [Status.ERR_OOM]: "oom",
  [Status.ERR_CUDA]: "cuda",
  [Status.ERR_TIMEOUT]: "timeout",
  [Status.ERR_STATE]: "state",
  [Status.ERR_CONTEXT]: "context",
  [Status.ERR_INTERNAL]: "internal",
};

/**
 * Returns `status` when it is >= 0 (ok or a finish outcome); otherwise throws MkError with the code of the status
 * and the message of `mk_last_error(handle)` (handle null: the calling thread's last engine-less error).
 */
export function unwrap(status: number, lib: MkLibrary, handle: Deno.PointerValue): number {
  if (status >= 0) return status;
  const code = STATUS_CODES[status] ?? "native";
  const text = readCPointer(lib.symbols.mk_last_error(handle)).trim();
  throw new MkError(code, text || `native call failed with status ${status}`);
}
