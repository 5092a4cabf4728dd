/* Direct stride-1 convolution for one element type, included twice by conv2d.c with
 *   T   the element type (float / double)
 *   VT  a GCC vector of T filling one SIMD register (vector_size = VBYTES)
 *   VTU the same vector type with the alignment of T (unaligned loads and stores)
 *   FN(name) the exported name with its _f32 / _f64 suffix
 *
 * "Wide" layout: an image's padded input lives in a buffer xpad (C, Hp, Wp) and every output
 * (oh, ow) is computed at wide position p = oh*Wp + ow.  For kernel offset (i, j) the input
 * pixel of output p is xpad[c][p + i*dh*Wp + j*dw], so for ALL outputs one offset is a
 * contiguous run of xpad: no im2col matrix.  Positions with ow >= OW ("junk" columns) are
 * computed and then dropped; xpad has SLACK zeros after its end so runs never read past it.
 *
 *   forward   y[o, p]  = b[o] + sum_{c,i,j} W[o,c,i,j] * xpad[c, p + off(i,j)]
 *   weights   dW[o,c,i,j] += sum_p dy[o, p] * xpad[c, p + off(i,j)]    (dy zero at junk p)
 *
 * The backward pass for the input is the forward pass run on dy (see nnx/backend/native.py).
 */
#define NV ((int)(sizeof(VT) / sizeof(T)))      /* lanes per vector */

/* Every lane = s: one broadcast (s - 0 is exactly s for every s, -0.0 and NaN included;
 * "s + 0" is not, for s = -0.0, and would cost an extra add). */
static inline VT FN(splat)(T s)
{
    return s - (VT){0};
}

/* xpad[c, ph + h, pw + w] = x[c, h, w]; border and slack stay zero (set by the caller once). */
static void FN(pad_image)(const T *x, T *xpad, int C, int H, int W, int Hp, int Wp,
                          int ph, int pw)
{
    for (int c = 0; c < C; c++)
        for (int h = 0; h < H; h++)
            memcpy(xpad + ((size_t)c * Hp + ph + h) * Wp + pw, x + ((size_t)c * H + h) * W,
                   sizeof(T) * (size_t)W);
}

/* One output block: OB channels starting at o0 x PV vectors of positions starting at p0.
 * wt is (K, Opad) with K = C*KH*KW: the OB weights of one (c,i,j) are contiguous. */
static inline void FN(fwd_block)(const T *xpad, const T *wt, const int *off, int K, int Opad,
                                 int o0, int p0, T *yw, int Lw, const T *bias_pad)
{
    VT acc[OB][PV];
    for (int b = 0; b < OB; b++) {
        VT bb = FN(splat)(bias_pad[o0 + b]);
        for (int v = 0; v < PV; v++) acc[b][v] = bb;
    }
    for (int k = 0; k < K; k++) {
        const T *xr = xpad + off[k] + p0;
        const T *wk = wt + (size_t)k * Opad + o0;
        VT xv[PV];
        for (int v = 0; v < PV; v++) xv[v] = *(const VTU *)(xr + v * NV);
        for (int b = 0; b < OB; b++) {
            VT wb = FN(splat)(wk[b]);
            for (int v = 0; v < PV; v++) acc[b][v] += wb * xv[v];
        }
    }
    for (int b = 0; b < OB; b++)
        for (int v = 0; v < PV; v++)
            *(VTU *)(yw + (size_t)(o0 + b) * Lw + p0 + v * NV) = acc[b][v];
}

/* y (N, O, OH, OW) = conv(x (N, C, H, W), w (O, C, KH, KW)) + bias, stride 1.
 * bias may be NULL.  Returns 0, or -1 when out of memory. */
int FN(conv2d_forward)(const T *x, const T *w, const T *bias, T *y,
                       int N, int C, int H, int W, int O, int KH, int KW,
                       int ph, int pw, int dh, int dw)
{
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const int OH = Hp - dh * (KH - 1), OW = Wp - dw * (KW - 1);
    const int K = C * KH * KW, Opad = (O + OB - 1) / OB * OB, step = PV * NV;
    const int Lw = (OH * Wp + step - 1) / step * step;          /* wide positions, rounded */
    const size_t xsize = (size_t)C * Hp * Wp + (size_t)(Lw - OH * Wp) + (size_t)dw * (KW - 1) + step;
    T *xpad = calloc(xsize, sizeof(T));
    T *wt = calloc((size_t)K * Opad + Opad, sizeof(T));
    T *yw = malloc(sizeof(T) * (size_t)Opad * Lw);
    int *off = malloc(sizeof(int) * (size_t)K);
    if (!xpad || !wt || !yw || !off) { free(xpad); free(wt); free(yw); free(off); return -1; }
    T *bias_pad = wt + (size_t)K * Opad;
    for (int o = 0; o < O; o++) {
        bias_pad[o] = bias ? bias[o] : (T)0;
        for (int k = 0; k < K; k++) wt[(size_t)k * Opad + o] = w[(size_t)o * K + k];
    }
    for (int c = 0, k = 0; c < C; c++)
        for (int i = 0; i < KH; i++)
            for (int j = 0; j < KW; j++, k++)
                off[k] = (c * Hp + i * dh) * Wp + j * dw;

    for (int n = 0; n < N; n++) {
        FN(pad_image)(x + (size_t)n * C * H * W, xpad, C, H, W, Hp, Wp, ph, pw);
        for (int o0 = 0; o0 < Opad; o0 += OB)
            for (int p0 = 0; p0 < Lw; p0 += step)
                FN(fwd_block)(xpad, wt, off, K, Opad, o0, p0, yw, Lw, bias_pad);
        T *yn = y + (size_t)n * O * OH * OW;
        for (int o = 0; o < O; o++)               /* drop the junk columns */
            for (int oh = 0; oh < OH; oh++)
                memcpy(yn + ((size_t)o * OH + oh) * OW, yw + (size_t)o * Lw + (size_t)oh * Wp,
                       sizeof(T) * (size_t)OW);
    }
    free(xpad); free(wt); free(yw); free(off);
    return 0;
}

