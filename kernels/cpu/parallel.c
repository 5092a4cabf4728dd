/* nnx's C thread pool: runs a C task over contiguous chunks of a range, on threads that spin
 * for a short while before they sleep.
 *
 * Why: the kernels used to be split over threads by Python (concurrent.futures).  One such
 * parallel call cost ~65 us on a 2-vCPU VM, almost all of it waking a sleeping thread on the
 * other vCPU (a condition-variable ping-pong between two threads costs ~55 us there, a spin
 * ping-pong ~1 us; bench/NOTES.md).  That is more than many of a small batch's kernels take.
 * Here a parallel call is one ctypes call: the caller runs chunk 0 itself, workers that are
 * still spinning pick up chunks 1..k-1 within about a microsecond, and no Python runs on them.
 *
 * A task is ``int task(const long long *args, long a, long b)``: it handles items [a, b) with
 * its arguments packed as 64-bit integers (pointers included), and returns 0 or an error
 * code.  The chunks are exactly those of nnx.backend.cpu_parallel.chunk_bounds(n, k) (the first
 * n % k chunks one longer), so which items a chunk gets depends only on (n, k), never on which
 * thread runs it: results are the same as a serial loop over the chunks.
 *
 * Nested calls (a task calling nnx_parallel_run) and calls made while another thread's call
 * is running (threads in Python) run their chunks serially on the calling thread, in order.
 *
 * Spinning: after its last chunk a worker polls for new work for NNX_SPIN_US microseconds
 * (default 1000; read when the pool starts, or nnx_parallel_set_spin_us), yielding the core
 * every few polls so that another runnable thread is not starved, then sleeps on a condition
 * variable.  Measured in one process on a 2-vCPU VM (bench/NOTES.md, item 30): against 300 us,
 * 0 made steps 19-35% slower, 100 up to 24% slower, 1000 1-11% faster, 3000 1-16% faster
 * (a core that stays busy also stays awake); OpenMP runtimes spin for milliseconds too. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <time.h>

typedef int (*nnx_task)(const long long *args, long a, long b);

#define MAX_WORKERS 256

static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER;  /* one parallel run at a time */
static pthread_mutex_t sleep_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t work_cv = PTHREAD_COND_INITIALIZER;     /* workers sleep here */
static pthread_cond_t done_cv = PTHREAD_COND_INITIALIZER;     /* the caller sleeps here */

static unsigned long generation;   /* bumped once per run; workers wait for a change */
static int pending;                /* workers that have not yet finished this run */
static int sleepers;               /* workers asleep on work_cv */
static int nworkers;               /* threads started (chunks 1..nworkers) */
static long long spin_ns = -1;     /* -1: not read yet */
static int atfork_done;

/* the current run: written by the caller before it bumps the generation */
static nnx_task job_fn;
static const long long *job_args;
static long job_n;
static int job_k;
static int job_rc[MAX_WORKERS + 1];
static unsigned long start_gen[MAX_WORKERS + 1];   /* the generation a worker was started in */

static __thread int in_task;       /* this thread is running a chunk: nested calls are serial */
static __thread int thread_index;  /* 0: a caller's thread; i: worker i (tests read it) */

static long long now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* chunk i of k over [0, n): sizes differ by at most one, the first n % k are one longer */
static void bounds(long n, int k, int i, long *a, long *b)
{
    long q = n / k, r = n % k;
    *a = i * q + (i < r ? i : r);
    *b = *a + q + (i < r);
}

static int run_chunk(int i)
{
    long a, b;
    bounds(job_n, job_k, i, &a, &b);
    in_task = 1;
    int rc = a < b ? job_fn(job_args, a, b) : 0;
    in_task = 0;
    return rc;
}

static void *worker(void *arg)
{
    const int me = (int)(long)arg;           /* runs chunk `me` (1-based) when me < k */
    thread_index = me;
    /* not `generation` itself: the first run may already have bumped it */
    unsigned long seen = start_gen[me];
    for (;;) {
        unsigned long g;
        long long start = now_ns();
        unsigned polls = 0;
        while ((g = __atomic_load_n(&generation, __ATOMIC_ACQUIRE)) == seen) {
            cpu_relax();
            if ((++polls & 63) == 0) {
                if (now_ns() - start > spin_ns) {      /* spun long enough: sleep */
                    pthread_mutex_lock(&sleep_lock);
                    __atomic_add_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
                    while (__atomic_load_n(&generation, __ATOMIC_SEQ_CST) == seen)
                        pthread_cond_wait(&work_cv, &sleep_lock);
                    __atomic_sub_fetch(&sleepers, 1, __ATOMIC_SEQ_CST);
                    pthread_mutex_unlock(&sleep_lock);
                } else {
                    sched_yield();                     /* let another runnable thread in */
                }
            }
        }
        seen = g;
        if (me < job_k)
            job_rc[me] = run_chunk(me);
        /* every worker reports (not only those with a chunk): the caller may rewrite the job
         * only once no worker can still be reading it */
        if (__atomic_sub_fetch(&pending, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&sleep_lock);
            pthread_cond_signal(&done_cv);
            pthread_mutex_unlock(&sleep_lock);
        }
    }
    return NULL;
}

static void after_fork_child(void)
{
    /* the child has none of the parent's threads: start over */
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    run_lock = m;
    sleep_lock = m;
    work_cv = c;
    done_cv = c;
    nworkers = 0;
    sleepers = 0;
    pending = 0;
}

