/**
 * A model folder → everything the engine and the tokenizer need, validated up front.
 *
 * A folder holds config.json, tokenizer.json and tokenizer_config.json (required), generation_config.json
 * (optional), and the weights as model.safetensors or as model.safetensors.index.json plus the shards its
 * weight_map names. Every tensor of a Llama model must be there with the shape config.json implies
 * (expectedTensors below); anything else is rejected by name, except buffers that old transformers versions saved
 * with the weights and that the model does not use (IGNORED_TENSORS).
 *
 * Tied embeddings, precisely: the LM head is the embedding matrix when config.json says tie_word_embeddings (any
 * stored lm_head.weight is then dropped, as transformers' tie_weights() overwrites it), or when no lm_head.weight
 * is stored at all (Llama-3.2 checkpoints store none; an untied config without an lm_head would otherwise leave
 * transformers with a random head). The returned config's tieEmbeddings says which, and `tensors` holds
 * lm_head.weight exactly when it is false.
 *
 * @module
 */

import { join } from "node:path";
import { type LlamaConfig, parseLlamaConfig } from "./config.ts";
import { MkError, reasonOf } from "./errors.ts";
import { readSafetensors, type TensorEntry } from "./safetensors.ts";

/** A validated model folder. */
export interface ModelFiles {
  /** The folder (for a hub model: the snapshot folder in the HF cache). */
  dir: string;
  /** The name shown to users: the hub repo, the synthetic ref, or the folder. */
  id: string;
  /** The parsed config, tieEmbeddings resolved as described in this module's header. */
  config: LlamaConfig;
  /** Every Llama tensor in canonical order (embedding, layers 0.., final norm, lm_head when untied). */
  tensors: TensorEntry[];
  /** Path of tokenizer.json. */
  tokenizerJsonPath: string;
  /** tokenizer_config.json (chat_template, bos/eos tokens, ...). */
  tokenizerConfig: Record<string, unknown>;
  /** generation_config.json, or null when the folder has none. */
  generationConfig: Record<string, unknown> | null;
}

/**
 * Tensors that may be stored but are not weights: the rotary inv_freq buffers that transformers < 4.31 saved in
 * Llama checkpoints (several Llama-2 conversions on the Hub still carry them). They are derived from the config.
 */
export const IGNORED_TENSORS: readonly RegExp[] = [/^model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$/];

/** Name → shape of every tensor a Llama model with `config` has (lm_head only when `withLmHead`), in order. */
export function expectedTensors(config: LlamaConfig, withLmHead: boolean): Map<string, number[]> {
  const { vocabSize: vocab, dim, hiddenDim: hidden, nHeads, nKvHeads, headDim: hd } = config;
  const m = new Map<string, number[]>();
  m.set("model.embed_tokens.weight", [vocab, dim]);
  for (let i = 0; i < config.nLayers; i++) {
    const p = `model.layers.${i}.`;
    m.set(p + "input_layernorm.weight", [dim]);
    m.set(p + "self_attn.q_proj.weight", [nHeads * hd, dim]);
    m.set(p + "self_attn.k_proj.weight", [nKvHeads * hd, dim]);
    m.set(p + "self_attn.v_proj.weight", [nKvHeads * hd, dim]);
    m.set(p + "self_attn.o_proj.weight", [dim, nHeads * hd]);
    m.set(p + "post_attention_layernorm.weight", [dim]);
    m.set(p + "mlp.gate_proj.weight", [hidden, dim]);
    m.set(p + "mlp.up_proj.weight", [hidden, dim]);
    m.set(p + "mlp.down_proj.weight", [dim, hidden]);
  }
  m.set("model.norm.weight", [dim]);
  if (withLmHead) m.set("lm_head.weight", [vocab, dim]);
  return m;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return false;
    throw new MkError("model", `cannot access ${path}: ${reasonOf(err)}`);
  }
}

async function readJsonObject(path: string, code: string, what: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new MkError(code, `missing ${what}: ${path}`);
    throw new MkError(code, `cannot read ${path}: ${reasonOf(err)}`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new MkError(code, `${path}: not valid JSON (${reasonOf(err)})`);
  }
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new MkError(code, `${path}: not a JSON object`);
  }
  return json as Record<string, unknown>;
}

