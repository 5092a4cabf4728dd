// cuda_sim.h -- run CUDA kernel sources on the CPU (C++17, g++), for tests only.
//
// Model: a launch runs the grid's blocks one after another.  Each block's threads are real
// std::threads, so __syncthreads() is a real barrier and `__shared__` variables (function-local
// statics) are shared by the threads of the running block.  The same pool of blockDim threads
// walks all blocks in order and meets at a barrier between blocks, so a block's shared storage
// is never touched by two blocks at once.  Shared memory is not cleared between blocks (like
// CUDA, whose shared memory starts undefined).  Warp intrinsics are deliberately absent: the
// kernels use shared-memory reductions only.
#pragma once

#include <cmath>
#include <math.h>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 { unsigned x, y, z; };

inline thread_local uint3 threadIdx{0, 0, 0};
inline thread_local uint3 blockIdx{0, 0, 0};
inline dim3 blockDim;
inline dim3 gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)

namespace nnx_sim {

// Reusable barrier (generation counter): C++17 has no std::barrier.
class Barrier {
  public:
    explicit Barrier(unsigned n) : n_(n) {}
    void wait() {
        std::unique_lock<std::mutex> lock(mu_);
        unsigned gen = gen_;
        if (++count_ == n_) {
            count_ = 0;
            ++gen_;
            cv_.notify_all();
        } else {
            cv_.wait(lock, [&] { return gen != gen_; });
        }
    }

  private:
    std::mutex mu_;
    std::condition_variable cv_;
    unsigned n_, count_ = 0, gen_ = 0;
};

inline Barrier*& current_barrier() {
    static Barrier* b = nullptr;
    return b;
}
inline std::mutex& atomic_mutex() {
    static std::mutex m;
    return m;
}

// CUDA's -ftz=true (CuPy's default) for float kernels: FTZ (flush denormal results) and DAZ
// (read denormal inputs as 0) in this thread's SSE control register.
inline void set_flush_to_zero(bool on) {
#if defined(__SSE__)
    if (on) _mm_setcsr(_mm_getcsr() | 0x8040u);
#else
    (void)on;
#endif
}

template <typename... KArgs, typename... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, bool ftz, Args... args) {
    const unsigned nthreads = block.x * block.y * block.z;
    blockDim = block;
    gridDim = grid;
    Barrier barrier(nthreads);
    current_barrier() = &barrier;
    std::vector<std::thread> pool;
    pool.reserve(nthreads);
    for (unsigned t = 0; t < nthreads; ++t) {
        pool.emplace_back([&, t] {
            set_flush_to_zero(ftz);  // fresh threads start with the default (IEEE) mode
            threadIdx = uint3{t % block.x, (t / block.x) % block.y, t / (block.x * block.y)};
            for (unsigned bz = 0; bz < grid.z; ++bz)
                for (unsigned by = 0; by < grid.y; ++by)
                    for (unsigned bx = 0; bx < grid.x; ++bx) {
                        blockIdx = uint3{bx, by, bz};
                        kernel(static_cast<KArgs>(args)...);
                        barrier.wait();  // the next block reuses the shared storage
                    }
        });
    }
    for (auto& th : pool) th.join();
    current_barrier() = nullptr;
}

}  // namespace nnx_sim

inline void __syncthreads() { nnx_sim::current_barrier()->wait(); }

template <typename T>
inline T atomicAdd(T* address, T val) {
    std::lock_guard<std::mutex> lock(nnx_sim::atomic_mutex());
    T old = *address;
    *address = old + val;
    return old;
}

// Bit casts and fast-math intrinsics as plain C++.
inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline int __float_as_int(float f) { int i; std::memcpy(&i, &f, sizeof i); return i; }
inline double __longlong_as_double(long long i) { double d; std::memcpy(&d, &i, sizeof d); return d; }
inline long long __double_as_longlong(double d) { long long i; std::memcpy(&i, &d, sizeof i); return i; }
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
