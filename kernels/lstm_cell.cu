// LSTM cell element-wise math (PyTorch gate order i, f, g, o), one thread per (n, j), j < H.
// forward : i,f,o = sigmoid, g = tanh of the pre-activations gates (N,4H);
//           c = f*c_prev + i*g;  h = o*tanh(c).  Saves act (N,4H) = activated gates.
// backward: saved = (act, c_prev, c);  tc = tanh(c)
//           dct = dc + dh*o*(1 - tc^2)
//           d_o = dh*tc*o*(1-o);  d_i = dct*g*i*(1-i);  d_g = dct*i*(1-g^2);
//           d_f = dct*c_prev*f*(1-f);  dc_prev = dct*f
//           has_dh / has_dc == 0 means that gradient is zero (the pointer is then not read).
#include "nnx_common.cuh"

template <typename T>
__global__ void lstm_cell_forward(long long total, long long H, const T* __restrict__ gates,
                                  const T* __restrict__ c_prev, T* __restrict__ h,
                                  T* __restrict__ c, T* __restrict__ act) {
    NNX_GRID_STRIDE(idx, total) {
        const long long n = idx / H, j = idx % H;
        const long long base = n * 4 * H + j;
        const T ig = nnx_sigmoid(gates[base]);
        const T fg = nnx_sigmoid(gates[base + H]);
        const T gg = nnx_tanh(gates[base + 2 * H]);
        const T og = nnx_sigmoid(gates[base + 3 * H]);
        const T cn = fg * c_prev[idx] + ig * gg;
        c[idx] = cn;
        h[idx] = og * nnx_tanh(cn);
        act[base] = ig;
        act[base + H] = fg;
        act[base + 2 * H] = gg;
        act[base + 3 * H] = og;
    }
}

template <typename T>
__global__ void lstm_cell_backward(long long total, long long H, const T* __restrict__ dh,
                                   const T* __restrict__ dc, int has_dh, int has_dc,
                                   const T* __restrict__ act, const T* __restrict__ c_prev,
                                   const T* __restrict__ c, T* __restrict__ dgates,
                                   T* __restrict__ dc_prev) {
    NNX_GRID_STRIDE(idx, total) {
        const long long n = idx / H, j = idx % H;
        const long long base = n * 4 * H + j;
        const T ig = act[base], fg = act[base + H], gg = act[base + 2 * H], og = act[base + 3 * H];
        const T tc = nnx_tanh(c[idx]);
        const T gh = has_dh ? dh[idx] : T(0);
        const T dct = (has_dc ? dc[idx] : T(0)) + gh * og * (T(1) - tc * tc);
        dgates[base] = dct * gg * ig * (T(1) - ig);
        dgates[base + H] = dct * c_prev[idx] * fg * (T(1) - fg);
        dgates[base + 2 * H] = dct * ig * (T(1) - gg * gg);
        dgates[base + 3 * H] = gh * tc * og * (T(1) - og);
        dc_prev[idx] = dct * fg;
    }
}
