/**
 * The CPU interpreter of the instruction program (native/cpu/interpreter.c): program validation, agreement with the
 * reference forward pass in order and in random valid interleavings, and that a program missing a dependency or
 * waiting forever is caught. Programs come from the test builder in ./_program.ts.
 */
import assert from "node:assert/strict";
import { MK, type ModelConfig, native, packSampling, Stream } from "./_ffi.ts";
import { buildTestProgram, OP, type TestProgramOptions } from "./_program.ts";
import { argmax, type Model, referenceForward, relL2, syntheticModel, tempDir, TestEngine, TINY } from "./_model.ts";

const SEQ = [1, 5, 9, 33, 2, 77, 14, 60, 61, 3, 40, 96, 7, 8];

let tinyModel: Model | null = null;
function tiny(): Model {
  return tinyModel ??= syntheticModel(tempDir(), TINY, 7);
}

function interpreter(m: Model, cfg: ModelConfig, opts: TestProgramOptions, seed = 0): TestEngine {
  const e = TestEngine.open(cfg, m.file, m.entries, { cpuMode: MK.CPU_INTERPRETER, interleaveSeed: seed, ctxLen: 64 });
  e.check(e.setProgram(buildTestProgram(cfg, opts)), "set_program");
  return e;
}

function greedy(e: TestEngine, prompt: number[], n: number): { rc: number; tokens: number[] } {
  native().mk_engine_truncate(e.ptr, 0);
  const st = new Stream(n, 0);
  const rc = native().mk_engine_generate(
    e.ptr,
    new Int32Array(prompt),
    prompt.length,
    packSampling({ maxTokens: n }),
    st.header,
    st.arraysStruct,
  );
  return { rc, tokens: st.generated() };
}

Deno.test("mk_engine_set_program() rejects malformed programs, naming the instruction", async (t) => {
  const m = tiny();
  const e = TestEngine.open(TINY, m.file, m.entries, { cpuMode: MK.CPU_INTERPRETER, ctxLen: 64 });
  const good = buildTestProgram(TINY, { nQueues: 3 });
  const nCounters = good[3], nQueues = good[2];
  const instr0 = 16 + nCounters + nQueues + 1;
  const broken = (edit: (w: Int32Array) => void) => {
    const w = good.slice();
    edit(w);
    return e.setProgram(w);
  };
  try {
    await t.step("a good program is accepted", () => assert.equal(e.setProgram(good), MK.OK));
    const cases: [string, (w: Int32Array) => void, RegExp][] = [
      ["bad magic", (w) => (w[0] = 1234), /bad magic/],
      ["bad version", (w) => (w[1] = 9), /version 9/],
      ["wrong size", (w) => (w[4] += 1), /header implies/],
      ["unknown opcode", (w) => (w[instr0 + 16 * 5] = 99), /instruction 5 \(queue \d+, \?\): unknown opcode 99/],
      ["counter out of range", (w) => (w[instr0 + 16 * 2 + 5] = 999), /instruction 2 .*signal counter 999/],
      ["layer out of range", (w) => (w[instr0 + 1] = 7), /instruction 0 .*layer 7 out of range/],
      ["per_token disagrees", (w) => (w[16 + 1] += 1), /counter 1: per_token says/],
    ];
    for (const [name, edit, re] of cases) {
      await t.step(name, () => {
        assert.equal(broken(edit), MK.ERR_INVALID);
        assert.match(e.error, re);
      });
    }
    await t.step("the truncated word array", () => {
      assert.equal(e.setProgram(good.subarray(0, 10)), MK.ERR_INVALID);
      assert.match(e.error, /shorter than the 16-word header/);
    });
  } finally {
    e.close();
  }
});

/*
 * The interpreter keeps the KV cache in bf16 like the GPU, so it is compared with the float64 TypeScript forward pass
 * that rounds K and V to bf16 the same way (tight: 1e-5), and with the fp32-cache C reference loosely (the bf16 cache
 * alone moves these tiny models' logits by a few 1e-3).
 */
