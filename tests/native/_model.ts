/**
 * Test helpers for the native engine: writing and reading safetensors, seeded synthetic Llama weights, loading a model
 * folder (config.json + safetensors) into an engine through the C ABI, and an independent float64 Llama forward pass
 * in TypeScript to check the C reference against on small synthetic models.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import {
  cstr,
  type EngineParams,
  lastError,
  MK,
  type ModelConfig,
  native,
  packConfig,
  packEngineParams,
} from "./_ffi.ts";

// ---------------------------------------------------------------------------------------------------------------------
// bf16 and safetensors

const f32 = new Float32Array(1), u32 = new Uint32Array(f32.buffer);

/** float -> bf16 bits, round to nearest even (as torch) */
export function toBf16(x: number): number {
  f32[0] = x;
  const u = u32[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function fromBf16(h: number): number {
  u32[0] = h << 16;
  return f32[0];
}

export interface TensorEntry {
  name: string;
  dtype: "BF16" | "F16" | "F32";
  shape: number[];
  offset: number; // absolute
  nbytes: number;
}

/** Write a safetensors file; returns its entries with absolute offsets. */
export function writeSafetensors(
  path: string,
  tensors: { name: string; dtype: "BF16" | "F32" | "F16"; shape: number[]; data: Uint8Array }[],
): TensorEntry[] {
  const header: Record<string, unknown> = {};
  let off = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [off, off + t.data.length] };
    off += t.data.length;
  }
  let json = JSON.stringify(header);
  while ((8 + json.length) % 8 !== 0) json += " "; // keep the data 8-aligned, as the Python writer does
  const hbytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + hbytes.length + off);
  new DataView(out.buffer).setBigUint64(0, BigInt(hbytes.length), true);
  out.set(hbytes, 8);
  let p = 8 + hbytes.length;
  const entries: TensorEntry[] = [];
  for (const t of tensors) {
    out.set(t.data, p);
    entries.push({ name: t.name, dtype: t.dtype, shape: t.shape, offset: p, nbytes: t.data.length });
    p += t.data.length;
  }
  Deno.writeFileSync(path, out);
  return entries;
}

export function readSafetensors(path: string): TensorEntry[] {
  const buf = readFileSync(path);
  const n = Number(new DataView(buf.buffer, buf.byteOffset).getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n)));
  const out: TensorEntry[] = [];
  for (const [name, v] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const t = v as { dtype: "BF16" | "F16" | "F32"; shape: number[]; data_offsets: [number, number] };
    out.push({
      name,
      dtype: t.dtype,
      shape: t.shape,
      offset: 8 + n + t.data_offsets[0],
      nbytes: t.data_offsets[1] - t.data_offsets[0],
    });
  }
  return out;
}

/** config.json (HF Llama) -> mk_model_config fields */
export function configFromJson(j: Record<string, unknown>): ModelConfig {
  const num = (k: string, d?: number) => {
    const v = j[k] ?? d;
    if (typeof v !== "number") throw new Error(`config.json: ${k} missing`);
    return v;
  };
  const rs = (j.rope_scaling ?? null) as Record<string, number | string> | null;
  const llama3 = rs !== null && (rs.rope_type ?? rs.type) === "llama3";
  const nHeads = num("num_attention_heads");
  return {
    vocabSize: num("vocab_size"),
    dim: num("hidden_size"),
    hiddenDim: num("intermediate_size"),
    nLayers: num("num_hidden_layers"),
    nHeads,
    nKvHeads: num("num_key_value_heads", nHeads),
    headDim: num("head_dim", num("hidden_size") / nHeads),
    maxPosition: num("max_position_embeddings"),
    rmsEps: num("rms_norm_eps"),
    ropeTheta: num("rope_theta", 10000),
    ropeType: llama3 ? 1 : 0,
    ropeFactor: llama3 ? Number(rs!.factor) : 1,
    ropeLowFreqFactor: llama3 ? Number(rs!.low_freq_factor) : 1,
    ropeHighFreqFactor: llama3 ? Number(rs!.high_freq_factor) : 4,
    ropeOriginalMaxPosition: llama3 ? Number(rs!.original_max_position_embeddings) : 8192,
    tieEmbeddings: j.tie_word_embeddings === true,
  };
}

