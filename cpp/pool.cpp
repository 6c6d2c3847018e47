// The thread pool behind parallel_for (see pool.h for the contract).
//
// One 64-bit word holds the state of the current job: generation (32 bits), worker slots
// still open (16) and workers running (16). A worker joins by a compare-and-swap that
// takes a slot and counts itself running in one step; the caller closes the open slots
// when it has run out of tasks and waits until none is running. So a worker that wakes
// late can never join a finished job, and the job's fields are stable while anyone runs.
#include "pool.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define SLLM_PAUSE() _mm_pause()
#else
#define SLLM_PAUSE() std::this_thread::yield()
#endif

namespace sllm {
namespace {

// How long an idle thread spins before it sleeps: long enough to bridge the Python code
// between two kernels of a step, short enough not to burn a shared core for long.
constexpr int64_t kSpinMicros = 100;
constexpr int kMaxThreads = 256;

thread_local int t_thread = 0;          // `thread` of the task running here
thread_local bool t_in_task = false;    // nested calls run serially

constexpr uint64_t gen_of(uint64_t w) { return w >> 32; }
constexpr uint64_t open_of(uint64_t w) { return (w >> 16) & 0xFFFF; }
constexpr uint64_t running_of(uint64_t w) { return w & 0xFFFF; }
constexpr uint64_t word(uint64_t gen, uint64_t open, uint64_t running) {
  return (gen << 32) | (open << 16) | running;
}

// Spin until pred() holds or the spin budget is spent; true when pred() held.
template <class Pred>
bool spin_until(Pred pred) {
  const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
  for (int i = 1;; ++i) {
    if (pred()) return true;
    SLLM_PAUSE();
    if ((i & 63) == 0 && std::chrono::steady_clock::now() > until) return pred();
  }
}

// Never destroyed (see pool()): workers sleep when the process exits.
class Pool {
 public:
  void run(int64_t tasks, TaskFn fn, void* ctx, int threads) {
    std::unique_lock<std::mutex> busy(call_mu_, std::try_to_lock);
    if (!busy.owns_lock()) return serial(tasks, fn, ctx);
    grow(threads - 1);
    threads_.store(threads);
    fn_ = fn;
    ctx_ = ctx;
    tasks_ = tasks;
    next_.store(0, std::memory_order_relaxed);
    const uint64_t gen = gen_of(state_.load()) + 1;
    state_.store(word(gen, (uint64_t)(threads - 1), 0));  // seq_cst: pairs with sleepers_
    if (sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(mu_);
      wake_.notify_all();
    }
    work(0);
    close_and_wait(gen);
  }

 private:
  static void serial(int64_t tasks, TaskFn fn, void* ctx) {
    const bool was = t_in_task;
    t_in_task = true;
    for (int64_t i = 0; i < tasks; ++i) fn(ctx, i, t_thread);
    t_in_task = was;
  }

  void work(int thread) {
    t_thread = thread;
    t_in_task = true;
    for (int64_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < tasks_;)
      fn_(ctx_, i, thread);
    t_in_task = false;
    t_thread = 0;
  }

  void close_and_wait(uint64_t gen) {
    uint64_t w = state_.load();
    while (!state_.compare_exchange_weak(w, word(gen, 0, running_of(w)))) {
    }
    auto idle = [&] { return running_of(state_.load()) == 0; };
    if (spin_until(idle)) return;
    std::unique_lock<std::mutex> lock(mu_);
    caller_waiting_.store(true);
    done_.wait(lock, idle);
    caller_waiting_.store(false);
  }

  void grow(int workers) {
    while ((int)workers_.size() < workers && (int)workers_.size() < kMaxThreads - 1) {
      const int id = (int)workers_.size() + 1;
      workers_.emplace_back([this, id] { worker(id); });
    }
  }

  // Take a slot of a job newer than `seen`; false when it has none left.
  bool join(uint64_t* seen) {
    uint64_t w = state_.load();
    while (gen_of(w) != *seen) {
      if (open_of(w) == 0) {
        *seen = gen_of(w);
        return false;
      }
      if (state_.compare_exchange_weak(w, word(gen_of(w), open_of(w) - 1, running_of(w) + 1))) {
        *seen = gen_of(w);
        return true;
      }
    }
    return false;
  }

  void worker(int id) {
    uint64_t seen = gen_of(state_.load());
    for (;;) {
      auto fresh = [&] { return gen_of(state_.load()) != seen; };
      if (!spin_until(fresh)) {
        std::unique_lock<std::mutex> lock(mu_);
        sleepers_.fetch_add(1);
        wake_.wait(lock, fresh);
        sleepers_.fetch_sub(1);
      }
      if (!join(&seen)) continue;
      // A worker made when the pool had more threads sits out a job for fewer, so `thread`
      // stays below num_threads(), which sizes per-thread scratch. threads_ is this job's:
      // the next job cannot start while this worker counts as running.
      if (id < threads_.load()) work(id);
      const uint64_t after = state_.fetch_sub(1);  // running - 1
      if (running_of(after) == 1 && caller_waiting_.load()) {
        std::lock_guard<std::mutex> lock(mu_);
        done_.notify_all();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // one job at a time
  std::mutex mu_;       // sleeping and waking
  std::condition_variable wake_, done_;
  std::atomic<uint64_t> state_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_waiting_{false};
  // the current job (written by the caller before the generation is published)
  TaskFn fn_ = nullptr;
  void* ctx_ = nullptr;
  int64_t tasks_ = 0;
  std::atomic<int> threads_{0};
  std::atomic<int64_t> next_{0};
};

// SLLM_NUM_THREADS is parsed on the Python side (sllm/threads.py), which sets the count
// when sllm.backends.cpp is imported; until then, one thread per hardware thread.
int initial_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw ? (int)hw : 1;
}

std::atomic<int> g_threads{initial_threads()};

Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose: workers outlive static destructors
  return *p;
}

}  // namespace

int num_threads() { return g_threads.load(std::memory_order_relaxed); }

void set_num_threads(int n) {
  g_threads.store(n < 1 ? 1 : (n > kMaxThreads ? kMaxThreads : n), std::memory_order_relaxed);
}

int thread_id() { return t_thread; }

void parallel_for_raw(int64_t tasks, TaskFn fn, void* ctx, int max_threads) {
  int threads = num_threads();
  if (max_threads > 0 && max_threads < threads) threads = max_threads;
  if ((int64_t)threads > tasks) threads = (int)tasks;
  if (threads <= 1 || t_in_task) {
    const bool was = t_in_task;
    t_in_task = true;
    for (int64_t i = 0; i < tasks; ++i) fn(ctx, i, t_thread);
    t_in_task = was;
    return;
  }
  pool().run(tasks, fn, ctx, threads);
}

}  // namespace sllm
