/* CPU batch normalisation for nnx's NumPy backend (BatchNorm1d/2d on (N, C, S) C-ordered data).
 * Compiled at first use by nnx/backend/native.py; the NumPy path (Backend.batchnorm_forward /
 * batchnorm_backward in nnx/backend/base.py) is the reference it is tested against.
 *
 * Each call handles the channels [c0, c1); Python splits the channels (never a channel's
 * reduction) over threads, so every per-channel sum is taken in one fixed order whatever the
 * thread count: results do not depend on NNX_NUM_THREADS. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* Lanes of the per-channel partial sums: a fixed number (not the vector width), so that the
 * summation order is the same for every thread count; GCC vectorises the lane loops. */
#define LANES 8
typedef double vlanes __attribute__((vector_size(LANES * sizeof(double))));

#define T float
#define SQRT sqrtf
#define FN(name) name##_f32
#include "batchnorm2d_impl.h"
#undef T
#undef SQRT
#undef FN
#undef WIDEN

#define T double
#define SQRT sqrt
#define FN(name) name##_f64
#include "batchnorm2d_impl.h"
#undef T
#undef SQRT
#undef FN
#undef WIDEN