// ---------------------------------------------------------------------------------------------------------------------
// synthetic models

/** splitmix64-based uniform [0, 1) generator for reproducible weights */
export function rng(seed: number): () => number {
  let s = BigInt(seed) & 0xffffffffffffffffn;
  return () => {
    s = (s + 0x9e3779b97f4a7c15n) & 0xffffffffffffffffn;
    let z = s;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & 0xffffffffffffffffn;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & 0xffffffffffffffffn;
    z = z ^ (z >> 31n);
    return Number(z >> 11n) / 2 ** 53;
  };
}

export function tensorShapes(c: ModelConfig): [string, number[]][] {
  const q = c.nHeads * c.headDim, kv = c.nKvHeads * c.headDim;
  const out: [string, number[]][] = [["model.embed_tokens.weight", [c.vocabSize, c.dim]]];
  for (let l = 0; l < c.nLayers; l++) {
    const p = `model.layers.${l}.`;
    out.push(
      [p + "input_layernorm.weight", [c.dim]],
      [p + "self_attn.q_proj.weight", [q, c.dim]],
      [p + "self_attn.k_proj.weight", [kv, c.dim]],
      [p + "self_attn.v_proj.weight", [kv, c.dim]],
      [p + "self_attn.o_proj.weight", [c.dim, q]],
      [p + "post_attention_layernorm.weight", [c.dim]],
      [p + "mlp.gate_proj.weight", [c.hiddenDim, c.dim]],
      [p + "mlp.up_proj.weight", [c.hiddenDim, c.dim]],
      [p + "mlp.down_proj.weight", [c.dim, c.hiddenDim]],
    );
  }
  out.push(["model.norm.weight", [c.dim]]);
  if (!c.tieEmbeddings) out.push(["lm_head.weight", [c.vocabSize, c.dim]]);
  return out;
}

export interface Model {
  dir: string;
  config: ModelConfig;
  file: string;
  entries: TensorEntry[];
  weights: Map<string, Float64Array>; // the bf16 values, exactly
}

/** Seeded random bf16 weights of config c written to dir/model.safetensors (norm weights near 1). */
export function syntheticModel(dir: string, c: ModelConfig, seed: number, dtype: "BF16" | "F32" = "BF16"): Model {
  const rand = rng(seed);
  const weights = new Map<string, Float64Array>();
  const tensors = tensorShapes(c).map(([name, shape]) => {
    const n = shape.reduce((a, b) => a * b, 1);
    const isNorm = shape.length === 1;
    const scale = isNorm ? 0.2 : name.includes("embed") || name.startsWith("lm_head") ? 0.3 : 1 / Math.sqrt(shape[1]);
    const vals = new Float64Array(n);
    const data = new Uint8Array(n * (dtype === "BF16" ? 2 : 4));
    const dv = new DataView(data.buffer);
    for (let i = 0; i < n; i++) {
      const x = (isNorm ? 1 : 0) + (rand() * 2 - 1) * scale * Math.sqrt(3);
      const h = toBf16(x);
      vals[i] = fromBf16(h); // F32 files hold bf16-exact values too, so both load to the same weights
      if (dtype === "BF16") dv.setUint16(2 * i, h, true);
      else dv.setFloat32(4 * i, vals[i], true);
    }
    weights.set(name, vals);
    return { name, dtype, shape, data };
  });
  const file = join(dir, "model.safetensors");
  const entries = writeSafetensors(file, tensors);
  return { dir, config: c, file, entries, weights };
}

export const TINY: ModelConfig = {
  vocabSize: 97,
  dim: 32,
  hiddenDim: 80,
  nLayers: 2,
  nHeads: 4,
  nKvHeads: 2,
  headDim: 8,
  maxPosition: 256,
  rmsEps: 1e-5,
  ropeTheta: 10000,
  ropeType: 1,
  ropeFactor: 8,
  ropeLowFreqFactor: 1,
  ropeHighFreqFactor: 4,
  ropeOriginalMaxPosition: 64,
  tieEmbeddings: true,
};

// ---------------------------------------------------------------------------------------------------------------------
// engines

