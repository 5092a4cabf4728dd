// ReLU family: y = max(x, 0); fused y = max(x + b[c], 0) with b along axis 1 of an
// (N, C, inner...) array; backward gx = gy * [y > 0].
// `v < 0 ? 0 : v` (not `v > 0 ? v : 0`) so a NaN input stays NaN, like np.maximum.
// gy * [y > 0] is a multiplication (not a select) so NaN/inf in gy behave as in NumPy.
#include "nnx_common.cuh"

template <typename T>
__global__ void relu(long long n, const T* __restrict__ x, T* __restrict__ y) {
    NNX_GRID_STRIDE(i, n) {
        const T v = x[i];
        y[i] = v < T(0) ? T(0) : v;
    }
}

template <typename T>
__global__ void bias_relu(long long n, long long channels, long long inner,
                          const T* __restrict__ x, const T* __restrict__ b, T* __restrict__ y) {
    NNX_GRID_STRIDE(i, n) {
        const long long c = (i / inner) % channels;
        const T v = x[i] + b[c];
        y[i] = v < T(0) ? T(0) : v;
    }
}

template <typename T>
__global__ void relu_backward(long long n, const T* __restrict__ y, const T* __restrict__ gy,
                              T* __restrict__ gx) {
    NNX_GRID_STRIDE(i, n) gx[i] = gy[i] * (y[i] > T(0) ? T(1) : T(0));
}
