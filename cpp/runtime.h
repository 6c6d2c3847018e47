// Threads and reusable scratch memory shared by the drivers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>

namespace sllm {

int num_threads();
int thread_id();  // this thread's index inside a parallel region (0 outside)
void set_num_threads(int n);

// A grow-only, 64-byte aligned float buffer. Fresh memory is slow to touch on the VMs we
// target, so each driver keeps one and reuses it across calls; `lock()` guards it when
// Python threads call kernels concurrently (the GIL is released inside kernels).
class Scratch {
 public:
  ~Scratch();
  float* get(size_t n);  // at least n floats; call with lock() held
  std::unique_lock<std::mutex> lock() { return std::unique_lock<std::mutex>(mutex_); }

 private:
  std::mutex mutex_;
  float* data_ = nullptr;
  size_t size_ = 0;
};

// [begin, end) of part `i` of `parts` near-equal parts of [0, n), aligned to `align`.
inline void split_range(int64_t n, int parts, int i, int64_t align, int64_t* begin,
                        int64_t* end) {
  int64_t chunk = (n + parts - 1) / parts;
  chunk = (chunk + align - 1) / align * align;
  *begin = i * chunk < n ? i * chunk : n;
  *end = *begin + chunk < n ? *begin + chunk : n;
}

}  // namespace sllm
