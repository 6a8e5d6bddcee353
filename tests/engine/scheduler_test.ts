/**
 * engine/scheduler.ts: the programs it builds are valid for the native engine, and the CPU interpreter running them —
 * in order and in random valid interleavings, across tokens — computes the same logits and tokens as the plain CPU
 * forward pass. This is how CI checks the scheduler's dependencies without a GPU.
 */
import assert from "node:assert/strict";
import { buildProgram, decodeProgram, Op, PUBLISH_ROWS, type ScheduleOptions } from "../../engine/scheduler.ts";
import { type LlamaConfig, parseLlamaConfig } from "../../weights/config.ts";
import { syntheticConfigJson } from "../../weights/synthetic.ts";
import { MK, type ModelConfig, native, packSampling, Stream } from "../native/_ffi.ts";
import {
  argmax,
  type Model,
  referenceForward,
  relL2,
  syntheticModel,
  tempDir,
  TestEngine,
  TINY,
} from "../native/_model.ts";

// 75 tokens: past 2 x MK_ATTN_SPLIT_POSITIONS (32), so the later positions spread attention over 3 splits.
const SEQ = Array.from({ length: 75 }, (_, i) => (i * 37 + 11) % 97);
const asLlama = (c: ModelConfig) => c as unknown as LlamaConfig;

function program(cfg: ModelConfig, nQueues: number, opts: ScheduleOptions): Int32Array<ArrayBuffer> {
  return new Int32Array(buildProgram(asLlama(cfg), nQueues, opts));
}

Deno.test("buildProgram() balances every stage across the queues and ends with one SAMPLE", () => {
  const cfg = parseLlamaConfig(syntheticConfigJson("llama-3.2-1b"), "synthetic:llama-3.2-1b");
  const { queues, splits, perToken } = decodeProgram(buildProgram(cfg, 132));
  assert.equal(queues.length, 132);
  assert.equal(splits, 16);
  const all = queues.flat();
  assert.equal(all.filter((i) => i.op === Op.SAMPLE).length, 1);
  // QKV (in pairs), OPROJ, GATEUP and DOWN pieces are whole groups of PUBLISH_ROWS rows (so the kernel can publish
  // them with bulk stores): they differ by at most one group, and every piece starts on one.
  for (const [op, slack] of [[Op.QKV, PUBLISH_ROWS], [Op.OPROJ, PUBLISH_ROWS], [Op.GATEUP, PUBLISH_ROWS]]) {
    const rows = queues.map((q) => q.filter((i) => i.op === op && i.layer === 3).reduce((s, i) => s + i.args[1], 0));
    assert.ok(
      Math.max(...rows) - Math.min(...rows) <= slack,
      `op ${op}: rows per queue ${Math.min(...rows)}..${Math.max(...rows)}`,
    );
  }
  const published = new Set<number>([Op.QKV, Op.OPROJ, Op.GATEUP, Op.DOWN]);
  for (const i of all.filter((i) => published.has(i.op))) {
    assert.equal(i.args[0] % PUBLISH_ROWS, 0, `op ${i.op} starts at row ${i.args[0]}`);
    assert.equal(i.args[1] % PUBLISH_ROWS, 0, `op ${i.op} has ${i.args[1]} rows`);
  }
  // A queue's DOWN starts when its own GATEUP ends: no queue carries the larger GATEUP piece and the larger DOWN piece.
  const gu = queues.map((q) => q.filter((i) => i.op === Op.GATEUP && i.layer === 3).reduce((s, i) => s + i.args[1], 0));
  const dn = queues.map((q) => q.filter((i) => i.op === Op.DOWN && i.layer === 3).reduce((s, i) => s + i.args[1], 0));
  const both = queues.filter((_, k) => gu[k] === Math.max(...gu) && dn[k] === Math.max(...dn)).length;
  assert.ok(both <= 4, `${both} queues have the larger GATEUP and the larger DOWN piece`);
  assert.equal(perToken[0], 1, "counter 0 is the step counter, signalled once per token");
  assert.ok(all.filter((i) => i.op === Op.LMHEAD).every((i) => i.args[1] <= 1024));
});

