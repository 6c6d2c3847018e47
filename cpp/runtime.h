// Threads (pool.h) and reusable scratch memory shared by the drivers.
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "pool.h"

namespace sllm {

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

}  // namespace sllm
