/* Max pooling for one element type T, included by maxpool2d.c (FN(name) adds _f32 / _f64).
 *
 *   y[p, oh, ow] = max_{i<KH, j<KW} x[p, oh*sh - ph + i, ow*sw - pw + j]   (padding = -inf)
 *   idx[p, oh, ow] = h*W + w of the first maximum in row-major window order; a NaN beats
 *                    everything (the last NaN wins): PyTorch's rule and index format.
 *                    p runs over the N*C planes.
 *   backward: dx[p, idx] += gy (windows may overlap when stride < kernel).
 */

int FN(maxpool2d_forward)(const T *x, T *y, int *idx, long planes, int H, int W,
                          int KH, int KW, int sh, int sw, int ph, int pw, int OH, int OW)
{
    for (long p = 0; p < planes; p++) {
        const T *xp = x + p * H * W;
        T *yp = y + p * OH * OW;
        int *ip = idx + p * OH * OW;
        if (KH == 2 && KW == 2 && sh == 2 && sw == 2 && ph == 0 && pw == 0) {
            /* the CNNs' case, without bounds checks */
            for (int oh = 0; oh < OH; oh++) {
                const T *r0 = xp + (2 * oh) * W, *r1 = r0 + W;
                for (int ow = 0; ow < OW; ow++) {
                    int w0 = 2 * ow, best = 2 * oh * W + w0;
                    T m = r0[w0], v;
                    v = r0[w0 + 1]; if (v > m || v != v) { m = v; best = 2 * oh * W + w0 + 1; }
                    v = r1[w0];     if (v > m || v != v) { m = v; best = (2 * oh + 1) * W + w0; }
                    v = r1[w0 + 1]; if (v > m || v != v) { m = v; best = (2 * oh + 1) * W + w0 + 1; }
                    yp[oh * OW + ow] = m;
                    ip[oh * OW + ow] = best;
                }
            }
            continue;
        }
        for (int oh = 0; oh < OH; oh++)
            for (int ow = 0; ow < OW; ow++) {
                int h0 = oh * sh - ph, w0 = ow * sw - pw, best = -1;
                T m = 0;
                for (int i = 0; i < KH; i++) {
                    int h = h0 + i;
                    if (h < 0 || h >= H) continue;
                    for (int j = 0; j < KW; j++) {
                        int w = w0 + j;
                        if (w < 0 || w >= W) continue;
                        T v = xp[h * W + w];
                        if (best < 0 || v > m || v != v) { m = v; best = h * W + w; }
                    }
                }
                if (best < 0) return -2;             /* a window entirely in the padding */
                yp[oh * OW + ow] = m;
                ip[oh * OW + ow] = best;
            }
    }
    return 0;
}

/* dx (planes, H, W) = 0, then dx[p, idx[p, o]] += gy[p, o]. */
int FN(maxpool2d_backward)(const T *gy, const int *idx, T *dx, long planes, int H, int W,
                           int OH, int OW)
{
    for (long p = 0; p < planes; p++) {
        T *dp = dx + p * H * W;
        const T *gp = gy + p * OH * OW;
        const int *ip = idx + p * OH * OW;
        memset(dp, 0, sizeof(T) * (size_t)H * W);
        for (int o = 0; o < OH * OW; o++) dp[ip[o]] += gp[o];
    }
    return 0;
}

/* Tasks for nnx_parallel_run (kernels/cpu/parallel.c), items = images [a, b).
 * maxpool2d_forward_task:  v = {x, y, idx, C, H, W, KH, KW, sh, sw, ph, pw, OH, OW} */
int FN(maxpool2d_forward_task)(const long long *v, long a, long b)
{
    const long C = v[3], H = v[4], W = v[5], OH = v[12], OW = v[13];
    return FN(maxpool2d_forward)((const T *)(size_t)v[0] + (size_t)(a * C * H * W),
                                 (T *)(size_t)v[1] + (size_t)(a * C * OH * OW),
                                 (int *)(size_t)v[2] + (size_t)(a * C * OH * OW), (b - a) * C,
                                 (int)H, (int)W, (int)v[6], (int)v[7], (int)v[8], (int)v[9],
                                 (int)v[10], (int)v[11], (int)OH, (int)OW);
}

/* maxpool2d_backward_task:  v = {gy, idx, dx, C, H, W, OH, OW} */
int FN(maxpool2d_backward_task)(const long long *v, long a, long b)
{
    const long C = v[3], H = v[4], W = v[5], OH = v[6], OW = v[7];
    return FN(maxpool2d_backward)((const T *)(size_t)v[0] + (size_t)(a * C * OH * OW),
                                  (const int *)(size_t)v[1] + (size_t)(a * C * OH * OW),
                                  (T *)(size_t)v[2] + (size_t)(a * C * H * W), (b - a) * C,
                                  (int)H, (int)W, (int)OH, (int)OW);
}
