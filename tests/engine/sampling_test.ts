/** engine/sampling.ts: defaults, one-line validation messages naming the flag, and the mk_sampling_params bytes. */

import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { MkError } from "../../engine/errors.ts";
import { SAMPLING_PARAMS } from "../../engine/ffi.ts";
import { loadLibrary } from "../../engine/library.ts";
import {
  DEFAULT_TEMPERATURE,
  DEFAULT_TOP_P,
  defaultSampling,
  type SamplingParams,
  validateSampling,
  writeSamplingParams,
} from "../../engine/sampling.ts";

Deno.test("defaultSampling() takes temperature, top_p and top_k from generation_config.json", () => {
  const sp = defaultSampling({ temperature: 0.7, top_p: 0.8, top_k: 40, do_sample: true }, [128009]);
  assertEquals([sp.temperature, sp.topP, sp.topK, sp.stopIds], [0.7, 0.8, 40, [128009]]);
  assertEquals(sp.logprobs, 0);
  assert(typeof sp.seed === "bigint");
});

Deno.test("defaultSampling() without generation_config uses temperature 0.6 and top_p 0.9", () => {
  const sp = defaultSampling(null);
  assertEquals([sp.temperature, sp.topP, sp.topK], [DEFAULT_TEMPERATURE, DEFAULT_TOP_P, 0]);
  assertEquals([DEFAULT_TEMPERATURE, DEFAULT_TOP_P], [0.6, 0.9]);
  assertEquals(defaultSampling({ do_sample: false, temperature: 0.6 }).temperature, 0);
});

Deno.test("validateSampling() names the flag in a one-line message", () => {
  const base = defaultSampling(null);
  const cases: [Partial<SamplingParams>, string][] = [
    [{ temperature: -0.1 }, "--temperature must be >= 0"],
    [{ temperature: NaN }, "--temperature must be >= 0"],
    [{ topP: 0 }, "--top-p must be in (0, 1]"],
    [{ topP: 1.5 }, "--top-p must be in (0, 1]"],
    [{ topK: -1 }, "--top-k must be an integer >= 0 (0 = off)"],
    [{ topK: 2.5 }, "--top-k must be an integer >= 0 (0 = off)"],
    [{ seed: -1 }, "--seed must be an integer in [0, 2^64)"],
    [{ seed: 1n << 64n }, "--seed must be an integer in [0, 2^64)"],
    [{ maxTokens: 0 }, "--max-tokens must be an integer >= 1"],
    [{ logprobs: 21 }, "--logprobs must be an integer in [0, 20]"],
    [{ stopIds: Array.from({ length: 17 }, (_, i) => i) }, "at most 16 stop ids, got 17"],
  ];
  for (const [patch, message] of cases) {
    const err = assertThrows(() => validateSampling({ ...base, ...patch }), MkError);
    assertEquals(err.message, message);
    assertEquals(err.code, "usage");
  }
  validateSampling({ ...base, temperature: 0, topP: 1, topK: 0, seed: 0xffffffffffffffffn, maxTokens: 1 });
});

Deno.test("writeSamplingParams() lays out mk_sampling_params with the 64-bit seed split in two words", async () => {
  const { lib } = await loadLibrary();
  const sp: SamplingParams = {
    temperature: 0.5,
    topP: 0.75,
    topK: 7,
    seed: 0x0123456789abcdefn,
    maxTokens: 99,
    stopIds: [5, 6],
    logprobs: 3,
  };
  const v = new DataView(writeSamplingParams(lib, sp, 42).buffer);
  const o = SAMPLING_PARAMS;
  assertEquals(v.getUint32(o.struct_size, true), o.size);
  assertEquals(v.getFloat32(o.temperature, true), 0.5);
  assertEquals(v.getFloat32(o.top_p, true), 0.75);
  assertEquals(v.getInt32(o.top_k, true), 7);
  assertEquals(v.getUint32(o.seed_lo, true), 0x89abcdef);
  assertEquals(v.getUint32(o.seed_hi, true), 0x01234567);
  assertEquals(v.getInt32(o.max_tokens, true), 42);
  assertEquals(v.getInt32(o.n_stop_ids, true), 2);
  assertEquals([v.getInt32(o.stop_ids, true), v.getInt32(o.stop_ids + 4, true)], [5, 6]);
  assertEquals(v.getInt32(o.logprobs, true), 3);
});