const DTYPES = { BF16: MK.DTYPE_BF16, F16: MK.DTYPE_F16, F32: MK.DTYPE_F32 } as const;

export class TestEngine {
  constructor(readonly ptr: Deno.PointerValue, readonly config: ModelConfig) {}
  /** create + declare every entry + load; throws with the native message on any failure */
  static open(config: ModelConfig, file: string, entries: TensorEntry[], params: EngineParams = {}): TestEngine {
    const e = TestEngine.create(config, params);
    for (const t of entries) e.check(e.addTensor(t, file), `add ${t.name}`);
    e.check(native().mk_engine_load(e.ptr), "load");
    return e;
  }
  static create(config: ModelConfig, params: EngineParams = {}): TestEngine {
    const out = new BigUint64Array(1);
    const rc = native().mk_engine_create(
      packConfig(config),
      packEngineParams({ nThreads: 2, ctxLen: 128, ...params }),
      out,
    );
    if (rc !== 0) throw new Error(`mk_engine_create: ${rc} ${lastError(null)}`);
    return new TestEngine(Deno.UnsafePointer.create(out[0]), config);
  }
  addTensor(t: TensorEntry, file: string): number {
    const [d0, d1] = t.shape.length === 1 ? [t.shape[0], 0] : [t.shape[0], t.shape[1]];
    return native().mk_engine_add_tensor(
      this.ptr,
      cstr(t.name),
      cstr(file),
      BigInt(t.offset),
      BigInt(t.nbytes),
      DTYPES[t.dtype],
      BigInt(d0),
      BigInt(d1 ?? 0),
    );
  }
  get error(): string {
    return lastError(this.ptr);
  }
  check(rc: number, what: string): number {
    if (rc < 0) throw new Error(`${what}: status ${rc}: ${this.error}`);
    return rc;
  }
  /** prefill tokens; returns the logits after the last one */
  prefill(tokens: number[]): Float32Array {
    const logits = new Float32Array(this.config.vocabSize);
    this.check(native().mk_engine_prefill(this.ptr, new Int32Array(tokens), tokens.length, logits), "prefill");
    return logits;
  }
  /** logits after every token of seq, from position 0 (truncates first) */
  logitsAll(seq: number[]): Float32Array[] {
    this.check(native().mk_engine_truncate(this.ptr, 0), "truncate");
    return seq.map((t) => this.prefill([t]));
  }
  setProgram(words: Int32Array): number {
    return native().mk_engine_set_program(this.ptr, words, words.length);
  }
  get position(): number {
    return native().mk_engine_position(this.ptr);
  }
  close(): void {
    native().mk_engine_free(this.ptr);
  }
}

// ---------------------------------------------------------------------------------------------------------------------
// an independent float64 Llama forward pass (HF semantics)

export function ropeInvFreq(c: ModelConfig): Float64Array {
  const half = c.headDim / 2, inv = new Float64Array(half);
  for (let i = 0; i < half; i++) inv[i] = 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim);
  if (c.ropeType !== 1) return inv;
  const lowWav = c.ropeOriginalMaxPosition / c.ropeLowFreqFactor,
    highWav = c.ropeOriginalMaxPosition / c.ropeHighFreqFactor;
  for (let i = 0; i < half; i++) {
    const wav = (2 * Math.PI) / inv[i];
    if (wav < highWav) continue;
    if (wav > lowWav) inv[i] = inv[i] / c.ropeFactor;
    else {
      const s = (c.ropeOriginalMaxPosition / wav - c.ropeLowFreqFactor) / (c.ropeHighFreqFactor - c.ropeLowFreqFactor);
      inv[i] = (1 - s) * inv[i] / c.ropeFactor + s * inv[i];
    }
  }
  return inv;
}

