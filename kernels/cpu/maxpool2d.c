/* CPU max pooling for nnx's NumPy backend: one pass that writes the output and PyTorch-style
 * argmax indices, and a scatter backward.  Compiled at first use by nnx/backend/native.py;
 * the NumPy path in nnx/backend/cpu_conv.py is the fallback and the test reference. */
#include <string.h>

#define T float
#define FN(name) name##_f32
#include "maxpool2d_impl.h"
#undef T
#undef FN

#define T double
#define FN(name) name##_f64
#include "maxpool2d_impl.h"
#undef T
#undef FN
