/* Element-wise passes of the CPU backend as C tasks (kernels/cpu/parallel.c runs them over
 * chunks): ReLU, its backward, and the fused add + ReLU and bias + ReLU.  Compiled at first
 * use by nnx/backend/native.py; NumPy (nnx/backend/numpy_backend.py) is the fallback and the
 * reference they are tested against, value for value:
 *   add(a, b)          = a + b                 (a gradient reaching one array twice)
 *   relu(x)            = x <= 0 ? 0 : x       (np.maximum(x, 0): NaN stays NaN, -0.0 -> 0)
 *   relu_backward      = gy * (T)(y > 0)      (gy * (y > 0))
 *   add_relu(a, b)     = relu(a + b)
 *   bias_relu(x, bias) = relu(x + bias[c])    on (N, C, S) data, items = the N*C planes
 * Items are elements unless said otherwise; every element is computed the same way whatever
 * the chunk, so results do not depend on the thread count. */
#include <stddef.h>

#define RELU(v) ((v) <= 0 ? (T)0 : (v))

#define T float
#define FN(name) name##_f32
#include "elementwise_impl.h"
#undef T
#undef FN

#define T double
#define FN(name) name##_f64
#include "elementwise_impl.h"
#undef T
#undef FN