/** Reads the tensors of a sharded checkpoint: the index's weight_map, each shard once, every entry where it says. */
async function readSharded(dir: string, indexPath: string): Promise<TensorEntry[]> {
  const index = await readJsonObject(indexPath, "weights", "weights index");
  const map = index.weight_map;
  if (typeof map !== "object" || map === null || Array.isArray(map)) {
    throw new MkError("weights", `${indexPath}: no weight_map object`);
  }
  const shardOf = new Map<string, string>();
  for (const [name, shard] of Object.entries(map)) {
    // Shards are plain file names beside the index; refusing anything else keeps a hostile index inside the folder.
    if (typeof shard !== "string" || !/^[\w.-]+\.safetensors$/.test(shard)) {
      throw new MkError("weights", `${indexPath}: weight_map entry of ${name} is not a .safetensors file name`);
    }
    shardOf.set(name, shard);
  }
  const all: TensorEntry[] = [];
  const seen = new Map<string, string>();
  for (const shard of new Set(shardOf.values())) {
    const path = join(dir, shard);
    if (!(await exists(path))) throw new MkError("weights", `missing shard ${shard} named by ${indexPath}`);
    for (const t of await readSafetensors(path)) {
      const other = seen.get(t.name);
      if (other) throw new MkError("weights", `tensor ${t.name} is stored twice: in ${other} and in ${shard}`);
      seen.set(t.name, shard);
      all.push(t);
    }
  }
  for (const [name, shard] of shardOf) {
    const where = seen.get(name);
    if (where !== shard) {
      throw new MkError(
        "weights",
        `${indexPath}: weight_map puts ${name} in ${shard}, but ${where ? `it is in ${where}` : "no shard holds it"}`,
      );
    }
  }
  return all;
}

async function readWeights(dir: string): Promise<TensorEntry[]> {
  const single = join(dir, "model.safetensors");
  const index = join(dir, "model.safetensors.index.json");
  if (await exists(single)) return await readSafetensors(single);
  if (await exists(index)) return await readSharded(dir, index);
  throw new MkError("weights", `no weights in ${dir}: expected model.safetensors or model.safetensors.index.json`);
}

/** Checks `stored` against the tensors `config` implies; returns them in canonical order and the tie decision. */
export function checkTensors(
  config: LlamaConfig,
  stored: TensorEntry[],
  where: string,
): { tensors: TensorEntry[]; tied: boolean } {
  const byName = new Map(stored.map((t) => [t.name, t]));
  const tied = config.tieEmbeddings || !byName.has("lm_head.weight");
  // Shape-check a stored lm_head even when tied: a wrong one means a config/weights mismatch worth reporting.
  const expected = expectedTensors(config, byName.has("lm_head.weight"));
  for (const t of stored) {
    const shape = expected.get(t.name);
    if (shape === undefined) {
      if (IGNORED_TENSORS.some((re) => re.test(t.name))) continue;
      throw new MkError(
        "weights",
        `${t.path}: unexpected tensor ${t.name} (not part of a Llama model with this config)`,
      );
    }
    if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
      throw new MkError(
        "weights",
        `${t.path}: tensor ${t.name} has shape [${t.shape.join(", ")}] but config.json implies [${shape.join(", ")}]`,
      );
    }
  }
  const tensors: TensorEntry[] = [];
  for (const name of expected.keys()) {
    if (name === "lm_head.weight" && tied) continue;
    const t = byName.get(name);
    if (!t) throw new MkError("weights", `missing tensor ${name} in ${where}`);
    tensors.push(t);
  }
  return { tensors, tied };
}

/**
 * Loads and validates the model folder `dir`; `id` is the name shown to users (default: the folder). Throws
 * MkError: "model" for a missing folder, "config" for config.json, "tokenizer" for the tokenizer files, "weights"
 * for the safetensors files and tensors, each naming the file and the tensor or setting.
 */
export async function loadModelFolder(dir: string, id?: string): Promise<ModelFiles> {
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(dir);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) throw new MkError("model", `model folder not found: ${dir}`);
    throw new MkError("model", `cannot access model folder ${dir}: ${reasonOf(err)}`);
  }
  if (!info.isDirectory) throw new MkError("model", `${dir} is not a folder`);
  const configPath = join(dir, "config.json");
  const config = parseLlamaConfig(await readJsonObject(configPath, "config", "config.json"), configPath);
  const tokenizerJsonPath = join(dir, "tokenizer.json");
  if (!(await exists(tokenizerJsonPath))) throw new MkError("tokenizer", `missing tokenizer.json in ${dir}`);
  const tokenizerConfig = await readJsonObject(
    join(dir, "tokenizer_config.json"),
    "tokenizer",
    "tokenizer_config.json",
  );
  const genPath = join(dir, "generation_config.json");
  const generationConfig = (await exists(genPath))
    ? await readJsonObject(genPath, "config", "generation config")
    : null;
  const { tensors, tied } = checkTensors(config, await readWeights(dir), dir);
  return {
    dir,
    id: id ?? dir,
    config: { ...config, tieEmbeddings: tied },
    tensors,
    tokenizerJsonPath,
    tokenizerConfig,
    generationConfig,
  };
}
