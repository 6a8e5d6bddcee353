/**
 * How failures reach the user: one line on stderr, never a stack trace unless --verbose.
 *
 * Three kinds of failure, three exit codes:
 *   - UsageError (a bad flag or value)            → `mkchat: <message>`, exit 2
 *   - MkError from weights/ or engine/ (duck-typed: an Error with a string `code`) → `mkchat: <message>`, exit 1
 *   - anything else (a bug)                       → one line + a hint to use --verbose, exit 1
 * @module
 */

/** A command-line mistake: unknown flag, out-of-range value. Exit code 2. */
export class UsageError extends Error {
  /** @param message one line, e.g. "--top-p must be in (0, 1], got 1.5" */
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/**
 * A failure the CLI itself detects that is not a flag mistake (an empty prompt, a prompt longer than the context).
 * Carries a `code` so that the handler treats it like MkError: one line, exit 1.
 */
export class CliFailure extends Error {
  /** Always "cli". */
  readonly code = "cli";
  /** @param message one line naming what is wrong */
  constructor(message: string) {
    super(message);
    this.name = "CliFailure";
  }
}

/** Exit codes, in one place so tests and the handler agree. */
export const EXIT = { ok: 0, error: 1, usage: 2, interrupted: 130 } as const;

/** True for the MkError class of weights/errors.ts, without importing it (the handler must not fail to load). */
export function isMkError(err: unknown): err is Error & { code: string } {
  return err instanceof Error && typeof (err as { code?: unknown }).code === "string";
}

/** Collapse a message to one line, and make sure no secret that the environment holds can leak through it. */
export function oneLine(message: string): string {
  let text = message.replace(/\s*\n\s*/g, " ").trim();
  const token = Deno.env.get("HF_TOKEN");
  // A token of a few characters would blank out ordinary words; real tokens are long.
  if (token && token.length >= 8) text = text.split(token).join("<HF_TOKEN>");
  return text;
}

/** Print an error the way the user should see it and return the exit code to use. */
export function reportError(err: unknown, verbose: boolean): number {
  const write = (s: string) => Deno.stderr.writeSync(new TextEncoder().encode(s + "\n"));
  if (err instanceof UsageError) {
    write(`mkchat: ${oneLine(err.message)}`);
    return EXIT.usage;
  }
  if (isMkError(err)) {
    write(`mkchat: ${oneLine(err.message)}`);
    if (verbose && err.stack) write(oneLineStack(err.stack));
    // engine/ checks some settings itself (--ctx against the model): those are usage mistakes too.
    return err.code === "usage" ? EXIT.usage : EXIT.error;
  }
  const message = err instanceof Error ? err.message : String(err);
  write(`mkchat: unexpected error: ${oneLine(message)}` + (verbose ? "" : " (run with --verbose for details)"));
  if (verbose && err instanceof Error && err.stack) write(oneLineStack(err.stack));
  return EXIT.error;
}

// The stack is only printed with --verbose, where it is wanted; still scrub the token from it.
function oneLineStack(stack: string): string {
  const token = Deno.env.get("HF_TOKEN");
  return token && token.length >= 8 ? stack.split(token).join("<HF_TOKEN>") : stack;
}
