// The training loop's per-step bookkeeping in one launch (nnx.train._StepMetrics.add), so a
// step neither waits for the device nor spends four small launches on it:
//   acc[0] += loss[0] * n                                  (the running loss sum, in double)
//   acc[1] += #{rows r : argmax_c logits[r, c] == labels[r]}   (the running correct count)
// argmax as NumPy/CuPy: the first maximum; a NaN counts as the maximum (its first one).
// One block (gridDim.x == 1, blockDim.x a power of two <= 256); rows stride over the threads
// and each thread scans its rows' C logits, so the count is exact and independent of the
// launch.  acc stays on the device; the host reads it only when it asks.

#include "nnx_common.cuh"

#define NNX_METRICS_MAX_THREADS 256

template <typename T>
__global__ void step_metrics_add(long long N, int C, const T* __restrict__ logits,
                                 const long long* __restrict__ labels,
                                 const T* __restrict__ loss, double n, double* acc) {
    __shared__ long long hits[NNX_METRICS_MAX_THREADS];
    const unsigned t = threadIdx.x;
    long long mine = 0;
    for (long long row = t; row < N; row += blockDim.x) {
        const T* z = logits + row * C;
        T best = z[0];
        int arg = 0;
        for (int c = 1; c < C && best == best; ++c) {   // stop at the first NaN
            const T v = z[c];
            if (v > best || v != v) {
                best = v;
                arg = c;
            }
        }
        if ((long long)arg == labels[row]) ++mine;
    }
    hits[t] = mine;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) hits[t] += hits[t + s];
        __syncthreads();
    }
    if (t == 0) {
        acc[0] += (double)loss[0] * n;
        acc[1] += (double)hits[0];
    }
}
