// copies_check.cu — host-only check of the copy descriptors the CUDA backend compiles from a scheduler program:
// every weight byte of a Llama-3.2-1B step is streamed exactly once, pages open and close properly, and QKV's paired
// rows cover the fused output exactly once. Runs on a machine without a GPU.
//   deno eval 'import {buildProgram} from "./engine/scheduler.ts"; const w = buildProgram({vocabSize:128256,dim:2048,
//     hiddenDim:8192,nLayers:16,nHeads:32,nKvHeads:8,headDim:64}, 132); Deno.writeFileSync("/tmp/prog.bin",
//     new Uint8Array(w.buffer))'
//   nvcc -gencode=arch=compute_90a,code=sm_90a -O1 -Inative/cuda native/dev/copies_check.cu -o /tmp/copies_check
//   /tmp/copies_check /tmp/prog.bin
#include "../cuda/megakernel.cu"
#include <cstdio>
int main(int argc, char **argv) {
  FILE *f = fopen(argc > 1 ? argv[1] : "/tmp/prog.bin", "rb");
  if (!f) { perror("program"); return 2; } std::vector<int> w(20000000); size_t n = fread(w.data(), 4, w.size(), f);
  int nq = w[2], nc = w[3], ni = w[4];
  const int *instr = w.data() + 16 + nc + nq + 1;
  mk::Globals g; memset(&g, 0, sizeof g);
  g.dim = 2048; g.hidden = 8192; g.n_layers = 16; g.n_heads = 32; g.n_kv = 8; g.hd = 64; g.vocab = 128256;
  std::vector<mk::LayerW> L(16);
  for (int l = 0; l < 16; ++l) { size_t b = 0x10000000000ull + (size_t)l * 0x100000000ull;
    L[l].wq = (mk::bf16*)(b); L[l].wk = (mk::bf16*)(b + 0x1000000); L[l].wv = (mk::bf16*)(b + 0x2000000);
    L[l].wo = (mk::bf16*)(b + 0x3000000); L[l].wg = (mk::bf16*)(b + 0x4000000); L[l].wu = (mk::bf16*)(b + 0x6000000); L[l].wd = (mk::bf16*)(b + 0x8000000); }
  g.layers = L.data(); g.lm_head = (mk::bf16*)0x20000000000ull;
  std::vector<mk::CopyDesc> c; std::vector<int> st;
  mk::compile_copies(g, instr, ni, c, st);
  size_t bytes = 0; int pages = 0, open = 0, bad = 0;
  for (auto &d : c) { bytes += d.bytes; if (d.meta & mk::kCopyFirst) { if (open) bad++; open = 1; pages++; }
    if (d.meta & mk::kCopyLast) { if (!open) bad++; open = 0; } if (d.bytes % 16 || mk::copy_dst(d.meta) + d.bytes > 16384) bad++; }
  // expected weight bytes: 16 layers x (3072+2048+16384) rows + 2048*4 down slices... all rows are 4 KiB
  size_t rows = 16 * (3072 + 2048 + 16384 + 8192) + 128256;
  printf("instr %d copies %zu pages %d bytes %zu expected %zu bad %d\n", ni, c.size(), pages, bytes, rows * 4096, bad);
  // spot-check: QKV vrow mapping covers every fused row of layer 3 exactly once
  std::vector<int> hit(3072, 0);
  for (int i = 0; i < ni; ++i) { const int *x = instr + i * 16; if (x[0] != 1 || x[1] != 3) continue;
    for (int k = 0; k < 2 * x[7]; ++k) { const mk::bf16 *r = mk::QkvOp::row(g, x + 6, 3, k); size_t off = (size_t)r - (size_t)L[3].wq;
      int fr = off < 0x1000000 ? off / 4096 : off < 0x2000000 ? 2048 + (off - 0x1000000) / 4096 : 2560 + (off - 0x2000000) / 4096; hit[fr]++; } }
  int okc = 0; for (int v : hit) okc += v == 1; printf("qkv rows hit once: %d / 3072\n", okc);
  return bad == 0 && okc == 3072 && bytes == rows * 4096 ? 0 : 1;
}
