// Fused optimizer updates over one parameter, in place, one element per loop iteration.
// Scalars arrive in the parameter's dtype, precomputed on the host the way the NumPy
// reference computes them (e.g. one_minus_dampening = T(1 - dampening), step_size =
// T(lr/bc1)).  The element-wise math is NOT rounded like NumPy's on a GPU: NVRTC contracts
// a*b + c into one fused multiply-add (one rounding instead of two) and CuPy compiles with
// -ftz=true (float32 denormals read and written as 0).  Results agree with NumPy to a few
// ulp per step (float32 denormal parameters excepted); the CPU-vs-GPU tests allow for that.
//
// SGD:            g = grad + wd*param
//                 buf = g if first_step else momentum*buf + (1-dampening)*g
//                 (PyTorch's rule: the first buffer is g, undamped; the seeds' EMA is
//                 dampening == momentum on a zeroed buffer with first_step == 0)
//                 d = g + momentum*buf if nesterov else buf      (d = g when !use_momentum)
//                 param -= lr*d
// The *_multi kernels update every tensor of a parameter group in one launch (llm.c's and
// tinygrad's multi-tensor optimizers): `table` holds n+1 running element offsets (tensor t is
// elements [table[t], table[t+1]) of one virtual flat range) followed by the device addresses
// of each tensor's arrays (SGD: param, grad, buf; Adam: param, grad, m, v).  Each element's
// arithmetic is the per-tensor kernel's (the same __device__ step function).
// Adam/AdamW:     wd_mode 0: none; 1: L2 (g = grad + wd*param); 2: decoupled
//                 (param *= decay_factor = 1 - lr*wd, g = grad)
//                 m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//                 param -= step_size * m / (sqrt(v / bc2) + eps)
#include "nnx_common.cuh"

template <typename T>
__device__ __forceinline__ void nnx_sgd_step(T* param, const T* grad, T* buf, long long i, T lr,
                                             T momentum, T one_minus_dampening, T weight_decay,
                                             int nesterov, int first_step, int use_momentum) {
    const T p = param[i];
    T g = grad[i];
    if (weight_decay != T(0)) g += weight_decay * p;
    T d = g;
    if (use_momentum) {
        const T b = first_step ? g : momentum * buf[i] + one_minus_dampening * g;
        buf[i] = b;
        d = nesterov ? g + momentum * b : b;
    }
    param[i] = p - lr * d;
}

template <typename T>
__device__ __forceinline__ void nnx_adam_step(T* param, const T* grad, T* m, T* v, long long i,
                                              T beta1, T one_minus_beta1, T beta2,
                                              T one_minus_beta2, T eps, T weight_decay,
                                              T decay_factor, T step_size, T bc2, int wd_mode) {
    T p = param[i];
    T g = grad[i];
    if (wd_mode == 1) g += weight_decay * p;
    else if (wd_mode == 2) p *= decay_factor;
    const T mi = beta1 * m[i] + one_minus_beta1 * g;
    const T vi = beta2 * v[i] + one_minus_beta2 * (g * g);
    m[i] = mi;
    v[i] = vi;
    param[i] = p - step_size * (mi / (nnx_sqrt(vi / bc2) + eps));
}

// The tensor t holding flat element i: table[t] <= i < table[t+1] (binary search).
__device__ __forceinline__ int nnx_tensor_of(long long i, const long long* table, int n) {
    int lo = 0, hi = n;
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (table[mid] <= i) lo = mid;
        else hi = mid;
    }
    return lo;
}

template <typename T>
__device__ __forceinline__ T* nnx_table_ptr(const long long* table, int n, int k, int t,
                                            int arrays) {
    return reinterpret_cast<T*>(table[n + 1 + (long long)t * arrays + k]);
}

template <typename T>
__global__ void sgd_update(long long n, T* __restrict__ param, const T* __restrict__ grad,
                           T* __restrict__ buf, T lr, T momentum, T one_minus_dampening,
                           T weight_decay, int nesterov, int first_step, int use_momentum) {
    NNX_GRID_STRIDE(i, n) {
        nnx_sgd_step(param, grad, buf, i, lr, momentum, one_minus_dampening, weight_decay,
                     nesterov, first_step, use_momentum);
    }
}

template <typename T>
__global__ void sgd_update_multi(int n_tensors, const long long* __restrict__ table, T lr,
                                 T momentum, T one_minus_dampening, T weight_decay,
                                 int nesterov, int first_step, int use_momentum) {
    NNX_GRID_STRIDE(i, table[n_tensors]) {
        const int t = nnx_tensor_of(i, table, n_tensors);
        nnx_sgd_step(nnx_table_ptr<T>(table, n_tensors, 0, t, 3),
                     nnx_table_ptr<T>(table, n_tensors, 1, t, 3),
                     nnx_table_ptr<T>(table, n_tensors, 2, t, 3), i - table[t], lr, momentum,
                     one_minus_dampening, weight_decay, nesterov, first_step, use_momentum);
    }
}

template <typename T>
__global__ void adam_update(long long n, T* __restrict__ param, const T* __restrict__ grad,
                            T* __restrict__ m, T* __restrict__ v, T beta1, T one_minus_beta1,
                            T beta2, T one_minus_beta2, T eps, T weight_decay, T decay_factor,
                            T step_size, T bc2, int wd_mode) {
    NNX_GRID_STRIDE(i, n) {
        nnx_adam_step(param, grad, m, v, i, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                      weight_decay, decay_factor, step_size, bc2, wd_mode);
    }
}

template <typename T>
__global__ void adam_update_multi(int n_tensors, const long long* __restrict__ table, T beta1,
                                  T one_minus_beta1, T beta2, T one_minus_beta2, T eps,
                                  T weight_decay, T decay_factor, T step_size, T bc2,
                                  int wd_mode) {
    NNX_GRID_STRIDE(i, table[n_tensors]) {
        const int t = nnx_tensor_of(i, table, n_tensors);
        nnx_adam_step(nnx_table_ptr<T>(table, n_tensors, 0, t, 4),
                      nnx_table_ptr<T>(table, n_tensors, 1, t, 4),
                      nnx_table_ptr<T>(table, n_tensors, 2, t, 4),
                      nnx_table_ptr<T>(table, n_tensors, 3, t, 4), i - table[t], beta1,
                      one_minus_beta1, beta2, one_minus_beta2, eps, weight_decay, decay_factor,
                      step_size, bc2, wd_mode);
    }
}