/* start workers until there are `want` (caller holds run_lock); returns how many exist */
static int grow(int want)
{
    if (spin_ns < 0) {
        const char *s = getenv("NNX_SPIN_US");
        long long us = s && *s ? atoll(s) : 1000;
        spin_ns = (us < 0 ? 0 : us) * 1000LL;
    }
    if (!atfork_done) {
        pthread_atfork(NULL, NULL, after_fork_child);
        atfork_done = 1;
    }
    if (want > MAX_WORKERS)
        want = MAX_WORKERS;
    while (nworkers < want) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        start_gen[nworkers + 1] = generation;
        int err = pthread_create(&t, &attr, worker, (void *)(long)(nworkers + 1));
        pthread_attr_destroy(&attr);
        if (err)
            break;
        nworkers++;
    }
    return nworkers;
}

static int run_serial(nnx_task fn, const long long *args, long n, int k)
{
    int rc = 0;
    for (int i = 0; i < k; i++) {
        long a, b;
        bounds(n, k, i, &a, &b);
        if (a < b) {
            int r = fn(args, a, b);
            if (r && !rc)
                rc = r;
        }
    }
    return rc;
}

/* Run fn over the k chunks of [0, n): chunk 0 on this thread, chunk i on worker i.
 * Returns the error code of the first failing chunk (in chunk order), else 0. */
int nnx_parallel_run(nnx_task fn, const long long *args, long n, int k)
{
    if (n <= 0)
        return 0;
    if (k > n)
        k = (int)n;
    if (k <= 1)
        return fn(args, 0, n);
    if (in_task || pthread_mutex_trylock(&run_lock) != 0)
        return run_serial(fn, args, n, k);
    if (grow(k - 1) < k - 1) {               /* could not start the threads */
        pthread_mutex_unlock(&run_lock);
        return run_serial(fn, args, n, k);
    }
    job_fn = fn;
    job_args = args;
    job_n = n;
    job_k = k;
    __atomic_store_n(&pending, nworkers, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&generation, 1, __ATOMIC_SEQ_CST);       /* publishes the job */
    if (__atomic_load_n(&sleepers, __ATOMIC_SEQ_CST) > 0) {
        pthread_mutex_lock(&sleep_lock);
        pthread_cond_broadcast(&work_cv);
        pthread_mutex_unlock(&sleep_lock);
    }
    int rc = run_chunk(0);
    long long start = now_ns();
    unsigned polls = 0;
    while (__atomic_load_n(&pending, __ATOMIC_ACQUIRE) > 0) {
        cpu_relax();
        if ((++polls & 63) == 0) {
            if (now_ns() - start > spin_ns) {
                pthread_mutex_lock(&sleep_lock);
                while (__atomic_load_n(&pending, __ATOMIC_ACQUIRE) > 0)
                    pthread_cond_wait(&done_cv, &sleep_lock);
                pthread_mutex_unlock(&sleep_lock);
            } else {
                sched_yield();                         /* more threads than cores */
            }
        }
    }
    for (int i = 1; i < k && !rc; i++)
        rc = job_rc[i];
    pthread_mutex_unlock(&run_lock);
    return rc;
}

/* A task for the tests: v = {out, busy_us, fail_at, nested_n, nested_k}.  For each item i of
 * [a, b): out[3i] = a (its chunk's start), out[3i+1] = the running thread's index (0 = the
 * caller, i = worker i); returns 7 when the chunk holds item fail_at.  busy_us > 0 keeps the
 * chunk busy (so chunks overlap); nested_n > 0 runs a nested nnx_parallel_run over nested_n
 * items in nested_k chunks and stores its first thread index in out[3i+2]. */
int nnx_parallel_probe(const long long *v, long a, long b)
{
    long long *out = (long long *)(size_t)v[0];
    if (v[1] > 0) {
        long long end = now_ns() + v[1] * 1000LL;
        while (now_ns() < end)
            cpu_relax();
    }
    long long nested = -1;
    if (v[3] > 0) {
        long long inner[3 * 64];
        long long w[5] = {(long long)(size_t)inner, 0, -1, 0, 0};
        long nn = v[3] < 64 ? (long)v[3] : 64;
        nnx_parallel_run(nnx_parallel_probe, w, nn, (int)v[4]);
        nested = inner[1];
        for (long i = 0; i < nn; i++)
            if (inner[3 * i + 1] != nested)
                nested = -2;                          /* ran on more than one thread */
    }
    for (long i = a; i < b; i++) {
        out[3 * i] = a;
        out[3 * i + 1] = thread_index;
        out[3 * i + 2] = nested;
    }
    return (v[2] >= a && v[2] < b) ? 7 : 0;
}

/* Set the spin time (microseconds; what NNX_SPIN_US sets at start-up); returns the old one. */
long nnx_parallel_set_spin_us(long us)
{
    long old = spin_ns < 0 ? -1 : (long)(spin_ns / 1000);
    spin_ns = (us < 0 ? 0 : us) * 1000LL;
    return old;
}

/* Worker threads started so far (for tests and benchmark reports). */
int nnx_parallel_workers(void) { return nworkers; }

/* Lets the loader check it opened the library it built. */
int nnx_parallel_abi(void) { return 1; }
