/**
 * The terminal: synchronous writes (so that stdout text and the stderr status line never interleave out of order),
 * whether a stream is a terminal, and colour only where it belongs (a terminal, and NO_COLOR unset).
 * @module
 */

const encoder = new TextEncoder();

/**
 * Write all of `text` to stdout now. When the reader has gone (`mkchat run … | head -1`), stop the way command-line
 * tools do on SIGPIPE: quietly, status 141.
 */
export function out(text: string): void {
  try {
    writeAll(Deno.stdout, text);
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) Deno.exit(141);
    throw e;
  }
}

/** Write all of `text` to stderr now. */
export function err(text: string): void {
  writeAll(Deno.stderr, text);
}

function writeAll(stream: { writeSync(p: Uint8Array): number }, text: string): void {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) {
    const n = stream.writeSync(bytes);
    bytes = bytes.subarray(n);
  }
}

/** Whether stdin, stdout and stderr are terminals, read once: they do not change while we run. */
export const tty = {
  stdin: Deno.stdin.isTerminal(),
  stdout: Deno.stdout.isTerminal(),
  stderr: Deno.stderr.isTerminal(),
};

/** https://no-color.org: any non-empty NO_COLOR turns colour off. */
function noColor(): boolean {
  const v = Deno.env.get("NO_COLOR");
  return v !== undefined && v !== "";
}

/** Colour for text written to stdout (the chat) / stderr (notes, stats): identity functions when not wanted. */
export function palette(onTerminal: boolean) {
  const on = onTerminal && !noColor();
  const wrap = (code: string) => (s: string) => on ? `\x1b[${code}m${s}\x1b[0m` : s;
  return { dim: wrap("2"), bold: wrap("1"), green: wrap("32"), yellow: wrap("33"), red: wrap("31"), cyan: wrap("36") };
}

/** Terminal width and height, or a sane default when it cannot be read. */
export function consoleSize(): { columns: number; rows: number } {
  try {
    return Deno.consoleSize();
  } catch {
    return { columns: 80, rows: 24 };
  }
}

/** A note for the user on stderr (`mkchat: note: …`), dimmed on a terminal. */
export function note(text: string): void {
  err(palette(tty.stderr).dim(`mkchat: note: ${text}`) + "\n");
}
