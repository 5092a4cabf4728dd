// col2im, the adjoint of im2col, as a gather: one thread per input pixel (n,c,h,w) sums the
// cols entries of every kernel tap (i,j) whose window position hits it.  No atomics, so the
// result is deterministic.  Tap (i,j) of output (oh,ow) reads h = oh*sh - ph + i*dh, hence
// oh = (h + ph - i*dh) / sh when that is a non-negative multiple of sh below OH.
#include "nnx_common.cuh"

template <typename T>
__global__ void col2im(long long total, int N, int C, int H, int W, int KH, int KW, int OH,
                       int OW, int sh, int sw, int ph, int pw, int dh, int dw,
                       const T* __restrict__ cols, T* __restrict__ x) {
    const long long L = (long long)N * OH * OW;
    NNX_GRID_STRIDE(idx, total) {
        const int w = (int)(idx % W);
        const long long t = idx / W;
        const int h = (int)(t % H);
        const long long t2 = t / H;
        const long long c = t2 % C;
        const long long n = t2 / C;
        T acc = T(0);
        for (int i = 0; i < KH; ++i) {
            const int hp = h + ph - i * dh;
            if (hp < 0) break;  // hp only decreases with i
            if (hp % sh != 0) continue;
            const int oh = hp / sh;
            if (oh >= OH) continue;
            for (int j = 0; j < KW; ++j) {
                const int wp = w + pw - j * dw;
                if (wp < 0) break;
                if (wp % sw != 0) continue;
                const int ow = wp / sw;
                if (ow >= OW) continue;
                const long long row = (c * KH + i) * KW + j;
                acc += cols[row * L + (n * OH + oh) * OW + ow];
            }
        }
        x[idx] = acc;
    }
}
