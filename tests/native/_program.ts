/**
 * A minimal instruction-program builder for the native tests, written from native/program.h alone (the real
 * scheduler is engine/scheduler.ts; this one exists so that the CPU interpreter can be tested on its own). Every stage
 * is cut into a few instructions dealt round-robin over the queues; each instruction waits on the one counter of the
 * stage before it:
 *
 *   QKV(L=0) <- SAMPLE of the previous token;  QKV(L) <- all DOWN(L-1);  ATTN(L) <- all QKV(L);
 *   OPROJ(L) <- every kv head of ATTN(L) merged;  GATEUP(L) <- all OPROJ(L);  DOWN(L) <- all GATEUP(L);
 *   LMHEAD <- all DOWN(last);  SAMPLE <- all LMHEAD.
 *
 * `drop` removes one dependency, to check that the interpreter catches a program that lacks it.
 *
 * @module
 */
import type { ModelConfig } from "./_ffi.ts";

export const OP = { NOOP: 0, QKV: 1, ATTN: 2, OPROJ: 3, GATEUP: 4, DOWN: 5, LMHEAD: 6, SAMPLE: 7 } as const;
const HEADER_WORDS = 16, INSTR_WORDS = 16, MAGIC = 0x47504b4d, VERSION = 1;

export interface TestProgramOptions {
  nQueues: number;
  attnSplits?: number;
  downChunk?: number;
  lmParts?: number;
  drop?: "gateup-wait" | "token-wait";
}

interface Instr {
  op: number;
  layer: number;
  wait: number;
  waitCount: number;
  waitTokenOffset: number;
  signal: number;
  args: number[];
}

/** [start, count] pieces of [0, n) cut into at most k nearly equal non-empty parts */
function pieces(n: number, k: number, maxLen = Infinity): [number, number][] {
  const parts = Math.max(Math.min(k, n), Math.ceil(n / maxLen));
  const out: [number, number][] = [];
  for (let i = 0; i < parts; i++) {
    const a = Math.floor((n * i) / parts), b = Math.floor((n * (i + 1)) / parts);
    if (b > a) out.push([a, b - a]);
  }
  return out;
}

export function buildTestProgram(c: ModelConfig, o: TestProgramOptions): Int32Array {
  const nQ = o.nQueues, S = o.attnSplits ?? 2, C = o.downChunk ?? Math.ceil(c.hiddenDim / 2);
  const L = c.nLayers, nChunks = Math.ceil(c.hiddenDim / C);
  const lmPieces = pieces(c.vocabSize, o.lmParts ?? nQ, 1024);
  // counters: 0 = SAMPLE; per layer qkv, attn, oproj, gateup, down; then lm
  const TOK = 0, ctr = (l: number, k: number) => 1 + 5 * l + k, LM = 1 + 5 * L;
  const nCounters = 2 + 5 * L;
  const perToken = new Array(nCounters).fill(0);
  const queues: Instr[][] = Array.from({ length: nQ }, () => []);
  let rr = 0;
  const stage = (
    items: Omit<Instr, "signal" | "wait" | "waitCount" | "waitTokenOffset">[],
    signal: number,
    wait: number,
    waitCount: number,
    waitTokenOffset = 0,
    signals = items.length,
  ) => {
    perToken[signal] += signals;
    for (const it of items) {
      queues[rr % nQ].push({ ...it, signal, wait, waitCount, waitTokenOffset });
      rr++;
    }
  };
  const pairs = (c.nHeads + 2 * c.nKvHeads) * (c.headDim / 2);
  for (let l = 0; l < L; l++) {
    // QKV
    const qkv = pieces(pairs, nQ).map(([a, n]) => ({ op: OP.QKV, layer: l, args: [a, n] }));
    if (l === 0) {
      if (o.drop === "token-wait") stage(qkv, ctr(l, 0), -1, 0);
      else stage(qkv, ctr(l, 0), TOK, 1, -1);
    } else {
      stage(qkv, ctr(l, 0), ctr(l - 1, 4), perToken[ctr(l - 1, 4)]);
    }
    // ATTN: every (kv head, split); only the merging split of a kv head signals
    const attn = [];
    for (let g = 0; g < c.nKvHeads; g++) for (let s = 0; s < S; s++) attn.push({ op: OP.ATTN, layer: l, args: [g, s] });
    stage(attn, ctr(l, 1), ctr(l, 0), perToken[ctr(l, 0)], 0, c.nKvHeads);
    // OPROJ
    stage(
      pieces(c.dim, nQ).map(([a, n]) => ({ op: OP.OPROJ, layer: l, args: [a, n] })),
      ctr(l, 2),
      ctr(l, 1),
      c.nKvHeads,
    );
    // GATEUP: rows inside one down chunk each
    const gu = [];
    for (let ch = 0; ch < nChunks; ch++) {
      const a0 = ch * C, len = Math.min(C, c.hiddenDim - a0);
      for (const [a, n] of pieces(len, 2)) gu.push({ op: OP.GATEUP, layer: l, args: [a0 + a, n] });
    }
    if (o.drop === "gateup-wait") stage(gu, ctr(l, 3), -1, 0);
    else stage(gu, ctr(l, 3), ctr(l, 2), perToken[ctr(l, 2)]);
    // DOWN: every (rows, chunk)
    const dn = [];
    for (let ch = 0; ch < nChunks; ch++) {
      for (const [a, n] of pieces(c.dim, 2)) dn.push({ op: OP.DOWN, layer: l, args: [a, n, ch] });
    }
    stage(dn, ctr(l, 4), ctr(l, 3), perToken[ctr(l, 3)]);
  }
  stage(
    lmPieces.map(([a, n], k) => ({ op: OP.LMHEAD, layer: 0, args: [a, n, k] })),
    LM,
    ctr(L - 1, 4),
    perToken[ctr(L - 1, 4)],
  );
  stage([{ op: OP.SAMPLE, layer: 0, args: [lmPieces.length] }], TOK, LM, lmPieces.length);

  const nInstr = queues.reduce((a, q) => a + q.length, 0);
  const words = new Int32Array(HEADER_WORDS + nCounters + nQ + 1 + nInstr * INSTR_WORDS);
  words.set([MAGIC, VERSION, nQ, nCounters, nInstr, S, C, lmPieces.length, 8]);
  words.set(perToken, HEADER_WORDS);
  let qs = HEADER_WORDS + nCounters, ip = qs + nQ + 1, idx = 0;
  for (const q of queues) {
    words[qs++] = idx;
    for (const it of q) {
      words.set([it.op, it.layer, it.wait, it.waitCount, it.waitTokenOffset, it.signal, ...it.args], ip);
      ip += INSTR_WORDS;
      idx++;
    }
  }
  words[qs] = idx;
  return words;
}
