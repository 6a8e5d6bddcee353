#!/usr/bin/env bash
# The source line of megakernel SASS offsets, e.g. the "+0x3d160" of a compute-sanitizer report:
#   bash tests/gpu/sass_where.sh 3d160 11030
# Compiles native/cuda/megakernel.cu with -lineinfo (the same code as the library's: line info does not change code
# generation) and looks the offsets up in its disassembly. Needs nvcc and nvdisasm (the GPU machine has both).
set -euo pipefail
export PATH=$PATH:/usr/local/cuda/bin
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd native/cuda && nvcc -gencode=arch=compute_90a,code=sm_90a -O3 -lineinfo -cubin -o "$tmp/mk.cubin" megakernel.cu)
nvdisasm -g -c "$tmp/mk.cubin" >"$tmp/sass.txt"
python3 - "$tmp/sass.txt" "$@" <<'PY'
import re, sys
sass = open(sys.argv[1]).read().splitlines()
for off in sys.argv[2:]:
    want, line = int(off.removeprefix("+").removeprefix("0x"), 16), None
    for l in sass:
        m = re.match(r'\s*//## File "([^"]+)", line (\d+)', l)
        if m:
            line = f"{m.group(1).split('/')[-1]}:{m.group(2)}"
            continue
        m = re.match(r'\s*/\*([0-9a-f]{4,})\*/\s*(.*)', l)
        if m and int(m.group(1), 16) == want:
            print(f"{hex(want)}  {line}  {m.group(2).strip()[:80]}")
            break
    else:
        print(f"{hex(want)}  not found")
PY
