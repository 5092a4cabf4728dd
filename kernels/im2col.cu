// im2col: x (N,C,H,W) -> cols (C*KH*KW, N*OH*OW), row (c*KH + i)*KW + j, column
// (n*OH + oh)*OW + ow (see nnx/backend/base.py).  One thread per cols element, so writes are
// coalesced; out-of-image taps (padding) read as 0.
#include "nnx_common.cuh"

template <typename T>
__global__ void im2col(long long total, int N, int C, int H, int W, int KH, int KW, int OH,
                       int OW, int sh, int sw, int ph, int pw, int dh, int dw,
                       const T* __restrict__ x, T* __restrict__ cols) {
    const long long L = (long long)N * OH * OW;
    NNX_GRID_STRIDE(idx, total) {
        const long long col = idx % L;
        const long long row = idx / L;
        const int ow = (int)(col % OW);
        const long long t = col / OW;
        const int oh = (int)(t % OH);
        const long long n = t / OH;
        const int j = (int)(row % KW);
        const long long t2 = row / KW;
        const int i = (int)(t2 % KH);
        const long long c = t2 / KH;
        const int h = oh * sh - ph + i * dh;
        const int w = ow * sw - pw + j * dw;
        T v = T(0);
        if (h >= 0 && h < H && w >= 0 && w < W) v = x[((n * C + c) * H + h) * W + w];
        cols[idx] = v;
    }
}
