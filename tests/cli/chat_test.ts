// `mkchat chat` with stdin a pipe: a scripted conversation, one turn per line or """ block.
import { assert, assertEquals, assertNotMatch } from "./_assert.ts";
import { mkchat } from "./_mkchat.ts";

const TINY = ["chat", "--device", "cpu", "--model", "synthetic:tiny", "--max-tokens", "8", "--seed", "5"];

// The tiny model's random weights may emit newlines of their own; count replies by asking for greedy tokens that
// end with the max-tokens limit instead, and compare with `run` where the output must be the same.
Deno.test("piped chat answers each line, prints each reply, and exits 0 at EOF", async () => {
  const r = await mkchat(TINY, { stdin: "hi\nand again\n" });
  assertEquals(r.code, 0, r.stderr);
  assert(r.stdout.length > 0, "replies printed");
  assert(!r.stdout.includes("\x1b["), "no escape codes in piped output");
  assertNotMatch(r.stdout, />>>/, "no prompt when stdin is a pipe");
});

Deno.test("piped chat prints one reply per turn (greedy replies of fixed length)", async () => {
  const args = [...TINY, "--temperature", "0", "--max-tokens", "3"];
  const one = await mkchat(args, { stdin: "hi\n" });
  const two = await mkchat(args, { stdin: "hi\nhi again\n" });
  assertEquals(one.code, 0, one.stderr);
  assertEquals(two.code, 0, two.stderr);
  assert(two.stdout.startsWith(one.stdout), "the first reply does not depend on what comes after");
  assert(two.stdout.length > one.stdout.length, "a second reply follows");
});

Deno.test('piped chat reads a """ block as one turn, skips empty lines, and obeys /set, /clear, /bye', async () => {
  const script = ['"""', "line one", "line two", '"""', "", "/set temperature 0", "/clear", "hello", "/bye", "never"]
    .join("\n");
  const r = await mkchat(TINY, { stdin: script + "\n" });
  assertEquals(r.code, 0, r.stderr);
  assert(r.stderr.includes("temperature = 0"), r.stderr);
  assert(r.stderr.includes("conversation cleared"), r.stderr);
});

Deno.test("a bad /set value is reported and the chat goes on", async () => {
  const r = await mkchat(TINY, { stdin: "/set top_p 2\n/set warmth 1\nhi\n" });
  assertEquals(r.code, 0, r.stderr);
  assert(r.stderr.includes("top_p must be in (0, 1], got 2"), r.stderr);
  assert(r.stderr.includes("/set knows"), r.stderr);
  assert(r.stdout.length > 0);
});

Deno.test("a turn that cannot fit the context is refused with a clear line, and the chat goes on", async () => {
  const long = "word ".repeat(200);
  const r = await mkchat([...TINY, "--ctx", "64"], { stdin: `${long}\nhi\n` });
  assertEquals(r.code, 0, r.stderr);
  assert(/context/.test(r.stderr), r.stderr);
});
