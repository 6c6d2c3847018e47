// pybind11 bindings of the quantized kernels: argument checks that name the kernel and
// argument, then the kernel without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "check.h"
#include "quant.h"
#include "quant_check.h"

namespace py = pybind11;
using py::arg;

namespace sllm {

void bind_quant(py::module_& m) {
  m.def("matmul_q_fwd", [](py::handle out, py::handle inp, py::handle wq, py::handle bias,
                           const std::string& qtype) {
    Check k("matmul_q_fwd");
    const int code = qtype_code(k, qtype);
    Arr x = k.in(inp, "inp"), o = k.out(out, "out");
    const int64_t K = x.last, OC = o.last, N = x.rows();
    k.expect(K >= 1 && o.size == N * OC, "out must be (N, OC) for inp (N, K)");
    const uint8_t* w = weight_rows(k, wq, OC, qrow_bytes(code, K));
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
