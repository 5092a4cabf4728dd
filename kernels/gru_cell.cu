// GRU cell element-wise math (PyTorch gate order r, z, n; reset applied to W_hn h + b_hn),
// one thread per (n, j), j < H.
// forward : r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r*gh_n),
//           h = (1-z)*n + z*h_prev.  Saves packed (N,4H) = [r | z | n | gh_n].
// backward: da_n = dh*(1-z)*(1-n^2);  dgi_n = da_n;  dgh_n = da_n*r
//           da_r = da_n*gh_n*r*(1-r); dgi_r = dgh_r = da_r
//           da_z = dh*(h_prev-n)*z*(1-z); dgi_z = dgh_z = da_z
//           dh_prev = dh*z  (only the direct path; the caller adds dgh @ W_hh)
#include "nnx_common.cuh"

template <typename T>
__global__ void gru_cell_forward(long long total, long long H, const T* __restrict__ gi,
                                 const T* __restrict__ gh, const T* __restrict__ h_prev,
                                 T* __restrict__ h, T* __restrict__ packed) {
    NNX_GRID_STRIDE(idx, total) {
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
__global__ void gru_cell_backward(long long total, long long H, const T* __restrict__ dh,
                                  const T* __restrict__ packed, const T* __restrict__ h_prev,
                                  T* __restrict__ dgi, T* __restrict__ dgh,
                                  T* __restrict__ dh_prev) {
    NNX_GRID_STRIDE(idx, total) {
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
