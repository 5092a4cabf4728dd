// Bias, layout and ReLU of Linear/Conv2d in one pass each way (issue 15: fewer launches).
//
// conv_output_nchw: the convolution GEMM gives g (O, N*HW); the layer's output is NCHW:
//     y[n,o,p] = act(g[o, n*HW + p] + b[o])        act = ReLU (relu != 0) or identity
// one launch instead of an add-with-transpose and a ReLU.  `v < 0 ? 0 : v` keeps NaN, as
// relu.cu does.
//
// bias_grad_rows: for gy of shape (outer, C, inner) (Linear: (M, C, 1); Conv2d: (N, C, HW)),
//     d = gy * [y > 0]   (relu != 0; else d = gy)        db[c] = sum over (outer, inner) of d
// d is written in gy's layout (transpose == 0) or as (C, outer*inner) rows (transpose != 0,
// the conv GEMM's layout).  One block per channel (grid-stride over channels); blockDim.x a
// power of two <= 256; the sum is a per-thread loop then a shared-memory tree in T.
// Replaces relu_backward + a transposing copy + a sum (3 launches) by one.
#include "nnx_common.cuh"

#define NNX_BG_MAX_THREADS 256

template <typename T>
__global__ void conv_output_nchw(long long total, long long channels, long long hw,
                                 const T* __restrict__ g, const T* __restrict__ b, int has_bias,
                                 int relu, T* __restrict__ y) {
    const long long nhw = total / channels;
    NNX_GRID_STRIDE(i, total) {
        const long long p = i % hw;
        const long long o = (i / hw) % channels;
        const long long n = i / (hw * channels);
        T v = g[o * nhw + n * hw + p];
        if (has_bias) v = v + b[o];
        y[i] = (relu && v < T(0)) ? T(0) : v;
    }
}

template <typename T>
__global__ void bias_grad_rows(long long outer, long long channels, long long inner,
                               const T* __restrict__ gy, const T* __restrict__ y, int relu,
                               int transpose, int has_bias, T* __restrict__ d,
                               T* __restrict__ db) {
    __shared__ T buf[NNX_BG_MAX_THREADS];
    const unsigned t = threadIdx.x;
    const long long per = outer * inner;
    for (long long c = blockIdx.x; c < channels; c += gridDim.x) {
        T acc = T(0);
        for (long long j = t; j < per; j += blockDim.x) {
            const long long src = ((j / inner) * channels + c) * inner + j % inner;
            T v = gy[src];
            // a multiplication (not a select) so NaN/inf in gy behave as in relu_backward
            if (relu) v = v * (y[src] > T(0) ? T(1) : T(0));
            d[transpose ? c * per + j : src] = v;
            acc += v;
        }
        buf[t] = acc;
        __syncthreads();
        for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
            if (t < s) buf[t] += buf[t + s];
            __syncthreads();
        }
        if (t == 0 && has_bias) db[c] = buf[0];
        __syncthreads();   // buf is reused by the next channel
    }
}
