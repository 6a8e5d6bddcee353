/**
 * The CUDA engine's failure modes that only a GPU can show: a counter wait that never completes times out with a
 * message naming the stuck instruction (never a hang) and leaves the engine usable; a prompt that overflows the
 * context is refused with nothing appended. Skipped where no usable GPU is present (CI).
 */
import assert from "node:assert/strict";
import { buildProgram, HEADER_WORDS, INSTR_WORDS, Op } from "../../engine/scheduler.ts";
import type { LlamaConfig } from "../../weights/config.ts";
import { materializeSynthetic } from "../../weights/synthetic.ts";
import { MK, native } from "../native/_ffi.ts";
import { configFromJson, readSafetensors, TestEngine } from "../native/_model.ts";

const haveCuda = (() => {
  try {
    return native().mk_cuda_available(new Uint8Array(256), 256) === 1;
  } catch {
    return false;
  }
})();

async function smallOnCuda(params: { ctxLen: number; timeoutMs?: number }) {
  const dir = await materializeSynthetic("small", 0);
  const cfg = configFromJson(JSON.parse(await Deno.readTextFile(`${dir}/config.json`)));
  const file = `${dir}/model.safetensors`;
  const e = TestEngine.open(cfg, file, readSafetensors(file), { device: MK.DEVICE_CUDA, ...params });
  const queues = new Int32Array(1);
  native().mk_engine_device_info(e.ptr, new Uint8Array(queues.buffer), new Uint8Array(64), 64);
  return { e, cfg, nQueues: queues[0] };
}

Deno.test({
  name: "a counter wait that never completes times out, names the instruction, and the engine stays usable",
  ignore: !haveCuda,
  fn: async () => {
    const { e, cfg, nQueues } = await smallOnCuda({ ctxLen: 64, timeoutMs: 300 });
    try {
      const good = buildProgram(cfg as unknown as LlamaConfig, nQueues);
      const bad = new Int32Array(good);
      const nCounters = bad[3];
      const base = HEADER_WORDS + nCounters + bad[2] + 1;
      let victim = -1;
      for (let i = 0; i < bad[4] && victim < 0; i++) if (bad[base + i * INSTR_WORDS] === Op.OPROJ) victim = i;
      bad[base + victim * INSTR_WORDS + 3] += 1; // waits for one signal more than its counter ever gets
      e.check(native().mk_engine_set_program(e.ptr, bad, bad.length), "set_program");
      const t0 = performance.now();
      const rc = native().mk_engine_prefill(e.ptr, new Int32Array([1, 2, 3]), 3, null);
      assert.equal(rc, MK.ERR_TIMEOUT);
      assert.ok(performance.now() - t0 < 10_000, "the timeout fires, no hang");
      // The first SM whose timer fires reports: the starved OPROJ itself, or a GATEUP waiting for it (its counter is
      // then one signal short).
      assert.match(
        e.error,
        /SM \d+ waited over 300 ms at instruction \d+ \((OPROJ|GATEUP), layer 0, step 0\) for counter/,
      );
      // the same engine runs a good program afterwards
      e.check(native().mk_engine_truncate(e.ptr, 0), "truncate");
      e.check(native().mk_engine_set_program(e.ptr, new Int32Array(good), good.length), "set_program");
      assert.equal(native().mk_engine_prefill(e.ptr, new Int32Array([1, 2, 3]), 3, null), MK.OK, e.error);
      assert.equal(native().mk_engine_position(e.ptr), 3);
    } finally {
      e.close();
    }
  },
});

Deno.test({
  name: "a prompt that overflows the CUDA engine's context is refused and nothing is appended",
  ignore: !haveCuda,
  fn: async () => {
    const { e, cfg, nQueues } = await smallOnCuda({ ctxLen: 16 });
    try {
      const prog = new Int32Array(buildProgram(cfg as unknown as LlamaConfig, nQueues));
      e.check(native().mk_engine_set_program(e.ptr, prog, prog.length), "set_program");
      assert.equal(native().mk_engine_prefill(e.ptr, new Int32Array(10).fill(7), 10, null), MK.OK, e.error);
      assert.equal(native().mk_engine_prefill(e.ptr, new Int32Array(7).fill(7), 7, null), MK.ERR_CONTEXT);
      assert.match(e.error, /overflow the context of 16/);
      assert.equal(native().mk_engine_position(e.ptr), 10);
    } finally {
      e.close();
    }
  },
});
