// pybind11 bindings of the quantized kernels: argument checks that name the kernel and
// argument, then the kernel without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>
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
    const QWeights w = weight_rows(k, wq, OC, qrow_bytes(code, K), "wq", code);
    k.disjoint(o, "out", x, "inp");
    const float* b = k.sized(bias, "bias", OC, false, true);
    py::gil_scoped_release nogil;
    matmul_q_fwd(o.f(), x.f(), w.data, b, code, N, K, OC, w.packed);
  }, arg("out"), arg("inp"), arg("wq"), arg("bias"), arg("qtype"),
     "out (N,OC) = q8_0(inp) . W^T + bias for W held as quantized rows (sllm.quant).");
  m.def("matmul_q_bwd", [](py::handle dinp, py::handle dout, py::handle wq,
                           const std::string& qtype) {
    Check k("matmul_q_bwd");
    const int code = qtype_code(k, qtype);
    Arr dy = k.in(dout, "dout"), dx = k.out(dinp, "dinp");
    const int64_t K = dx.last, OC = dy.last, N = dy.rows();
    k.expect(K >= 1 && OC >= 1 && dx.size == N * K, "dinp must be (N, K) for dout (N, OC)");
    const QWeights w = weight_rows(k, wq, OC, qrow_bytes(code, K), "wq", code);
    k.disjoint(dx, "dinp", dy, "dout");
    py::gil_scoped_release nogil;
    matmul_q_bwd(dx.f(), dy.f(), w.data, code, N, K, OC, w.packed);
  }, arg("dinp"), arg("dout"), arg("wq"), arg("qtype"),
     "dinp (N,K) = dout (N,OC) @ W for W held as quantized rows (matmul_q_fwd's backward).");
  m.def("embed_q_fwd", [](py::handle out, py::handle tokens, py::handle wq,
                          const std::string& qtype) {
    Check k("embed_q_fwd");
    const int code = qtype_code(k, qtype);
    Arr t = k.ints(tokens, "tokens"), o = k.out(out, "out");
    k.dims(t, "tokens", 2);
    const int64_t C = o.last;
    k.expect(C >= 1 && o.size == t.size * C, "out must be (B, T, C) for tokens (B, T)");
    const int64_t V = weight_row_count(k, wq, "wq");
    const QWeights w = weight_rows(k, wq, V, qrow_bytes(code, C), "wq", code);
    k.ids(t, 0, V, "tokens");
    py::gil_scoped_release nogil;
    embed_q_fwd(o.f(), t.i(), t.size, w.data, code, C, w.packed);
  }, arg("out"), arg("tokens"), arg("wq"), arg("qtype"),
     "out (B,T,C) = rows tokens of quantized rows wq, dequantized (base.Backend).");
  m.def("encoder_q_fwd", [](py::handle out, py::handle tokens, py::handle wq, py::handle wpe,
                            const std::string& qtype, int64_t pos) {
    Check k("encoder_q_fwd");
    const int code = qtype_code(k, qtype);
    Arr t = k.ints(tokens, "tokens"), o = k.out(out, "out"), p = k.in(wpe, "wpe");
    k.dims(t, "tokens", 2); k.dims(p, "wpe", 2);
    const int64_t C = o.last, T = t.shape[1];
    k.expect(C >= 1 && o.size == t.size * C, "out must be (B, T, C) for tokens (B, T)");
    k.expect(p.last == C, "wpe must be (maxT, C) for out (B, T, C)");
    k.expect(pos >= 0 && pos + T <= p.shape[0], "positions exceed wpe rows");
    const int64_t V = weight_row_count(k, wq, "wq");
    const QWeights w = weight_rows(k, wq, V, qrow_bytes(code, C), "wq", code);
    k.ids(t, 0, V, "tokens");
    k.disjoint(o, "out", p, "wpe");
    py::gil_scoped_release nogil;
    encoder_q_fwd(o.f(), t.i(), t.size, T, w.data, code, p.f(), pos, C, w.packed);
  }, arg("out"), arg("tokens"), arg("wq"), arg("wpe"), arg("qtype"), arg("pos") = 0,
     "out (B,T,C) = rows tokens of quantized rows wq, dequantized, + wpe[pos:pos+T].");
  py::class_<PackedQ>(m, "PackedQ",
      "Quantized weights packed for this machine (pack_q); matmul_q_fwd and decode_block "
      "take it wherever they take ggml's rows.")
      .def_property_readonly("qtype", [](const PackedQ& p) {
        return std::string(p.qtype == Q8_0 ? "q8_0" : p.qtype == Q4_0 ? "q4_0" : "q4_1");
      })
      .def_property_readonly("shape", [](const PackedQ& p) {
        return py::make_tuple(p.rows, p.nb * kBlockBytes[p.qtype]);
      }, "(rows, bytes per row) of the ggml rows it was packed from")
      .def_property_readonly("nbytes", &PackedQ::nbytes, "bytes held (padding rows included)")
      .def("unpack", [](const PackedQ& p) {
        py::array_t<uint8_t> rows({p.rows, p.nb * kBlockBytes[p.qtype]});
        uint8_t* dst = rows.mutable_data();
        {
          py::gil_scoped_release nogil;
          unpack_q(dst, p.data.get(), p.qtype, p.rows, p.nb);
        }
        return rows;
      }, "ggml's rows it was packed from, read back (a new uint8 array, byte for byte)");
  m.def("pack_q", [](py::handle wq, const std::string& qtype) -> py::object {
    Check k("pack_q");
    const int code = qtype_code(k, qtype);
    if (!py::isinstance<py::array>(wq)) k.fail("wq must be a numpy array", true);
    auto a = py::reinterpret_borrow<py::array>(wq);
    k.expect(a.ndim() == 2 && a.shape(0) >= 1 && a.shape(1) >= 1 &&
             a.shape(1) % kBlockBytes[code] == 0,
             "wq must be (OC, bytes) rows of whole " + qtype + " blocks");
    const int64_t OC = a.shape(0), nb = a.shape(1) / kBlockBytes[code];
    const QWeights w = weight_rows(k, wq, OC, nb * kBlockBytes[code]);
    if (qops().rows == 0) return py::reinterpret_borrow<py::object>(wq);  // ggml's rows
    auto p = std::make_unique<PackedQ>();
    p->qtype = code, p->rows = OC, p->nb = nb;
    const size_t bytes = (size_t)(p->nbytes() + 63) / 64 * 64;
    p->data.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
    if (!p->data) throw std::bad_alloc();
    {
      py::gil_scoped_release nogil;
      pack_q(p->data.get(), w.data, code, OC, nb);
    }
    return py::cast(std::move(p));
  }, arg("wq"), arg("qtype"),
     "wq's ggml rows packed for this machine's tier (a PackedQ, what matmul_q_fwd reads "
     "fastest); wq itself where the tier reads ggml's rows.");
  m.def("quant_pack_rows", [] { return qops().rows; },
        "Rows interleaved per packed group on this tier (0: the tier reads ggml's rows).");
  m.def("quant_simd_level", [] { return std::string(qops().name); },
        "The tier of the quantized dot products: avx512vnni, avx2 or scalar.");
  m.def("stream_read_gbps", &stream_read_gbps, arg("seconds") = 0.3,
        arg("bytes") = int64_t(1) << 30, py::call_guard<py::gil_scoped_release>(),
        "GB/s of a streaming read of `bytes` bytes by every kernel thread: memory bandwidth.");
}

}  // namespace sllm
