/* One dtype's element-wise tasks (see elementwise.c); T and FN(name) are set by the includer.
 * Every task: int task(const long long *v, long a, long b) over items [a, b). */

/* v = {a, b, out} */
int FN(add_task)(const long long *v, long i0, long i1)
{
    const T *restrict p = (const T *)(size_t)v[0], *restrict q = (const T *)(size_t)v[1];
    T *restrict out = (T *)(size_t)v[2];
    for (long i = i0; i < i1; i++)
        out[i] = p[i] + q[i];
    return 0;
}

/* v = {x, out} */
int FN(relu_task)(const long long *v, long a, long b)
{
    const T *restrict x = (const T *)(size_t)v[0];
    T *restrict out = (T *)(size_t)v[1];
    for (long i = a; i < b; i++) {
        T s = x[i];
        out[i] = RELU(s);
    }
    return 0;
}

/* v = {y, gy, out} */
int FN(relu_backward_task)(const long long *v, long a, long b)
{
    const T *restrict y = (const T *)(size_t)v[0], *restrict gy = (const T *)(size_t)v[1];
    T *restrict out = (T *)(size_t)v[2];
    for (long i = a; i < b; i++)
        out[i] = gy[i] * (T)(y[i] > 0);
    return 0;
}

/* v = {a, b, out} */
int FN(add_relu_task)(const long long *v, long i0, long i1)
{
    const T *restrict p = (const T *)(size_t)v[0], *restrict q = (const T *)(size_t)v[1];
    T *restrict out = (T *)(size_t)v[2];
    for (long i = i0; i < i1; i++) {
        T s = p[i] + q[i];
        out[i] = RELU(s);
    }
    return 0;
}

/* v = {x, bias, out, C, S}: items = planes (n, c) */
int FN(bias_relu_task)(const long long *v, long a, long b)
{
    const T *restrict x = (const T *)(size_t)v[0], *restrict bias = (const T *)(size_t)v[1];
    T *restrict out = (T *)(size_t)v[2];
    const long C = v[3], S = v[4];
    for (long p = a; p < b; p++) {
        const T bc = bias[p % C];
        const T *restrict xp = x + p * S;
        T *restrict op = out + p * S;
        for (long s = 0; s < S; s++) {
            T t = xp[s] + bc;
            op[s] = RELU(t);
        }
    }
    return 0;
}
