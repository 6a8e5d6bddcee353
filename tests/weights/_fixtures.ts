/**
 * Small model folders for the weights tests: a Llama config of a chosen (tiny) shape, placeholder tokenizer files
 * (loadModelFolder only checks they are there and tokenizer_config.json is a JSON object) and safetensors files
 * written with the real header encoder, optionally sharded or broken on purpose.
 *
 * @module
 */

import { join } from "node:path";
import { parseLlamaConfig } from "../../weights/config.ts";
import { expectedTensors } from "../../weights/model_files.ts";
import { encodeSafetensorsHeader, type TensorSpec } from "../../weights/safetensors.ts";

/** A config.json of a very small Llama (vocab 32, hidden 8, 2 layers) with `over` merged in. */
export function smallConfigJson(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    architectures: ["LlamaForCausalLM"],
    model_type: "llama",
    vocab_size: 32,
    hidden_size: 8,
    intermediate_size: 16,
    num_hidden_layers: 2,
    num_attention_heads: 4,
    num_key_value_heads: 2,
    max_position_embeddings: 64,
    rms_norm_eps: 1e-5,
    rope_theta: 500000,
    rope_scaling: null,
    tie_word_embeddings: true,
    bos_token_id: 1,
    eos_token_id: [2, 3],
    ...over,
  };
}

/** The tensor specs of `configJson` (bf16), with lm_head when `withLmHead`. */
export function specsFor(configJson: Record<string, unknown>, withLmHead = false): TensorSpec[] {
  const config = parseLlamaConfig(configJson, "config.json");
  return [...expectedTensors(config, withLmHead)].map(([name, shape]) => ({ name, dtype: "BF16", shape }));
}

/** The bytes of a safetensors file holding `specs`, data filled with a byte pattern derived from `fill`. */
export function safetensorsBytes(specs: TensorSpec[], fill = 1): Uint8Array {
  const { prefix, sizes } = encodeSafetensorsHeader(specs, { format: "pt" });
  const total = sizes.reduce((a, b) => a + b, 0);
  const out = new Uint8Array(prefix.length + total);
  out.set(prefix);
  for (let i = 0; i < total; i++) out[prefix.length + i] = (i * 31 + fill) & 0xff;
  return out;
}

/** A raw safetensors file from a header object written as is (for malformed headers). */
export function rawSafetensors(header: unknown, dataBytes: number, claimLen?: bigint): Uint8Array {
  const json = new TextEncoder().encode(JSON.stringify(header));
  const out = new Uint8Array(8 + json.length + dataBytes);
  new DataView(out.buffer).setBigUint64(0, claimLen ?? BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** The files of a small model folder: name → contents; `sharded` splits the weights into an index and 2 shards. */
export function smallModelFiles(
  opts: { config?: Record<string, unknown>; sharded?: boolean; generationConfig?: boolean; withLmHead?: boolean } = {},
): Record<string, Uint8Array | string> {
  const config = opts.config ?? smallConfigJson();
  const files: Record<string, Uint8Array | string> = {
    "config.json": JSON.stringify(config),
    "tokenizer.json": JSON.stringify({ version: "1.0", model: { type: "BPE" } }),
    "tokenizer_config.json": JSON.stringify({ bos_token: "<s>", chat_template: "{{ messages }}" }),
  };
  if (opts.generationConfig ?? true) files["generation_config.json"] = JSON.stringify({ eos_token_id: [2, 3] });
  const specs = specsFor(config, opts.withLmHead ?? false);
  if (!opts.sharded) {
    files["model.safetensors"] = safetensorsBytes(specs);
    return files;
  }
  const half = Math.ceil(specs.length / 2);
  const shards = [specs.slice(0, half), specs.slice(half)];
  const weightMap: Record<string, string> = {};
  shards.forEach((part, i) => {
    const name = `model-0000${i + 1}-of-00002.safetensors`;
    files[name] = safetensorsBytes(part, i + 7);
    for (const s of part) weightMap[s.name] = name;
  });
  files["model.safetensors.index.json"] = JSON.stringify({ metadata: {}, weight_map: weightMap });
  return files;
}

/** Writes `files` into a new temporary folder and returns it. */
export async function writeFolder(files: Record<string, Uint8Array | string>): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "mkchat-weights-" });
  for (const [name, v] of Object.entries(files)) {
    if (typeof v === "string") await Deno.writeTextFile(join(dir, name), v);
    else await Deno.writeFile(join(dir, name), v);
  }
  return dir;
}

/** Runs `fn` with an MkError expected: asserts its code and that the message matches `re` and is one line. */
export async function rejectsWith(fn: () => Promise<unknown> | unknown, code: string, re: RegExp): Promise<Error> {
  const { MkError } = await import("../../weights/errors.ts");
  try {
    await fn();
  } catch (err) {
    if (!(err instanceof MkError)) throw new Error(`expected MkError(${code}), got ${err}`);
    if (err.code !== code) throw new Error(`expected code ${code}, got ${err.code}: ${err.message}`);
    if (!re.test(err.message)) throw new Error(`message ${JSON.stringify(err.message)} does not match ${re}`);
    if (err.message.includes("\n")) throw new Error(`message is not one line: ${JSON.stringify(err.message)}`);
    return err;
  }
  throw new Error(`expected MkError(${code}) matching ${re}, but nothing was thrown`);
}
