#!/usr/bin/env python3
"""Where one decode step's time goes, from a MKCHAT_TRACE file (one CSV row per instruction of the traced step).

    MKCHAT_TRACE=/tmp/trace.csv deno run -A tests/gpu/bench_decode.ts --runs 1 && python3 tests/gpu/trace_summary.py /tmp/trace.csv

Per op: instructions, mean wait on its counter, mean run time (compute + page waits + stores), and the run split
into its parts: before the first page is in hand (input vector from L2, norm), from there to the end of the compute
(the pages), and the counter signal (ATTN, which has no pages, marks the end of its K/V tiles instead: its pre-page
is the attention itself, its pages the partial's store, the arrival and the merge), and in newer traces the time from the wait's end to an
op-specific midpoint (a matvec's start once its input is staged; ATTN's loads landed); per stage (layer, op): when its first instruction started running and its last
finished, so the gaps between stages show the critical path.
"""
import csv
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
for r in rows:
    for k in ("wait_begin_ns", "wait_end_ns", "done_ns", "layer", "queue"):
        r[k] = int(r[k])
    # older traces have no first-page / compute-done columns
    r["first_page_ns"] = int(r.get("first_page_ns", -1))
    r["run_end_ns"] = int(r.get("run_end_ns", r["done_ns"]))
t_end = max(r["done_ns"] for r in rows)
print(f"step {rows[0]['step']}: {t_end / 1000:.1f} us from the first wait to the last instruction done")
by_op = defaultdict(list)
for r in rows:
    by_op[r["op"]].append(r)
def mean(xs):
    return sum(xs) / len(xs) if xs else 0.0


has_mid = "mid_ns" in rows[0]
print(f"{'op':<8}{'n':>6}{'wait us':>10}{'run us':>10}{'run max':>10}{'pre-page':>10}{'pages':>10}{'signal':>10}"
      + (f"{'to mid':>10}" if has_mid else ""))
for op, rs in by_op.items():
    w = mean([r["wait_end_ns"] - r["wait_begin_ns"] for r in rs]) / 1000
    u = [(r["done_ns"] - r["wait_end_ns"]) / 1000 for r in rs]
    paged = [r for r in rs if r["first_page_ns"] >= 0]
    pre = mean([r["first_page_ns"] - r["wait_end_ns"] for r in paged]) / 1000
    pages = mean([r["run_end_ns"] - r["first_page_ns"] for r in paged]) / 1000
    sig = mean([r["done_ns"] - r["run_end_ns"] for r in rs]) / 1000
    # newer traces: an op-specific midpoint of the pre-page part (a matvec's start, ATTN's loads landed)
    mid = ""
    if has_mid:
        ms = [int(r["mid_ns"]) - r["wait_end_ns"] for r in rs if int(r["mid_ns"]) >= 0]
        if ms:
            mid = f"{mean(ms) / 1000:>10.2f}"
    print(f"{op:<8}{len(rs):>6}{w:>10.2f}{mean(u):>10.2f}{max(u):>10.2f}{pre:>10.2f}{pages:>10.2f}{sig:>10.2f}{mid}")
stages = defaultdict(list)
for r in rows:
    stages[(r["layer"], r["op"])].append(r)
order = sorted(stages, key=lambda k: min(r["wait_end_ns"] for r in stages[k]))
print(f"{'stage':<14}{'start':>9}{'first run':>10}{'last done':>10}{'span':>8}")
shown = 0
for key in order:
    rs = stages[key]
    first_wait = min(r["wait_begin_ns"] for r in rs) / 1000
    first_run = min(r["wait_end_ns"] for r in rs) / 1000
    last_done = max(r["done_ns"] for r in rs) / 1000
    if key[0] <= 1 or key[0] >= 15 or key[1] in ("LMHEAD", "SAMPLE"):
        print(f"L{key[0]:<3}{key[1]:<10}{first_wait:>9.1f}{first_run:>10.1f}{last_done:>10.1f}{last_done - first_run:>8.1f}")
        shown += 1
layers = sorted({k[0] for k in stages})
if len(layers) > 2:
    spans = []
    for L in layers:
        rs = [r for k, v in stages.items() if k[0] == L and k[1] not in ("LMHEAD", "SAMPLE") for r in v]
        if rs:
            spans.append((max(r["done_ns"] for r in rs) - min(r["wait_end_ns"] for r in rs)) / 1000)
    print(f"per-layer span (first run to last done): mean {sum(spans) / len(spans):.1f} us over {len(spans)} layers")
