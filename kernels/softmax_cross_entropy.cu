// Softmax cross-entropy over the last axis of logits (N, C), with label smoothing s:
//   q = (1-s)*onehot(label) + s/C
//   forward : loss_n = lse_n - (1-s)*z[label] - s*mean_c(z)      (lse = max + log sum exp(z-max))
//   backward: g_nc   = row_scale[n] * (softmax(z_n)_c - q_nc)
// One block per row (grid-stride over rows); blockDim.x must be a power of two <= 256.
// Reductions go through shared memory in T (float for f32, double for f64); no warp shuffles.
// A label outside [0, C) yields NaN for that row instead of reading out of bounds.

#include "nnx_common.cuh"

#define NNX_SCE_MAX_THREADS 256

// Tree reductions; every thread gets the result.  The trailing barrier lets the caller reuse
// the buffers right away.
template <typename T>
__device__ __forceinline__ T nnx_block_max(T v, T* buf) {
    const unsigned t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            const T o = buf[t + s];
            if (o > buf[t] || o != o) buf[t] = o;
        }
        __syncthreads();
    }
    const T r = buf[0];
    __syncthreads();
    return r;
}

template <typename T>
__device__ __forceinline__ void nnx_block_sum2(T* a, T* b, T* bufa, T* bufb) {
    const unsigned t = threadIdx.x;
    bufa[t] = *a;
    bufb[t] = *b;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            bufa[t] += bufa[t + s];
            bufb[t] += bufb[t + s];
        }
        __syncthreads();
    }
    *a = bufa[0];
    *b = bufb[0];
    __syncthreads();
}

template <typename T>
__global__ void softmax_cross_entropy_forward(long long N, int C, const T* __restrict__ logits,
                                              const long long* __restrict__ labels,
                                              T smoothing, T* __restrict__ loss) {
    __shared__ T bufa[NNX_SCE_MAX_THREADS];
    __shared__ T bufb[NNX_SCE_MAX_THREADS];
    for (long long row = blockIdx.x; row < N; row += gridDim.x) {
        const T* z = logits + row * C;
        T m = nnx_neg_inf(T(0));
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const T v = z[c];
            if (v > m || v != v) m = v;
        }
        m = nnx_block_max(m, bufa);
        T se = T(0), sz = T(0);
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const T v = z[c];
            se += nnx_exp(v - m);
            sz += v;
        }
        nnx_block_sum2(&se, &sz, bufa, bufb);
        if (threadIdx.x == 0) {
            const long long label = labels[row];
            T out;
            if (label < 0 || label >= C) {
                out = nnx_nan(T(0));
            } else {
                const T lse = nnx_log(se) + m;
                out = lse - z[label];
                if (smoothing != T(0))
                    out = (T(1) - smoothing) * out + smoothing * (lse - sz / T(C));
            }
            loss[row] = out;
        }
    }
}

template <typename T>
__global__ void softmax_cross_entropy_backward(long long N, int C, const T* __restrict__ logits,
                                               const long long* __restrict__ labels,
                                               T smoothing, const T* __restrict__ row_scale,
                                               T* __restrict__ grad) {
    __shared__ T bufa[NNX_SCE_MAX_THREADS];
    __shared__ T bufb[NNX_SCE_MAX_THREADS];
    for (long long row = blockIdx.x; row < N; row += gridDim.x) {
        const T* z = logits + row * C;
        T* g = grad + row * C;
        T m = nnx_neg_inf(T(0));
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const T v = z[c];
            if (v > m || v != v) m = v;
        }
        m = nnx_block_max(m, bufa);
        T se = T(0), unused = T(0);
        for (int c = threadIdx.x; c < C; c += blockDim.x) se += nnx_exp(z[c] - m);
        nnx_block_sum2(&se, &unused, bufa, bufb);
        const long long label = labels[row];
        const bool bad = label < 0 || label >= C;
        const T inv = T(1) / se;
        const T scale = row_scale[row];
        const T off = smoothing / T(C);
        const T hit = T(1) - smoothing;
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            T q = off;
            if (c == label) q += hit;
            const T p = nnx_exp(z[c] - m) * inv;
            g[c] = bad ? nnx_nan(T(0)) : scale * (p - q);
        }
    }
}
