// tanh backward: gx = gy * (1 - y*y), where y = tanh(x) was saved by the forward pass.
#include "nnx_common.cuh"

template <typename T>
__global__ void tanh_backward(long long n, const T* __restrict__ y, const T* __restrict__ gy,
                              T* __restrict__ gx) {
    NNX_GRID_STRIDE(i, n) {
        const T v = y[i];
        gx[i] = gy[i] * (T(1) - v * v);
    }
}
