// Argument checks for quantized weights (matmul_q_fwd, decode_block): the qtype name and
// a uint8 (OC, bytes per row) array of ggml blocks.
#pragma once
#include <string>

#include "check.h"
#include "quant.h"

namespace sllm {

inline int qtype_code(const Check& k, const std::string& qtype) {
  if (qtype == "q8_0") return Q8_0;
  if (qtype == "q4_0") return Q4_0;
  if (qtype == "q4_1") return Q4_1;
  k.fail("qtype must be q8_0, q4_0 or q4_1, got '" + qtype + "'");
}

// Bytes of one row of K values (zero-padded to whole blocks) in qtype `code`.
inline int64_t qrow_bytes(int code, int64_t K) { return (K + QK - 1) / QK * kBlockBytes[code]; }

// `name`: a C-contiguous uint8 (OC, row_bytes) array
inline const uint8_t* weight_rows(const Check& k, py::handle h, int64_t OC, int64_t row_bytes,
                                  const char* name = "wq") {
  const std::string n = name;
  if (!py::isinstance<py::array>(h)) k.fail(n + " must be a numpy array", true);
  auto a = py::reinterpret_borrow<py::array>(h);
  if (!a.dtype().equal(py::dtype::of<uint8_t>()))
    k.fail(n + " must be uint8, got " + std::string(py::str(a.dtype())), true);
  if (!(a.flags() & py::array::c_style)) k.fail(n + " must be C-contiguous");
  if (a.ndim() != 2 || a.shape(0) != OC || a.shape(1) != row_bytes)
    k.fail(n + " must be (" + std::to_string(OC) + ", " + std::to_string(row_bytes) +
           ") bytes for this out and inp");
  return static_cast<const uint8_t*>(a.data());
}

}  // namespace sllm
