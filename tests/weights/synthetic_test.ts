import { deepStrictEqual, equal, notDeepStrictEqual, ok } from "node:assert/strict";
import { join } from "node:path";
import { loadModelFolder } from "../../weights/model_files.ts";
import { llama3TokenizerDir, materializeSynthetic, mkchatCacheDir } from "../../weights/synthetic.ts";
import type { TensorEntry } from "../../weights/safetensors.ts";
import { rejectsWith } from "./_fixtures.ts";

async function tempCache(): Promise<{ dir: string } & AsyncDisposable> {
  const dir = await Deno.makeTempDir({ prefix: "mkchat-synth-" });
  return { dir, [Symbol.asyncDispose]: () => Deno.remove(dir, { recursive: true }) };
}

function bf16ToFloat(bits: number): number {
  const f = new Float32Array(1);
  new Uint32Array(f.buffer)[0] = bits << 16;
  return f[0];
}

/** The first `limit` values (default all) of a bf16 tensor, as float32. */
async function tensorValues(t: TensorEntry, limit = Infinity): Promise<Float32Array> {
  using f = await Deno.open(t.path);
  await f.seek(t.offset, Deno.SeekMode.Start);
  const buf = new Uint8Array(Math.min(t.nbytes, limit * 2));
  for (let done = 0; done < buf.length;) done += (await f.read(buf.subarray(done)))!;
  const halves = new Uint16Array(buf.buffer);
  const bits = new Uint32Array(halves.length);
  for (let i = 0; i < halves.length; i++) bits[i] = halves[i] << 16; // bf16 is the top half of a float32
  return new Float32Array(bits.buffer);
}

function meanStd(xs: ArrayLike<number>): [number, number] {
  let sum = 0;
  for (let i = 0; i < xs.length; i++) sum += xs[i];
  const mean = sum / xs.length;
  let sq = 0;
  for (let i = 0; i < xs.length; i++) sq += (xs[i] - mean) ** 2;
  return [mean, Math.sqrt(sq / xs.length)];
}

Deno.test("materializeSynthetic() is deterministic for a seed and differs across seeds", async () => {
  await using a = await tempCache();
  await using b = await tempCache();
  const read = async (dir: string) => await Deno.readFile(join(dir, "model.safetensors"));
  const first = await read(await materializeSynthetic("tiny", 3, a.dir));
  const again = await read(await materializeSynthetic("tiny", 3, b.dir));
  const other = await read(await materializeSynthetic("tiny", 4, a.dir));
  equal(first.length, again.length);
  ok(first.every((x, i) => x === again[i]), "same seed, same bytes");
  equal(first.length, other.length);
  ok(first.some((x, i) => x !== other[i]), "another seed, other bytes");
  const entries = await Array.fromAsync(Deno.readDir(join(a.dir, "synthetic")), (e) => e.name);
  deepStrictEqual(entries.sort(), ["tiny@3", "tiny@4"], "no temporary folder left behind");
});

Deno.test("materializeSynthetic() makes a folder that loadModelFolder accepts, with the Llama-3 files", async () => {
  await using c = await tempCache();
  const dir = await materializeSynthetic("tiny", 0, c.dir);
  equal(dir, join(c.dir, "synthetic", "tiny@0"));
  const m = await loadModelFolder(dir);
  deepStrictEqual(
    [m.config.vocabSize, m.config.dim, m.config.hiddenDim, m.config.nLayers, m.config.nHeads, m.config.nKvHeads],
    [128256, 64, 256, 2, 4, 2],
  );
  deepStrictEqual([m.config.headDim, m.config.ropeType, m.config.ropeFactor, m.config.tieEmbeddings], [
    16,
    1,
    32,
    true,
  ]);
  equal(m.tensors.length, 1 + 2 * 9 + 1);
  ok(m.tensors.every((t) => t.dtype === "BF16"));
  deepStrictEqual(m.generationConfig, {
    bos_token_id: 128000,
    do_sample: true,
    eos_token_id: [128001, 128008, 128009],
    temperature: 0.6,
    top_p: 0.9,
    transformers_version: "4.45.0",
  });
  const config = JSON.parse(await Deno.readTextFile(join(dir, "config.json")));
  deepStrictEqual([config.architectures, config.model_type, config.torch_dtype], [
    ["LlamaForCausalLM"],
    "llama",
    "bfloat16",
  ]);
  const header = await Deno.readFile(join(dir, "model.safetensors"));
  const len = Number(new DataView(header.buffer).getBigUint64(0, true));
  deepStrictEqual(JSON.parse(new TextDecoder().decode(header.subarray(8, 8 + len))).__metadata__, { format: "pt" });
  const tok = await llama3TokenizerDir();
  for (const name of ["tokenizer.json", "tokenizer_config.json"]) {
    deepStrictEqual(await Deno.readFile(join(dir, name)), await Deno.readFile(join(tok, name)), `${name} copied as is`);
  }
});

