// tanh backward: gx = gy * (1 - y*y), where y = tanh(x) was saved by the forward pass.
// Scheme used by every nnx kernel file: a templated __device__ body, instantiated as
// extern "C" kernels `<name>_f32` / `<name>_f64` (unmangled names, no name_expressions needed).
// Grid-stride loop with 64-bit indices; any grid size is correct.

template <typename T>
__device__ __forceinline__ void tanh_backward_body(long long n, const T* __restrict__ y,
                                                   const T* __restrict__ gy, T* __restrict__ gx) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T v = y[i];
        gx[i] = gy[i] * (T(1) - v * v);
    }
}

extern "C" __global__ void tanh_backward_f32(long long n, const float* __restrict__ y,
                                             const float* __restrict__ gy, float* __restrict__ gx) {
    tanh_backward_body<float>(n, y, gy, gx);
}

extern "C" __global__ void tanh_backward_f64(long long n, const double* __restrict__ y,
                                             const double* __restrict__ gy, double* __restrict__ gx) {
    tanh_backward_body<double>(n, y, gy, gx);
}
