/* Batch norm for one element type T, included by batchnorm2d.c (FN(name) adds _f32 / _f64).
 * x, y, dy, dx are (N, C, S) C-ordered; per channel c the m = N*S values x[n, c, s].
 *
 *   stats (training):  K = x[0, c, 0] (a shift against cancellation),
 *                      s1 = Σ (x - K),  s2 = Σ (x - K)²     (one pass, in double)
 *                      μ = K + s1/m,    σ² = s2/m - (s1/m)²  (biased)
 *   forward:           inv = 1/√(σ² + ε),  y = (x - μ)·(γ·inv) + β
 *   backward:          Σg, Σg·(x - μ) in one pass (double);  dγ = inv·Σg·(x - μ),  dβ = Σg
 *                      training: dx = γ·inv·(g - Σg/m - (x - μ)·inv²·Σg·(x - μ)/m)
 *                      eval:     dx = γ·inv·g
 * weight/bias may be NULL (affine=False: γ = 1, β = 0).
 *
 * Fused with a following ReLU (nn.Sequential: BatchNorm then ReLU):
 *   forward:   y = max((x - μ)·(γ·inv) + β, 0)   (the same value, then ReLU's `v <= 0 ? 0 : v`)
 *   backward:  g = dy·[y > 0] (ReLU's backward, with the fused y), then the above: every
 *              product and sum is the unfused pair's, in the same order. */

/* LANES consecutive values of one row, loaded unaligned and widened to double. */
typedef T FN(vrow) __attribute__((vector_size(LANES * sizeof(T)), aligned(sizeof(T))));
#define WIDEN(ptr) __builtin_convertvector(*(const FN(vrow) *)(ptr), vlanes)

static double FN(lanes_sum)(vlanes a)
{
    double r = 0;
    for (int j = 0; j < LANES; j++) r += a[j];
    return r;
}

/* Σ (x - K) and Σ (x - K)² over one channel, lanes summed in a fixed order. */
static void FN(bn_sums)(const T *x, long N, long C, long S, long c, double K,
                        double *s1, double *s2)
{
    vlanes a1 = {0}, a2 = {0};
    double r1 = 0, r2 = 0;
    for (long n = 0; n < N; n++) {
        const T *p = x + (n * C + c) * S;
        long s = 0;
        for (; s + LANES <= S; s += LANES) {
            vlanes d = WIDEN(p + s) - K;
            a1 += d;
            a2 += d * d;
        }
        for (; s < S; s++) {
            double d = (double)p[s] - K;
            r1 += d;
            r2 += d * d;
        }
    }
    *s1 = r1 + FN(lanes_sum)(a1);
    *s2 = r2 + FN(lanes_sum)(a2);
}

/* The per-row passes below are noinline: the ReLU-fused path and the plain path run the
 * same machine code on the same values, so they give the same bits whatever contraction
 * (FMA) and vectorisation choices the compiler makes for the -march it builds for. */

/* Σ g and Σ g·(x - μ) over one row, added to the channel's lanes and tails. */
static __attribute__((noinline)) void FN(row_grad_sums)(const T *p, const T *q, long S,
                                                        double mu, vlanes *a1, vlanes *a2,
                                                        double *r1, double *r2)
{
    vlanes b1 = *a1, b2 = *a2;
    double t1 = *r1, t2 = *r2;
    long s = 0;
    for (; s + LANES <= S; s += LANES) {
        vlanes gj = WIDEN(q + s);
        b1 += gj;
        b2 += gj * (WIDEN(p + s) - mu);
    }
    for (; s < S; s++) {
        double gj = (double)q[s];
        t1 += gj;
        t2 += gj * ((double)p[s] - mu);
    }
    *a1 = b1; *a2 = b2; *r1 = t1; *r2 = t2;
}

/* ReLU's backward on one row: out = dy·[y > 0] (the product in T, as the unfused ReLU). */
static void FN(mask_row)(const T *q, const T *yr, T *out, long S)
{
    for (long s = 0; s < S; s++) out[s] = q[s] * (T)(yr[s] > 0);
}

/* Σ g and Σ g·(x - μ) over one channel; with relu_y, g = dy·[relu_y > 0], each row masked
 * into `scratch` (S values) first. */
static void FN(bn_grad_sums)(const T *x, const T *g, const T *relu_y, T *scratch, long N,
                             long C, long S, long c, double mu, double *sg, double *sgx)
{
    vlanes a1 = {0}, a2 = {0};
    double r1 = 0, r2 = 0;
    for (long n = 0; n < N; n++) {
        const long row = (n * C + c) * S;
        const T *q = g + row;
        if (relu_y) {
            FN(mask_row)(q, relu_y + row, scratch, S);
            q = scratch;
        }
        FN(row_grad_sums)(x + row, q, S, mu, &a1, &a2, &r1, &r2);
    }
    *sg = r1 + FN(lanes_sum)(a1);
    *sgx = r2 + FN(lanes_sum)(a2);
}

/* y = (x - μ)·a + b over one row. */
static __attribute__((noinline)) void FN(row_y)(const T *p, T *q, long S, T mu, T a, T b)
{
    for (long s = 0; s < S; s++) q[s] = (p[s] - mu) * a + b;
}

