// nnx_common.cuh -- device helpers shared by every kernels/*.cu file.
//
// Scheme of every kernel file: each kernel is written once as `template <typename T>
// __global__ void name(...)` over its element type T and instantiated by name expression
// (`name<float>`, `name<double>`; see nnx/backend/kernel_loader.py).  Element-wise kernels use
// grid-stride loops with 64-bit indices, so any grid size is correct.
//
// kernel_loader inlines this header into each source before handing it to CuPy (so CuPy's
// compile cache, keyed by the source text, sees header changes); nvcc, g++ (the CPU grid
// simulator in tests/cuda_sim) and NVRTC tests find it next to the .cu files.
// Overloads below are the only per-type code: a half/bfloat16 instantiation needs its own
// overload of each helper it uses (and float accumulation where precision requires it).
#pragma once

// for (long long i = global thread index; i < n; i += total threads in the grid)
#define NNX_GRID_STRIDE(i, n)                                                                 \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);             \
         i += (long long)blockDim.x * gridDim.x)

__device__ __forceinline__ float nnx_exp(float x) { return expf(x); }
__device__ __forceinline__ double nnx_exp(double x) { return exp(x); }
__device__ __forceinline__ float nnx_log(float x) { return logf(x); }
__device__ __forceinline__ double nnx_log(double x) { return log(x); }
__device__ __forceinline__ float nnx_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double nnx_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float nnx_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double nnx_sqrt(double x) { return sqrt(x); }

// -inf and NaN by bit pattern (no <limits> under NVRTC); the argument only selects the type.
__device__ __forceinline__ float nnx_neg_inf(float) { return __int_as_float(0xff800000); }
__device__ __forceinline__ double nnx_neg_inf(double) {
    return __longlong_as_double(0xfff0000000000000LL);
}
__device__ __forceinline__ float nnx_nan(float) { return __int_as_float(0x7fc00000); }
__device__ __forceinline__ double nnx_nan(double) {
    return __longlong_as_double(0x7ff8000000000000LL);
}

// sigmoid(x) = 1 / (1 + exp(-x)); exp overflows to inf for very negative x, giving exactly 0.
template <typename T>
__device__ __forceinline__ T nnx_sigmoid(T x) {
    return T(1) / (T(1) + nnx_exp(-x));
}
