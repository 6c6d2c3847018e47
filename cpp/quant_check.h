// Argument checks for quantized weights (matmul_q_fwd, decode_block): the qtype name and
// a uint8 (OC, bytes per row) array of ggml blocks.
#pragma once
#include <cstdlib>
#include <memory>
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

// Quantized weights packed for this machine's tier (pack_q, quant.h): an opaque buffer the
// Python side holds as sllm._cpp.PackedQ and passes wherever ggml's rows are accepted.
struct PackedQ {
  int qtype;
  int64_t rows, nb;  // the ggml rows it came from: rows x nb blocks
  std::unique_ptr<uint8_t, void (*)(void*)> data{nullptr, std::free};
  int64_t nbytes() const { return (rows + qops().rows - 1) / qops().rows *
                                  qgroup_bytes(qtype, nb, qops().rows); }
};

// Quantized weights as a kernel reads them: ggml's rows or packed groups.
struct QWeights {
  const uint8_t* data;
  bool packed;
};

// `name`: a C-contiguous uint8 array of OC ggml rows (OC, row_bytes), or a PackedQ of the
// same rows.
inline QWeights weight_rows(const Check& k, py::handle h, int64_t OC, int64_t row_bytes,
                            const char* name = "wq", int qtype = -1) {
  const std::string n = name;
  if (py::isinstance<PackedQ>(h)) {
    const PackedQ& p = py::cast<const PackedQ&>(h);
    if (qtype >= 0 && p.qtype != qtype) k.fail(n + " is packed from another qtype");
    if (p.rows != OC || p.nb * kBlockBytes[p.qtype] != row_bytes)
      k.fail(n + " is packed from (" + std::to_string(p.rows) + ", " +
             std::to_string(p.nb * kBlockBytes[p.qtype]) + ") rows, must be (" +
             std::to_string(OC) + ", " + std::to_string(row_bytes) + ") for this out and inp");
    return {p.data.get(), true};
  }
  if (!py::isinstance<py::array>(h)) k.fail(n + " must be a numpy array or PackedQ", true);
  auto a = py::reinterpret_borrow<py::array>(h);
  if (!a.dtype().equal(py::dtype::of<uint8_t>()))
    k.fail(n + " must be uint8, got " + std::string(py::str(a.dtype())), true);
  if (!(a.flags() & py::array::c_style)) k.fail(n + " must be C-contiguous");
  if (a.ndim() != 2 || a.shape(0) != OC || a.shape(1) != row_bytes)
    k.fail(n + " must be (" + std::to_string(OC) + ", " + std::to_string(row_bytes) +
           ") bytes for this out and inp");
  return {static_cast<const uint8_t*>(a.data()), false};
}

// Rows of quantized weights: fc_w's count tells decode_block the FFN width.
inline int64_t weight_row_count(const Check& k, py::handle h, const char* name) {
  if (py::isinstance<PackedQ>(h)) return py::cast<const PackedQ&>(h).rows;
  if (!py::isinstance<py::array>(h)) k.fail(std::string(name) + " must be a numpy array", true);
  auto a = py::reinterpret_borrow<py::array>(h);
  k.expect(a.ndim() == 2, std::string(name) + " must have 2 dimensions");
  return (int64_t)a.shape(0);
}

}  // namespace sllm
