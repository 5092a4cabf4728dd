/* CPU convolution kernels for nnx's NumPy backend: stride 1 with any padding and dilation, and
 * stride > 1 with dilation 1 (through a stride-phase layout of the padded image).
 * Compiled at first use by nnx/backend/native.py with the system C compiler and loaded with
 * ctypes; the NumPy im2col + GEMM path is the fallback and the reference they are tested
 * against.  Each call handles a range of images; Python splits the batch over threads
 * (ctypes releases the GIL during the call).  Plain C99 + GCC/Clang vector extensions. */
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#define VBYTES 64
#ifndef OB
#define OB 8          /* forward: output channels per block   (OB*PV accumulators) */
#define PV 2          /* forward: vectors of positions per block */
#endif
#ifndef WKB1
#define WKB1 16       /* weight gradient: (c, i, j) rows per block with 1 vector of channels */
#define WKB2 8        /* ... with 2 vectors of channels (WKB2*2 accumulators) */
#endif
#elif defined(__AVX__)
#define VBYTES 32
#define OB 4
#define PV 2
#define WKB1 12
#define WKB2 6
#else
#define VBYTES 16
#define OB 4
#define PV 2
#define WKB1 12
#define WKB2 6
#endif

#define WKB_MAX 16    /* bound of the weight-gradient accumulator array (>= WKB1, WKB2) */

typedef float vf32 __attribute__((vector_size(VBYTES)));
typedef float vf32u __attribute__((vector_size(VBYTES), aligned(4)));
typedef double vf64 __attribute__((vector_size(VBYTES)));
typedef double vf64u __attribute__((vector_size(VBYTES), aligned(8)));

#define T float
#define VT vf32
#define VTU vf32u
#define FN(name) name##_f32
#include "conv2d_impl.h"
#undef T
#undef VT
#undef VTU
#undef FN

#define T double
#define VT vf64
#define VTU vf64u
#define FN(name) name##_f64
#include "conv2d_impl.h"
#undef T
#undef VT
#undef VTU
#undef FN

/* Lets the loader check it opened the library it built. */
int nnx_conv2d_abi(void) { return 2; }
