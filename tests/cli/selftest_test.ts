// `mkchat selftest` on the CPU: the CPU interpreter of the instruction program against the CPU reference engine.
import { assert, assertEquals, assertMatch } from "./_assert.ts";
import { mkchat } from "./_mkchat.ts";

Deno.test("selftest --device cpu --model synthetic:tiny --json passes and reports every figure", async () => {
  const r = await mkchat(
    [
      "selftest",
      "--device",
      "cpu",
      "--model",
      "synthetic:tiny",
      "--json",
      "--prompt-tokens",
      "16",
      "--gen-tokens",
      "24",
    ],
  );
  assertEquals(r.code, 0, r.stdout + r.stderr);
  const j = JSON.parse(r.stdout.trim());
  for (const k of ["model", "device", "device_name", "date", "command", "check", "measure"]) assert(k in j, k);
  assertEquals(j.device, "cpu");
  assertEquals(j.check.pass, true, j.check.reason);
  assert(j.check.max_rel_l2 <= j.check.tolerance, "max_rel_l2 within tolerance");
  assertEquals(j.measure.prompt_tokens, 16);
  assertEquals(j.measure.gen_tokens, 24);
  for (const k of ["ttft_ms", "decode_us_p50", "decode_us_p90", "decode_us_p99", "decode_tok_s"]) {
    assert(typeof j.measure[k] === "number" && j.measure[k] > 0, `measure.${k} > 0`);
  }
  assert(j.measure.decode_us_p50 <= j.measure.decode_us_p90 && j.measure.decode_us_p90 <= j.measure.decode_us_p99);
});

Deno.test("selftest prints PASS with the error figure in text form", async () => {
  const r = await mkchat(
    ["selftest", "--device", "cpu", "--model", "synthetic:tiny", "--prompt-tokens", "8", "--gen-tokens", "8"],
  );
  assertEquals(r.code, 0, r.stdout + r.stderr);
  assertMatch(r.stdout, /check\s+PASS\s+.*max relative L2 error [\d.e+-]+/);
  assertMatch(r.stdout, /µs\/token p50/);
});
