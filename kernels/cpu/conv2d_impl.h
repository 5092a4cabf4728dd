/* Direct convolution for one element type, included twice by conv2d.c with
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
 *
 * Stride (sh, sw) > 1: the padded image is stored as sh*sw "phases", phase (a, b) holding
 * xpad[c, a::sh, b::sw] as a (C, Hq, Wq) block (Hq = ceil(Hp/sh), Wq = ceil(Wp/sw)).  Input
 * row oh*sh + i*dh is row oh + (i*dh)/sh of phase (i*dh) % sh, so with wide positions
 * p = oh*Wq + ow every kernel offset is again one contiguous run:
 *   off(c,i,j) = ((a*sw + b)*C + c)*Hq*Wq + ((i*dh)/sh)*Wq + (j*dw)/sw,  a = (i*dh)%sh,
 *   b = (j*dw)%sw.  With stride 1 this is the layout above (one phase, Hq = Hp, Wq = Wp).
 */
#define NV ((int)(sizeof(VT) / sizeof(T)))      /* lanes per vector */

/* Every lane = s: one broadcast (s - 0 is exactly s for every s, -0.0 and NaN included;
 * "s + 0" is not, for s = -0.0, and would cost an extra add). */
static inline VT FN(splat)(T s)
{
    return s - (VT){0};
}

/* Geometry shared by the forward and weight-gradient kernels. */
typedef struct { int Hp, Wp, Hq, Wq, OH, OW, K; } FN(geom);

static FN(geom) FN(geometry)(int C, int H, int W, int KH, int KW, int ph, int pw, int sh, int sw,
                             int dh, int dw)
{
    FN(geom) g;
    g.Hp = H + 2 * ph; g.Wp = W + 2 * pw;
    g.Hq = (g.Hp + sh - 1) / sh; g.Wq = (g.Wp + sw - 1) / sw;
    g.OH = (g.Hp - dh * (KH - 1) - 1) / sh + 1; g.OW = (g.Wp - dw * (KW - 1) - 1) / sw + 1;
    g.K = C * KH * KW;
    return g;
}

/* off[k] for k = (c*KH + i)*KW + j (see the phase layout above). */
static void FN(offsets)(int *off, FN(geom) g, int C, int KH, int KW, int sh, int sw, int dh,
                        int dw)
{
    for (int c = 0, k = 0; c < C; c++)
        for (int i = 0; i < KH; i++)
            for (int j = 0; j < KW; j++, k++) {
                int a = (i * dh) % sh, b = (j * dw) % sw;
                off[k] = ((a * sw + b) * C + c) * g.Hq * g.Wq + ((i * dh) / sh) * g.Wq
                         + (j * dw) / sw;
            }
}

/* The phases of the padded image: xph[(a*sw + b), c, u, v] = x[c, u*sh + a - ph,
 * v*sw + b - pw] where that is inside x; border and slack stay zero (set by the caller
 * once: the same positions are written for every image). */
