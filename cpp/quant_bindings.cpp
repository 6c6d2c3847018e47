// pybind11 bindings of the quantized kernels: argument checks that name the kernel and
// argument, then the kernel without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "check.h"
#include "quant.h"

namespace py = pybind11;
using py::arg;

namespace sllm {
namespace {

int qtype_code(const Check& k, const std::string& qtype) {
  if (qtype == "q8_0") return Q8_0;
  if (qtype == "q4_0") return Q4_0;
  if (qtype == "q4_1") return Q4_1;
  k.fail("qtype must be q8_0, q4_0 or q4_1, got '" + qtype + "'");
}

// wq: a C-contiguous uint8 (OC, row_bytes) array
const uint8_t* weight_rows(const Check& k, py::handle h, int64_t OC, int64_t row_bytes) {
  if (!py::isinstance<py::array>(h)) k.fail("wq must be a numpy array", true);
  auto a = py::reinterpret_borrow<py::array>(h);
  if (!a.dtype().equal(py::dtype::of<uint8_t>()))
    k.fail("wq must be uint8, got " + std::string(py::str(a.dtype())), true);
  if (!(a.flags() & py::array::c_style)) k.fail("wq must be C-contiguous");
  if (a.ndim() != 2 || a.shape(0) != OC || a.shape(1) != row_bytes)
    k.fail("wq must be (" + std::to_string(OC) + ", " + std::to_string(row_bytes) +
           ") bytes for this out and inp");
  return static_cast<const uint8_t*>(a.data());
}

}  // namespace

void bind_quant(py::module_& m) {
  m.def("matmul_q_fwd", [](py::handle out, py::handle inp, py::handle wq, py::handle bias,
                           const std::string& qtype) {
    Check k("matmul_q_fwd");
    const int code = qtype_code(k, qtype);
    Arr x = k.in(inp, "inp"), o = k.out(out, "out");
    const int64_t K = x.last, OC = o.last, N = x.rows();
    k.expect(K >= 1 && o.size == N * OC, "out must be (N, OC) for inp (N, K)");
    const int64_t row_bytes = (K + QK - 1) / QK * kBlockBytes[code];
    const uint8_t* w = weight_rows(k, wq, OC, row_bytes);
    k.disjoint(o, "out", x, "inp");
    const float* b = k.sized(bias, "bias", OC, false, true);
    py::gil_scoped_release nogil;
    matmul_q_fwd(o.f(), x.f(), w, b, code, N, K, OC);
  }, arg("out"), arg("inp"), arg("wq"), arg("bias"), arg("qtype"),
     "out (N,OC) = q8_0(inp) . W^T + bias for W held as quantized rows (sllm.quant).");
  m.def("quant_simd_level", [] { return std::string(qops().name); },
        "The tier of the quantized dot products: avx512vnni, avx2 or scalar.");
  m.def("stream_read_gbps", &stream_read_gbps, arg("seconds") = 0.3,
        arg("bytes") = int64_t(1) << 30, py::call_guard<py::gil_scoped_release>(),
        "GB/s of a streaming read of `bytes` bytes by every kernel thread: memory bandwidth.");
}

}  // namespace sllm