Deno.test("buildProgram() counts attention in q heads by default, in kv heads when asked (program.h ATTN_PER_HEAD)", () => {
  const cfg = parseLlamaConfig(syntheticConfigJson("llama-3.2-1b"), "synthetic:llama-3.2-1b");
  const cases = [[{}, true, cfg.nHeads], [{ attnPerHead: false }, false, cfg.nKvHeads]] as const;
  for (const [opts, perHead, increments] of cases) {
    const p = decodeProgram(buildProgram(cfg, 132, opts));
    assert.equal(p.attnPerHead, perHead);
    const attn = p.queues.flat().find((i) => i.op === Op.ATTN && i.layer === 0)!;
    assert.equal(p.perToken[attn.signal], increments, `ATTN counter increments per token with ${JSON.stringify(opts)}`);
    const oproj = p.queues.flat().find((i) => i.op === Op.OPROJ && i.layer === 0)!;
    assert.equal(oproj.wait, attn.signal, "OPROJ waits on the ATTN counter");
    assert.equal(oproj.waitCount, increments);
  }
});

Deno.test("the scheduler's programs run on the CPU interpreter like the reference, in any valid order", async (t) => {
  const untied: ModelConfig = { ...TINY, nLayers: 3, nKvHeads: 4, ropeType: 0, tieEmbeddings: false, hiddenDim: 96 };
  const tied: ModelConfig = { ...TINY, hiddenDim: 96 }; // a multiple of dim, as the unfused DOWN chunks need
  const cases: [string, ModelConfig, Model][] = [
    ["tied GQA llama3", tied, syntheticModel(tempDir(), tied, 7)],
    ["untied MHA", untied, syntheticModel(tempDir(), untied, 13)],
  ];
  const layouts: [number, ScheduleOptions][] = [
    [1, {}],
    [5, {}],
    [13, { attnSplits: 3 }],
    [13, { attnSplits: 3, attnPerHead: false }],
    [6, { fusedMlp: true }],
    [9, { fusedMlp: true, attnSplits: 2 }],
  ];
  for (const [name, cfg, m] of cases) {
    const want = referenceForward(m, SEQ, { bf16Kv: true });
    for (const [nQueues, opts] of layouts) {
      for (const seed of [0, 1, 2, 3]) {
        await t.step(`${name}, ${nQueues} queues ${JSON.stringify(opts)}, interleaving seed ${seed}`, () => {
          const e = TestEngine.open(cfg, m.file, m.entries, {
            cpuMode: MK.CPU_INTERPRETER,
            interleaveSeed: seed,
            ctxLen: 128,
          });
          try {
            e.check(e.setProgram(program(cfg, nQueues, opts)), "set_program");
            const got = e.logitsAll(SEQ);
            for (let i = 0; i < SEQ.length; i++) {
              const err = relL2(got[i], want[i]);
              // fp32 against a float64 reference: up to ~6e-5 at 75 positions; a wrong dependency shows as 1e-2 or more
              assert.ok(err < 2e-4, `position ${i}: rel L2 ${err} against the bf16-cache reference`);
            }
            // a generation: queues run ahead into the next token as far as the counters allow
            native().mk_engine_truncate(e.ptr, 0);
            const st = new Stream(10, 0);
            const prompt = SEQ.slice(0, 4);
            const rc = native().mk_engine_generate(
              e.ptr,
              new Int32Array(prompt),
              prompt.length,
              packSampling({ maxTokens: 10 }),
              st.header,
              st.arraysStruct,
            );
            assert.equal(rc, MK.FINISH_LENGTH, e.error);
            const tokens = st.generated();
            const steps = referenceForward(m, [...prompt, ...tokens.slice(0, -1)], { bf16Kv: true }).slice(3);
            tokens.forEach((tok, k) => assert.equal(tok, argmax(steps[k]), `generated token ${k}`));
          } finally {
            e.close();
          }
        });
      }
    }
  }
});
