// pybind11 bindings of sllm._cpp: argument checks (check.h), then the kernel without the
// GIL. Every kernel works in place on the caller's numpy buffers: a wrong dtype is a
// TypeError, a non-contiguous, read-only or mis-shaped buffer a ValueError; nothing is
// copied. Argument names and defaults match sllm/backends/reference.py.
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>

#include "arch.h"
#include "check.h"
#include "packed_check.h"
#include "kernels.h"
#include "runtime.h"

using py::arg;
using sllm::Arr;
using sllm::Check;
using Nogil = py::gil_scoped_release;

namespace {

void bind_embedding_and_norm(py::module_& m) {
  m.def("encoder_fwd", [](py::handle out, py::handle tokens, py::handle wte, py::handle wpe,
                          int64_t pos) {
    Check k("encoder_fwd");
    Arr t = k.ints(tokens, "tokens"), e = k.in(wte, "wte"), p = k.in(wpe, "wpe");
    k.dims(t, "tokens", 2); k.dims(e, "wte", 2); k.dims(p, "wpe", 2);
    const int64_t T = t.shape[1], C = e.last;
    k.expect(p.last == C, "wpe and wte widths differ");
    k.expect(pos >= 0 && pos + T <= p.shape[0], "positions exceed wpe rows");
    k.ids(t, 0, e.shape[0], "tokens");
    float* o = k.sized(out, "out", t.size * C, true);
    Nogil nogil;
    sllm::encoder_fwd(o, t.i(), e.f(), p.f(), t.size, T, C, pos);
  }, arg("out"), arg("tokens"), arg("wte"), arg("wpe"), arg("pos") = 0);

  m.def("encoder_bwd", [](py::handle dwte, py::handle dwpe, py::handle dout, py::handle tokens,
                          int64_t pos) {
    Check k("encoder_bwd");
    Arr t = k.ints(tokens, "tokens"), e = k.out(dwte, "dwte"), p = k.out(dwpe, "dwpe");
    k.dims(t, "tokens", 2); k.dims(e, "dwte", 2); k.dims(p, "dwpe", 2);
    const int64_t B = t.shape[0], T = t.shape[1], C = e.last;
    k.expect(p.last == C, "dwpe and dwte widths differ");
    k.expect(pos >= 0 && pos + T <= p.shape[0], "positions exceed dwpe rows");
    k.ids(t, 0, e.shape[0], "tokens");
    const float* dy = k.sized(dout, "dout", t.size * C, false);
    Nogil nogil;
    sllm::encoder_bwd(e.f(), p.f(), dy, t.i(), B, T, C, pos);
  }, arg("dwte"), arg("dwpe"), arg("dout"), arg("tokens"), arg("pos") = 0);

  m.def("layernorm_fwd", [](py::handle out, py::handle mean, py::handle rstd, py::handle inp,
                            py::handle weight, py::handle bias) {
    Check k("layernorm_fwd");
    Arr x = k.in(inp, "inp");
    const int64_t N = x.rows(), C = x.last;
    float* o = k.sized(out, "out", x.size, true);
    float* mu = k.sized(mean, "mean", N, true);
    float* rs = k.sized(rstd, "rstd", N, true);
    const float* w = k.sized(weight, "weight", C, false);
    const float* b = k.sized(bias, "bias", C, false);
    Nogil nogil;
    sllm::layernorm_fwd(o, mu, rs, x.f(), w, b, N, C);
  }, arg("out"), arg("mean"), arg("rstd"), arg("inp"), arg("weight"), arg("bias"));

  m.def("layernorm_bwd", [](py::handle dinp, py::handle dweight, py::handle dbias,
                            py::handle dout, py::handle inp, py::handle weight,
                            py::handle mean, py::handle rstd) {
    Check k("layernorm_bwd");
    Arr x = k.in(inp, "inp");
    const int64_t N = x.rows(), C = x.last;
    float* dx = k.sized(dinp, "dinp", x.size, true);
    float* dw = k.sized(dweight, "dweight", C, true);
    float* db = k.sized(dbias, "dbias", C, true);
    const float* dy = k.sized(dout, "dout", x.size, false);
    const float* w = k.sized(weight, "weight", C, false);
    const float* mu = k.sized(mean, "mean", N, false);
    const float* rs = k.sized(rstd, "rstd", N, false);
    Nogil nogil;
    sllm::layernorm_bwd(dx, dw, db, dy, x.f(), w, mu, rs, N, C);
  }, arg("dinp"), arg("dweight"), arg("dbias"), arg("dout"), arg("inp"), arg("weight"),
     arg("mean"), arg("rstd"));
}

void bind_matmul(py::module_& m) {
  m.def("matmul_fwd", [](py::handle out, py::handle inp, py::handle weight, py::handle bias,
                         bool trans_w) {
    Check k("matmul_fwd");
    const sllm::PackedF32* packed = sllm::packed_f32(k, weight, "weight", trans_w);
    Arr x = k.in(inp, "inp"), o = k.out(out, "out");
    Arr w = k.in(packed ? py::handle(packed->source) : weight, "weight");
    k.dims(w, "weight", 2);
    const int64_t C = x.last, OC = trans_w ? w.shape[0] : w.shape[1];
    k.expect((trans_w ? w.shape[1] : w.shape[0]) == C, "weight does not match inp's width");
    k.expect(o.last == OC && o.size == x.rows() * OC, "out must be (N, OC)");
    k.disjoint(o, "out", x, "inp"); k.disjoint(o, "out", w, "weight");
    const float* b = k.sized(bias, "bias", OC, false, true);
    Nogil nogil;
    if (packed)
      sllm::matmul_fwd_packed(o.f(), x.f(), packed->view, b, x.rows());
    else
      sllm::matmul_fwd(o.f(), x.f(), w.f(), b, trans_w, x.rows(), C, OC);
  }, arg("out"), arg("inp"), arg("weight"), arg("bias"), arg("trans_w") = false,
     "out (N,OC) = inp (N,C) @ weight [+ bias]; weight (C,OC), (OC,C) with trans_w, or "
     "what pack_weight made of it (base.Backend).");
  m.def("pack_weight", [](py::handle weight, bool trans_w) {
    Check k("pack_weight");
    Arr w = k.in(weight, "weight");
    k.dims(w, "weight", 2);
    const int64_t K = trans_w ? w.shape[1] : w.shape[0], N = trans_w ? w.shape[0] : w.shape[1];
    k.expect(K >= 1 && N >= 1, "weight must not be empty");
    auto p = std::make_unique<sllm::PackedF32>();
    p->source = py::reinterpret_borrow<py::array>(weight);
    const size_t bytes = (size_t)(sllm::packed_weight_size(K, N) * 4 + 63) / 64 * 64;
    p->panels.reset(static_cast<float*>(std::aligned_alloc(64, bytes)));
    if (!p->panels) throw std::bad_alloc();
    p->view = {p->panels.get(), w.f(), K, N, trans_w};
    {
      Nogil nogil;
      sllm::pack_weight(p->panels.get(), w.f(), trans_w, K, N);
    }
    return p;
  }, arg("weight"), arg("trans_w") = false,
     "weight packed for products of a few rows (a PackedF32: matmul_fwd and decode_block "
     "read it fastest where a batched decode step multiplies 5 or more rows).");
  py::class_<sllm::PackedF32>(m, "PackedF32",
      "A float weight packed once for few-row products (pack_weight); matmul_fwd, "
      "decode_block and decode_block_batch take it wherever they take the weight.")
      .def_property_readonly("weight", [](const sllm::PackedF32& p) { return p.source; },
                             "the weight it was packed from (the same array, not a copy)")
      .def_property_readonly("trans_w", [](const sllm::PackedF32& p) { return p.view.trans; })
      .def_property_readonly("nbytes", [](const sllm::PackedF32& p) {
        return sllm::packed_weight_size(p.view.K, p.view.N) * 4;
      }, "bytes of the packed copy (the weight itself not counted)");

  m.def("matmul_bwd", [](py::handle dinp, py::handle dweight, py::handle dbias, py::handle dout,
                         py::handle inp, py::handle weight, bool trans_w) {
    Check k("matmul_bwd");
    Arr x = k.in(inp, "inp"), w = k.in(weight, "weight"), dy = k.in(dout, "dout");
    Arr dw = k.out(dweight, "dweight");
    k.dims(w, "weight", 2);
    const int64_t C = x.last, OC = trans_w ? w.shape[0] : w.shape[1];
    k.expect((trans_w ? w.shape[1] : w.shape[0]) == C, "weight does not match inp's width");
    k.expect(dy.last == OC && dy.size == x.rows() * OC, "dout must be (N, OC)");
    k.expect(dw.shape == w.shape, "dweight must have weight's shape");
    float* dx = nullptr;
    if (!dinp.is_none()) {
      Arr d = k.out(dinp, "dinp");
      k.expect(d.size == x.size, "dinp must have inp's shape");
      k.disjoint(d, "dinp", dy, "dout"); k.disjoint(d, "dinp", w, "weight");
      dx = d.f();
    }
    k.disjoint(dw, "dweight", x, "inp"); k.disjoint(dw, "dweight", dy, "dout");
    float* db = k.sized(dbias, "dbias", OC, true, true);
    Nogil nogil;
    sllm::matmul_bwd(dx, dw.f(), db, dy.f(), x.f(), w.f(), trans_w, x.rows(), C, OC);
  }, arg("dinp"), arg("dweight"), arg("dbias"), arg("dout"), arg("inp"), arg("weight"),
     arg("trans_w") = false);
}

// The shape of a (B, T, (H + 2*Hkv) * D) qkv with n_head = H query heads and n_kv_head =
// Hkv key/value heads (None: H, GPT-2's (B, T, 3C)); C = H * D is the output width.
struct QkvDims {
  int64_t B, T, C, Hkv, D;
};

QkvDims qkv_dims(const Check& k, const Arr& qkv, int64_t n_head,
                 std::optional<int64_t> n_kv_head) {
  k.dims(qkv, "qkv", 3);
  const int64_t Hkv = n_kv_head.value_or(n_head);
  k.expect(n_head > 0, "n_head must be > 0");
  k.expect(Hkv > 0 && n_head % Hkv == 0, "n_kv_head must be > 0 and divide n_head");
  const int64_t heads = n_head + 2 * Hkv;
  k.expect(qkv.last % heads == 0 && qkv.last > 0,
           "qkv's last axis (" + std::to_string(qkv.last) +
           ") must be (n_head + 2 * n_kv_head) * head dim");
  const int64_t D = qkv.last / heads;
  return {qkv.shape[0], qkv.shape[1], n_head * D, Hkv, D};
}

void bind_attention(py::module_& m) {
  using Heads = std::optional<int64_t>;
  m.def("attention_fwd", [](py::handle out, py::handle saved, py::handle qkv, int64_t n_head,
                            Heads n_kv_head) {
    Check k("attention_fwd");
    Arr q = k.in(qkv, "qkv");
    const QkvDims d = qkv_dims(k, q, n_head, n_kv_head);
    Arr o = k.out(out, "out");
    k.expect(o.size == d.B * d.T * d.C, "out must be (B, T, n_head * head dim)");
    k.disjoint(o, "out", q, "qkv");
    float* lse = k.sized(saved, "saved", d.B * n_head * d.T, true);
    Nogil nogil;
    sllm::attention_fwd(o.f(), lse, q.f(), d.B, d.T, d.C, n_head, d.Hkv);
  }, arg("out"), arg("saved"), arg("qkv"), arg("n_head"), arg("n_kv_head") = py::none());

  m.def("attention_bwd", [](py::handle dqkv, py::handle dout, py::handle qkv, py::handle out,
                            py::handle saved, int64_t n_head, Heads n_kv_head) {
    Check k("attention_bwd");
    Arr q = k.in(qkv, "qkv"), dq = k.out(dqkv, "dqkv");
    const QkvDims d = qkv_dims(k, q, n_head, n_kv_head);
    k.expect(dq.size == q.size, "dqkv must have qkv's shape");
    Arr dy = k.in(dout, "dout"), o = k.in(out, "out");
    const int64_t size = d.B * d.T * d.C;
    k.expect(dy.size == size && o.size == size, "dout and out must be (B, T, n_head * head dim)");
    k.disjoint(dq, "dqkv", q, "qkv"); k.disjoint(dq, "dqkv", dy, "dout");
    k.disjoint(dq, "dqkv", o, "out");
    const float* lse = k.sized(saved, "saved", d.B * n_head * d.T, false);
    Nogil nogil;
    sllm::attention_bwd(dq.f(), dy.f(), q.f(), o.f(), lse, d.B, d.T, d.C, n_head, d.Hkv);
  }, arg("dqkv"), arg("dout"), arg("qkv"), arg("out"), arg("saved"), arg("n_head"),
     arg("n_kv_head") = py::none());

  m.def("attention_decode", [](py::handle out, py::handle qkv, py::handle kcache,
                               py::handle vcache, int64_t pos, int64_t n_head, Heads n_kv_head) {
    Check k("attention_decode");
    Arr q = k.in(qkv, "qkv"), kc = k.out(kcache, "kcache"), vc = k.out(vcache, "vcache");
    const QkvDims d = qkv_dims(k, q, n_head, n_kv_head);
    const int64_t maxT = k.kv_cache(kc, vc, d.B, d.Hkv, d.Hkv * d.D, pos, d.T);
    Arr o = k.out(out, "out");
    k.expect(o.size == d.B * d.T * d.C, "out must be (B, Tn, n_head * head dim)");
    Nogil nogil;
    sllm::attention_decode(o.f(), q.f(), kc.f(), vc.f(), pos, d.B, d.T, d.C, n_head, maxT,
                           d.Hkv);
  }, arg("out"), arg("qkv"), arg("kcache"), arg("vcache"), arg("pos"), arg("n_head"),
     arg("n_kv_head") = py::none());

  m.def("attention_decode_batch", [](py::handle out, py::handle qkv, py::handle kcache,
                                     py::handle vcache, py::handle slots, py::handle positions,
                                     int64_t n_head, Heads n_kv_head) {
    Check k("attention_decode_batch");
    Arr q = k.in(qkv, "qkv"), kc = k.out(kcache, "kcache"), vc = k.out(vcache, "vcache");
    const QkvDims d = qkv_dims(k, q, n_head, n_kv_head);
    k.expect(d.T == 1, "qkv must be (B, 1, (n_head + 2 * n_kv_head) * head dim): one new "
                       "position per sequence");
    Arr sl = k.ints(slots, "slots"), ps = k.ints(positions, "positions");
    const int64_t B = d.B, maxT = k.batch_rows(kc, vc, sl, ps, B, d.Hkv, d.D);
    Arr o = k.out(out, "out");
    k.expect(o.size == B * d.C, "out must be (B, 1, n_head * head dim)");
    k.disjoint(o, "out", q, "qkv");
    Nogil nogil;
    sllm::attention_decode_batch(o.f(), q.f(), kc.f(), vc.f(), sl.i(), ps.i(), B, d.C, n_head,
                                 maxT, d.Hkv);
  }, arg("out"), arg("qkv"), arg("kcache"), arg("vcache"), arg("slots"), arg("positions"),
     arg("n_head"), arg("n_kv_head") = py::none());
}

template <void (*Kernel)(float*, const float*, int64_t)>
void bind_unary(py::module_& m, const char* name) {
  m.def(name, [name](py::handle out, py::handle inp) {
    Check k(name);
    Arr x = k.in(inp, "inp");
    float* o = k.sized(out, "out", x.size, true);
    Nogil nogil;
    Kernel(o, x.f(), x.size);
  }, arg("out"), arg("inp"));
}

template <void (*Kernel)(float*, const float*, const float*, int64_t)>
void bind_binary(py::module_& m, const char* name, const char* a_name, const char* b_name,
                 const char* out_name) {
  m.def(name, [name, a_name, b_name, out_name](py::handle out, py::handle a, py::handle b) {
    Check k(name);
    Arr x = k.in(a, a_name);
    float* o = k.sized(out, out_name, x.size, true);
    const float* y = k.sized(b, b_name, x.size, false);
    Nogil nogil;
    Kernel(o, x.f(), y, x.size);
  }, arg(out_name), arg(a_name), arg(b_name));
}

void bind_elementwise(py::module_& m) {
  bind_unary<sllm::gelu_fwd>(m, "gelu_fwd");
  bind_unary<sllm::relu_fwd>(m, "relu_fwd");
  bind_binary<sllm::gelu_bwd>(m, "gelu_bwd", "dout", "inp", "dinp");
  bind_binary<sllm::relu_bwd>(m, "relu_bwd", "dout", "inp", "dinp");
  bind_binary<sllm::residual_fwd>(m, "residual_fwd", "a", "b", "out");
  for (const char* name : {"dropout_fwd", "dropout_bwd"}) {
    const bool fwd = name[8] == 'f';
    m.def(name, [name](py::handle out, py::handle inp, double p, uint64_t seed) {
      Check k(name);
      k.expect(p >= 0.0 && p < 1.0, "p must be in [0, 1)");
      Arr x = k.in(inp, "inp");
      float* o = k.sized(out, "out", x.size, true);
      Nogil nogil;
      sllm::dropout_fwd(o, x.f(), p, (uint32_t)(seed & 0xFFFFFFFFu), x.size);
    }, arg(fwd ? "out" : "dinp"), arg(fwd ? "inp" : "dout"), arg("p"), arg("seed"));
  }
}

void bind_loss_and_optim(py::module_& m) {
  m.def("softmax_xent", [](py::handle losses, py::handle dlogits, py::handle logits,
                           py::handle targets, float dloss) {
    Check k("softmax_xent");
    Arr z = k.in(logits, "logits"), t = k.ints(targets, "targets");
    const int64_t N = z.rows(), V = z.last;
    k.expect(t.size == N, "targets must have one id per row of logits");
    k.ids(t, -1, V, "targets");
    float* loss = k.sized(losses, "losses", N, true);
    float* dl = k.sized(dlogits, "dlogits", z.size, true, true);
    Nogil nogil;
    sllm::softmax_xent(loss, dl, z.f(), t.i(), dloss, N, V);
  }, arg("losses"), arg("dlogits"), arg("logits"), arg("targets"), arg("dloss"));

  m.def("sgd_update", [](py::handle params, py::handle grads, py::handle momentum_buf, float lr,
                         float momentum, float weight_decay, int64_t decay_count) {
    Check k("sgd_update");
    Arr p = k.out(params, "params");
    const float* g = k.sized(grads, "grads", p.size, false);
    float* mb = k.sized(momentum_buf, "momentum_buf", p.size, true, momentum == 0.0f);
    k.expect(decay_count >= 0 && decay_count <= p.size, "decay_count out of range");
    Nogil nogil;
    sllm::sgd_update(p.f(), g, momentum == 0.0f ? nullptr : mb, lr, momentum, weight_decay,
                     decay_count, p.size);
  }, arg("params"), arg("grads"), arg("momentum_buf"), arg("lr"), arg("momentum"),
     arg("weight_decay"), arg("decay_count"));

  m.def("adam_update", [](py::handle params, py::handle grads, py::handle m1, py::handle m2,
                          float lr, float beta1, float beta2, float eps, float weight_decay,
                          int64_t step, int64_t decay_count, bool decoupled) {
    Check k("adam_update");
    Arr p = k.out(params, "params");
    const float* g = k.sized(grads, "grads", p.size, false);
    float* mm = k.sized(m1, "m", p.size, true);
    float* vv = k.sized(m2, "v", p.size, true);
    k.expect(step >= 1, "step must be >= 1");
    k.expect(decay_count >= 0 && decay_count <= p.size, "decay_count out of range");
    Nogil nogil;
    sllm::adam_update(p.f(), g, mm, vv, lr, beta1, beta2, eps, weight_decay, step,
                      decay_count, decoupled, p.size);
  }, arg("params"), arg("grads"), arg("m"), arg("v"), arg("lr"), arg("beta1"), arg("beta2"),
     arg("eps"), arg("weight_decay"), arg("step"), arg("decay_count"), arg("decoupled"));

  m.def("grad_norm_sq", [](py::handle grads) {
    Check k("grad_norm_sq");
    Arr g = k.in(grads, "grads");
    Nogil nogil;
    return sllm::grad_norm_sq(g.f(), g.size);
  }, arg("grads"));
}

}  // namespace

