/**
 * The scheduler: turns a Llama config into the per-SM instruction program that both interpreters run (the CUDA
 * megakernel and its CPU twin). The binary layout and the meaning of every opcode are in native/program.h; this file
 * only decides who does what, in which order, and which counter each piece waits on.
 *
 * Balance is the whole game for a memory-bound decode step: every stage's weight rows are cut into one contiguous
 * piece per queue, so each SM streams the same number of bytes per stage and no SM is the straggler that the
 * next stage's counter waits for.
 *
 * @module
 */
import type { LlamaConfig } from "../weights/config.ts";

// --- program.h mirror -------------------------------------------------------------------------------------------
/** Magic word "MKPG" of an instruction program. */
export const PROG_MAGIC = 0x47504b4d;
/** Program layout version (program.h MK_PROG_VERSION). */
export const PROG_VERSION = 1;
/** int32 words per instruction. */
export const INSTR_WORDS = 16;
/** int32 words of the program header. */
export const HEADER_WORDS = 16;

/** Opcodes, as in native/program.h. */
export const Op = { NOOP: 0, QKV: 1, ATTN: 2, OPROJ: 3, GATEUP: 4, DOWN: 5, LMHEAD: 6, SAMPLE: 7, MLP: 8 } as const;

/** QKV (in pairs), OPROJ, GATEUP and DOWN pieces are whole groups of this many rows: 16 bytes of fp32 output. */
export const PUBLISH_ROWS = 4;

/** Largest row count of one LMHEAD instruction (its logits are sorted in shared memory). */
export const LM_MAX_ROWS = 1024;

/** One decoded instruction (for tests and debugging). */
export interface Instruction {
  op: number;
  layer: number;
  wait: number;
  waitCount: number;
  waitTokenOffset: number;
  signal: number;
  args: number[];
}

/** Options of buildProgram. */
export interface ScheduleOptions {
  /** Attention splits per kv head; default: as many as fill the queues, at most 16 (MKCHAT_ATTN_SPLITS overrides). */
  attnSplits?: number;
  /**
   * One MLP instruction per row range (gate/up and the matching slice of the down projection, no wait in between)
   * instead of GATEUP pieces and DOWN pieces that wait on them chunk by chunk. Off by default: on the H200 it measured
   * 1034 µs/token against 867 (native/PERF_LOG.md v11). MKCHAT_FUSED_MLP=1 turns it on for measurements.
   */
  fusedMlp?: boolean;
  /**
   * ATTN's counter counts q heads rather than kv heads (program.h MK_PH_ATTN_PER_HEAD), so that the CUDA kernel can
   * give each q head of a short context its own SM with no merge between them (native/cuda/ops/attn.cuh). On by
   * default; MKCHAT_ATTN_PER_HEAD=0 writes the older program (one increment per kv head), for measurements against
   * libraries built before it.
   */
  attnPerHead?: boolean;
}

interface Counter {
  id: number;
  perToken: number;
}

/** A tuning override from the environment ("0" / "1"), for measurements; undefined when unset or unreadable. */
function tuningFlag(name: string): boolean | undefined {
  try {
    const v = Deno.env.get(name);
    return v === undefined ? undefined : v !== "0";
  } catch {
    return undefined;
  }
}

