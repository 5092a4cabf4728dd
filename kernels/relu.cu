// ReLU family: y = max(x, 0); fused y = max(x + b[c], 0) with b along axis 1 of an
// (N, C, inner...) array; backward gx = gy * [y > 0].
// `v < 0 ? 0 : v` (not `v > 0 ? v : 0`) so a NaN input stays NaN, like np.maximum.
// gy * [y > 0] is a multiplication (not a select) so NaN/inf in gy behave as in NumPy.

template <typename T>
__device__ __forceinline__ void relu_body(long long n, const T* __restrict__ x, T* __restrict__ y) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const T v = x[i];
        y[i] = v < T(0) ? T(0) : v;
    }
}

template <typename T>
__device__ __forceinline__ void bias_relu_body(long long n, long long channels, long long inner,
                                               const T* __restrict__ x, const T* __restrict__ b,
                                               T* __restrict__ y) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const long long c = (i / inner) % channels;
        const T v = x[i] + b[c];
        y[i] = v < T(0) ? T(0) : v;
    }
}

template <typename T>
__device__ __forceinline__ void relu_backward_body(long long n, const T* __restrict__ y,
                                                   const T* __restrict__ gy, T* __restrict__ gx) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        gx[i] = gy[i] * (y[i] > T(0) ? T(1) : T(0));
}

extern "C" __global__ void relu_f32(long long n, const float* __restrict__ x, float* __restrict__ y) {
    relu_body<float>(n, x, y);
}
extern "C" __global__ void relu_f64(long long n, const double* __restrict__ x, double* __restrict__ y) {
    relu_body<double>(n, x, y);
}

extern "C" __global__ void bias_relu_f32(long long n, long long channels, long long inner,
                                         const float* __restrict__ x, const float* __restrict__ b,
                                         float* __restrict__ y) {
    bias_relu_body<float>(n, channels, inner, x, b, y);
}
extern "C" __global__ void bias_relu_f64(long long n, long long channels, long long inner,
                                         const double* __restrict__ x, const double* __restrict__ b,
                                         double* __restrict__ y) {
    bias_relu_body<double>(n, channels, inner, x, b, y);
}

extern "C" __global__ void relu_backward_f32(long long n, const float* __restrict__ y,
                                             const float* __restrict__ gy, float* __restrict__ gx) {
    relu_backward_body<float>(n, y, gy, gx);
}
extern "C" __global__ void relu_backward_f64(long long n, const double* __restrict__ y,
                                             const double* __restrict__ gy, double* __restrict__ gx) {
    relu_backward_body<double>(n, y, gy, gx);
}
