#!/usr/bin/env bash
# Compare builds of the library on one GPU machine, in turns, in one call (PERF_LOG v19: the H200s lent differ by up
# to ~9 µs for the same build, so only builds timed side by side on the same machine can be compared):
#
#   source .carry/boot.sh && bash tests/gpu/compare_builds.sh ROUNDS "VARIANTS" [ENV=VALUE,...::]LIB ...
#
# Each round runs tests/gpu/bench_decode.ts (selftest workload) once per library with MKCHAT_LIB=LIB and the
# bench's --variants (environment settings timed in turn in one process; "" for none). A library may carry
# settings for its whole process, e.g. MKCHAT_ATTN_PER_HEAD=0::native/prebuilt/linux-x64/libmkchat.so for a library
# that reads an older program. While it runs, nvidia-smi
# logs the SM and memory clocks and the power draw every 200 ms (read-only queries: nothing is changed).
# Output: one JSON line per (round, library, variant) in $OUT/compare.jsonl, the clock log in $OUT/clocks.csv, and a
# table of the p50 step times at the end.
set -uo pipefail
OUT=${OUT:-/tmp/mkchat-gpu}
mkdir -p "$OUT"
rounds=$1
variants=$2
shift 2
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu --format=csv -lms 200 \
  >"$OUT/clocks.csv" 2>&1 &
smi=$!
for ((r = 1; r <= rounds; r++)); do
  for spec in "$@"; do
    lib=${spec##*::}
    settings=()
    [[ $spec == *::* ]] && IFS=, read -ra settings <<<"${spec%%::*}"
    env "${settings[@]}" MKCHAT_LIB="$lib" timeout 150 deno run -A tests/gpu/bench_decode.ts --runs 1 \
      --variants "$variants" 2>"$OUT/bench.err" |
      while read -r line; do echo "{\"round\":$r,\"lib\":\"$spec\",\"r\":$line}"; done | tee -a "$OUT/compare.jsonl"
    tail -3 "$OUT/bench.err"
  done
done
kill "$smi" 2>/dev/null
python3 - "$OUT/compare.jsonl" <<'EOF'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(list)
for x in rows:
    by[(x["lib"], x["r"]["variant"])].append(x["r"]["step_us_p50"])
for (lib, var), v in by.items():
    print(f"{lib:40s} {var:40s} p50 " + " ".join(f"{u:.1f}" for u in v))
EOF