/** A positive integer tuning override from the environment, for measurements; undefined when unset or unreadable. */
function tuningNumber(name: string): number | undefined {
  try {
    const v = Number(Deno.env.get(name));
    return Number.isInteger(v) && v > 0 ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Split `total` items into `parts` contiguous ranges whose sizes differ by at most one (empty ranges dropped). */
export function splitEven(total: number, parts: number): [number, number][] {
  const out: [number, number][] = [];
  const base = Math.floor(total / parts);
  const extra = total % parts;
  let start = 0;
  for (let i = 0; i < parts; i++) {
    const n = base + (i < extra ? 1 : 0);
    if (n > 0) out.push([start, n]);
    start += n;
  }
  return out;
}

/**
 * Split `total` items into `parts` contiguous ranges made of whole `unit`s (except a remainder at the end when `unit`
 * does not divide `total`), as even as that allows. The CUDA kernel publishes QKV, OPROJ, GATEUP and DOWN outputs with
 * bulk stores when their rows are whole 16-byte groups (4 fp32), which saves a release fence per instruction (PERF_LOG
 * v16).
 */
export function splitAligned(total: number, parts: number, unit: number): [number, number][] {
  const units = Math.floor(total / unit);
  const out = splitEven(units, parts).map(([s, n]): [number, number] => [s * unit, n * unit]);
  const rest = total - units * unit;
  if (rest > 0) {
    if (out.length > 0) out[out.length - 1][1] += rest;
    else out.push([0, rest]);
  }
  return out;
}

/**
 * Build the instruction program for `nQueues` queues (the GPU's SM count; any number for the CPU interpreter).
 * Throws on a config the megakernel's ops cannot run (the constraints are those of native/cuda/ops).
 */
export function buildProgram(cfg: LlamaConfig, nQueues: number, opts: ScheduleOptions = {}): Int32Array {
  const { dim, hiddenDim, nLayers, nHeads, nKvHeads, headDim, vocabSize } = cfg;
  if (!Number.isInteger(nQueues) || nQueues < 1) throw new Error(`scheduler: bad queue count ${nQueues}`);
  const fused = opts.fusedMlp ?? tuningFlag("MKCHAT_FUSED_MLP") ?? false;
  const perHead = opts.attnPerHead ?? tuningFlag("MKCHAT_ATTN_PER_HEAD") ?? true;
  if (!fused && hiddenDim % dim !== 0) {
    throw new Error(`scheduler: intermediate_size ${hiddenDim} is not a multiple of ${dim} (unfused MLP)`);
  }
  if (headDim % 2 !== 0) throw new Error(`scheduler: head_dim ${headDim} is odd`);
  const nChunks = Math.ceil(hiddenDim / dim); // unfused DOWN reads h in chunks of `dim` columns
  const envSplits = tuningNumber("MKCHAT_ATTN_SPLITS");
  // Up to 16 splits per kv head; the kernel uses only as many as the context needs (program.h MK_OP_ATTN).
  const splits = opts.attnSplits ?? envSplits ?? Math.max(1, Math.min(16, Math.floor(nQueues / nKvHeads)));

  const queues: number[][][] = Array.from({ length: nQueues }, () => []);
  const counters: Counter[] = [];
  const counter = (perToken: number): Counter => {
    const c = { id: counters.length, perToken };
    counters.push(c);
    return c;
  };
  // An instruction: [op, layer, wait, waitCount, waitTokenOffset, signal, ...args] padded to INSTR_WORDS.
  const emit = (
    q: number,
    op: number,
    layer: number,
    wait: Counter | null,
    waitOffset: number,
    signal: Counter | null,
    args: number[],
  ) => {
    const w = [op, layer, wait ? wait.id : -1, wait ? wait.perToken : 0, waitOffset, signal ? signal.id : -1, ...args];
    while (w.length < INSTR_WORDS) w.push(0);
    queues[q].push(w);
  };
  /** Assign `pieces` to queues, spread evenly over all of them (piece i → queue floor(i * nQ / n)). */
  const spread = (n: number, i: number) => Math.floor((i * nQueues) / n);

  // The SAMPLE counter exists before layer 0 so that layer 0's QKV can wait on the previous token's sample.
  const sampled = counter(1);
  let prevDown: Counter | null = null;
  const pairs = ((nHeads + 2 * nKvHeads) * headDim) / 2;

  // How each stage's rows are cut: the same in every layer.
  const qkvParts = splitAligned(pairs, nQueues, PUBLISH_ROWS); // pairs of rows that RoPE rotates together
  const oParts = splitAligned(dim, nQueues, PUBLISH_ROWS);
  const perChunkQueues = Math.max(1, Math.floor(nQueues / nChunks)); // unfused MLP: GATEUP and DOWN per DOWN chunk
  const chunkParts = splitAligned(dim, perChunkQueues, PUBLISH_ROWS);

  for (let L = 0; L < nLayers; L++) {
    // RMSNorm + QKV + RoPE + KV append.
    const qkv = counter(qkvParts.length);
    qkvParts.forEach(([start, n], i) => {
      const q = spread(qkvParts.length, i);
      if (L === 0) emit(q, Op.QKV, L, sampled, -1, qkv, [start, n]);
      else emit(q, Op.QKV, L, prevDown, 0, qkv, [start, n]);
    });
    // Attention: kv head g, split s; the last split of each head merges and signals (once per q head with perHead).
    const attn = counter(perHead ? nHeads : nKvHeads);
    for (let i = 0; i < nKvHeads * splits; i++) {
      emit(spread(nKvHeads * splits, i), Op.ATTN, L, qkv, 0, attn, [Math.floor(i / splits), i % splits]);
    }
    // O-projection + residual.
    const o = counter(oParts.length);
    oParts.forEach(([start, n], i) => emit(spread(oParts.length, i), Op.OPROJ, L, attn, 0, o, [start, n]));
    if (fused) {
      // RMSNorm + gate/up + SiLU + the down projection of those rows: each piece adds its share into the residual.
      const parts = splitEven(hiddenDim, nQueues);
      const mlp = counter(parts.length);
      parts.forEach(([start, n], i) => emit(spread(parts.length, i), Op.MLP, L, o, 0, mlp, [start, n]));
      prevDown = mlp;
      continue;
    }
    // RMSNorm + gate/up + SiLU, cut per DOWN chunk so that DOWN can start on the chunks that are done.
    const gu: Counter[] = [];
    for (let c = 0; c < nChunks; c++) {
      const cnt = counter(chunkParts.length);
      gu.push(cnt);
      chunkParts.forEach(([start, n], i) => {
        const q = (c * perChunkQueues + i) % nQueues;
        emit(q, Op.GATEUP, L, o, 0, cnt, [c * dim + start, n]);
      });
    }
    // Down-projection + residual, one piece per (row range, chunk). A queue's DOWN starts when its own GATEUP ends,
    // and splitEven gives the spare units to the first pieces: in reverse order, the queues with the larger GATEUP
    // pieces get the smaller DOWN pieces, so no queue carries the larger of both (PERF_LOG v19).
    const downPieces: [number, number, number][] = [];
    for (let c = 0; c < nChunks; c++) {
      for (const [start, n] of [...chunkParts].reverse()) downPieces.push([start, n, c]);
    }
    const down = counter(downPieces.length);
    downPieces.forEach(([start, n, c], i) => {
      emit(spread(downPieces.length, i), Op.DOWN, L, gu[c], 0, down, [start, n, c]);
    });
    prevDown = down;
  }

  // Final RMSNorm + LM head, then the sample.
  const lmParts = splitEven(vocabSize, Math.max(nQueues, Math.ceil(vocabSize / LM_MAX_ROWS)));
  const lm = counter(lmParts.length);
  lmParts.forEach(([start, n], i) =>
    emit(spread(lmParts.length, i), Op.LMHEAD, nLayers, prevDown, 0, lm, [start, n, i])
  );
  // SAMPLE goes to the queue with the fewest LM rows (the last one when the split is uneven).
  emit(nQueues - 1, Op.SAMPLE, nLayers, lm, 0, sampled, [lmParts.length]);

  // --- serialise -----------------------------------------------------------------------------------------------
  const nInstr = queues.reduce((s, q) => s + q.length, 0);
  const words = new Int32Array(HEADER_WORDS + counters.length + nQueues + 1 + nInstr * INSTR_WORDS);
  words[0] = PROG_MAGIC;
  words[1] = PROG_VERSION;
  words[2] = nQueues;
  words[3] = counters.length;
  words[4] = nInstr;
  words[5] = splits;
  words[6] = dim;
  words[7] = lmParts.length;
  words[8] = Math.max(1, Math.floor(16384 / (2 * dim)));
  words[9] = perHead ? 1 : 0;
  let at = HEADER_WORDS;
  for (const c of counters) words[at++] = c.perToken;
  let idx = 0;
  for (let q = 0; q <= nQueues; q++) {
    words[at++] = idx;
    if (q < nQueues) idx += queues[q].length;
  }
  for (const q of queues) for (const w of q) words.set(w, (at += INSTR_WORDS) - INSTR_WORDS);
  return words;
}

/** Decode a program back into per-queue instruction lists (tests, `--verbose` dumps). */
export function decodeProgram(
  words: Int32Array,
): { splits: number; attnPerHead: boolean; perToken: number[]; queues: Instruction[][] } {
  if (words[0] !== PROG_MAGIC || words[1] !== PROG_VERSION) throw new Error("not an mkchat program");
  const nQ = words[2], nC = words[3];
  const perToken = Array.from(words.subarray(HEADER_WORDS, HEADER_WORDS + nC));
  const starts = words.subarray(HEADER_WORDS + nC, HEADER_WORDS + nC + nQ + 1);
  const base = HEADER_WORDS + nC + nQ + 1;
  const queues: Instruction[][] = [];
  for (let q = 0; q < nQ; q++) {
    const list: Instruction[] = [];
    for (let i = starts[q]; i < starts[q + 1]; i++) {
      const w = words.subarray(base + i * INSTR_WORDS, base + (i + 1) * INSTR_WORDS);
      list.push({
        op: w[0],
        layer: w[1],
        wait: w[2],
        waitCount: w[3],
        waitTokenOffset: w[4],
        signal: w[5],
        args: Array.from(w.subarray(6)),
      });
    }
    queues.push(list);
  }
  return { splits: words[5], attnPerHead: words[9] === 1, perToken, queues };
}
