/**
 * Engine on the CPU reference engine with the synthetic tiny model: streaming without blocking the event loop,
 * cancel latency, one call at a time, finish reasons, positions, logprobs, and device selection.
 */

import { assert, assertEquals, assertRejects } from "./_assert.ts";
import { Engine } from "../../engine/engine.ts";
import { MkError } from "../../engine/errors.ts";
import { defaultSampling, type SamplingParams } from "../../engine/sampling.ts";
import { smallModel, tinyModel } from "./_model.ts";
import { cancelAfter, cudaUsable, drain } from "./_generate.ts";

const files = await tinyModel();
const PROMPT = [128000, 9906, 1917, 11, 1268, 527, 499, 30]; // <|begin_of_text|>Hello world, how are you?

function greedy(maxTokens: number, extra: Partial<SamplingParams> = {}): SamplingParams {
  return { ...defaultSampling(null), temperature: 0, seed: 1, maxTokens, ...extra };
}

/** Runs a generation to its end: the tokens it yielded and its result. */

function argmax(xs: Float32Array): number {
  let best = 0;
  for (let i = 1; i < xs.length; i++) if (xs[i] > xs[best]) best = i;
  return best;
}

Deno.test("Engine.load() runs on the CPU and starts at position 0", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 128, threads: 2 });
  assertEquals(engine.device, "cpu");
  assertEquals(engine.ctx, 128);
  assertEquals(engine.position, 0);
  assertEquals(engine.note, null);
  assert(engine.deviceName.length > 0);
  assert(engine.loadMs > 0);
});

Deno.test({
  name: "Engine.load() with --device cuda and no GPU throws MkError no-device with the reason",
  ignore: cudaUsable,
  async fn() {
    const err = await assertRejects(() => Engine.load(files, { device: "cuda", ctx: 64 }), MkError);
    assertEquals(err.code, "no-device");
    assert(err.message.startsWith("--device cuda: no usable GPU: "), err.message);
    assert(err.message.length > "--device cuda: no usable GPU: ".length, "the reason is missing");
  },
});

// With no usable GPU, or with one (the megakernel refuses tiny's hidden size 64): either way tiny runs on the CPU.
Deno.test("Engine.load() with device auto falls back to the CPU with a note, GPU or not", async () => {
  using engine = await Engine.load(files, { device: "auto", ctx: 64 });
  assertEquals(engine.device, "cpu");
  const note = String(engine.note);
  assert(note.includes("running on the CPU"), note);
  if (cudaUsable) assert(note.includes("hidden_size 64"), note);
});

Deno.test({
  name: "Engine.load() with device cuda on a GPU surfaces the megakernel's refusal of tiny's shape",
  ignore: !cudaUsable,
  async fn() {
    const err = await assertRejects(() => Engine.load(files, { device: "cuda", ctx: 64 }), MkError);
    assertEquals(err.code, "invalid");
    assert(err.message.includes("hidden_size 64"), err.message);
  },
});

Deno.test("Engine.load() refuses a ctx beyond max_position_embeddings", async () => {
  const err = await assertRejects(
    () => Engine.load(files, { device: "cpu", ctx: files.config.maxPosition + 1 }),
    MkError,
  );
  assert(err.message.startsWith("--ctx must be"), err.message);
});

Deno.test("Engine.generate() streams tokens while the event loop keeps running", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 512 });
  let ticks = 0;
  const timer = setInterval(() => ticks++, 1);
  try {
    const ticksAtToken: number[] = [];
    const gen = engine.generate(PROMPT, greedy(200));
    let next;
    const t0 = performance.now();
    while (!(next = await gen.next()).done) ticksAtToken.push(ticks);
    const ms = performance.now() - t0;
    const result = next.value;
    assertEquals(result.tokens.length, ticksAtToken.length);
    assert(result.finish === "length" || result.finish === "stop", result.finish);
    // The interval fired throughout: at least a third of the 1 ms slots of the generation's wall time.
    assert(ticks >= Math.min(20, ms / 3), `${ticks} timer ticks in ${ms.toFixed(0)} ms`);
    // Tokens arrived over many event-loop turns, not all at the end.
    assert(new Set(ticksAtToken).size > 3, `tokens arrived at ticks ${[...new Set(ticksAtToken)]}`);
  } finally {
    clearInterval(timer);
  }
});

