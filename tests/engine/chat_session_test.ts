/**
 * ChatSession on the CPU engine with the synthetic tiny model and the Llama-3 chat template: KV reuse across turns,
 * streamed text, cancel keeping the conversation, and context overflow ending the reply rather than throwing.
 */

import { assert, assertEquals } from "./_assert.ts";
import { ChatSession, type ReplyPiece, type ReplyResult } from "../../engine/chat_session.ts";
import { Engine } from "../../engine/engine.ts";
import { defaultSampling, type SamplingParams } from "../../engine/sampling.ts";
import { ChatTokenizer } from "../../engine/tokenizer.ts";
import { tinyModel } from "./_model.ts";

const files = await tinyModel();
const tokenizer = await ChatTokenizer.load(files);

/** A stop id the greedy replies below never produce (the last reserved special token): replies run on. */
const NO_STOP = files.config.vocabSize - 1;

function greedy(maxTokens: number): SamplingParams {
  return { ...defaultSampling(files.generationConfig), temperature: 0, seed: 1, maxTokens, stopIds: [] };
}

async function collect(gen: AsyncGenerator<ReplyPiece, ReplyResult>) {
  const pieces: ReplyPiece[] = [];
  while (true) {
    const next = await gen.next();
    if (next.done) return { pieces, result: next.value };
    pieces.push(next.value);
  }
}

Deno.test("ChatSession.reply() streams text pieces that add up to the stored reply", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 512 });
  const chat = new ChatSession(engine, tokenizer, { system: "Be brief." });
  const { pieces, result } = await collect(chat.reply("Hello there!", greedy(12)));
  assertEquals(pieces.length, result.tokens.length);
  assertEquals(pieces.map((p) => p.text).join(""), result.text);
  assertEquals(result.text, tokenizer.decode(result.tokens, { skipSpecial: true }));
  assertEquals(chat.messages.map((m) => m.role), ["system", "user", "assistant"]);
  assertEquals(chat.messages[2].content, result.text);
  assertEquals(result.reusedTokens, 0);
  assertEquals(result.nPrefill, result.promptTokens);
});

Deno.test("ChatSession.reply() prefills only the new turn on turn 2", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 1024 });
  const chat = new ChatSession(engine, tokenizer, { system: "You are terse." });
  const turn1 = (await collect(chat.reply("What is two plus two?", greedy(8)))).result;
  assertEquals(engine.position, turn1.promptTokens + turn1.tokens.length - 1);
  assertEquals(chat.cachedTokens, engine.position);

  const turn2 = (await collect(chat.reply("And three plus three?", greedy(8)))).result;
  // Turn 1's whole prompt came from the cache; only the reply's tail and the new user turn were prefilled.
  assert(turn2.reusedTokens >= turn1.promptTokens, `reused ${turn2.reusedTokens} < ${turn1.promptTokens}`);
  assertEquals(turn2.nPrefill, turn2.promptTokens - turn2.reusedTokens);
  const newTurn = tokenizer.renderChat([{ role: "user", content: "And three plus three?" }], true).length;
  assert(turn2.nPrefill <= newTurn + turn1.tokens.length, `prefilled ${turn2.nPrefill} tokens`);
  assertEquals(chat.messages.length, 5);
});

Deno.test("ChatSession.clear() keeps the system prompt in the cache", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 512 });
  const chat = new ChatSession(engine, tokenizer, { system: "You are a helpful assistant who answers briefly." });
  await collect(chat.reply("First question?", greedy(4)));
  chat.clear();
  assertEquals(chat.messages.length, 1);
  const { result } = await collect(chat.reply("Second question?", greedy(4)));
  const systemOnly = tokenizer.renderChat([{
    role: "system",
    content: "You are a helpful assistant who answers briefly.",
  }], false);
  assert(result.reusedTokens >= systemOnly.length - 5, `reused only ${result.reusedTokens}`);
  assertEquals(chat.messages.map((m) => m.role), ["system", "user", "assistant"]);
});

Deno.test("ChatSession.cancel() ends the reply and keeps the partial turn", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 8192 });
  const chat = new ChatSession(engine, tokenizer);
  let n = 0;
  let text = "";
  const gen = chat.reply("Tell me a very long story.", { ...greedy(100000), stopIds: [NO_STOP] });
  let next;
  while (!(next = await gen.next()).done) {
    text += next.value.text;
    if (++n === 4) chat.cancel();
  }
  assertEquals(next.value.finish, "interrupted");
  assertEquals(next.value.text, text);
  assertEquals(chat.messages.at(-1), { role: "assistant", content: text });
  assertEquals(chat.cachedTokens, engine.position);
  // The conversation goes on from the cache.
  const { result } = await collect(chat.reply("Go on.", greedy(3)));
  assert(result.reusedTokens > 0);
});

Deno.test("ChatSession.reply() ends with finish context and a message when the prompt does not fit", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 48 });
  const chat = new ChatSession(engine, tokenizer);
  const { pieces, result } = await collect(chat.reply("word ".repeat(100), greedy(4)));
  assertEquals(pieces, []);
  assertEquals(result.finish, "context");
  assert(result.message?.includes("/clear"), String(result.message));
  assertEquals(chat.messages, []); // the turn that does not fit is not kept
});

Deno.test("ChatSession.reply() ends with finish context when the reply reaches the context end", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 40 });
  const chat = new ChatSession(engine, tokenizer);
  const { result } = await collect(chat.reply("Hi", { ...greedy(1000), stopIds: [NO_STOP] }));
  assertEquals(result.finish, "context");
  assertEquals(engine.position, 40);
  assert(result.message?.includes("end of the context"), String(result.message));
});

Deno.test("ChatSession.reply() stopped early by break leaves the engine free and consistent", async () => {
  using engine = await Engine.load(files, { device: "cpu", ctx: 4096 });
  const chat = new ChatSession(engine, tokenizer);
  let n = 0;
  for await (const _ of chat.reply("Count to a thousand.", { ...greedy(100000), stopIds: [NO_STOP] })) {
    if (++n === 3) break;
  }
  assert(!engine.generating);
  assertEquals(chat.cachedTokens, engine.position);
});
