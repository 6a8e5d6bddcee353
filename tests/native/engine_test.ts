/**
 * The CPU reference engine through the C ABI: numerics (against an independent float64 forward pass and, when
 * tests/fixtures/golden/ exists, HF transformers fp32), generation semantics, sampling, cancel, and a clear status and
 * message for every bad input.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync, truncateSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { lastError, MK, native, packConfig, packEngineParams, packSampling, type Sampling, Stream } from "./_ffi.ts";
import {
  argmax,
  configFromJson,
  type Model,
  readSafetensors,
  referenceForward,
  relL2,
  syntheticModel,
  tempDir,
  TestEngine,
  TINY,
} from "./_model.ts";

const GOLDEN_DIR = fileURLToPath(new URL("../fixtures/golden/", import.meta.url));
const SEQ = [1, 5, 9, 33, 2, 77, 14, 60, 61, 3, 40, 96];

function generate(e: TestEngine, prompt: number[], s: Sampling): { rc: number; st: Stream } {
  const cap = s.maxTokens ?? 256;
  const st = new Stream(cap, s.logprobs ?? 0);
  const rc = native().mk_engine_generate(
    e.ptr,
    new Int32Array(prompt),
    prompt.length,
    packSampling(s),
    st.header,
    st.arraysStruct,
  );
  return { rc, st };
}

let tinyModel: Model | null = null;
function tiny(): Model {
  return tinyModel ??= syntheticModel(tempDir(), TINY, 7);
}

// ---------------------------------------------------------------------------------------------------------------------

Deno.test("mk_build_info() names the version, the devices and the source hash", () => {
  assert.equal(native().mk_abi_version(), 1);
  const info = Deno.UnsafePointerView.getCString(native().mk_build_info()!);
  assert.match(info, /^mkchat \d+\.\d+\.\d+ cpu(\+cuda\(sm_90a\))? src=[0-9a-f]{16}$/);
});

Deno.test("CPU reference forward equals an independent float64 forward pass (rel L2 < 1e-4)", async (t) => {
  const cases = {
    "tied, llama3 rope, GQA": TINY,
    "untied, default rope, kv = heads, 3 layers": {
      ...TINY,
      nLayers: 3,
      nKvHeads: 4,
      ropeType: 0,
      tieEmbeddings: false,
      hiddenDim: 72,
    },
    "head_dim 16, 1 kv head, odd sizes": { ...TINY, dim: 48, nHeads: 3, nKvHeads: 1, headDim: 16, hiddenDim: 100 },
  };
  for (const [name, cfg] of Object.entries(cases)) {
    await t.step(name, () => {
      const m = cfg === TINY ? tiny() : syntheticModel(tempDir(), cfg, 11);
      const e = TestEngine.open(cfg, m.file, m.entries);
      try {
        const got = e.logitsAll(SEQ);
        const want = referenceForward(m, SEQ);
        for (let i = 0; i < SEQ.length; i++) {
          const err = relL2(got[i], want[i]);
          assert.ok(err < 1e-4, `position ${i}: rel L2 ${err}`);
        }
      } finally {
        e.close();
      }
    });
  }
});

Deno.test("F32 weights are converted to bf16 at load and give the same logits as BF16", () => {
  const dir = tempDir();
  const m32 = syntheticModel(dir, TINY, 7, "F32");
  const e32 = TestEngine.open(TINY, m32.file, m32.entries);
  const e16 = TestEngine.open(TINY, tiny().file, tiny().entries);
  try {
    assert.deepEqual(e32.prefill(SEQ.slice(0, 5)), e16.prefill(SEQ.slice(0, 5)));
  } finally {
    e32.close();
    e16.close();
  }
});

Deno.test("CPU reference matches the HF transformers golden fixtures", async (t) => {
  if (!existsSync(GOLDEN_DIR)) {
    console.warn(`SKIPPED: ${GOLDEN_DIR} does not exist yet (run tests/golden/make_golden.py on the GPU machine)`);
    return;
  }
  const names = readdirSync(GOLDEN_DIR).filter((n) => existsSync(join(GOLDEN_DIR, n, "golden.json")));
  assert.ok(names.length > 0, `no fixtures with golden.json in ${GOLDEN_DIR}`);
  for (const name of names) {
    await t.step(name, () => {
      const dir = join(GOLDEN_DIR, name);
      const cfg = configFromJson(JSON.parse(readFileSync(join(dir, "config.json"), "utf8")));
      const golden = JSON.parse(readFileSync(join(dir, "golden.json"), "utf8"));
      const file = join(dir, "model.safetensors");
      const ids: number[] = golden.input_ids;
      const raw = Uint8Array.from(atob(golden.logits_f32_b64), (ch) => ch.charCodeAt(0));
      const want = new Float32Array(raw.buffer);
      assert.equal(want.length, ids.length * cfg.vocabSize);
      const e = TestEngine.open(cfg, file, readSafetensors(file), { ctxLen: Math.min(cfg.maxPosition, 256) });
      try {
        const got = e.logitsAll(ids);
        let worst = 0;
        for (let i = 0; i < ids.length; i++) {
          const err = relL2(got[i], want.subarray(i * cfg.vocabSize, (i + 1) * cfg.vocabSize));
          worst = Math.max(worst, err);
          assert.ok(err < 1e-4, `${name} position ${i}: rel L2 ${err} against HF fp32`);
        }
        console.log(`  ${name}: worst rel L2 vs HF fp32 over ${ids.length} positions: ${worst.toExponential(2)}`);
        // greedy continuation, as HF generate(do_sample=False)
        e.check(native().mk_engine_truncate(e.ptr, 0), "truncate");
        const { rc, st } = generate(e, golden.greedy_prompt, { maxTokens: golden.greedy_new_tokens.length });
        assert.equal(rc, MK.FINISH_LENGTH, e.error);
        assert.deepEqual(st.generated(), golden.greedy_new_tokens);
      } finally {
        e.close();
      }
    });
  }
});

Deno.test("mk_engine_generate() follows the ABI's semantics", async (t) => {
  const m = tiny();
  const e = TestEngine.open(TINY, m.file, m.entries, { ctxLen: 40 });
  const ref = TestEngine.open(TINY, m.file, m.entries, { ctxLen: 40 });
  try {
    await t.step("greedy tokens are the argmax of the reference logits; last token not yet in the cache", () => {
      const prompt = SEQ.slice(0, 6);
      const { rc, st } = generate(e, prompt, { maxTokens: 8, logprobs: 5 });
      assert.equal(rc, MK.FINISH_LENGTH);
      assert.equal(st.finish, MK.FINISH_LENGTH);
      assert.equal(st.nTokens, 8);
      assert.equal(st.nPrefill, 6);
      assert.equal(st.position, 6 + 8 - 1);
      assert.equal(e.position, 13);
      const toks = st.generated();
      const all = ref.logitsAll([...prompt, ...toks.slice(0, -1)]);
      for (let k = 0; k < 8; k++) {
        const logits = all[prompt.length - 1 + k];
        assert.equal(toks[k], argmax(logits), `token ${k}`);
        // logprob of the chosen token and the top-5, raw T=1 distribution
        const mx = Math.max(...logits);
        const lse = mx + Math.log(logits.reduce((a, x) => a + Math.exp(x - mx), 0));
        assert.ok(Math.abs(st.logprob[k] - (logits[toks[k]] - lse)) < 1e-4);
        const order = Array.from(logits.keys()).sort((a, b) => logits[b] - logits[a]).slice(0, 5);
        assert.deepEqual(Array.from(st.topIds.subarray(k * 5, k * 5 + 5)), order);
        const lps = Array.from(st.topLogprobs.subarray(k * 5, k * 5 + 5));
        for (let j = 1; j < 5; j++) assert.ok(lps[j] <= lps[j - 1]);
      }
      for (let k = 1; k < 8; k++) assert.ok(st.tUs[k] >= st.tUs[k - 1]);
      assert.ok(st.prefillUs > 0 && st.decodeUs >= 0);
    });
    await t.step("continuing the conversation from the last token equals one long prompt", () => {
      // e holds the prompt and 7 of the 8 generated tokens; the 8th is the next turn's first input
      native().mk_engine_truncate(e.ptr, 0);
      const prompt = SEQ.slice(0, 6);
      const { st } = generate(e, prompt, { maxTokens: 8 });
      const toks = st.generated();
      const cont = e.prefill([toks[7], 11, 12]);
      assert.equal(e.position, 6 + 7 + 3);
      const all = ref.logitsAll([...prompt, ...toks, 11, 12]);
      assert.ok(relL2(cont, all[all.length - 1]) < 1e-6);
    });
    await t.step("a stop id ends with FINISH_STOP and is reported as the last token", () => {
      native().mk_engine_truncate(e.ptr, 0);
      const { st: free } = generate(e, SEQ.slice(0, 4), { maxTokens: 6 });
      const stopAt = free.generated()[2];
      native().mk_engine_truncate(e.ptr, 0);
      const { rc, st } = generate(e, SEQ.slice(0, 4), { maxTokens: 6, stopIds: [stopAt] });
      assert.equal(rc, MK.FINISH_STOP);
      const got = st.generated();
      assert.equal(got[got.length - 1], stopAt);
      assert.ok(got.length <= 3);
    });
    await t.step("a full context ends with FINISH_CONTEXT", () => {
      native().mk_engine_truncate(e.ptr, 0);
      const { rc, st } = generate(e, SEQ.slice(0, 10), { maxTokens: 100 });
      assert.equal(rc, MK.FINISH_CONTEXT);
      assert.equal(e.position, 40);
      assert.equal(st.nTokens, 31); // positions 10..39 hold 30 generated tokens, the 31st is known but not cached
    });
    await t.step("a prompt that would overflow the context is MK_ERR_CONTEXT and appends nothing", () => {
      native().mk_engine_truncate(e.ptr, 35);
      const { rc } = generate(e, SEQ.slice(0, 6), { maxTokens: 2 });
      assert.equal(rc, MK.ERR_CONTEXT);
      assert.match(e.error, /overflow the context of 40/);
      assert.equal(e.position, 35);
    });
  } finally {
    e.close();
    ref.close();
  }
});

Deno.test("sampling is deterministic for a seed and respects top-k and top-p", async (t) => {
  const m = tiny();
  const e = TestEngine.open(TINY, m.file, m.entries, { ctxLen: 128 });
  const run = (s: Sampling) => {
    native().mk_engine_truncate(e.ptr, 0);
    const { rc, st } = generate(e, [1, 2, 3], { maxTokens: 60, logprobs: 20, ...s });
    assert.ok(rc > 0, e.error);
    return st;
  };
  try {
    await t.step("same seed, same tokens; another seed, other tokens", () => {
      const a = run({ temperature: 1.0, seed: 42n }).generated();
      const b = run({ temperature: 1.0, seed: 42n }).generated();
      const c = run({ temperature: 1.0, seed: 0x1234567890abcdefn }).generated();
      assert.deepEqual(a, b);
      assert.notDeepEqual(a, c);
    });
    await t.step("top_k = 1 is greedy", () => {
      assert.deepEqual(run({ temperature: 1.5, topK: 1, seed: 3n }).generated(), run({}).generated());
    });
    await t.step("top_k = 3: every token is among the 3 most likely, and not always the first", () => {
      const st = run({ temperature: 2.0, topK: 3, seed: 9n });
      const ranks = st.generated().map((tok, k) => Array.from(st.topIds.subarray(k * 20, k * 20 + 20)).indexOf(tok));
      for (const r of ranks) assert.ok(r >= 0 && r < 3, `rank ${r}`);
      assert.ok(new Set(ranks).size > 1, "always the same rank: the sampler does not sample");
    });
    await t.step("top_p = 0.6: the mass above every chosen token is below 0.6", () => {
      const st = run({ temperature: 1.0, topP: 0.6, seed: 5n });
      st.generated().forEach((tok, k) => {
        const ids = Array.from(st.topIds.subarray(k * 20, k * 20 + 20));
        const r = ids.indexOf(tok);
        assert.ok(r >= 0, "chosen token outside the top 20");
        let above = 0;
        for (let j = 0; j < r; j++) above += Math.exp(st.topLogprobs[k * 20 + j]);
        assert.ok(above < 0.6 + 1e-5, `mass above the chosen token ${above}`);
      });
    });
  } finally {
    e.close();
  }
});

Deno.test("cancel stops a generation promptly and keeps the engine usable", async (t) => {
  const cfg = {
    ...TINY,
    dim: 256,
    hiddenDim: 768,
    nLayers: 4,
    nHeads: 8,
    nKvHeads: 4,
    headDim: 32,
    vocabSize: 2048,
    maxPosition: 4096,
  };
  const m = syntheticModel(tempDir(), cfg, 3);
  const e = TestEngine.open(cfg, m.file, m.entries, { ctxLen: 4096, nThreads: 1 });
  try {
    await t.step("cancel during decode", async () => {
      const st = new Stream(4000, 0);
      const sp = packSampling({ maxTokens: 4000 });
      const prompt = new Int32Array([1, 2, 3]);
      const P = Deno.UnsafePointer.of;
      const pending = native().mk_engine_generate_async(e.ptr, P(prompt), 3, P(sp), P(st.header), P(st.arraysStruct));
      while (st.nTokens < 5) await new Promise((r) => setTimeout(r, 1));
      const t0 = performance.now();
      st.cancel();
      const rc = await pending;
      const ms = performance.now() - t0;
      assert.equal(rc, MK.FINISH_CANCELLED, e.error);
      assert.equal(st.finish, MK.FINISH_CANCELLED);
      assert.ok(st.nTokens < 4000);
      assert.ok(ms < 500, `cancel took ${ms} ms`);
      assert.equal(e.position, 3 + st.nTokens - 1);
    });
    await t.step("cancel set before the call stops the prompt: nothing generated or appended", () => {
      native().mk_engine_truncate(e.ptr, 0);
      const st = new Stream(8, 0);
      st.cancel();
      const prompt = new Int32Array(Array.from({ length: 500 }, (_, i) => i % 2000));
      const rc = native().mk_engine_generate(
        e.ptr,
        prompt,
        500,
        packSampling({ maxTokens: 8 }),
        st.header,
        st.arraysStruct,
      );
      assert.equal(rc, MK.FINISH_CANCELLED);
      assert.equal(st.nTokens, 0);
      assert.equal(e.position, st.nPrefill);
      assert.ok(st.nPrefill < 500);
    });
    await t.step("and the engine still works", () => {
      native().mk_engine_truncate(e.ptr, 0);
      const logits = e.prefill([1, 2, 3]);
      assert.ok(logits.every(Number.isFinite));
    });
  } finally {
    e.close();
  }
});

Deno.test("bad input gets a clear status and a one-line message naming what is wrong", async (t) => {
  const m = tiny();
  const lib = native();
  const expectCreate = (
    cfg: Uint8Array<ArrayBuffer>,
    params: Uint8Array<ArrayBuffer>,
    re: RegExp,
    status: number = MK.ERR_INVALID,
  ) => {
    const out = new BigUint64Array(1);
    assert.equal(lib.mk_engine_create(cfg, params, out), status);
    assert.equal(out[0], 0n);
    assert.match(lastError(null), re);
  };
  await t.step("engine config and params", () => {
    expectCreate(packConfig({ ...TINY, nKvHeads: 3 }), packEngineParams({ ctxLen: 64 }), /num_key_value_heads 3/);
    expectCreate(packConfig({ ...TINY, headDim: 7 }), packEngineParams({ ctxLen: 64 }), /head_dim 7/);
    expectCreate(packConfig(TINY, 40), packEngineParams({}), /struct_size 40/);
    expectCreate(packConfig(TINY), packEngineParams({ ctxLen: 1000 }), /ctx_len 1000 .*256/);
    expectCreate(packConfig(TINY), packEngineParams({ ctxLen: 64, cpuMode: 7 }), /cpu_mode 7/);
    expectCreate(packConfig(TINY), packEngineParams({ ctxLen: 64, structSize: 8 }), /struct_size 8/);
    // CUDA asked for: without a usable GPU that is "no device"; with one, this tiny shape is refused by name.
    if (lib.mk_cuda_available(new Uint8Array(256), 256) === 1) {
      expectCreate(packConfig(TINY), packEngineParams({ ctxLen: 64, device: 1 }), /hidden_size 32 must be a power/);
    } else {
      expectCreate(packConfig(TINY), packEngineParams({ ctxLen: 64, device: 1 }), /./, MK.ERR_NO_DEVICE);
    }
    assert.equal(
      lib.mk_engine_create(null as unknown as Uint8Array<ArrayBuffer>, packEngineParams({}), new BigUint64Array(1)),
      MK.ERR_INVALID,
    );
    assert.equal(lib.mk_engine_load(null), MK.ERR_INVALID);
    assert.match(lastError(null), /engine is NULL/);
    assert.equal(lib.mk_engine_prefill(null, new Int32Array(1), 1, null), MK.ERR_INVALID);
    assert.equal(lib.mk_engine_position(null), 0);
  });
  await t.step("tensors: unknown, wrong shape, wrong size, duplicate, missing", () => {
    const e = TestEngine.create(TINY);
    try {
      const q = m.entries.find((x) => x.name === "model.layers.1.self_attn.q_proj.weight")!;
      assert.equal(e.addTensor({ ...q, name: "model.layers.2.self_attn.q_proj.weight" }, m.file), MK.ERR_WEIGHTS);
      assert.match(e.error, /model\.layers\.2\.self_attn\.q_proj\.weight: not a tensor of this Llama model/);
      assert.equal(e.addTensor({ ...q, name: "model.layers.0.self_attn.q_proj.bias" }, m.file), MK.ERR_WEIGHTS);
      assert.equal(e.addTensor({ ...q, shape: [32, 16] }, m.file), MK.ERR_WEIGHTS);
      assert.match(e.error, /q_proj\.weight: expected shape \[32, 32\], found \[32, 16\]/);
      assert.equal(e.addTensor({ ...q, nbytes: q.nbytes - 2 }, m.file), MK.ERR_WEIGHTS);
      assert.match(e.error, /bytes, but shape \[32, 32\] of BF16 needs 2048/);
      assert.equal(e.addTensor(q, m.file), MK.OK);
      assert.equal(e.addTensor(q, m.file), MK.ERR_WEIGHTS);
      assert.match(e.error, /declared twice/);
      for (const t of m.entries) if (t.name !== "model.layers.1.mlp.up_proj.weight" && t !== q) e.addTensor(t, m.file);
      assert.equal(lib.mk_engine_load(e.ptr), MK.ERR_WEIGHTS);
      assert.match(e.error, /missing tensor model\.layers\.1\.mlp\.up_proj\.weight \(expected shape \[80, 32\]\)/);
      assert.equal(lib.mk_engine_prefill(e.ptr, new Int32Array([1]), 1, null), MK.ERR_STATE);
      assert.match(e.error, /not loaded/);
    } finally {
      e.close();
    }
    const untied = TestEngine.create({ ...TINY, tieEmbeddings: false });
    try {
      for (const t of m.entries) untied.addTensor(t, m.file);
      assert.equal(lib.mk_engine_load(untied.ptr), MK.ERR_WEIGHTS);
      assert.match(
        untied.error,
        /missing tensor lm_head\.weight \(expected shape \[97, 32\]\) and tie_word_embeddings is false/,
      );
    } finally {
      untied.close();
    }
  });
  await t.step("files: missing and truncated", () => {
    const dir = tempDir();
    const m2 = syntheticModel(dir, TINY, 7);
    const e = TestEngine.create(TINY);
    try {
      for (const t of m2.entries) e.addTensor(t, t.name.includes("norm") ? join(dir, "nope.safetensors") : m2.file);
      assert.equal(lib.mk_engine_load(e.ptr), MK.ERR_IO);
      assert.match(e.error, /cannot open weights file .*nope\.safetensors: No such file/);
    } finally {
      e.close();
    }
    truncateSync(m2.file, m2.entries[m2.entries.length - 1].offset + 10);
    const e2 = TestEngine.create(TINY);
    try {
      for (const t of m2.entries) e2.addTensor(t, m2.file);
      assert.equal(lib.mk_engine_load(e2.ptr), MK.ERR_IO);
      assert.match(
        e2.error,
        /model\.safetensors is truncated: tensor model\.norm\.weight needs bytes \[\d+, \d+\), the file has \d+/,
      );
    } finally {
      e2.close();
    }
  });
  await t.step("run arguments and sampling params", () => {
    const e = TestEngine.open(TINY, m.file, m.entries, { ctxLen: 32 });
    try {
      assert.equal(lib.mk_engine_prefill(e.ptr, new Int32Array([1, 97]), 2, null), MK.ERR_INVALID);
      assert.match(e.error, /token 97 at index 1 is outside the vocabulary \[0, 97\)/);
      assert.equal(lib.mk_engine_prefill(e.ptr, new Int32Array([1]), 0, null), MK.ERR_INVALID);
      assert.equal(lib.mk_engine_truncate(e.ptr, 5), MK.ERR_INVALID);
      const bad: [Sampling, RegExp][] = [
        [{ temperature: -1 }, /temperature -1/],
        [{ temperature: NaN }, /temperature nan/],
        [{ topP: 0 }, /top_p 0 must be in \(0, 1\]/],
        [{ topP: 1.5 }, /top_p 1\.5/],
        [{ topK: -2 }, /top_k -2/],
        [{ maxTokens: 0 }, /max_tokens 0/],
        [{ logprobs: 21 }, /logprobs 21/],
        [{ stopIds: [500] }, /stop id 500/],
        [{ structSize: 12 }, /struct_size 12/],
      ];
      for (const [s, re] of bad) {
        const { rc } = generate(e, [1], { maxTokens: 4, ...s });
        assert.equal(rc, MK.ERR_INVALID, JSON.stringify(s));
        assert.match(e.error, re);
      }
      const sp = packSampling({ maxTokens: 4 });
      const v = new DataView(sp.buffer);
      v.setInt32(28, 17, true);
      const st = new Stream(4, 0);
      assert.equal(
        lib.mk_engine_generate(e.ptr, new Int32Array([1]), 1, sp, st.header, st.arraysStruct),
        MK.ERR_INVALID,
      );
      assert.match(e.error, /n_stop_ids 17/);
      const small = new Stream(2, 0);
      assert.equal(
        lib.mk_engine_generate(
          e.ptr,
          new Int32Array([1]),
          1,
          packSampling({ maxTokens: 4 }),
          small.header,
          small.arraysStruct,
        ),
        MK.ERR_INVALID,
      );
      assert.match(e.error, /capacity 2 is below max_tokens 4/);
      assert.equal(e.position, 0);
      // the interpreter needs a program
      const ei = TestEngine.open(TINY, m.file, m.entries, { cpuMode: MK.CPU_INTERPRETER });
      try {
        assert.equal(lib.mk_engine_prefill(ei.ptr, new Int32Array([1]), 1, null), MK.ERR_STATE);
        assert.match(ei.error, /no instruction program installed/);
      } finally {
        ei.close();
      }
    } finally {
      e.close();
    }
  });
  await t.step("mk_cuda_available() gives a reason when there is no usable GPU", () => {
    const buf = new Uint8Array(256);
    const ok = lib.mk_cuda_available(buf, 256);
    const text = new TextDecoder().decode(buf.subarray(0, buf.indexOf(0)));
    assert.ok(text.length > 0);
    if (ok === 0) console.log(`  mk_cuda_available: 0 (${text})`);
  });
});

Deno.test("mk_measure_read_bandwidth() and the CPU engine's speed on a small model", () => {
  const cfg = {
    ...TINY,
    dim: 512,
    hiddenDim: 1536,
    nLayers: 4,
    nHeads: 8,
    nKvHeads: 4,
    headDim: 64,
    vocabSize: 4096,
    maxPosition: 1024,
  };
  const m = syntheticModel(tempDir(), cfg, 5);
  const e = TestEngine.open(cfg, m.file, m.entries, { ctxLen: 512, nThreads: 0 });
  try {
    const gbps = new Float64Array(1);
    assert.equal(native().mk_measure_read_bandwidth(e.ptr, gbps), MK.OK);
    assert.ok(gbps[0] > 0.1);
    const { rc, st } = generate(e, [1, 2, 3, 4, 5, 6, 7, 8], { maxTokens: 64 });
    assert.equal(rc, MK.FINISH_LENGTH);
    const us = st.decodeUs / 63, mb = (m.entries.reduce((a, x) => a + x.nbytes, 0)) / 1e6;
    console.log(
      `  cpu: read ${gbps[0].toFixed(1)} GB/s; ${mb.toFixed(1)} MB of bf16 weights: prefill ${
        (st.prefillUs / 1000).toFixed(1)
      } ms for 8 tokens, decode ${us.toFixed(0)} µs/token (${(1e6 / us).toFixed(0)} tok/s)`,
    );
  } finally {
    e.close();
  }
});
