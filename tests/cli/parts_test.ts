// The CLI's pure parts, without a subprocess: percentiles, the stats summary, """ blocks, flag parsing.
import { assert, assertEquals } from "./_assert.ts";
import { percentile, ReplyStats, stepTimes } from "../../cli/stats.ts";
import { type LineSource, PipedLines, readTurn } from "../../cli/repl.ts";
import { parseGenerationFlags, parseSeed, parseTopP } from "../../cli/options.ts";
import { UsageError } from "../../cli/errors.ts";

function linesOf(...lines: string[]): LineSource {
  return { readLine: () => Promise.resolve(lines.length > 0 ? lines.shift()! : null), close() {} };
}

const PROMPTS = { first: ">>> ", more: "... " };

Deno.test("percentile() is nearest-rank", () => {
  const v = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  assertEquals(percentile(v, 50), 5);
  assertEquals(percentile(v, 90), 9);
  assertEquals(percentile(v, 99), 10);
  assertEquals(percentile([7], 99), 7);
  assert(Number.isNaN(percentile([], 50)));
});

Deno.test("stepTimes() takes deltas and skips warm-up steps", () => {
  assertEquals(stepTimes([100, 110, 130, 160]), [10, 20, 30]);
  assertEquals(stepTimes([100, 110, 130, 160], 2), [30]);
});

Deno.test("ReplyStats.summary() gives TTFT, tok/s, p50 and the bandwidth share", () => {
  const s = new ReplyStats(4096, { weightBytes: 1e9, kvBytesPerToken: 0, ceilingGBs: 2000 });
  // First token at 20 ms, then one every 1000 µs.
  for (let i = 0; i < 11; i++) s.add(20_000 + i * 1000, 30 + i);
  const r = s.summary();
  assertEquals(r.tokens, 11);
  assertEquals(r.ttftMs, 20);
  assertEquals(r.decodeTokS, 1000);
  assertEquals(r.stepUsP50, 1000);
  // 1 GB per 1 ms step = 1000 GB/s, half of a 2000 GB/s ceiling.
  assertEquals(r.bandwidthShare, 0.5);
  assertEquals(r.ctxUsed, 40);
});

Deno.test('readTurn() returns a line, or a """ block with its newlines', async () => {
  assertEquals(await readTurn(linesOf("hello"), PROMPTS), "hello");
  assertEquals(await readTurn(linesOf('"""', "a", "", "b", '"""', "next"), PROMPTS), "a\n\nb");
  assertEquals(await readTurn(linesOf('"""first', "second"), PROMPTS), "first\nsecond"); // EOF ends the block
  assertEquals(await readTurn(linesOf('"""one line"""'), PROMPTS), "one line");
  assertEquals(await readTurn(linesOf('"""a', 'b"""'), PROMPTS), "a\nb");
  assertEquals(await readTurn(linesOf(), PROMPTS), null);
});

Deno.test("PipedLines reads \\n and \\r\\n lines and a last line without a newline", async () => {
  const bytes = new TextEncoder().encode("one\r\ntwo\n\nthree");
  const src = new PipedLines(new Blob([bytes]).stream());
  const got: (string | null)[] = [];
  for (let i = 0; i < 5; i++) got.push(await src.readLine(""));
  assertEquals(got, ["one", "two", "", "three", null]);
});

Deno.test("parseGenerationFlags() leaves unset sampling fields to the model and checks the rest", () => {
  const o = parseGenerationFlags({ temperature: "0", seed: "18446744073709551615" });
  assertEquals(o.sampling.temperature, 0);
  assertEquals(o.sampling.topP, undefined);
  assertEquals(String(o.sampling.seed), "18446744073709551615");
  assertEquals(o.device, "auto");
  assertEquals(o.stats, "live");
  for (const bad of [() => parseTopP("1.5"), () => parseTopP("nan"), () => parseSeed("18446744073709551616")]) {
    let thrown: unknown = null;
    try {
      bad();
    } catch (e) {
      thrown = e;
    }
    assert(thrown instanceof UsageError, "a UsageError");
  }
});
