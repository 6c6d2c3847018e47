// pybind11 bindings of the llama kernels (RMSNorm, rotary embeddings, SwiGLU): argument
// checks (check.h), then the kernel without the GIL. Names and argument order match
// sllm/backends/reference.py; grouped-query attention is bound with the other attention
// kernels (bindings.cpp).
#include <cmath>
#include <cstdint>
#include <string>

#include "check.h"
#include "kernels.h"

using py::arg;
using sllm::Arr;
using sllm::Check;
using Nogil = py::gil_scoped_release;

namespace {

void bind_rmsnorm(py::module_& m) {
  m.def("rmsnorm_fwd", [](py::handle out, py::handle rstd, py::handle inp, py::handle weight,
                          double eps) {
    Check k("rmsnorm_fwd");
    Arr x = k.in(inp, "inp");
    const int64_t N = x.rows(), C = x.last;
    k.expect(eps >= 0.0 && std::isfinite(eps), "eps must be a finite number >= 0");
    float* o = k.sized(out, "out", x.size, true);
    float* rs = k.sized(rstd, "rstd", N, true);
    const float* w = k.sized(weight, "weight", C, false);
    Nogil nogil;
    sllm::rmsnorm_fwd(o, rs, x.f(), w, (float)eps, N, C);
  }, arg("out"), arg("rstd"), arg("inp"), arg("weight"), arg("eps"));

  m.def("rmsnorm_bwd", [](py::handle dinp, py::handle dweight, py::handle dout, py::handle inp,
                          py::handle weight, py::handle rstd) {
    Check k("rmsnorm_bwd");
    Arr x = k.in(inp, "inp");
    const int64_t N = x.rows(), C = x.last;
    float* dx = k.sized(dinp, "dinp", x.size, true);
    float* dw = k.sized(dweight, "dweight", C, true);
    const float* dy = k.sized(dout, "dout", x.size, false);
    const float* w = k.sized(weight, "weight", C, false);
    const float* rs = k.sized(rstd, "rstd", N, false);
    Nogil nogil;
    sllm::rmsnorm_bwd(dx, dw, dy, x.f(), w, rs, N, C);
  }, arg("dinp"), arg("dweight"), arg("dout"), arg("inp"), arg("weight"), arg("rstd"));
}

// rope_fwd / rope_bwd: the same checks, the rotation one way or the other
template <void (*Kernel)(float*, const int32_t*, int64_t, int64_t, int64_t, int64_t, double)>
void bind_rope(py::module_& m, const char* name, const char* rows_name) {
  m.def(name, [name, rows_name](py::handle qkv, py::handle positions, int64_t n_head,
                                int64_t n_kv_head, double theta) {
    Check k(name);
    Arr x = k.out(qkv, rows_name), p = k.ints(positions, "positions");
    k.expect(n_head > 0 && n_kv_head > 0 && n_head % n_kv_head == 0,
             "n_kv_head must be > 0 and divide n_head");
    const int64_t heads = n_head + 2 * n_kv_head, W = x.last;
    k.expect(W % heads == 0 && (W / heads) % 2 == 0,
             std::string(rows_name) + "'s width " + std::to_string(W) +
             " is not (n_head + 2 * n_kv_head) * an even head dim");
    k.expect(theta > 0.0 && std::isfinite(theta), "theta must be a finite number > 0");
    k.expect(p.size == x.rows(), "positions must have one entry per row of " +
                                 std::string(rows_name));
    k.ids(p, 0, INT32_MAX, "positions");
    Nogil nogil;
    Kernel(x.f(), p.i(), x.rows(), n_head, n_kv_head, W / heads, theta);
  }, arg(rows_name), arg("positions"), arg("n_head"), arg("n_kv_head"), arg("theta"));
}

void bind_swiglu(py::module_& m) {
  m.def("swiglu_fwd", [](py::handle out, py::handle gate, py::handle up) {
    Check k("swiglu_fwd");
    Arr g = k.in(gate, "gate");
    float* o = k.sized(out, "out", g.size, true);
    const float* u = k.sized(up, "up", g.size, false);
    Nogil nogil;
    sllm::swiglu_fwd(o, g.f(), u, g.size);
  }, arg("out"), arg("gate"), arg("up"));

  m.def("swiglu_bwd", [](py::handle dgate, py::handle dup, py::handle dout, py::handle gate,
                         py::handle up) {
    Check k("swiglu_bwd");
    Arr g = k.in(gate, "gate"), dg = k.out(dgate, "dgate"), du = k.out(dup, "dup");
    k.expect(dg.size == g.size && du.size == g.size, "dgate and dup must have gate's size");
    k.disjoint(dg, "dgate", du, "dup");
    const float* dy = k.sized(dout, "dout", g.size, false);
    const float* u = k.sized(up, "up", g.size, false);
    Nogil nogil;
    sllm::swiglu_bwd(dg.f(), du.f(), dy, g.f(), u, g.size);
  }, arg("dgate"), arg("dup"), arg("dout"), arg("gate"), arg("up"));
}

}  // namespace

namespace sllm {

void bind_llama(py::module_& m) {
  bind_rmsnorm(m);
  bind_rope<rope_fwd>(m, "rope_fwd", "qkv");
  bind_rope<rope_bwd>(m, "rope_bwd", "dqkv");
  bind_swiglu(m);
}

}  // namespace sllm
