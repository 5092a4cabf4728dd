// Fused optimizer updates over one parameter, in place, one element per loop iteration.
// Scalars arrive in the parameter's dtype, precomputed on the host exactly as the NumPy
// reference rounds them (e.g. one_minus_dampening = T(1 - dampening), step_size = T(lr/bc1)).
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

__device__ __forceinline__ float nnx_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double nnx_sqrt(double x) { return sqrt(x); }

template <typename T>
__device__ __forceinline__ void sgd_body(long long n, T* __restrict__ param,
                                         const T* __restrict__ grad, T* __restrict__ buf, T lr,
                                         T momentum, T one_minus_dampening, T weight_decay,
                                         int nesterov, int first_step, int use_momentum) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
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
__device__ __forceinline__ void adam_body(long long n, T* __restrict__ param,
                                          const T* __restrict__ grad, T* __restrict__ m,
                                          T* __restrict__ v, T beta1, T one_minus_beta1, T beta2,
                                          T one_minus_beta2, T eps, T weight_decay, T decay_factor,
                                          T step_size, T bc2, int wd_mode) {
    const long long stride = (long long)blockDim.x * gridDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
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

extern "C" __global__ void sgd_update_f32(long long n, float* __restrict__ param,
                                          const float* __restrict__ grad, float* __restrict__ buf,
                                          float lr, float momentum, float one_minus_dampening,
                                          float weight_decay, int nesterov, int first_step,
                                          int use_momentum) {
    sgd_body<float>(n, param, grad, buf, lr, momentum, one_minus_dampening, weight_decay, nesterov,
                    first_step, use_momentum);
}
extern "C" __global__ void sgd_update_f64(long long n, double* __restrict__ param,
                                          const double* __restrict__ grad, double* __restrict__ buf,
                                          double lr, double momentum, double one_minus_dampening,
                                          double weight_decay, int nesterov, int first_step,
                                          int use_momentum) {
    sgd_body<double>(n, param, grad, buf, lr, momentum, one_minus_dampening, weight_decay,
                     nesterov, first_step, use_momentum);
}
extern "C" __global__ void adam_update_f32(long long n, float* __restrict__ param,
                                           const float* __restrict__ grad, float* __restrict__ m,
                                           float* __restrict__ v, float beta1,
                                           float one_minus_beta1, float beta2,
                                           float one_minus_beta2, float eps, float weight_decay,
                                           float decay_factor, float step_size, float bc2,
                                           int wd_mode) {
    adam_body<float>(n, param, grad, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                     weight_decay, decay_factor, step_size, bc2, wd_mode);
}
extern "C" __global__ void adam_update_f64(long long n, double* __restrict__ param,
                                           const double* __restrict__ grad, double* __restrict__ m,
                                           double* __restrict__ v, double beta1,
                                           double one_minus_beta1, double beta2,
                                           double one_minus_beta2, double eps, double weight_decay,
                                           double decay_factor, double step_size, double bc2,
                                           int wd_mode) {
    adam_body<double>(n, param, grad, m, v, beta1, one_minus_beta1, beta2, one_minus_beta2, eps,
                      weight_decay, decay_factor, step_size, bc2, wd_mode);
}