Deno.test("Engine.generate() reports positions, timings and finish reasons", async (t) => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 64 });
  await t.step("length: maxTokens tokens, the last one not in the cache", async () => {
    const { seen, result } = await drain(engine.generate(PROMPT, greedy(5)));
    assertEquals(result.finish, "length");
    assertEquals(seen.map((s) => s.id), result.tokens);
    assertEquals(result.tokens.length, 5);
    assertEquals(result.nPrefill, PROMPT.length);
    assertEquals(engine.position, PROMPT.length + 4);
    assertEquals(result.stepUs.length, 4);
    assert(result.prefillUs > 0 && result.decodeUs > 0);
    for (let i = 1; i < seen.length; i++) assert(seen[i].tUs >= seen[i - 1].tUs);
  });
  await t.step("continuing feeds the last token: greedy continuation equals one long generation", async () => {
    await engine.truncate(0);
    const long = (await drain(engine.generate(PROMPT, greedy(8)))).result.tokens;
    await engine.truncate(0);
    const first = (await drain(engine.generate(PROMPT, greedy(4)))).result.tokens;
    const second = (await drain(engine.generate([first[3]], greedy(4)))).result.tokens;
    assertEquals([...first, ...second.slice(0, 4)].slice(0, 8), long);
  });
  await t.step("stop: a stop id ends the reply and is reported last", async () => {
    await engine.truncate(0);
    const tokens = (await drain(engine.generate(PROMPT, greedy(6)))).result.tokens;
    const stop = tokens[3];
    const cut = tokens.indexOf(stop);
    await engine.truncate(0);
    const { result } = await drain(engine.generate(PROMPT, greedy(6, { stopIds: [stop] })));
    assertEquals(result.finish, "stop");
    assertEquals(result.tokens, tokens.slice(0, cut + 1));
  });
  await t.step("context: a full KV cache ends the reply", async () => {
    await engine.truncate(0);
    const { result } = await drain(engine.generate(PROMPT, greedy(1000)));
    assertEquals(result.finish, "context");
    assertEquals(engine.position, 64);
    assertEquals(result.tokens.length, 64 - PROMPT.length + 1);
  });
  await t.step("a prompt that does not fit throws MkError context and appends nothing", async () => {
    await engine.truncate(60);
    const err = await assertRejects(() => drain(engine.generate(PROMPT, greedy(4))), MkError);
    assertEquals(err.code, "context");
    assertEquals(engine.position, 60);
  });
});

Deno.test("Engine.generate() greedy's first token is the argmax of prefill's logits", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 64 });
  const logits = await engine.prefill(PROMPT, true);
  assert(logits !== null && logits.length === files.config.vocabSize);
  assertEquals(engine.position, PROMPT.length);
  await engine.truncate(PROMPT.length - 1);
  const { result } = await drain(engine.generate(PROMPT.slice(-1), greedy(1)));
  assertEquals(result.tokens, [argmax(logits)]);
});

Deno.test("Engine.generate() with logprobs reports the top K of each token", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 64 });
  const { seen } = await drain(engine.generate(PROMPT, greedy(4, { logprobs: 3 })));
  for (const tok of seen) {
    assertEquals(tok.top?.length, 3);
    assertEquals(tok.top![0][0], tok.id); // greedy picks the most likely token
    assert(tok.logprob! <= 0 && Math.abs(tok.logprob! - tok.top![0][1]) < 1e-5);
    assert(tok.top![0][1] >= tok.top![1][1] && tok.top![1][1] >= tok.top![2][1]);
  }
});

Deno.test("Engine.generate() with the same seed samples the same tokens", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 64 });
  const sp = { ...greedy(10), temperature: 1, topP: 0.95, topK: 50, seed: 12345n };
  const a = (await drain(engine.generate(PROMPT, sp))).result.tokens;
  await engine.truncate(0);
  const b = (await drain(engine.generate(PROMPT, sp))).result.tokens;
  assertEquals(a, b);
});