namespace sllm {
void bind_quant(py::module_& m);   // quant_bindings.cpp
void bind_decode(py::module_& m);  // decode_bindings.cpp
void bind_llama(py::module_& m);   // llama_bindings.cpp
}

PYBIND11_MODULE(_cpp, m) {
  m.doc() = "sllm's C++ kernels (the contract is documented in sllm/backends/base.py)";
  m.def("simd_level", [] { return std::string(sllm::ops().name); },
        "The SIMD tier in use: avx512, avx2 or scalar.");
  m.def("simd_error", [] { return std::string(sllm::simd_error()); },
        "Why SLLM_CPP_SIMD cannot be honoured here, or '' when it can.");
  m.def("get_num_threads", &sllm::num_threads, "Threads the kernels use.");
  m.def("set_num_threads", &sllm::set_num_threads, arg("n"), "Use n threads in kernels.");
  m.def("peak_gflops", &sllm::peak_gflops, arg("seconds") = 0.2,
        py::call_guard<py::gil_scoped_release>(),
        "FP32 GFLOP/s of FMA chains on every kernel thread: the machine's peak.");
  m.attr("thread_pool") = "spin-then-sleep (cpp/pool.h)";
  bind_embedding_and_norm(m);
  bind_matmul(m);
  bind_attention(m);
  bind_elementwise(m);
  bind_loss_and_optim(m);
  sllm::bind_quant(m);
  sllm::bind_decode(m);
  sllm::bind_llama(m);
}
