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
 *   weights   dW[o,c,i,j]  = sum_{n,oh,ow} dy[n, o, oh, ow] * xpad_n[c, oh*Wq + ow + off(i,j)]
 *             (real columns only; vectorised over o, see wgt_block)
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
 * once: the same positions are written for every image).  Strided convolutions have dilation
 * 1, so a kernel smaller than the stride reads only phases a < KH, b < KW: the rest stay 0. */
static void FN(pad_image)(const T *x, T *xph, int C, int H, int W, FN(geom) g, int ph, int pw,
                          int sh, int sw, int KH, int KW)
{
    if (sh == 1 && sw == 1) {
        for (int c = 0; c < C; c++)
            for (int h = 0; h < H; h++)
                memcpy(xph + ((size_t)c * g.Hp + ph + h) * g.Wp + pw,
                       x + ((size_t)c * H + h) * W, sizeof(T) * (size_t)W);
        return;
    }
    for (int a = 0; a < sh && a < KH; a++)          /* phases a >= KH are never read (dh = 1) */
        for (int b = 0; b < sw && b < KW; b++) {
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
        FN(pad_image)(x + (size_t)n * C * H * W, xpad, C, H, W, g, ph, pw, sh, sw, KH, KW);
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

/* dst[p*ld + o] = src[o*P + p] in tiles of 16 positions: each tile reads one cache line per
 * row o and writes 16 rows of dst that stay in L1 (a plain loop over p then o reads O rows
 * P*sizeof(T) apart: 4 KiB apart at 32x32 maps, the same L1 set for every row). */
static void FN(transpose)(const T *src, T *dst, int O, int P, int ld)
{
    for (int p0 = 0; p0 < P; p0 += 16) {
        const int pn = P - p0 < 16 ? P - p0 : 16;
        for (int o = 0; o < O; o++) {
            const T *s = src + (size_t)o * P + p0;
            T *d = dst + (size_t)p0 * ld + o;
            for (int q = 0; q < pn; q++) d[(size_t)q * ld] = s[q];
        }
    }
}

/* One weight-gradient block: KB rows k0.. of the (c, i, j) index x OV vectors of output
 * channels o0.., summed over every position of a group of images (the accumulators stay in
 * registers for the whole group: G*OH*OW positions per block visit).  Vectorised over
 * output channels: dyt is dy transposed to (image, oh, ow, Opad), so one position's OV
 * vectors are contiguous, and x is broadcast.  Only the OW real columns are visited (no
 * junk columns).  KB and OV are compile-time constants at every call (always inlined). */
static inline __attribute__((always_inline)) void
FN(wgt_block)(const T *xg, size_t xstride, const T *dyt, const int *off, int G, int OH, int OW,
              int Wq, int Opad, int k0, int o0, T *acc_out, int KB, int OV)
{
    VT acc[WKB_MAX][2];
    for (int q = 0; q < KB; q++)
        for (int v = 0; v < OV; v++) acc[q][v] = (VT){0};
    const T *d = dyt + o0;
    for (int n = 0; n < G; n++)
        for (int oh = 0; oh < OH; oh++) {
            const T *xr = xg + (size_t)n * xstride + (size_t)oh * Wq;
            for (int ow = 0; ow < OW; ow++, d += Opad) {
                VT dv[2];
                for (int v = 0; v < OV; v++) dv[v] = *(const VTU *)(d + v * NV);
                for (int q = 0; q < KB; q++) {
                    VT xb = FN(splat)(xr[off[k0 + q] + ow]);
                    for (int v = 0; v < OV; v++) acc[q][v] += xb * dv[v];
                }
            }
        }
    for (int q = 0; q < KB; q++)
        for (int v = 0; v < OV; v++)
            *(VTU *)(acc_out + (size_t)(k0 + q) * Opad + o0 + v * NV) = acc[q][v];
}

/* The weight and bias gradients of conv2d_forward, stride (sh, sw), per group of G images:
 *   dWg[g] (O, C, KH, KW) = sum_{n in group g} dy_n (*) x_n,   dbg[g] (O) = sum dy_n
 * for the groups g = 0 .. ceil(N/G)-1 of this call's images (the last may be short).  Each
 * group's sum runs over its images and positions in order, so a group's result does not
 * depend on how the caller splits the batch into calls; the caller sums the groups in a
 * fixed order.  dWg and dbg are overwritten; dbg may be NULL.  Returns 0, or -1 when out of
 * memory. */
int FN(conv2d_backward_weight)(const T *x, const T *dy, T *dWg, T *dbg, int N, int G,
                               int C, int H, int W, int O, int KH, int KW,
                               int ph, int pw, int sh, int sw, int dh, int dw)
{
    const FN(geom) g = FN(geometry)(C, H, W, KH, KW, ph, pw, sh, sw, dh, dw);
    const int OH = g.OH, OW = g.OW, K = g.K, P = OH * OW;
    const int OV = (O + NV - 1) / NV >= 2 ? 2 : 1, KB = OV == 2 ? WKB2 : WKB1;
    const int Opad = (O + OV * NV - 1) / (OV * NV) * (OV * NV);
    const int Kpad = (K + KB - 1) / KB * KB;
    const size_t xstride = (size_t)sh * sw * C * g.Hq * g.Wq;
    if (G > N) G = N;
    T *xg = calloc(xstride * (size_t)G, sizeof(T));     /* borders stay zero (see pad_image) */
    T *dyt = calloc((size_t)G * P * Opad, sizeof(T));   /* padded channels stay zero */
    T *acc = malloc(sizeof(T) * (size_t)Kpad * Opad);
    int *off = malloc(sizeof(int) * (size_t)Kpad);
    if (!xg || !dyt || !acc || !off) { free(xg); free(dyt); free(acc); free(off); return -1; }
    FN(offsets)(off, g, C, KH, KW, sh, sw, dh, dw);
    for (int k = K; k < Kpad; k++) off[k] = off[K - 1];   /* padded rows: computed, discarded */

    for (int n0 = 0, grp = 0; n0 < N; n0 += G, grp++) {
        const int gn = N - n0 < G ? N - n0 : G;
        for (int n = 0; n < gn; n++) {
            FN(pad_image)(x + (size_t)(n0 + n) * C * H * W, xg + (size_t)n * xstride, C, H, W,
                          g, ph, pw, sh, sw, KH, KW);
            const T *dyn = dy + (size_t)(n0 + n) * O * P;
            T *dtn = dyt + (size_t)n * P * Opad;
            FN(transpose)(dyn, dtn, O, P, Opad);
        }
        for (int o0 = 0; o0 < Opad; o0 += OV * NV)
            for (int k0 = 0; k0 < Kpad; k0 += KB) {
                if (OV == 2)
                    FN(wgt_block)(xg, xstride, dyt, off, gn, OH, OW, g.Wq, Opad, k0, o0, acc,
                                  WKB2, 2);
                else
                    FN(wgt_block)(xg, xstride, dyt, off, gn, OH, OW, g.Wq, Opad, k0, o0, acc,
                                  WKB1, 1);
            }
        T *dWo = dWg + (size_t)grp * O * K;
        for (int o = 0; o < O; o++)
            for (int k = 0; k < K; k++) dWo[(size_t)o * K + k] = acc[(size_t)k * Opad + o];
        if (dbg) {                       /* per channel, positions in order (vectorised over o) */
            for (int o = 0; o < Opad; o++) acc[o] = 0;
            for (size_t p = 0; p < (size_t)gn * P; p++)
                for (int o = 0; o < Opad; o += NV)
                    *(VTU *)(acc + o) += *(const VTU *)(dyt + p * Opad + o);
            for (int o = 0; o < O; o++) dbg[(size_t)grp * O + o] = acc[o];
        }
    }
    free(xg); free(dyt); free(acc); free(off);
    return 0;
}

/* Tasks for nnx_parallel_run (kernels/cpu/parallel.c): the kernels above over the items [a, b)
 * of a call, with the arguments packed as 64-bit integers.
 * conv2d_forward_task, items = images:
 *   v = {x, w, bias, y, N, C, H, W, O, KH, KW, ph, pw, sh, sw, dh, dw} */
int FN(conv2d_forward_task)(const long long *v, long a, long b)
{
    const int C = (int)v[5], H = (int)v[6], W = (int)v[7], O = (int)v[8];
    const FN(geom) g = FN(geometry)(C, H, W, (int)v[9], (int)v[10], (int)v[11], (int)v[12],
                                    (int)v[13], (int)v[14], (int)v[15], (int)v[16]);
    const T *x = (const T *)(size_t)v[0] + (size_t)a * C * H * W;
    T *y = (T *)(size_t)v[3] + (size_t)a * O * g.OH * g.OW;
    return FN(conv2d_forward)(x, (const T *)(size_t)v[1], (const T *)(size_t)v[2], y,
                              (int)(b - a), C, H, W, O, (int)v[9], (int)v[10], (int)v[11],
                              (int)v[12], (int)v[13], (int)v[14], (int)v[15], (int)v[16]);
}

/* phase_scatter_task, items = images: writes rows x cols of one stride phase of a strided
 * convolution's input gradient into dx (nnx/backend/cpu_direct.py, _input_grad_strided):
 *   dx[n, c, r0 + sh*u, c0 + sw*v] = part[n, c, u0 + u, v0 + v]   (u < rows, v < cols)
 * after zeroing the images' dx first when `zero` (positions no phase reaches).
 *   v = {part, dx, C, PH, PW, H, W, rows, cols, u0, v0, r0, c0, sh, sw, zero} */
int FN(phase_scatter_task)(const long long *v, long a, long b)
{
    const T *part = (const T *)(size_t)v[0];
    T *dx = (T *)(size_t)v[1];
    const long C = v[2], PH = v[3], PW = v[4], H = v[5], W = v[6], rows = v[7], cols = v[8];
    const long u0 = v[9], v0 = v[10], r0 = v[11], c0 = v[12], sh = v[13], sw = v[14];
    if (v[15])
        memset(dx + (size_t)a * C * H * W, 0, sizeof(T) * (size_t)(b - a) * C * H * W);
    for (long n = a; n < b; n++)
        for (long c = 0; c < C; c++) {
            const T *p = part + (((size_t)n * C + c) * PH + u0) * PW + v0;
            T *d = dx + (((size_t)n * C + c) * H + r0) * W + c0;
            for (long u = 0; u < rows; u++)
                for (long j = 0; j < cols; j++)
                    d[u * sh * W + j * sw] = p[u * PW + j];
        }
    return 0;
}

/* conv2d_backward_weight_task, items = groups of G images (group i: images i*G ..):
 *   v = {x, dy, dWg, dbg, N, G, C, H, W, O, KH, KW, ph, pw, sh, sw, dh, dw} */
int FN(conv2d_backward_weight_task)(const long long *v, long a, long b)
{
    const long N = v[4], G = v[5];
    const int C = (int)v[6], H = (int)v[7], W = (int)v[8], O = (int)v[9];
    const int KH = (int)v[10], KW = (int)v[11];
    const FN(geom) g = FN(geometry)(C, H, W, KH, KW, (int)v[12], (int)v[13], (int)v[14],
                                    (int)v[15], (int)v[16], (int)v[17]);
    const long i0 = a * G, i1 = b * G < N ? b * G : N;
    const T *x = (const T *)(size_t)v[0] + (size_t)i0 * C * H * W;
    const T *dy = (const T *)(size_t)v[1] + (size_t)i0 * O * g.OH * g.OW;
    T *dWg = (T *)(size_t)v[2] + (size_t)a * O * g.K;
    T *dbg = v[3] ? (T *)(size_t)v[3] + (size_t)a * O : NULL;
    return FN(conv2d_backward_weight)(x, dy, dWg, dbg, (int)(i1 - i0), (int)G, C, H, W, O, KH,
                                      KW, (int)v[12], (int)v[13], (int)v[14], (int)v[15],
                                      (int)v[16], (int)v[17]);
}
#undef NV
