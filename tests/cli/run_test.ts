// `mkchat run` on the tiny synthetic model with the CPU engine: the JSON contract and streaming text.
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { mkchat } from "./_mkchat.ts";

const TINY = ["--device", "cpu", "--model", "synthetic:tiny"];

interface RunJson {
  model: string;
  device: string;
  prompt_ids: number[];
  tokens: number[];
  text: string;
  finish_reason: string;
  stats: Record<string, number | null>;
  logprobs?: { token: number; logprob: number; top: [number, number][] }[];
}

async function runJson(args: string[]): Promise<RunJson> {
  const r = await mkchat(["run", ...TINY, "--json", ...args]);
  assertEquals(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n");
  assertEquals(lines.length, 1, "one JSON object on one line");
  return JSON.parse(lines[0]);
}

Deno.test("run --json --logprobs 5 prints one object whose tokens, logprobs and finish_reason agree", async () => {
  const j = await runJson(["--logprobs", "5", "--max-tokens", "8", "--seed", "1", "hi"]);
  assertEquals(j.device, "cpu");
  assertMatch(j.model, /^synthetic:tiny/);
  assert(j.prompt_ids.length > 3, "the chat template wraps the prompt");
  assert(j.tokens.length >= 1 && j.tokens.length <= 8, `1..8 tokens, got ${j.tokens.length}`);
  assert(["stop", "length"].includes(j.finish_reason), j.finish_reason);
  if (j.finish_reason === "length") assertEquals(j.tokens.length, 8);
  assertEquals(typeof j.text, "string");
  for (const k of ["load_ms", "ttft_ms", "prefill_tok_s", "decode_tok_s", "step_us_p50", "step_us_p99"]) {
    assert(k in j.stats, `stats.${k} present`);
  }
  assert(j.stats.ttft_ms !== null && j.stats.ttft_ms > 0, "ttft_ms > 0");
  assert(j.logprobs !== undefined, "logprobs present");
  assertEquals(j.logprobs.length, j.tokens.length);
  j.logprobs.forEach((lp, i) => {
    assertEquals(lp.token, j.tokens[i]);
    assertEquals(lp.top.length, 5);
    assert(lp.logprob <= 0, "a log-probability is <= 0");
    for (let k = 1; k < 5; k++) assert(lp.top[k][1] <= lp.top[k - 1][1], "top is sorted, most likely first");
  });
});

Deno.test("run --temperature 0 is deterministic and --seed makes sampling repeatable", async () => {
  const a = await runJson(["--temperature", "0", "--max-tokens", "6", "hello"]);
  const b = await runJson(["--temperature", "0", "--max-tokens", "6", "hello"]);
  assertEquals(a.tokens, b.tokens);
  const c = await runJson(["--temperature", "1", "--seed", "42", "--max-tokens", "6", "hello"]);
  const d = await runJson(["--temperature", "1", "--seed", "42", "--max-tokens", "6", "hello"]);
  assertEquals(c.tokens, d.tokens);
});

Deno.test("run --raw prompts with BOS + the text only", async () => {
  const raw = await runJson(["--raw", "--max-tokens", "2", "hello world"]);
  const chat = await runJson(["--max-tokens", "2", "hello world"]);
  assertEquals(raw.prompt_ids[0], 128000, "BOS first");
  assert(raw.prompt_ids.length < chat.prompt_ids.length, "no template around the raw prompt");
});

Deno.test("run reads the prompt from stdin and streams text to stdout", async () => {
  const r = await mkchat(["run", ...TINY, "--max-tokens", "6", "--seed", "3", "--stats", "off"], {
    stdin: "tell me a story\n",
  });
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.endsWith("\n"), "text ends with a newline");
  const j = await runJson(["--max-tokens", "6", "--seed", "3", "tell me a story"]);
  assertEquals(r.stdout, j.text.endsWith("\n") || j.text === "" ? j.text : j.text + "\n");
});

Deno.test("run --stats end prints one summary line on stderr", async () => {
  const r = await mkchat(["run", ...TINY, "--max-tokens", "4", "--stats", "end", "hi"]);
  assertEquals(r.code, 0, r.stderr);
  assertMatch(r.stderr, /TTFT [\d.]+ ms/);
  assertMatch(r.stderr, /ctx \d+\/\d+/);
});

Deno.test('run finishes with "context" when the context fills', async () => {
  const j = await runJson(["--raw", "--ctx", "16", "--max-tokens", "100", "--temperature", "0", "one two three"]);
  assertEquals(j.finish_reason, "context");
  assert(j.prompt_ids.length + j.tokens.length <= 16 + 1, "never past the context");
});
