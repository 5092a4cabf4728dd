// Softmax cross-entropy over the last axis of logits (N, C), with label smoothing s:
//   q = (1-s)*onehot(label) + s/C
//   forward : loss_n = lse_n - (1-s)*z[label] - s*mean_c(z)      (lse = max + log sum exp(z-max))
//   backward: g_nc   = scale_n * (softmax(z_n)_c - q_nc),
//             scale_n = upstream * (row_scale ? row_scale[n] : 1) / (count ? max(*count, 1) : 1)
//   reduce  : out = {sum_n loss_n (/ max(count, 1) for a mean), count}, count = rows not ignored
// With `ignore` set, a row whose label == ignore_index gives loss 0 and gradient 0 (PyTorch's
// ignore_index).  Any other label outside [0, C) yields NaN for that row instead of reading out
// of bounds, and cross_entropy_reduce records it on the device (see there): no host read.
// Row kernels: one block per row (grid-stride over rows); blockDim.x must be a power of two
// <= 256.  Reductions go through shared memory in T (float for f32, double for f64); no warp
// shuffles.

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
                                              int ignore, long long ignore_index,
                                              T smoothing, T* __restrict__ loss) {
    __shared__ T bufa[NNX_SCE_MAX_THREADS];
    __shared__ T bufb[NNX_SCE_MAX_THREADS];
    for (long long row = blockIdx.x; row < N; row += gridDim.x) {
        const long long label = labels[row];
        if (ignore && label == ignore_index) {   // the same for the whole block: no barrier skew
            if (threadIdx.x == 0) loss[row] = T(0);
            continue;
        }
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
                                               int ignore, long long ignore_index, T smoothing,
                                               T upstream, const T* __restrict__ row_scale,
                                               int has_row_scale, const T* __restrict__ count,
                                               int divide, T* __restrict__ grad) {
    __shared__ T bufa[NNX_SCE_MAX_THREADS];
    __shared__ T bufb[NNX_SCE_MAX_THREADS];
    for (long long row = blockIdx.x; row < N; row += gridDim.x) {
        const long long label = labels[row];
        T* g = grad + row * C;
        if (ignore && label == ignore_index) {   // block-uniform, as in the forward
            for (int c = threadIdx.x; c < C; c += blockDim.x) g[c] = T(0);
            continue;
        }
        const T* z = logits + row * C;
        T m = nnx_neg_inf(T(0));
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            const T v = z[c];
            if (v > m || v != v) m = v;
        }
        m = nnx_block_max(m, bufa);
        T se = T(0), unused = T(0);
        for (int c = threadIdx.x; c < C; c += blockDim.x) se += nnx_exp(z[c] - m);
        nnx_block_sum2(&se, &unused, bufa, bufb);
        const bool bad = label < 0 || label >= C;
        const T inv = T(1) / se;
        T scale = has_row_scale ? upstream * row_scale[row] : upstream;
        if (divide) {
            const T n = count[0];
            scale = scale / (n != T(0) ? n : T(1));
        }
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

// The reduction of the per-row losses, in one block (launch with gridDim.x == 1 and a
// power-of-two blockDim.x <= 256), so the loss needs no host read:
//   out[0] = sum_n loss_n, divided by max(count, 1) when `mean` (all rows ignored: 0);
//   out[1] = count = number of rows whose label is not ignored (as T: the backward's divisor).
// Out-of-range labels: status (2 long longs, kept by the caller between calls) is sticky:
//   status[0] += number of rows with a label outside [0, C) that is not ignored;
//   status[1]  = the first such label (lowest row) of the first call that saw one.
// The host reads status only when it asks (CrossEntropyLoss.check_labels).  The sum's order is
// fixed by the block size: the same inputs give the same bits every time.
template <typename T>
__global__ void cross_entropy_reduce(long long N, int C, const T* __restrict__ loss,
                                     const long long* __restrict__ labels, int ignore,
                                     long long ignore_index, int mean, T* __restrict__ out,
                                     long long* __restrict__ status) {
    __shared__ T sum_buf[NNX_SCE_MAX_THREADS];
    __shared__ long long count_buf[NNX_SCE_MAX_THREADS];
    __shared__ long long bad_buf[NNX_SCE_MAX_THREADS];
    __shared__ long long first_buf[NNX_SCE_MAX_THREADS];
    const unsigned t = threadIdx.x;
    T sum = T(0);
    long long count = 0, bad = 0, first = N;
    for (long long row = t; row < N; row += blockDim.x) {
        const long long label = labels[row];
        if (ignore && label == ignore_index) continue;
        sum += loss[row];
        ++count;
        if (label < 0 || label >= C) {
            ++bad;
            if (row < first) first = row;
        }
    }
    sum_buf[t] = sum;
    count_buf[t] = count;
    bad_buf[t] = bad;
    first_buf[t] = first;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            sum_buf[t] += sum_buf[t + s];
            count_buf[t] += count_buf[t + s];
            bad_buf[t] += bad_buf[t + s];
            if (first_buf[t + s] < first_buf[t]) first_buf[t] = first_buf[t + s];
        }
        __syncthreads();
    }
    if (t == 0) {
        const T n = T(count_buf[0]);
        out[0] = mean ? sum_buf[0] / (count_buf[0] ? n : T(1)) : sum_buf[0];
        out[1] = n;
        if (bad_buf[0]) {
            if (status[0] == 0) status[1] = labels[first_buf[0]];
            status[0] += bad_buf[0];
        }
    }
}
