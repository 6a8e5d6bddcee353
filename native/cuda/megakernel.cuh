// megakernel.cuh — what the host side (engine_cuda.cu) needs to launch the megakernel and the bandwidth probe.
#pragma once
#include <cuda_runtime.h>

#include "ops/llama.cuh"

namespace mk {
// Dynamic shared memory the megakernel needs per block.
constexpr size_t kMegakernelSmem = sizeof(Smem);
// Launch the megakernel, one block per queue, cooperatively (all blocks co-resident: they wait on each other).
cudaError_t launch_megakernel(const Globals &g, int n_queues, cudaStream_t stream);
// Read `bytes` (multiple of 16) from `src` with 16-byte loads on every SM; *sink keeps the reads alive.
cudaError_t launch_read_probe(const void *src, size_t bytes, unsigned long long *sink, int n_sms, cudaStream_t stream);
}  // namespace mk
