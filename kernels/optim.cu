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
// Adam/AdamW:     wd_mode 0: none; 1: L2 (g = grad + wd*param); 2: decoupled
//                 (param *= decay_factor = 1 - lr*wd, g = grad)
//                 m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g*g
//                 param -= step_size * m / (sqrt(v / bc2) + eps)
#include "nnx_common.cuh"

template <typename T>
__global__ void sgd_update(long long n, T* __restrict__ param, const T* __restrict__ grad,
                           T* __restrict__ buf, T lr, T momentum, T one_minus_dampening,
                           T weight_decay, int nesterov, int first_step, int use_momentum) {
    NNX_GRID_STRIDE(i, n) {
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
}

template <typename T>
__global__ void adam_update(long long n, T* __restrict__ param, const T* __restrict__ grad,
                            T* __restrict__ m, T* __restrict__ v, T beta1, T one_minus_beta1,
                            T beta2, T one_minus_beta2, T eps, T weight_decay, T decay_factor,
                            T step_size, T bc2, int wd_mode) {
    NNX_GRID_STRIDE(i, n) {
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
}
