// GRU cell element-wise math (PyTorch gate order r, z, n; reset applied to W_hn h + b_hn),
// one thread per (n, j), j < H.
// forward : r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r*gh_n),
//           h = (1-z)*n + z*h_prev.  Saves packed (N,4H) = [r | z | n | gh_n].
// backward: da_n = dh*(1-z)*(1-n^2);  dgi_n = da_n;  dgh_n = da_n*r
//           da_r = da_n*gh_n*r*(1-r); dgi_r = dgh_r = da_r
//           da_z = dh*(h_prev-n)*z*(1-z); dgi_z = dgh_z = da_z
//           dh_prev = dh*z  (only the direct path; the caller adds dgh @ W_hh)

__device__ __forceinline__ float nnx_exp(float x) { return expf(x); }
__device__ __forceinline__ double nnx_exp(double x) { return exp(x); }
__device__ __forceinline__ float nnx_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double nnx_tanh(double x) { return tanh(x); }

template <typename T>
__device__ __forceinline__ T nnx_sigmoid(T x) {
    return T(1) / (T(1) + nnx_exp(-x));
}

template <typename T>
__device__ __forceinline__ void gru_forward_body(long long total, long long H,
                                                 const T* __restrict__ gi, const T* __restrict__ gh,
                                                 const T* __restrict__ h_prev, T* __restrict__ h,
                                                 T* __restrict__ packed) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long n = idx / H, j = idx % H;
        const long long b3 = n * 3 * H + j, b4 = n * 4 * H + j;
        const T r = nnx_sigmoid(gi[b3] + gh[b3]);
        const T z = nnx_sigmoid(gi[b3 + H] + gh[b3 + H]);
        const T ghn = gh[b3 + 2 * H];
        const T nn = nnx_tanh(gi[b3 + 2 * H] + r * ghn);
        h[idx] = (T(1) - z) * nn + z * h_prev[idx];
        packed[b4] = r;
        packed[b4 + H] = z;
        packed[b4 + 2 * H] = nn;
        packed[b4 + 3 * H] = ghn;
    }
}

template <typename T>
__device__ __forceinline__ void gru_backward_body(long long total, long long H,
                                                  const T* __restrict__ dh,
                                                  const T* __restrict__ packed,
                                                  const T* __restrict__ h_prev,
                                                  T* __restrict__ dgi, T* __restrict__ dgh,
                                                  T* __restrict__ dh_prev) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += stride) {
        const long long n = idx / H, j = idx % H;
        const long long b3 = n * 3 * H + j, b4 = n * 4 * H + j;
        const T r = packed[b4], z = packed[b4 + H], nn = packed[b4 + 2 * H],
                ghn = packed[b4 + 3 * H];
        const T g = dh[idx];
        const T dan = g * (T(1) - z) * (T(1) - nn * nn);
        const T dar = dan * ghn * r * (T(1) - r);
        const T daz = g * (h_prev[idx] - nn) * z * (T(1) - z);
        dgi[b3] = dar;
        dgh[b3] = dar;
        dgi[b3 + H] = daz;
        dgh[b3 + H] = daz;
        dgi[b3 + 2 * H] = dan;
        dgh[b3 + 2 * H] = dan * r;
        dh_prev[idx] = g * z;
    }
}

extern "C" __global__ void gru_cell_forward_f32(long long total, long long H,
                                                const float* __restrict__ gi,
                                                const float* __restrict__ gh,
                                                const float* __restrict__ h_prev,
                                                float* __restrict__ h, float* __restrict__ packed) {
    gru_forward_body<float>(total, H, gi, gh, h_prev, h, packed);
}
extern "C" __global__ void gru_cell_forward_f64(long long total, long long H,
                                                const double* __restrict__ gi,
                                                const double* __restrict__ gh,
                                                const double* __restrict__ h_prev,
                                                double* __restrict__ h, double* __restrict__ packed) {
    gru_forward_body<double>(total, H, gi, gh, h_prev, h, packed);
}
extern "C" __global__ void gru_cell_backward_f32(long long total, long long H,
                                                 const float* __restrict__ dh,
                                                 const float* __restrict__ packed,
                                                 const float* __restrict__ h_prev,
                                                 float* __restrict__ dgi, float* __restrict__ dgh,
                                                 float* __restrict__ dh_prev) {
    gru_backward_body<float>(total, H, dh, packed, h_prev, dgi, dgh, dh_prev);
}
extern "C" __global__ void gru_cell_backward_f64(long long total, long long H,
                                                 const double* __restrict__ dh,
                                                 const double* __restrict__ packed,
                                                 const double* __restrict__ h_prev,
                                                 double* __restrict__ dgi, double* __restrict__ dgh,
                                                 double* __restrict__ dh_prev) {
    gru_backward_body<double>(total, H, dh, packed, h_prev, dgi, dgh, dh_prev);
}
