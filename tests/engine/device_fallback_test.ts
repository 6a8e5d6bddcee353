/**
 * cpuFallbackNote(): when `--device auto` retries on the CPU after the CUDA engine refused the model or the GPU, and
 * what it tells the user. Pure logic: no GPU (nor native library) needed.
 */

import { assert, assertEquals } from "./_assert.ts";
import { cpuFallbackNote } from "../../engine/engine.ts";
import { MkError } from "../../engine/errors.ts";

const SHAPE = new MkError("invalid", "CUDA engine: hidden_size 64 must be a power of two in [256, 2048]");

Deno.test("auto falls back to the CPU when the CUDA engine rejects the model's shape, and says why in one line", () => {
  const note = cpuFallbackNote("auto", "cuda", SHAPE);
  assert(note !== null);
  assert(note.includes("hidden_size 64 must be a power of two"), note);
  assert(note.endsWith("running on the CPU"), note);
  assert(!note.includes("\n"), note);
});

Deno.test("auto falls back on an unsupported or missing device too", () => {
  const sm = new MkError("unsupported-device", "NVIDIA A100 is sm_80; the megakernel needs sm_90 (Hopper)");
  assert(cpuFallbackNote("auto", "cuda", sm)?.includes("sm_80"));
  const none = new MkError("no-device", "no CUDA GPU: cudaGetDeviceCount failed");
  assert(cpuFallbackNote("auto", "cuda", none) !== null);
});

Deno.test("a multi-line native message becomes one line in the note", () => {
  const note = cpuFallbackNote("auto", "cuda", new MkError("invalid", "program has 200 queues\nbut 132 SMs"));
  assertEquals(
    note,
    "the CUDA engine cannot run this model here (program has 200 queues but 132 SMs); running on the CPU",
  );
});

Deno.test("--device cuda never falls back: the CUDA error surfaces", () => {
  assertEquals(cpuFallbackNote("cuda", "cuda", SHAPE), null);
});

Deno.test("no fallback when the CPU was the engine that failed", () => {
  assertEquals(cpuFallbackNote("auto", "cpu", SHAPE), null);
  assertEquals(cpuFallbackNote("cpu", "cpu", SHAPE), null);
});

Deno.test("no fallback for failures the CPU cannot fix (weights, I/O, memory, CUDA faults) or foreign errors", () => {
  for (const code of ["weights", "io", "oom", "cuda", "timeout", "internal", "context"]) {
    assertEquals(cpuFallbackNote("auto", "cuda", new MkError(code, "x")), null, code);
  }
  assertEquals(cpuFallbackNote("auto", "cuda", new Error("CUDA engine: hidden_size 64")), null);
  assertEquals(cpuFallbackNote("auto", "cuda", undefined), null);
});
