/**
 * The one error type of mkchat. Every module of weights/ (and, re-exported, engine/ and cli/) throws MkError with a
 * short `code` saying which kind of input was at fault and a one-line message naming the file, tensor or setting;
 * the CLI prints `mkchat: <message>` and exits non-zero, so nothing here may carry a stack trace or a secret.
 *
 * @module
 */

/** Kinds of failure, used by the CLI to pick an exit status and by tests to check what was detected. */
export type MkErrorCode =
  | "model"
  | "hub"
  | "weights"
  | "config"
  | "tokenizer"
  | "disk"
  | (string & Record<never, never>);

/** An mkchat error: `code` is the kind of failure, `message` one line naming what and where. */
export class MkError extends Error {
  /** The kind of failure ("model", "hub", "weights", "config", "tokenizer", "disk", ...). */
  readonly code: MkErrorCode;

  /** Makes an error of kind `code`; newlines in `message` are folded so that it stays one line. */
  constructor(code: MkErrorCode, message: string) {
    super(message.replace(/\s*\n\s*/g, " "));
    this.name = "MkError";
    this.code = code;
  }
}

/**
 * The short reason of any thrown value, for wrapping fs and network errors into an MkError message: Deno's messages
 * already say what happened ("No such file or directory (os error 2)"), but may repeat the path, which our own
 * message names anyway, so the `: op 'path'` tail Deno appends is dropped.
 */
export function reasonOf(err: unknown): string {
  if (err instanceof Error) {
    const text = err.message.replace(/\s*\n[\s\S]*$/, "");
    return text.replace(/\(os error (\d+)\):? .*$/, "(os error $1)");
  }
  return String(err);
}

/** True when `err` is the operating system's "no space left on device". */
export function isDiskFull(err: unknown): boolean {
  return err instanceof Error &&
    ((err as { code?: string }).code === "ENOSPC" || /os error 28\b/.test(err.message));
}
