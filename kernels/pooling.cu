// 2-D max and average pooling on NCHW planes (PyTorch semantics, floor mode, no dilation).
// Output size per axis: OH = (H + 2*ph - kh) / sh + 1.
//  * max forward: one thread per output; padding counts as -inf; saves the arg-max as an int32
//    flat index h*W + w into the input plane (-1 if a window saw no input).  Ties keep the
//    first index in row-major window order; a NaN wins (and propagates), as in PyTorch.
//  * backward passes are gathers: one thread per input pixel loops over the windows that
//    contain it (oh in [ceil((h+ph-kh+1)/sh), floor((h+ph)/sh)]), so no atomics and the
//    result is deterministic.
//  * avg: divisor is kh*kw clipped to the padded extent (count_include_pad) or the number of
//    real pixels in the window (count_include_pad == 0), exactly like PyTorch.

#include "nnx_common.cuh"

// Range of output positions along one axis whose window contains input coordinate `h`.
__device__ __forceinline__ void nnx_window_range(int h, int k, int s, int p, int out, int* lo,
                                                 int* hi) {
    const int num = h + p - k + 1;
    *lo = num <= 0 ? 0 : (num + s - 1) / s;
    const int top = (h + p) / s;
    *hi = top < out - 1 ? top : out - 1;
}

__device__ __forceinline__ int nnx_avg_divisor(int oh, int ow, int H, int W, int kh, int kw,
                                               int sh, int sw, int ph, int pw, int include_pad) {
    int hs = oh * sh - ph, ws = ow * sw - pw;
    int he = hs + kh < H + ph ? hs + kh : H + ph;
    int we = ws + kw < W + pw ? ws + kw : W + pw;
    const int pool_size = (he - hs) * (we - ws);
    if (include_pad) return pool_size;
    hs = hs > 0 ? hs : 0;
    ws = ws > 0 ? ws : 0;
    he = he < H ? he : H;
    we = we < W ? we : W;
    return (he - hs) * (we - ws);
}

template <typename T>
__global__ void maxpool2d_forward(long long total, int H, int W, int OH,
                                  int OW, int kh, int kw, int sh, int sw,
                                  int ph, int pw, const T* __restrict__ x,
                                  T* __restrict__ y, int* __restrict__ argmax) {
    NNX_GRID_STRIDE(idx, total) {
        const int ow = (int)(idx % OW);
        const int oh = (int)((idx / OW) % OH);
        const long long plane = idx / ((long long)OW * OH);
        const T* xp = x + plane * H * W;
        const int hs = oh * sh - ph, ws = ow * sw - pw;
        T best = nnx_neg_inf(T(0));
        int best_i = -1;
        for (int h = hs > 0 ? hs : 0; h < hs + kh && h < H; ++h)
            for (int w = ws > 0 ? ws : 0; w < ws + kw && w < W; ++w) {
                const T v = xp[h * W + w];
                if (best_i < 0 || v > best || v != v) {
                    best = v;
                    best_i = h * W + w;
                    if (v != v) goto done;  // NaN: propagate the first one
                }
            }
    done:
        y[idx] = best;
        argmax[idx] = best_i;
    }
}

template <typename T>
__global__ void maxpool2d_backward(long long total, int H, int W, int OH,
                                   int OW, int kh, int kw, int sh, int sw,
                                   int ph, int pw, const T* __restrict__ gy,
                                   const int* __restrict__ argmax,
                                   T* __restrict__ gx) {
    NNX_GRID_STRIDE(idx, total) {
        const int w = (int)(idx % W);
        const int h = (int)((idx / W) % H);
        const long long plane = idx / ((long long)W * H);
        const long long obase = plane * OH * OW;
        const int me = h * W + w;
        int oh0, oh1, ow0, ow1;
        nnx_window_range(h, kh, sh, ph, OH, &oh0, &oh1);
        nnx_window_range(w, kw, sw, pw, OW, &ow0, &ow1);
        T acc = T(0);
        for (int oh = oh0; oh <= oh1; ++oh)
            for (int ow = ow0; ow <= ow1; ++ow) {
                const long long o = obase + (long long)oh * OW + ow;
                if (argmax[o] == me) acc += gy[o];
            }
        gx[idx] = acc;
    }
}

template <typename T>
__global__ void avgpool2d_forward(long long total, int H, int W, int OH,
                                  int OW, int kh, int kw, int sh, int sw,
                                  int ph, int pw, int include_pad,
                                  const T* __restrict__ x, T* __restrict__ y) {
    NNX_GRID_STRIDE(idx, total) {
        const int ow = (int)(idx % OW);
        const int oh = (int)((idx / OW) % OH);
        const long long plane = idx / ((long long)OW * OH);
        const T* xp = x + plane * H * W;
        const int hs = oh * sh - ph, ws = ow * sw - pw;
        T acc = T(0);
        for (int h = hs > 0 ? hs : 0; h < hs + kh && h < H; ++h)
            for (int w = ws > 0 ? ws : 0; w < ws + kw && w < W; ++w) acc += xp[h * W + w];
        const int div = nnx_avg_divisor(oh, ow, H, W, kh, kw, sh, sw, ph, pw, include_pad);
        y[idx] = acc / T(div);
    }
}

template <typename T>
__global__ void avgpool2d_backward(long long total, int H, int W, int OH,
                                   int OW, int kh, int kw, int sh, int sw,
                                   int ph, int pw, int include_pad,
                                   const T* __restrict__ gy,
                                   T* __restrict__ gx) {
    NNX_GRID_STRIDE(idx, total) {
        const int w = (int)(idx % W);
        const int h = (int)((idx / W) % H);
        const long long plane = idx / ((long long)W * H);
        const long long obase = plane * OH * OW;
        int oh0, oh1, ow0, ow1;
        nnx_window_range(h, kh, sh, ph, OH, &oh0, &oh1);
        nnx_window_range(w, kw, sw, pw, OW, &ow0, &ow1);
        T acc = T(0);
        for (int oh = oh0; oh <= oh1; ++oh)
            for (int ow = ow0; ow <= ow1; ++ow) {
                const int div = nnx_avg_divisor(oh, ow, H, W, kh, kw, sh, sw, ph, pw, include_pad);
                acc += gy[obase + (long long)oh * OW + ow] / T(div);
            }
        gx[idx] = acc;
    }
}
