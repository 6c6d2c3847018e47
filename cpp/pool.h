// The kernels' thread pool: one parallel-for, nothing else.
//
//   sllm::parallel_for(tasks, [&](int64_t task, int thread) { ... });
//   sllm::parallel_for(tasks, body, max_threads);   // at most max_threads threads
//
// runs body(task, thread) once for every task in [0, tasks) and returns when all have
// run. The calling thread takes part as thread 0; workers are threads 1..num_threads()-1,
// so `thread` indexes per-thread scratch (size it with num_threads()). Tasks are taken
// one at a time from a shared counter, so a thread that loses its core to another process
// delays only the task it holds. Give every task a fixed piece of work (never "my share of
// the threads") and results do not depend on the thread count.
//
// Waiting: an idle worker spins for about kSpinMicros on the job counter, then sleeps on
// a condition variable. Back-to-back kernels (a training step, a decoded token) therefore
// find their workers awake, while a pool left idle, or starved of cores by other
// processes, sleeps instead of burning the shared cores. The caller waits for the last
// task the same way.
//
// A call made from inside a task, or while another Python thread's kernel holds the pool,
// runs its tasks serially on the calling thread: parallel_for never blocks on the pool.
// With tasks <= 1 or max_threads == 1 no worker is involved at all.
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace sllm {

int num_threads();        // threads parallel_for uses (set_num_threads; sllm/threads.py sets it from SLLM_NUM_THREADS)
void set_num_threads(int n);
int thread_id();          // the `thread` of the task running on this thread (0 outside)

using TaskFn = void (*)(void* ctx, int64_t task, int thread);
void parallel_for_raw(int64_t tasks, TaskFn fn, void* ctx, int max_threads);

template <class Body>
void parallel_for(int64_t tasks, Body&& body, int max_threads = 0) {
  using B = std::remove_reference_t<Body>;
  parallel_for_raw(tasks, [](void* ctx, int64_t task, int thread) {
    (*static_cast<B*>(ctx))(task, thread);
  }, const_cast<void*>(static_cast<const void*>(&body)), max_threads);
}

// [begin, end) of part `i` of `parts` near-equal parts of [0, n), aligned to `align`.
inline void split_range(int64_t n, int parts, int i, int64_t align, int64_t* begin,
                        int64_t* end) {
  int64_t chunk = (n + parts - 1) / parts;
  chunk = (chunk + align - 1) / align * align;
  *begin = i * chunk < n ? i * chunk : n;
  *end = *begin + chunk < n ? *begin + chunk : n;
}

// parallel_for over `parts` chunks of [0, n) (aligned to `align`): body(begin, end).
// Use for elementwise loops; parts = 1 runs inline.
template <class Body>
void parallel_ranges(int64_t n, int parts, int64_t align, Body&& body) {
  if (parts <= 1 || n <= align) {
    if (n > 0) body(int64_t{0}, n);
    return;
  }
  parallel_for(parts, [&](int64_t part, int) {
    int64_t b, e;
    split_range(n, parts, (int)part, align, &b, &e);
    if (b < e) body(b, e);
  }, parts);
}

// Memory-bound kernels (elementwise, per-row) go parallel from kParallelFloats floats, in
// tasks of about kTaskFloats: two threads read and write twice the bandwidth of one, and
// the data a step's previous kernel left in the other core's cache is read there. (The
// threshold was 1M floats; at 32K, layernorm and the residual adds run 1.4-2.2x faster in
// a training step, measured alternating both in one process, 2026-11-30.)
constexpr int64_t kParallelFloats = 1 << 15, kTaskFloats = 1 << 14;

// parallel_for over [0, n) in tasks of `grain` items each (the last one shorter):
// body(begin, end). Tasks have a fixed size, not one per thread, so a thread that loses
// its core delays only the task it holds; `parallel` false runs everything inline.
template <class Body>
void parallel_grains(int64_t n, int64_t grain, bool parallel, Body&& body) {
  const int64_t tasks = (n + grain - 1) / grain;
  if (!parallel || tasks <= 1) {
    if (n > 0) body(int64_t{0}, n);
    return;
  }
  parallel_for(tasks, [&](int64_t t, int) { body(t * grain, std::min(n, t * grain + grain)); });
}

// Rows per task for rows of `width` floats.
inline int64_t rows_per_task(int64_t width) {
  return std::max<int64_t>(1, kTaskFloats / std::max<int64_t>(width, 1));
}

// parallel_grains over the N rows (of `width` floats) of a memory-bound kernel.
template <class Body>
void parallel_rows(int64_t N, int64_t width, Body&& body) {
  parallel_grains(N, rows_per_task(width), N * width >= kParallelFloats, body);
}

// parallel_grains over n floats of a memory-bound (elementwise) kernel: body(i0, i1).
template <class Body>
void parallel_floats(int64_t n, Body&& body) {
  parallel_rows(n, 1, body);
}

}  // namespace sllm