/* Horizontal sum of one vector. */
static inline T FN(hsum)(VT v)
{
    T s = 0;
    for (int l = 0; l < NV; l++) s += v[l];
    return s;
}

/* dW (O, C, KH, KW) += sum_n dy_n (*) x_n and db (O) += sum dy (db may be NULL), stride 1:
 * the weight and bias gradients of conv2d_forward.  dW and db are accumulated into, not
 * overwritten.  Returns 0, or -1 when out of memory. */
int FN(conv2d_backward_weight)(const T *x, const T *dy, T *dW, T *db,
                               int N, int C, int H, int W, int O, int KH, int KW,
                               int ph, int pw, int dh, int dw)
{
    const int Hp = H + 2 * ph, Wp = W + 2 * pw;
    const int OH = Hp - dh * (KH - 1), OW = Wp - dw * (KW - 1);
    const int K = C * KH * KW, Kpad = (K + WKB - 1) / WKB * WKB, Opad = (O + WOB - 1) / WOB * WOB;
    const int Lw = (OH * Wp + NV - 1) / NV * NV;
    const size_t xsize = (size_t)C * Hp * Wp + (size_t)(Lw - OH * Wp) + (size_t)dw * (KW - 1) + NV;
    T *xpad = calloc(xsize, sizeof(T));
    T *dyw = calloc((size_t)Opad * Lw, sizeof(T));       /* junk columns and padded rows stay 0 */
    VTU *acc_dw = calloc((size_t)Opad * Kpad, sizeof(VTU));  /* per-lane partial sums (calloc does not align to a vector) */
    int *off = malloc(sizeof(int) * (size_t)Kpad);
    if (!xpad || !dyw || !acc_dw || !off) {
        free(xpad); free(dyw); free(acc_dw); free(off); return -1;
    }
    for (int c = 0, k = 0; c < C; c++)
        for (int i = 0; i < KH; i++)
            for (int j = 0; j < KW; j++, k++)
                off[k] = (c * Hp + i * dh) * Wp + j * dw;
    for (int k = K; k < Kpad; k++) off[k] = off[K - 1];   /* padded rows: computed, discarded */

    for (int n = 0; n < N; n++) {
        FN(pad_image)(x + (size_t)n * C * H * W, xpad, C, H, W, Hp, Wp, ph, pw);
        const T *dyn = dy + (size_t)n * O * OH * OW;
        for (int o = 0; o < O; o++)
            for (int oh = 0; oh < OH; oh++)
                memcpy(dyw + (size_t)o * Lw + (size_t)oh * Wp, dyn + ((size_t)o * OH + oh) * OW,
                       sizeof(T) * (size_t)OW);
        if (db)
            for (int o = 0; o < O; o++) {
                VT s = (VT){0};
                for (int p = 0; p < Lw; p += NV) s += *(const VTU *)(dyw + (size_t)o * Lw + p);
                db[o] += FN(hsum)(s);
            }
        for (int o0 = 0; o0 < Opad; o0 += WOB)
            for (int k0 = 0; k0 < Kpad; k0 += WKB) {
                VT acc[WOB][WKB];
                for (int b = 0; b < WOB; b++)
                    for (int q = 0; q < WKB; q++) acc[b][q] = (VT){0};
                for (int p = 0; p < Lw; p += NV) {
                    VT dv[WOB], xv[WKB];
                    for (int b = 0; b < WOB; b++) dv[b] = *(const VTU *)(dyw + (size_t)(o0 + b) * Lw + p);
                    for (int q = 0; q < WKB; q++) xv[q] = *(const VTU *)(xpad + off[k0 + q] + p);
                    for (int b = 0; b < WOB; b++)
                        for (int q = 0; q < WKB; q++) acc[b][q] += dv[b] * xv[q];
                }
                for (int b = 0; b < WOB; b++)
                    for (int q = 0; q < WKB; q++)
                        acc_dw[(size_t)(o0 + b) * Kpad + k0 + q] += acc[b][q];
            }
    }
    for (int o = 0; o < O; o++)
        for (int k = 0; k < K; k++) dW[(size_t)o * K + k] += FN(hsum)(acc_dw[(size_t)o * Kpad + k]);
    free(xpad); free(dyw); free(acc_dw); free(off);
    return 0;
}
#undef NV
