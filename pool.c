/* pool.c: the CPU engine's threads. parallel_for(n, fn, ctx) runs fn(ctx, begin, end) over [0, n) cut
 * into chunks that the calling thread and the workers claim one at a time, and returns when all
 * are done. Unlike an OpenMP loop it waits for no thread that took no chunk, so a worker whose
 * core another busy process has taken does not hold up each of the ~70 loops of a token for a
 * scheduler slice. When the caller still waits for one (descheduled inside its chunk) longer
 * than it worked itself, fewer cores are free than there are threads: one worker fewer takes
 * part until 8 times that wait has passed. An idle worker spins a short while for the next loop
 * (they follow each other within microseconds), then sleeps, leaving its core to others. */
#include "mamba.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

enum { POOL_MAX_THREADS = 1024, CHUNKS_PER_THREAD = 4, STALL_BACKOFF = 8 };
#define POOL_SPIN_S 30e-6   /* spin before sleeping, beyond the time a chunk takes */
#define POOL_STALL_S 200e-6 /* a wait longer than any seen on an idle machine, shorter than a slice */

static struct {
    int threads;              /* the caller and threads - 1 workers; 0: not started */
    _Atomic int active;       /* the caller and workers 1 .. active - 1 take part; the others sleep */
    double all_from;          /* when all threads take part again (now_seconds) */
    _Atomic uint64_t claim;   /* loop number << 32 | its chunks << 16 | the next chunk to claim */
    _Atomic int done;         /* chunks of this loop finished */
    _Atomic int sleepers;     /* workers waiting on `wake` for a loop */
    _Atomic(RangeFn) fn;      /* this loop: fn over [0, n) in chunks of `chunk` */
    _Atomic(void *) ctx;
    _Atomic int n, chunk;
    pthread_mutex_t lock;
    pthread_cond_t wake, unpark;
} g_pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER, .unpark = PTHREAD_COND_INITIALIZER};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Claims and runs chunks of loop `loop` until none is left; returns how many it ran. */
static int pool_run_chunks(uint32_t loop) {
    int ran = 0;
    uint64_t v = atomic_load_explicit(&g_pool.claim, memory_order_acquire);
    while (v >> 32 == loop && (v & 0xffff) < (v >> 16 & 0xffff)) {
        if (!atomic_compare_exchange_weak_explicit(&g_pool.claim, &v, v + 1, memory_order_acquire,
                                                   memory_order_acquire))
            continue;
        /* the loop cannot end while this chunk is unfinished, so these are still its own */
        int chunk = atomic_load_explicit(&g_pool.chunk, memory_order_relaxed), begin = (int)(v & 0xffff) * chunk;
        int end = begin + chunk, n = atomic_load_explicit(&g_pool.n, memory_order_relaxed);
        RangeFn fn = atomic_load_explicit(&g_pool.fn, memory_order_relaxed);
        fn(atomic_load_explicit(&g_pool.ctx, memory_order_relaxed), begin, end < n ? end : n);
        atomic_fetch_add_explicit(&g_pool.done, 1, memory_order_release);
        ran++;
        v = atomic_load_explicit(&g_pool.claim, memory_order_acquire);
    }
    return ran;
}

/* The number of the first loop after `seen` for worker `id`: it spins `spin` seconds for one,
 * then sleeps; while it takes no part, it sleeps until it does. */
static uint32_t pool_next_loop(int id, uint32_t seen, double spin) {
    double until = now_seconds() + spin;
    uint64_t v;
    while ((v = atomic_load_explicit(&g_pool.claim, memory_order_acquire)) >> 32 == seen && now_seconds() < until)
        cpu_relax();
    if (v >> 32 != seen) return (uint32_t)(v >> 32);
    pthread_mutex_lock(&g_pool.lock);
    while (id >= atomic_load(&g_pool.active)) pthread_cond_wait(&g_pool.unpark, &g_pool.lock);
    atomic_fetch_add(&g_pool.sleepers, 1);
    while ((v = atomic_load(&g_pool.claim)) >> 32 == seen) pthread_cond_wait(&g_pool.wake, &g_pool.lock);
    atomic_fetch_sub(&g_pool.sleepers, 1);
    pthread_mutex_unlock(&g_pool.lock);
    return (uint32_t)(v >> 32);
}