static void FN(pad_image)(const T *x, T *xph, int C, int H, int W, FN(geom) g, int ph, int pw,
                          int sh, int sw)
{
    if (sh == 1 && sw == 1) {
        for (int c = 0; c < C; c++)
            for (int h = 0; h < H; h++)
                memcpy(xph + ((size_t)c * g.Hp + ph + h) * g.Wp + pw,
                       x + ((size_t)c * H + h) * W, sizeof(T) * (size_t)W);
        return;
    }
    for (int a = 0; a < sh; a++)
        for (int b = 0; b < sw; b++) {
            int v0 = 0;                                   /* first v with v*sw + b >= pw */
            while (v0 * sw + b < pw) v0++;
            for (int c = 0; c < C; c++) {
                T *dst = xph + ((size_t)(a * sw + b) * C + c) * g.Hq * g.Wq;
                for (int u = 0; u < g.Hq; u++) {
                    int h = u * sh + a - ph;
                    if (h < 0 || h >= H) continue;
                    const T *src = x + ((size_t)c * H + h) * W;
                    T *d = dst + (size_t)u * g.Wq;
                    for (int v = v0, w = v0 * sw + b - pw; v < g.Wq && w < W; v++, w += sw)
                        d[v] = src[w];
                }
            }
        }
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

/* y (N, O, OH, OW) = conv(x (N, C, H, W), w (O, C, KH, KW)) + bias, stride (sh, sw).
 * bias may be NULL.  Returns 0, or -1 when out of memory. */
int FN(conv2d_forward)(const T *x, const T *w, const T *bias, T *y,
                       int N, int C, int H, int W, int O, int KH, int KW,
                       int ph, int pw, int sh, int sw, int dh, int dw)
{
    const FN(geom) g = FN(geometry)(C, H, W, KH, KW, ph, pw, sh, sw, dh, dw);
    const int OH = g.OH, OW = g.OW, Wq = g.Wq, K = g.K;
    const int Opad = (O + OB - 1) / OB * OB, step = PV * NV;
    const int Lw = (OH * Wq + step - 1) / step * step;          /* wide positions, rounded */
    const size_t xsize = (size_t)sh * sw * C * g.Hq * Wq + (size_t)(Lw - OH * Wq)
                         + (size_t)dw * (KW - 1) + step;
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
    FN(offsets)(off, g, C, KH, KW, sh, sw, dh, dw);

    for (int n = 0; n < N; n++) {
        FN(pad_image)(x + (size_t)n * C * H * W, xpad, C, H, W, g, ph, pw, sh, sw);
        for (int o0 = 0; o0 < Opad; o0 += OB)
            for (int p0 = 0; p0 < Lw; p0 += step)
                FN(fwd_block)(xpad, wt, off, K, Opad, o0, p0, yw, Lw, bias_pad);
        T *yn = y + (size_t)n * O * OH * OW;
        for (int o = 0; o < O; o++)               /* drop the junk columns */
            for (int oh = 0; oh < OH; oh++)
                memcpy(yn + ((size_t)o * OH + oh) * OW, yw + (size_t)o * Lw + (size_t)oh * Wq,
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

/* dW (O, C, KH, KW) += sum_n dy_n (*) x_n and db (O) += sum dy (db may be NULL), stride
 * (sh, sw): the weight and bias gradients of conv2d_forward.  dW and db are accumulated into,
 * not overwritten.  Returns 0, or -1 when out of memory. */
int FN(conv2d_backward_weight)(const T *x, const T *dy, T *dW, T *db,
                               int N, int C, int H, int W, int O, int KH, int KW,
                               int ph, int pw, int sh, int sw, int dh, int dw)
{
    const FN(geom) g = FN(geometry)(C, H, W, KH, KW, ph, pw, sh, sw, dh, dw);
    const int OH = g.OH, OW = g.OW, Wp = g.Wq, K = g.K;   /* Wp: the wide row length */
    const int Kpad = (K + WKB - 1) / WKB * WKB, Opad = (O + WOB - 1) / WOB * WOB;
    const int Lw = (OH * Wp + NV - 1) / NV * NV;
    const size_t xsize = (size_t)sh * sw * C * g.Hq * Wp + (size_t)(Lw - OH * Wp)
                         + (size_t)dw * (KW - 1) + NV;
    T *xpad = calloc(xsize, sizeof(T));
    T *dyw = calloc((size_t)Opad * Lw, sizeof(T));       /* junk columns and padded rows stay 0 */
    VTU *acc_dw = calloc((size_t)Opad * Kpad, sizeof(VTU));  /* per-lane partial sums (calloc does not align to a vector) */
    int *off = malloc(sizeof(int) * (size_t)Kpad);
    if (!xpad || !dyw || !acc_dw || !off) {
        free(xpad); free(dyw); free(acc_dw); free(off); return -1;
    }
    FN(offsets)(off, g, C, KH, KW, sh, sw, dh, dw);
    for (int k = K; k < Kpad; k++) off[k] = off[K - 1];   /* padded rows: computed, discarded */

    for (int n = 0; n < N; n++) {
        FN(pad_image)(x + (size_t)n * C * H * W, xpad, C, H, W, g, ph, pw, sh, sw);
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
