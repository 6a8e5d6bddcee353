// The command line itself: help, unknown flags, out-of-range values. None of these load a model.
import { assertEquals, assertMatch } from "./_assert.ts";
import { assertOneLineError, mkchat } from "./_mkchat.ts";

Deno.test("--help works for the program and every command, exit 0", async (t) => {
  for (const args of [["--help"], ["chat", "--help"], ["run", "--help"], ["pull", "--help"], ["selftest", "--help"]]) {
    await t.step(args.join(" "), async () => {
      const r = await mkchat(args);
      assertEquals(r.code, 0, r.stderr);
      assertMatch(r.stdout, /Usage: mkchat/);
    });
  }
});

Deno.test("run --help lists the flags of the contract", async () => {
  const r = await mkchat(["run", "--help"]);
  for (
    const flag of [
      "--model",
      "--device",
      "--system",
      "--temperature",
      "--top-p",
      "--top-k",
      "--seed",
      "--max-tokens",
      "--ctx",
      "--stats",
      "--json",
      "--logprobs",
      "--raw",
      "--verbose",
    ]
  ) assertMatch(r.stdout, new RegExp(flag));
});

Deno.test("an unknown flag is one line on stderr and exit 2", async (t) => {
  for (const args of [["chat", "--bogus"], ["run", "--nope", "hi"], ["selftest", "--fast"], ["pull", "--x"]]) {
    await t.step(args.join(" "), async () => {
      const r = await mkchat(args);
      assertEquals(r.code, 2);
      assertOneLineError(r, /unknown option/);
    });
  }
});

Deno.test("out-of-range values are one line naming the flag and the value, exit 2", async (t) => {
  const cases: [string[], RegExp][] = [
    [["run", "--top-p", "1.5", "hi"], /^mkchat: --top-p must be in \(0, 1\], got 1\.5$/],
    [["run", "--top-p", "0", "hi"], /--top-p/],
    [["run", "--temperature", "-1", "hi"], /--temperature .*-1/],
    [["run", "--temperature", "warm", "hi"], /--temperature must be a number, got warm/],
    [["run", "--top-k", "-3", "hi"], /--top-k/],
    [["run", "--max-tokens", "0", "hi"], /--max-tokens/],
    [["run", "--seed", "-1", "hi"], /--seed/],
    [["run", "--ctx", "4k", "hi"], /--ctx/],
    [["run", "--json", "--logprobs", "21", "hi"], /--logprobs .*21/],
    [["run", "--logprobs", "5", "hi"], /--logprobs needs --json/],
    [["chat", "--device", "gpu"], /--device must be one of auto, cuda, cpu, got gpu/],
    [["chat", "--stats", "loud"], /--stats must be one of live, end, off/],
    [["selftest", "--gen-tokens", "x"], /--gen-tokens/],
    [["selftest", "--prompt-tokens", "0"], /--prompt-tokens/],
  ];
  for (const [args, pattern] of cases) {
    await t.step(args.join(" "), async () => {
      const r = await mkchat(args);
      assertEquals(r.code, 2, r.stderr);
      assertOneLineError(r, pattern);
    });
  }
});

Deno.test("no command prints the help on stderr and exits 2", async () => {
  const r = await mkchat([]);
  assertEquals(r.code, 2);
  assertMatch(r.stderr, /Usage: mkchat/);
});

Deno.test("run with no prompt and nothing on stdin is one line, exit 2", async () => {
  const r = await mkchat(["run", "--device", "cpu", "--model", "synthetic:tiny"], { stdin: "  \n" });
  assertEquals(r.code, 2);
  assertOneLineError(r, /empty/);
});