/* Worker `id` spins for the next loop as long as a chunk of the last took it (the caller may be
 * finishing one), plus POOL_SPIN_S. */
static void *pool_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    double spin = POOL_SPIN_S;
    for (uint32_t loop = 0;;) {
        loop = pool_next_loop(id, loop, spin);
        if (id >= atomic_load_explicit(&g_pool.active, memory_order_relaxed)) continue;
        double start = now_seconds();
        int ran = pool_run_chunks(loop);
        if (ran) spin = POOL_SPIN_S + (now_seconds() - start) / ran;
    }
    return NULL;
}

/* Starts the workers, as many as OpenMP would use (--threads, OMP_NUM_THREADS, else the CPUs
 * this process may run on; fewer if the system refuses more), with signals blocked: they go to
 * the main thread. */
static void pool_start(void) {
#ifdef _OPENMP
    int threads = omp_get_max_threads();
#else
    int threads = 1;
#endif
    g_pool.threads = threads < 1 ? 1 : threads > POOL_MAX_THREADS ? POOL_MAX_THREADS : threads;
    atomic_store(&g_pool.active, g_pool.threads);
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    for (int id = 1; id < g_pool.threads; id++) {
        pthread_t t;
        if (pthread_create(&t, NULL, pool_worker, (void *)(intptr_t)id)) {
            g_pool.threads = id;
            atomic_store(&g_pool.active, id);
            break;
        }
        pthread_detach(t);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* Lets the caller and workers 1 .. active - 1 take part; the others sleep at their next loop. */
static void pool_set_active(int active) {
    pthread_mutex_lock(&g_pool.lock);
    atomic_store(&g_pool.active, active);
    pthread_cond_broadcast(&g_pool.unpark);
    pthread_mutex_unlock(&g_pool.lock);
}

/* Publishes a loop of `chunks` chunks to the workers; returns its number. */
static uint32_t pool_post(int n, int chunk, int chunks, RangeFn fn, void *ctx) {
    atomic_store_explicit(&g_pool.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&g_pool.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&g_pool.n, n, memory_order_relaxed);
    atomic_store_explicit(&g_pool.chunk, chunk, memory_order_relaxed);
    atomic_store_explicit(&g_pool.done, 0, memory_order_relaxed);
    uint32_t loop = (uint32_t)(atomic_load_explicit(&g_pool.claim, memory_order_relaxed) >> 32) + 1;
    atomic_store(&g_pool.claim, (uint64_t)loop << 32 | (uint64_t)chunks << 16);
    if (atomic_load(&g_pool.sleepers)) {
        pthread_mutex_lock(&g_pool.lock);
        pthread_cond_broadcast(&g_pool.wake);
        pthread_mutex_unlock(&g_pool.lock);
    }
    return loop;
}

void parallel_for(int n, RangeFn fn, void *ctx) {
    if (!g_pool.threads) pool_start();
    int active = atomic_load_explicit(&g_pool.active, memory_order_relaxed);
    if (active < g_pool.threads && now_seconds() >= g_pool.all_from) pool_set_active(active = g_pool.threads);
    int chunks = active * CHUNKS_PER_THREAD < n ? active * CHUNKS_PER_THREAD : n;
    if (active == 1 || chunks <= 1) {
        if (n > 0) fn(ctx, 0, n);
        return;
    }
    int chunk = (n + chunks - 1) / chunks;
    chunks = (n + chunk - 1) / chunk;
    double start = now_seconds();
    pool_run_chunks(pool_post(n, chunk, chunks, fn, ctx));
    if (atomic_load_explicit(&g_pool.done, memory_order_acquire) == chunks) return;
    double worked = now_seconds();
    while (atomic_load_explicit(&g_pool.done, memory_order_acquire) < chunks) cpu_relax();
    double end = now_seconds(), waited = end - worked;
    if (waited > worked - start + POOL_STALL_S) {
        pool_set_active(active - 1);
        g_pool.all_from = end + STALL_BACKOFF * waited;
    }
}