/** logits (float64) after each token of seq */
export function referenceForward(m: Model, seq: number[], opts: { bf16Kv?: boolean } = {}): Float64Array[] {
  const c = m.config, W = (n: string) => m.weights.get(n)!;
  const hd = c.headDim, half = hd / 2, qd = c.nHeads * hd, kvd = c.nKvHeads * hd, group = c.nHeads / c.nKvHeads;
  const inv = ropeInvFreq(c);
  const matvec = (w: Float64Array, x: Float64Array, rows: number, cols: number) => {
    const out = new Float64Array(rows);
    for (let r = 0; r < rows; r++) {
      let s = 0;
      for (let k = 0; k < cols; k++) s += w[r * cols + k] * x[k];
      out[r] = s;
    }
    return out;
  };
  const rms = (x: Float64Array, w: Float64Array) => {
    let ss = 0;
    for (const v of x) ss += v * v;
    const inv = 1 / Math.sqrt(ss / x.length + c.rmsEps);
    return x.map((v, i) => v * inv * w[i]);
  };
  const rope = (v: Float64Array, nh: number, pos: number) => {
    for (let h = 0; h < nh; h++) {
      for (let i = 0; i < half; i++) {
        const a = pos * inv[i], x1 = v[h * hd + i], x2 = v[h * hd + i + half];
        v[h * hd + i] = x1 * Math.cos(a) - x2 * Math.sin(a);
        v[h * hd + i + half] = x2 * Math.cos(a) + x1 * Math.sin(a);
      }
    }
  };
  const kc: Float64Array[][] = [], vc: Float64Array[][] = [];
  for (let l = 0; l < c.nLayers; l++) (kc.push([]), vc.push([]));
  const outs: Float64Array[] = [];
  seq.forEach((tok, pos) => {
    let x = W("model.embed_tokens.weight").slice(tok * c.dim, (tok + 1) * c.dim);
    for (let l = 0; l < c.nLayers; l++) {
      const p = `model.layers.${l}.`;
      const xb = rms(x, W(p + "input_layernorm.weight"));
      const q = matvec(W(p + "self_attn.q_proj.weight"), xb, qd, c.dim);
      const k = matvec(W(p + "self_attn.k_proj.weight"), xb, kvd, c.dim);
      const v = matvec(W(p + "self_attn.v_proj.weight"), xb, kvd, c.dim);
      rope(q, c.nHeads, pos);
      rope(k, c.nKvHeads, pos);
      // the GPU and the CPU interpreter keep the KV cache in bf16: round as they do when asked to
      kc[l].push(opts.bf16Kv ? k.map((x) => fromBf16(toBf16(x))) : k);
      vc[l].push(opts.bf16Kv ? v.map((x) => fromBf16(toBf16(x))) : v);
      const att = new Float64Array(qd);
      for (let h = 0; h < c.nHeads; h++) {
        const g = Math.floor(h / group);
        const scores = kc[l].map((kk) => {
          let s = 0;
          for (let d = 0; d < hd; d++) s += q[h * hd + d] * kk[g * hd + d];
          return s / Math.sqrt(hd);
        });
        const m = Math.max(...scores);
        const e = scores.map((s) => Math.exp(s - m));
        const sum = e.reduce((a, b) => a + b, 0);
        for (let t = 0; t <= pos; t++) {
          for (let d = 0; d < hd; d++) att[h * hd + d] += (e[t] / sum) * vc[l][t][g * hd + d];
        }
      }
      const o = matvec(W(p + "self_attn.o_proj.weight"), att, c.dim, qd);
      x = x.map((xv, i) => xv + o[i]);
      const xn = rms(x, W(p + "post_attention_layernorm.weight"));
      const gt = matvec(W(p + "mlp.gate_proj.weight"), xn, c.hiddenDim, c.dim);
      const up = matvec(W(p + "mlp.up_proj.weight"), xn, c.hiddenDim, c.dim);
      const hb = gt.map((gv, i) => (gv / (1 + Math.exp(-gv))) * up[i]);
      const dn = matvec(W(p + "mlp.down_proj.weight"), hb, c.dim, c.hiddenDim);
      x = x.map((xv, i) => xv + dn[i]);
    }
    const xf = rms(x, W("model.norm.weight"));
    const lm = c.tieEmbeddings ? W("model.embed_tokens.weight") : W("lm_head.weight");
    outs.push(matvec(lm, xf, c.vocabSize, c.dim));
  });
  return outs;
}

/** ||a - b|| / ||b|| */
export function relL2(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let num = 0, den = 0;
  for (let i = 0; i < b.length; i++) {
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / den);
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  return best;
}

export function tempDir(): string {
  return Deno.makeTempDirSync({ prefix: "mkchat-native-test-" });
}
