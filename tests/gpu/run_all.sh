#!/usr/bin/env bash
# Everything the GPU machine checks and measures, in one call (device time is scarce):
#   source .carry/boot.sh && bash tests/gpu/run_all.sh [stage ...]
# Stages (default: all, in this order): build golden selftest fidelity sanitizer tests.
# Logs and JSON go to $OUT (the device tool's return folder) or /tmp/mkchat-gpu.
set -uo pipefail
OUT=${OUT:-/tmp/mkchat-gpu}
mkdir -p "$OUT"
stages=${*:-build golden selftest fidelity sanitizer tests}
export PYTHONUNBUFFERED=1 NO_COLOR=1
t() { date +%s.%N; }
stage() { echo "=== $1 ($(date +%T))"; }
has() { [[ " $stages " == *" $1 "* ]]; }

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv >"$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"

if has build; then
  stage build
  deno task build 2>&1 | tail -20
  grep -A3 "megakernel" native/build/ptxas.log 2>/dev/null | head -8
fi

if has golden; then
  stage golden
  python3 tests/golden/make_golden.py 2>&1 | tail -15
  tar czf "$OUT/fixtures.tgz" tests/fixtures
fi

if has selftest; then
  stage selftest
  deno run -A main.ts selftest --device cuda --model synthetic:llama-3.2-1b --json >"$OUT/selftest.json" 2>"$OUT/selftest.err"
  echo "rc=$?"; tail -5 "$OUT/selftest.err"; head -c 3000 "$OUT/selftest.json"; echo
fi

if has fidelity; then
  stage fidelity
  for shape in small llama-3.2-1b; do
    deno run -A tests/gpu/dump_logits.ts --model "synthetic:$shape" --device cuda --steps 128 --out "/tmp/cuda_$shape.f32" \
      >"/tmp/cuda_$shape.json" 2>&1 || { echo "dump cuda $shape failed"; cat "/tmp/cuda_$shape.json"; }
    deno run -A tests/gpu/dump_logits.ts --model "synthetic:$shape" --device cpu --steps 128 --out "/tmp/cpu_$shape.f32" \
      >"/tmp/cpu_$shape.json" 2>&1 || { echo "dump cpu $shape failed"; cat "/tmp/cpu_$shape.json"; }
    cat "/tmp/cuda_$shape.json" "/tmp/cpu_$shape.json"
    dir=$(sed -n 's/.*"model_dir":"\([^"]*\)".*/\1/p' "/tmp/cuda_$shape.json")
    python3 tests/gpu/fidelity.py "$dir" "/tmp/cuda_$shape.f32.tokens.json" "megakernel=/tmp/cuda_$shape.f32" \
      "cpu_reference=/tmp/cpu_$shape.f32" --json "$OUT/fidelity_$shape.json" 2>&1 | grep -v Warning | tail -8
  done
fi

if has sanitizer; then
  stage sanitizer
  # racecheck stops listing at its hazard limit, which the ring's (mbarrier-ordered) bulk-copy writes reach at once:
  # raise it so that a report of another kind cannot hide behind them, and list the distinct sites.
  export NV_COMPUTE_SANITIZER_MAX_RACECHECK_HAZARDS=10000000
  for tool in memcheck racecheck synccheck; do
    timeout 280 compute-sanitizer --tool "$tool" --print-limit 20 deno run -A tests/gpu/dump_logits.ts \
      --model synthetic:small --device cuda --prompt 3 --steps 2 --timeout-ms 60000 --out /tmp/san.f32 \
      >"/tmp/san_$tool.log" 2>&1
    echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|error' /tmp/san_$tool.log | head -3 | tr '\n' ' ')"
  done
  echo "racecheck sites (write side): $(grep -o 'Race reported between [A-Za-z]* access at [^ ]*' /tmp/san_racecheck.log | sort -u | tr '\n' ';')"
  # The same with no weight copies (MKCHAT_DIAG=1: the output is meaningless, the synchronisation the same): the ring's
  # bulk copies make millions of reports (mbarrier-ordered, which racecheck does not model) and reach the hazard limit,
  # behind which another race could hide. Expected here: only PageIssuer::end's store of Smem.issued against the
  # consumers' polls of it (page_wait), a flag the pages' mbarriers back up (PERF_LOG v21).
  MKCHAT_DIAG=1 timeout 280 compute-sanitizer --tool racecheck --print-limit 20 deno run -A tests/gpu/dump_logits.ts \
    --model synthetic:small --device cuda --prompt 3 --steps 2 --timeout-ms 60000 --out /tmp/san.f32 \
    >/tmp/san_racecheck_nocopy.log 2>&1
  echo "racecheck without weight copies rc=$? $(grep -E 'RACECHECK SUMMARY' /tmp/san_racecheck_nocopy.log | tr '\n' ' ')"
  echo "  sites: $(grep -o 'Race reported between [A-Za-z]* access at [^ ]*' /tmp/san_racecheck_nocopy.log | sort -u | tr '\n' ';')"
  cat /tmp/san_*.log | tail -c 20000 >"$OUT/sanitizer.log"
fi

if has tests; then
  stage tests
  # tests/native/ load native/build/libmkchat.so itself: build it when the build stage did not run
  [ -f native/build/libmkchat.so ] || deno task build 2>&1 | tail -3
  deno test -A tests/ 2>&1 | tail -30
fi