Deno.test("the interpreter equals the reference forward pass (in order and in 5 random interleavings)", async (t) => {
  const untied: ModelConfig = { ...TINY, nLayers: 3, nKvHeads: 4, ropeType: 0, tieEmbeddings: false, hiddenDim: 72 };
  const models: [string, ModelConfig, Model][] = [
    ["tied GQA llama3", TINY, tiny()],
    ["untied MHA", untied, syntheticModel(tempDir(), untied, 13)],
  ];
  const layouts: TestProgramOptions[] = [
    { nQueues: 1, attnSplits: 1 },
    { nQueues: 4, attnSplits: 3, downChunk: 16 },
    { nQueues: 7, attnSplits: 2, downChunk: 40, lmParts: 5 },
  ];
  for (const [name, cfg, m] of models) {
    const ref = TestEngine.open(cfg, m.file, m.entries, { ctxLen: 64 });
    const wantFp32Cache = ref.logitsAll(SEQ);
    ref.close();
    const want = referenceForward(m, SEQ, { bf16Kv: true });
    for (const opts of layouts) {
      for (const seed of [0, 1, 2, 3, 4, 5]) {
        await t.step(`${name}, ${opts.nQueues} queues, S=${opts.attnSplits}, seed ${seed}`, () => {
          const e = interpreter(m, cfg, opts, seed);
          try {
            // token by token (one launch per token) ...
            const got = e.logitsAll(SEQ);
            for (let i = 0; i < SEQ.length; i++) {
              const err = relL2(got[i], want[i]);
              assert.ok(err < 1e-5, `position ${i}: rel L2 ${err} against the bf16-cache float64 reference`);
              const err32 = relL2(got[i], wantFp32Cache[i]);
              assert.ok(err32 < 1e-2, `position ${i}: rel L2 ${err32} against the C reference`);
            }
            // ... one launch over a whole prompt ...
            native().mk_engine_truncate(e.ptr, 0);
            const last = e.prefill(SEQ);
            assert.equal(e.position, SEQ.length);
            assert.ok(relL2(last, want[SEQ.length - 1]) < 1e-5);
            // ... and a generation, where queues run across tokens
            const { rc, tokens } = greedy(e, SEQ.slice(0, 5), 12);
            assert.equal(rc, MK.FINISH_LENGTH, e.error);
            assert.equal(e.position, 5 + 12 - 1);
            const seq = [...SEQ.slice(0, 5), ...tokens.slice(0, -1)];
            const steps = referenceForward(m, seq, { bf16Kv: true }).slice(4);
            tokens.forEach((tok, k) => assert.equal(tok, argmax(steps[k]), `generated token ${k}`));
          } finally {
            e.close();
          }
        });
      }
    }
  }
});

Deno.test("the interpreter catches a program that lacks a dependency", async (t) => {
  const m = tiny();
  const want = referenceForward(m, SEQ.slice(0, 8), { bf16Kv: true });
  const good = interpreter(m, TINY, { nQueues: 4, attnSplits: 2 }, 0);
  const wantGreedy = greedy(good, SEQ.slice(0, 5), 12).tokens;
  good.close();
  for (const drop of ["gateup-wait", "token-wait"] as const) {
    await t.step(`without ${drop}`, () => {
      const outcomes: string[] = [];
      for (const seed of [0, 1, 2, 3, 4]) {
        const e = interpreter(m, TINY, { nQueues: 4, attnSplits: 2, drop }, seed);
        try {
          native().mk_engine_truncate(e.ptr, 0);
          const logits = new Float32Array(TINY.vocabSize);
          const rc = native().mk_engine_prefill(e.ptr, new Int32Array(SEQ.slice(0, 8)), 8, logits);
          if (rc < 0) {
            outcomes.push(`error ${e.error}`);
            continue;
          }
          const err = relL2(logits, want[7]);
          const g = greedy(e, SEQ.slice(0, 5), 12);
          if (g.rc < 0) outcomes.push(`error ${e.error}`);
          else if (err > 1e-4 || g.tokens.join() !== wantGreedy.join()) {
            outcomes.push(`wrong (rel L2 ${err.toFixed(3)})`);
          } else outcomes.push("ok");
        } finally {
          e.close();
        }
      }
      assert.ok(outcomes.some((o) => o !== "ok"), `no interleaving noticed the missing dependency: ${outcomes}`);
    });
  }
});

Deno.test("a program that waits forever is reported as a deadlock naming the stuck instructions", () => {
  const m = tiny();
  const e = TestEngine.open(TINY, m.file, m.entries, { cpuMode: MK.CPU_INTERPRETER, ctxLen: 64, interleaveSeed: 3 });
  try {
    const w = buildTestProgram(TINY, { nQueues: 2 });
    const nCounters = w[3], nQueues = w[2], nInstr = w[4];
    const instr0 = 16 + nCounters + nQueues + 1;
    for (let i = 0; i < nInstr; i++) {
      if (w[instr0 + 16 * i] === OP.SAMPLE) w[instr0 + 16 * i + 3] += 1; // waits for one LMHEAD more than exists
    }
    assert.equal(e.setProgram(w), MK.OK);
    const rc = native().mk_engine_prefill(e.ptr, new Int32Array([1, 2]), 2, null);
    assert.equal(rc, MK.ERR_INTERNAL);
    assert.match(e.error, /deadlock.*SAMPLE.*waits counter/);
    assert.equal(e.position, 0);
  } finally {
    e.close();
  }
});

Deno.test("interpreter sampling equals the reference sampling for a seed", () => {
  const m = tiny();
  const ref = TestEngine.open(TINY, m.file, m.entries, { ctxLen: 64 });
  const e = interpreter(m, TINY, { nQueues: 3 }, 2);
  try {
    const sp = { maxTokens: 20, temperature: 0.8, topK: 10, topP: 0.9, seed: 77n, logprobs: 3 };
    const run = (x: TestEngine) => {
      native().mk_engine_truncate(x.ptr, 0);
      const st = new Stream(20, 3);
      const rc = native().mk_engine_generate(
        x.ptr,
        new Int32Array([4, 5, 6]),
        3,
        packSampling(sp),
        st.header,
        st.arraysStruct,
      );
      assert.equal(rc, MK.FINISH_LENGTH, x.error);
      return st;
    };
    const a = run(ref), b = run(e);
    assert.deepEqual(b.generated(), a.generated());
    for (let k = 0; k < 20; k++) assert.ok(Math.abs(a.logprob[k] - b.logprob[k]) < 3e-2); // bf16 cache vs fp32
  } finally {
    ref.close();
    e.close();
  }
});