Deno.test("Engine.cancel() stops a running generation within 100 ms", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 8192 });
  const { result, ms } = await cancelAfter(engine, engine.generate(PROMPT, greedy(100000)), 5);
  assertEquals(result.finish, "interrupted");
  assert(ms < 100, `stopped ${ms.toFixed(1)} ms after cancel()`);
  // The engine is usable afterwards, at a consistent position.
  assertEquals(engine.position, PROMPT.length + result.tokens.length - 1);
  const after = await drain(engine.generate([result.tokens.at(-1)!], greedy(2)));
  assertEquals(after.result.tokens.length, 2);
});

Deno.test("Engine.generate() twice at once throws MkError busy for the second", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 4096 });
  const first = engine.generate(PROMPT, greedy(100000));
  await first.next();
  const err = await assertRejects(() => engine.generate([1], greedy(2)).next(), MkError);
  assertEquals(err.code, "busy");
  assert(err.message.includes("already being generated"), err.message);
  engine.cancel();
  const { result } = await drain(first);
  assertEquals(result.finish, "interrupted");
});

Deno.test("Engine.generate() stopped early by break cancels the native call", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 4096 });
  let n = 0;
  const t0 = performance.now();
  for await (const _ of engine.generate(PROMPT, greedy(100000))) {
    if (++n < 3) continue;
    await new Promise((r) => setTimeout(r, 100)); // a slow consumer: the native loop runs tokens ahead meanwhile
    break;
  }
  assert(performance.now() - t0 < 5000);
  assert(!engine.generating);
  assert(engine.position >= PROMPT.length + 2);
  // ...but the cache keeps only tokens the consumer saw: the prompt and the 3 delivered (the last maybe not fed yet)
  assert(engine.position <= PROMPT.length + 3, `position ${engine.position}`);
  // prefill and truncate queue behind nothing now
  await engine.truncate(0);
  assertEquals(engine.position, 0);
});

Deno.test("Engine.prefill() and truncate() queued behind a generation wait for it", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 256 });
  const gen = engine.generate(PROMPT, greedy(20));
  await gen.next();
  const truncated = engine.truncate(0); // queued: runs only after the generation settled
  const { result } = await drain(gen);
  assertEquals(result.tokens.length, 20);
  await truncated;
  assertEquals(engine.position, 0);
});

Deno.test("Engine.measureReadBandwidthGBs() measures a positive bandwidth", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 64 });
  const gbps = await engine.measureReadBandwidthGBs();
  assert(gbps > 0.1 && gbps < 100000, `${gbps} GB/s`);
});

Deno.test("Engine.close() frees the engine; later calls throw MkError state", async () => {
  const engine = await Engine.load(files, { device: "cpu", ctx: 64 });
  engine.close();
  engine.close(); // idempotent
  const err = await assertRejects(() => engine.truncate(0), MkError);
  assertEquals(err.code, "state");
});

Deno.test("Engine.load() with cpuMode interpreter installs the scheduler's program and generates", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 64, cpuMode: "interpreter", interleaveSeed: 3 });
  const { result } = await drain(engine.generate(PROMPT, greedy(4)));
  assertEquals(result.tokens.length, 4);
  assertEquals(engine.position, PROMPT.length + 3);
});

Deno.test({
  name: "Engine.load() with device auto picks CUDA where a usable GPU is, and generate/cancel work there",
  ignore: !cudaUsable,
  async fn() {
    // The megakernel needs a power-of-two hidden size >= 256: the "small" synthetic shape is the least it runs.
    using engine = await Engine.load(await smallModel(), { device: "auto", ctx: 4096 });
    assertEquals(engine.device, "cuda");
    assertEquals(engine.note, null);
    const { result } = await drain(engine.generate(PROMPT, greedy(16)));
    assertEquals(result.tokens.length, 16);
    assertEquals(engine.position, PROMPT.length + 15);
    await engine.truncate(0);
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    try {
      const t0 = performance.now();
      const { result, ms } = await cancelAfter(engine, engine.generate(PROMPT, greedy(100000)), 50);
      assertEquals(result.finish, "interrupted");
      assert(ms < 100, `stopped ${ms.toFixed(1)} ms after cancel()`);
      const total = performance.now() - t0;
      assert(ticks >= Math.min(20, total / 3 - 2), `${ticks} timer ticks in ${total.toFixed(1)} ms`);
    } finally {
      clearInterval(timer);
    }
  },
});
