/**
 * Runs the real program (`deno run -A main.ts …`) as a subprocess, the way a user or script does, and checks the
 * properties every failure must have: one line on stderr, no stack trace, no secret.
 * @module
 */

const ROOT = new URL("../../", import.meta.url);

/** What a run of mkchat produced. */
export interface Ran {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options of mkchat(). */
export interface RunOpts {
  /** text piped to stdin (stdin is closed when absent) */
  stdin?: string;
  /** extra environment */
  env?: Record<string, string>;
  /** seconds before the run is killed */
  timeoutS?: number;
}

/** Run `main.ts` with `args` from the repository root. */
export async function mkchat(args: string[], opts: RunOpts = {}): Promise<Ran> {
  const cmd = new Deno.Command(Deno.execPath(), {
    // -q: Deno's own messages (npm "Download …" on a cold cache) are not mkchat's output.
    args: ["run", "-q", "-A", "main.ts", ...args],
    cwd: ROOT,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    // No colour and no terminal tricks in what tests read.
    env: { NO_COLOR: "1", ...opts.env },
  });
  const child = cmd.spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), (opts.timeoutS ?? 120) * 1000);
  if (opts.stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(opts.stdin));
    await w.close();
  }
  const out = await child.output();
  clearTimeout(timer);
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** The lines of stderr that are mkchat's own (npm and Deno may add lines of their own on a cold cache). */
export function errorLines(stderr: string): string[] {
  return stderr.split("\n").filter((l) => l.trim() !== "" && !/^(npm warn|Download )/.test(l));
}

/** Throws unless stderr is exactly one `mkchat: …` line and carries no stack trace. */
export function assertOneLineError(r: Ran, pattern?: RegExp): string {
  const lines = errorLines(r.stderr);
  if (lines.length !== 1) throw new Error(`expected one line on stderr, got ${lines.length}:\n${r.stderr}`);
  if (!lines[0].startsWith("mkchat: ")) throw new Error(`stderr does not start with "mkchat: ": ${lines[0]}`);
  if (/^\s+at /m.test(r.stderr)) throw new Error(`stack trace on stderr:\n${r.stderr}`);
  if (pattern && !pattern.test(lines[0])) {
    throw new Error(`stderr ${JSON.stringify(lines[0])} does not match ${pattern}`);
  }
  return lines[0];
}