/* dx over one row: A·g + Bx·(x - μ) + Cc (training), A·g (eval). */
static __attribute__((noinline)) void FN(row_dx)(const T *p, const T *q, T *r, long S, T A,
                                                 T Bx, T Cc, T muT, int use_batch)
{
    if (use_batch)
        for (long s = 0; s < S; s++) r[s] = A * q[s] + Bx * (p[s] - muT) + Cc;
    else
        for (long s = 0; s < S; s++) r[s] = A * q[s];
}

/* use_batch: writes mean[c], var[c] (biased) from x; else reads them (running statistics).
 * Always writes inv_std[c] and y; relu: y = max(y, 0) as ReLU computes it. */
int FN(batchnorm_forward)(const T *x, T *y, long N, long C, long S, long c0, long c1,
                          const T *weight, const T *bias, T *mean, T *var, T *inv_std,
                          double eps, int use_batch, int relu)
{
    double m = (double)N * (double)S;
    for (long c = c0; c < c1; c++) {
        if (use_batch) {
            double K = (double)x[c * S], s1, s2;
            FN(bn_sums)(x, N, C, S, c, K, &s1, &s2);
            double d = s1 / m, v = s2 / m - d * d;
            mean[c] = (T)(K + d);
            var[c] = (T)(v > 0 ? v : 0);
        }
        T inv = (T)1 / SQRT(var[c] + (T)eps);
        inv_std[c] = inv;
        T mu = mean[c];
        T a = weight ? weight[c] * inv : inv;
        T b = bias ? bias[c] : (T)0;
        for (long n = 0; n < N; n++) {
            T *q = y + (n * C + c) * S;
            FN(row_y)(x + (n * C + c) * S, q, S, mu, a, b);
            if (relu)
                for (long s = 0; s < S; s++) {
                    T v = q[s];
                    q[s] = v <= 0 ? (T)0 : v;
                }
        }
    }
    return 0;
}

/* Writes dweight[c] = Σ g·x̂ and dbias[c] = Σ g (both arrays always given), and dx unless it
 * is NULL.  relu_y: the output of a forward fused with ReLU (g = dy·[relu_y > 0]), or NULL.
 * Returns 0, or -1 when out of memory (the masked row's scratch). */
int FN(batchnorm_backward)(const T *x, const T *g, T *dx, long N, long C, long S, long c0,
                           long c1, const T *weight, const T *mean, const T *inv_std,
                           T *dweight, T *dbias, int use_batch, const T *relu_y)
{
    double m = (double)N * (double)S;
    T *scratch = NULL;
    if (relu_y && !(scratch = malloc(sizeof(T) * (size_t)(S > 0 ? S : 1))))
        return -1;
    for (long c = c0; c < c1; c++) {
        double mu = (double)mean[c], inv = (double)inv_std[c], sg, sgx;
        FN(bn_grad_sums)(x, g, relu_y, scratch, N, C, S, c, mu, &sg, &sgx);
        dweight[c] = (T)(sgx * inv);
        dbias[c] = (T)sg;
        if (!dx) continue;
        double gam = weight ? (double)weight[c] : 1.0;
        T A = (T)(gam * inv);
        T Bx = use_batch ? (T)(-gam * inv * inv * inv * sgx / m) : (T)0;
        T Cc = use_batch ? (T)(-gam * inv * sg / m) : (T)0;
        T muT = (T)mu;
        for (long n = 0; n < N; n++) {
            const long row = (n * C + c) * S;
            const T *q = g + row;
            if (relu_y) {
                FN(mask_row)(q, relu_y + row, scratch, S);
                q = scratch;
            }
            FN(row_dx)(x + row, q, dx + row, S, A, Bx, Cc, muT, use_batch);
        }
    }
    free(scratch);
    return 0;
}

/* Tasks for nnx_parallel_run (kernels/cpu/parallel.c), items = channels [a, b).
 * batchnorm_forward_task: v = {x, y, N, C, S, weight, bias, mean, var, inv_std, eps (the
 * bits of a double), use_batch, relu} */
int FN(batchnorm_forward_task)(const long long *v, long a, long b)
{
    double eps;
    memcpy(&eps, &v[10], sizeof eps);
    return FN(batchnorm_forward)((const T *)(size_t)v[0], (T *)(size_t)v[1], v[2], v[3], v[4],
                                 a, b, (const T *)(size_t)v[5], (const T *)(size_t)v[6],
                                 (T *)(size_t)v[7], (T *)(size_t)v[8], (T *)(size_t)v[9], eps,
                                 (int)v[11], (int)v[12]);
}

/* batchnorm_backward_task: v = {x, g, dx, N, C, S, weight, mean, inv_std, dweight, dbias,
 * use_batch, relu_y} */
int FN(batchnorm_backward_task)(const long long *v, long a, long b)
{
    return FN(batchnorm_backward)((const T *)(size_t)v[0], (const T *)(size_t)v[1],
                                  (T *)(size_t)v[2], v[3], v[4], v[5], a, b,
                                  (const T *)(size_t)v[6], (const T *)(size_t)v[7],
                                  (const T *)(size_t)v[8], (T *)(size_t)v[9],
                                  (T *)(size_t)v[10], (int)v[11], (const T *)(size_t)v[12]);
}
