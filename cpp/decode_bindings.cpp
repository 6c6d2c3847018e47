// pybind11 bindings of decode_block and llama_decode_block (and their _batch steps): every
// argument checked (dtype, contiguity, shapes,
// overlap; the messages name the kernel and the argument), then the block without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "check.h"
#include "packed_check.h"
#include "decode.h"
#include "quant_check.h"

namespace py = pybind11;
using py::arg;

namespace sllm {
namespace {

const char* const kParams[12] = {"ln1_w", "ln1_b", "attn_w", "attn_b", "proj_w", "proj_b",
                                 "ln2_w", "ln2_b", "fc_w", "fc_b", "fcproj_w", "fcproj_b"};

// A matmul weight taking K inputs to OC outputs: float (K, OC) or its PackedF32, or
// quantized (OC, bytes) rows or their PackedQ.
const void* matmul_weight(const Check& k, py::handle h, const char* name, int qtype,
                          int64_t K, int64_t OC, bool* packed) {
  if (qtype >= 0) {
    const QWeights w = weight_rows(k, h, OC, qrow_bytes(qtype, K), name, qtype);
    *packed = w.packed;
    return w.data;
  }
  const PackedF32* p = packed_f32(k, h, name, false);
  Arr w = k.in(p ? py::handle(p->source) : h, name);
  k.dims(w, name, 2);
  k.expect(w.shape[0] == K && w.shape[1] == OC, std::string(name) + " must be (" +
           std::to_string(K) + ", " + std::to_string(OC) + "), got (" +
           std::to_string(w.shape[0]) + ", " + std::to_string(w.shape[1]) + ")");
  *packed = p != nullptr;
  return p ? static_cast<const void*>(&p->view) : w.data;
}

// The FFN width from fc_w: (C, F) float, or F rows when quantized.
int64_t ffn_width(const Check& k, py::handle fc_w, int qtype) {
  if (qtype >= 0) return weight_row_count(k, fc_w, "fc_w");
  const PackedF32* p = packed_f32(k, fc_w, "fc_w", false);
  if (p) return p->view.N;
  if (!py::isinstance<py::array>(fc_w)) k.fail("fc_w must be a numpy array", true);
  auto a = py::reinterpret_borrow<py::array>(fc_w);
  k.expect(a.ndim() == 2, "fc_w must have 2 dimensions");
  return (int64_t)a.shape(1);
}

BlockWeights block_weights(const Check& k, const py::sequence& p, int qtype, int64_t C,
                           int64_t F) {
  auto vec = [&](int i, int64_t n, bool optional) {
    return k.sized(p[i], kParams[i], n, false, optional);
  };
  bool packed[4] = {false, false, false, false};
  int n = 0;
  auto mat = [&](int i, int64_t K, int64_t OC) {
    return matmul_weight(k, p[i], kParams[i], qtype, K, OC, &packed[n++]);
  };
  BlockWeights w{vec(0, C, false), vec(1, C, false), mat(2, C, 3 * C),
                 vec(3, 3 * C, true), mat(4, C, C), vec(5, C, true),
                 vec(6, C, false), vec(7, C, false), mat(8, C, F),
                 vec(9, F, true), mat(10, F, C), vec(11, C, true), packed[0]};
  k.expect(packed[1] == w.packed && packed[2] == w.packed && packed[3] == w.packed,
           "the four matmul weights must be all packed (PackedQ, PackedF32) or all as they are (ggml rows, float arrays)");
  return w;
}

// decode_block (slots None: the B sequences at pos..) or decode_block_batch (row b at slot
// slots[b], position positions[b]): the arguments checked, then the block without the GIL.
void run_block(const char* kernel, py::handle out, py::handle x, py::handle kcache,
               py::handle vcache, py::handle work, const py::sequence& params, int64_t pos,
               py::handle slots, py::handle positions, int64_t n_head,
               const std::string& activation, const py::object& qtype) {
  Check k(kernel);
  k.expect(py::len(params) == 12, "params must hold the block's 12 tensors, got " +
           std::to_string(py::len(params)));
  k.expect(activation == "gelu" || activation == "relu",
           "activation must be 'gelu' or 'relu', got '" + activation + "'");
  const int code = qtype.is_none() ? -1 : qtype_code(k, py::cast<std::string>(qtype));
  Arr xi = k.in(x, "x"), o = k.out(out, "out");
  k.dims(xi, "x", 3);
  const int64_t B = xi.shape[0], Tn = xi.shape[1], C = xi.last, N = B * Tn;
  k.expect(N >= 1 && C >= 1, "x must be (B, Tn, C) with B, Tn, C >= 1");
  k.expect(o.size == N * C, "out must be (B, Tn, C), x's shape");
  k.expect(o.data == xi.data || o.end() <= (const char*)xi.data ||
           xi.end() <= (const char*)o.data, "out must be x itself or not overlap it");
  k.expect(n_head > 0 && C % n_head == 0, "n_head must divide C");
  Arr kc = k.out(kcache, "kcache"), vc = k.out(vcache, "vcache");
  DecodeRows rows{pos, nullptr, nullptr};
  int64_t maxT;
  if (slots.is_none()) {
    maxT = k.kv_cache(kc, vc, B, n_head, C, pos, Tn);
  } else {
    k.expect(Tn == 1, "x must be (B, 1, C): one new position per sequence");
    Arr sl = k.ints(slots, "slots"), ps = k.ints(positions, "positions");
    maxT = k.batch_rows(kc, vc, sl, ps, B, n_head, C / n_head);
    rows = {0, sl.i(), ps.i()};
  }
  k.disjoint(kc, "kcache", vc, "vcache");
  const int64_t F = ffn_width(k, params[8], code);
  k.expect(F >= 1, "fc_w must have at least one output");
  const BlockWeights w = block_weights(k, params, code, C, F);
  Arr ws = k.out(work, "work");
  const int64_t need = decode_block_workspace(N, C, F);
  k.expect(ws.size >= need, "work has " + std::to_string(ws.size) + " floats, needs " +
           std::to_string(need) + " (decode_block_workspace)");
  k.disjoint(ws, "work", o, "out"); k.disjoint(ws, "work", xi, "x");
  k.disjoint(ws, "work", kc, "kcache"); k.disjoint(ws, "work", vc, "vcache");
  k.disjoint(o, "out", kc, "kcache"); k.disjoint(o, "out", vc, "vcache");
  py::gil_scoped_release nogil;
  decode_block(o.f(), xi.f(), kc.f(), vc.f(), ws.f(), w, code, activation == "gelu", rows, B,
               Tn, C, F, n_head, maxT);
}

const char* const kLlamaParams[7] = {"ln1_w", "qkv_w", "o_w", "ln2_w", "gate_w", "up_w",
                                     "down_w"};

LlamaBlockWeights llama_weights(const Check& k, const py::sequence& p, int qtype, int64_t C,
                                int64_t Ckv, int64_t F) {  // each weight's shape checked
  bool packed[5] = {false, false, false, false, false};
  int n = 0;
  auto mat = [&](int i, int64_t K, int64_t OC) {
    return matmul_weight(k, p[i], kLlamaParams[i], qtype, K, OC, &packed[n++]);
  };
  LlamaBlockWeights w{k.sized(p[0], "ln1_w", C, false, false), mat(1, C, C + 2 * Ckv),
                      mat(2, C, C), k.sized(p[3], "ln2_w", C, false, false), mat(4, C, F),
                      mat(5, C, F), mat(6, F, C), packed[0]};
  for (int i = 1; i < 5; ++i)
    k.expect(packed[i] == w.packed, "the five matmul weights must be all packed (PackedQ, "
                                    "PackedF32) or all as they are (ggml rows, float arrays)");
  return w;
}

// llama_decode_block (slots None) or llama_decode_block_batch: decode_block's checks, the
// grouped-query caches (B or S, Hkv, maxT, D) and the FFN width the weights must have.
void run_llama_block(const char* kernel, py::handle out, py::handle x, py::handle kcache,
                     py::handle vcache, py::handle work, const py::sequence& params,
                     int64_t pos, py::handle slots, py::handle positions, int64_t n_head,
                     int64_t n_kv_head, int64_t ffn_dim, double theta, double eps,
                     const py::object& qtype) {
  Check k(kernel);
  k.expect(py::len(params) == 7, "params must hold the llama block's 7 tensors, got " +
           std::to_string(py::len(params)));
  const int code = qtype.is_none() ? -1 : qtype_code(k, py::cast<std::string>(qtype));
  Arr xi = k.in(x, "x"), o = k.out(out, "out");
  k.dims(xi, "x", 3);
  const int64_t B = xi.shape[0], Tn = xi.shape[1], C = xi.last, N = B * Tn;
  k.expect(N >= 1 && C >= 1, "x must be (B, Tn, C) with B, Tn, C >= 1");
  k.expect(o.size == N * C, "out must be (B, Tn, C), x's shape");
  k.expect(o.data == xi.data || o.end() <= (const char*)xi.data ||
           xi.end() <= (const char*)o.data, "out must be x itself or not overlap it");
  k.expect(n_head > 0 && C % n_head == 0, "n_head must divide C");
  k.expect(n_kv_head > 0 && n_head % n_kv_head == 0, "n_kv_head must be > 0 and divide n_head");
  const int64_t D = C / n_head, Ckv = n_kv_head * D;
  k.expect(D % 2 == 0, "the head dim C / n_head must be even (rotary pairs)");
  k.expect(theta > 0.0 && std::isfinite(theta), "theta must be a finite number > 0");
  k.expect(eps >= 0.0 && std::isfinite(eps), "eps must be a finite number >= 0");
  Arr kc = k.out(kcache, "kcache"), vc = k.out(vcache, "vcache");
  DecodeRows rows{pos, nullptr, nullptr};
  int64_t maxT;
  if (slots.is_none()) {
    maxT = k.kv_cache(kc, vc, B, n_kv_head, Ckv, pos, Tn);
  } else {
    k.expect(Tn == 1, "x must be (B, 1, C): one new position per sequence");
    Arr sl = k.ints(slots, "slots"), ps = k.ints(positions, "positions");
    maxT = k.batch_rows(kc, vc, sl, ps, B, n_kv_head, D);
    rows = {0, sl.i(), ps.i()};
  }
  k.disjoint(kc, "kcache", vc, "vcache");
  const int64_t F = ffn_dim;
  k.expect(F >= 1, "ffn_dim must be >= 1");
  const LlamaBlockWeights w = llama_weights(k, params, code, C, Ckv, F);
  Arr ws = k.out(work, "work");
  const int64_t need = llama_decode_block_workspace(N, C, F);
  k.expect(ws.size >= need, "work has " + std::to_string(ws.size) + " floats, needs " +
           std::to_string(need) + " (llama_decode_block_workspace)");
  k.disjoint(ws, "work", o, "out"); k.disjoint(ws, "work", xi, "x");
  k.disjoint(ws, "work", kc, "kcache"); k.disjoint(ws, "work", vc, "vcache");
  k.disjoint(o, "out", kc, "kcache"); k.disjoint(o, "out", vc, "vcache");
  py::gil_scoped_release nogil;
  llama_decode_block(o.f(), xi.f(), kc.f(), vc.f(), ws.f(), w, code, rows, B, Tn, C, F, n_head,
                     n_kv_head, theta, (float)eps, maxT);
}

}  // namespace

void bind_decode(py::module_& m) {
  m.def("decode_block", [](py::handle out, py::handle x, py::handle kcache, py::handle vcache,
                           py::handle work, py::sequence params, int64_t pos, int64_t n_head,
                           const std::string& activation, py::object qtype) {
    run_block("decode_block", out, x, kcache, vcache, work, params, pos, py::none(),
              py::none(), n_head, activation, qtype);
  }, arg("out"), arg("x"), arg("kcache"), arg("vcache"), arg("work"), arg("params"),
     arg("pos"), arg("n_head"), arg("activation"), arg("qtype") = py::none(),
     "One transformer block over the new rows of a KV-cache decode step (base.Backend).");
  m.def("decode_block_batch", [](py::handle out, py::handle x, py::handle kcache,
                                 py::handle vcache, py::handle work, py::sequence params,
                                 py::handle slots, py::handle positions, int64_t n_head,
                                 const std::string& activation, py::object qtype) {
    if (slots.is_none()) Check("decode_block_batch").fail("slots must be a numpy array", true);
    run_block("decode_block_batch", out, x, kcache, vcache, work, params, 0, slots, positions,
              n_head, activation, qtype);
  }, arg("out"), arg("x"), arg("kcache"), arg("vcache"), arg("work"), arg("params"),
     arg("slots"), arg("positions"), arg("n_head"), arg("activation"),
     arg("qtype") = py::none(),
     "One transformer block over a continuous-batching decode step (base.Backend).");
  m.def("llama_decode_block", [](py::handle out, py::handle x, py::handle kcache,
                                 py::handle vcache, py::handle work, py::sequence params,
                                 int64_t pos, int64_t n_head, int64_t n_kv_head, int64_t ffn_dim,
                                 double theta, double eps, py::object qtype) {
    run_llama_block("llama_decode_block", out, x, kcache, vcache, work, params, pos, py::none(),
                    py::none(), n_head, n_kv_head, ffn_dim, theta, eps, qtype);
  }, arg("out"), arg("x"), arg("kcache"), arg("vcache"), arg("work"), arg("params"),
     arg("pos"), arg("n_head"), arg("n_kv_head"), arg("ffn_dim"), arg("theta"), arg("eps"),
     arg("qtype") = py::none(),
     "One llama block over the new rows of a KV-cache decode step (base.Backend).");
  m.def("llama_decode_block_batch", [](py::handle out, py::handle x, py::handle kcache,
                                       py::handle vcache, py::handle work, py::sequence params,
                                       py::handle slots, py::handle positions, int64_t n_head,
                                       int64_t n_kv_head, int64_t ffn_dim, double theta,
                                       double eps, py::object qtype) {
    if (slots.is_none())
      Check("llama_decode_block_batch").fail("slots must be a numpy array", true);
    run_llama_block("llama_decode_block_batch", out, x, kcache, vcache, work, params, 0, slots,
                    positions, n_head, n_kv_head, ffn_dim, theta, eps, qtype);
  }, arg("out"), arg("x"), arg("kcache"), arg("vcache"), arg("work"), arg("params"),
     arg("slots"), arg("positions"), arg("n_head"), arg("n_kv_head"), arg("ffn_dim"),
     arg("theta"), arg("eps"),
     arg("qtype") = py::none(),
     "One llama block over a continuous-batching decode step (base.Backend).");
}

}  // namespace sllm
