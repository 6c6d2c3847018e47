// Float weights packed for few-row products (pack_weight, kernels.h) as the bindings see
// them: the Python side holds a sllm._cpp.PackedF32 and passes it wherever matmul_fwd,
// decode_block and decode_block_batch take that float weight.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "check.h"
#include "kernels.h"

namespace sllm {

struct PackedF32 {
  py::array source;  // the weight packed (kept alive: the GEMV path reads it)
  std::unique_ptr<float, void (*)(void*)> panels{nullptr, std::free};
  PackedWeight view;
};

// The PackedF32 `h` is, or null when it is something else (an array); a packed weight must
// have been packed for the same trans_w.
inline const PackedF32* packed_f32(const Check& k, py::handle h, const char* name,
                                   bool trans_w) {
  if (!py::isinstance<PackedF32>(h)) return nullptr;
  const PackedF32& p = py::cast<const PackedF32&>(h);
  if (p.view.trans != trans_w)
    k.fail(std::string(name) + " was packed with trans_w=" + (p.view.trans ? "True" : "False") +
           ", used with trans_w=" + (trans_w ? "True" : "False"));
  return &p;
}

}  // namespace sllm