Deno.test("materializeSynthetic() values have the intended mean and std", async () => {
  await using c = await tempCache();
  const m = await loadModelFolder(await materializeSynthetic("tiny", 11, c.dir));
  const embed = await tensorValues(m.tensors[0]);
  const [mean, std] = meanStd(embed);
  ok(Math.abs(mean) < 2e-4, `embedding mean ${mean}`);
  ok(Math.abs(std - 0.02) < 2e-4, `embedding std ${std}`);
  ok(embed.every((x) => Math.abs(x) <= 0.02 * Math.sqrt(3) * 1.004), "uniform: bounded by std·√3 (plus bf16 rounding)");
  ok(embed.some((x) => Math.abs(x) > 0.02 * Math.sqrt(3) * 0.99), "and it reaches that bound");
  const norms = (await Promise.all(m.tensors.filter((t) => t.shape.length === 1).map((t) => tensorValues(t))))
    .flatMap((a) => Array.from(a));
  equal(norms.length, 5 * 64);
  const [nMean, nStd] = meanStd(norms);
  ok(Math.abs(nMean - 1) < 0.02, `norm mean ${nMean}`);
  ok(Math.abs(nStd - 0.1) < 0.015, `norm std ${nStd}`);
  const down = await tensorValues(m.tensors.find((t) => t.name.endsWith("down_proj.weight"))!);
  ok(Math.abs(meanStd(down)[1] - 0.02) < 5e-4);
});

// An independent implementation of the generator as the module header documents it (BigInt arithmetic, no shared
// code), checked against the file: the documentation is what a Python script would follow.
function documentedValues(seed: number, name: string, n: number, center: number, half: number): number[] {
  const M = 0xffffffffn;
  const fmix = (h: bigint) => {
    h ^= h >> 16n;
    h = (h * 0x85ebca6bn) & M;
    h ^= h >> 13n;
    h = (h * 0xc2b2ae35n) & M;
    return h ^ (h >> 16n);
  };
  let h = 0x811c9dc5n;
  for (const byte of new TextEncoder().encode(name)) h = ((h ^ BigInt(byte)) * 0x01000193n) & M;
  let state = fmix(h ^ fmix((BigInt(seed) + 0x9e3779b9n) & M));
  const out: number[] = [];
  for (let k = 0; k < n; k++) {
    state = (state + 0x6d2b79f5n) & M;
    let t = state;
    t = ((t ^ (t >> 15n)) * (t | 1n)) & M;
    t ^= (t + ((t ^ (t >> 7n)) * (t | 61n))) & M;
    const r = Number(t ^ (t >> 14n));
    const bits = new Uint32Array(new Float32Array([center + ((r + 0.5) * 2 ** -31 - 1) * half]).buffer)[0];
    out.push(bf16ToFloat(((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff));
  }
  return out;
}

Deno.test("materializeSynthetic() follows the generator documented in its header", async () => {
  await using c = await tempCache();
  const m = await loadModelFolder(await materializeSynthetic("tiny", 5, c.dir));
  for (const t of [m.tensors[0], m.tensors[1], m.tensors[3]]) {
    const isNorm = t.shape.length === 1;
    const want = documentedValues(5, t.name, 64, isNorm ? 1 : 0, (isNorm ? 0.1 : 0.02) * Math.sqrt(3));
    deepStrictEqual(Array.from(await tensorValues(t, 64)), want, t.name);
  }
  notDeepStrictEqual(documentedValues(6, m.tensors[0].name, 8, 0, 1), documentedValues(5, m.tensors[0].name, 8, 0, 1));
});

Deno.test("materializeSynthetic() reuses the folder and survives concurrent callers", async () => {
  await using c = await tempCache();
  const [x, y] = await Promise.all([materializeSynthetic("tiny", 9, c.dir), materializeSynthetic("tiny", 9, c.dir)]);
  equal(x, y);
  const mtime = (await Deno.stat(join(x, "model.safetensors"))).mtime;
  equal(await materializeSynthetic("tiny", 9, c.dir), x);
  deepStrictEqual((await Deno.stat(join(x, "model.safetensors"))).mtime, mtime, "not written twice");
  const entries = await Array.fromAsync(Deno.readDir(join(c.dir, "synthetic")), (e) => e.name);
  deepStrictEqual(entries, ["tiny@9"]);
  await loadModelFolder(x);
});

Deno.test("materializeSynthetic() rejects unknown shapes and seeds, and reports an unwritable cache", async () => {
  await using c = await tempCache();
  await rejectsWith(() => materializeSynthetic("huge", 0, c.dir), "model", /unknown synthetic shape "huge"/);
  await rejectsWith(() => materializeSynthetic("tiny", -2, c.dir), "model", /bad synthetic seed -2/);
  await Deno.writeTextFile(join(c.dir, "synthetic"), "a file where the folder should be");
  await rejectsWith(() => materializeSynthetic("tiny", 0, c.dir), "disk", /cannot write synthetic model/);
});

Deno.test("mkchatCacheDir() prefers MKCHAT_CACHE, then XDG_CACHE_HOME", () => {
  const saved = ["MKCHAT_CACHE", "XDG_CACHE_HOME"].map((n) => Deno.env.get(n));
  try {
    Deno.env.set("MKCHAT_CACHE", "/tmp/a");
    Deno.env.set("XDG_CACHE_HOME", "/tmp/x");
    equal(mkchatCacheDir(), "/tmp/a");
    Deno.env.delete("MKCHAT_CACHE");
    equal(mkchatCacheDir(), "/tmp/x/mkchat");
    Deno.env.delete("XDG_CACHE_HOME");
    ok(mkchatCacheDir().endsWith("/.cache/mkchat"));
  } finally {
    ["MKCHAT_CACHE", "XDG_CACHE_HOME"].forEach((n, i) =>
      saved[i] === undefined ? Deno.env.delete(n) : Deno.env.set(n, saved[i]!)
    );
  }
});
