// Argument checks for the bindings: dtype, contiguity, writability, sizes, overlap and
// id ranges, with errors that name the kernel and the argument.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

namespace py = pybind11;

namespace sllm {

struct Arr {
  void* data;
  int64_t size, ndim, last;  // last: length of the last axis (1 for 0-d)
  std::vector<int64_t> shape;
  float* f() const { return static_cast<float*>(data); }
  int32_t* i() const { return static_cast<int32_t*>(data); }
  int64_t rows() const { return last ? size / last : 0; }
  const char* end() const { return static_cast<const char*>(data) + size * 4; }
};

// Checks the arguments of one kernel call and names the kernel and argument in errors.
class Check {
 public:
  explicit Check(const char* kernel) : kernel_(kernel) {}

  [[noreturn]] void fail(const std::string& msg, bool type_error = false) const {
    std::string full = std::string(kernel_) + ": " + msg;
    if (type_error) throw py::type_error(full);
    throw py::value_error(full);
  }
  void expect(bool ok, const std::string& msg) const { if (!ok) fail(msg); }

  Arr arr(py::handle h, const char* name, bool is_int, bool writable) const {
    if (!py::isinstance<py::array>(h))
      fail(std::string(name) + " must be a numpy array, got " +
           std::string(py::str(py::type::handle_of(h).attr("__name__"))), true);
    auto a = py::reinterpret_borrow<py::array>(h);
    // leaked on purpose: a static py::object would be released after Python shuts down
    static const py::dtype* f32 = new py::dtype(py::dtype::of<float>());
    static const py::dtype* i32 = new py::dtype(py::dtype::of<int32_t>());
    if (!a.dtype().equal(is_int ? *i32 : *f32))
      fail(std::string(name) + " must be " + (is_int ? "int32" : "float32") + ", got " +
           std::string(py::str(a.dtype())), true);
    if (!(a.flags() & py::array::c_style))
      fail(std::string(name) + " must be C-contiguous (pass np.ascontiguousarray(...))");
    if (writable && !a.writeable()) fail(std::string(name) + " must be writable");
    Arr r{const_cast<void*>(a.data()), (int64_t)a.size(), (int64_t)a.ndim(), 1, {}};
    for (int64_t d = 0; d < r.ndim; ++d) r.shape.push_back((int64_t)a.shape(d));
    if (r.ndim) r.last = r.shape.back();
    return r;
  }
  Arr in(py::handle h, const char* name) const { return arr(h, name, false, false); }
  Arr out(py::handle h, const char* name) const { return arr(h, name, false, true); }
  Arr ints(py::handle h, const char* name) const { return arr(h, name, true, false); }

  // An array of exactly `size` elements (any shape); None allowed when optional.
  float* sized(py::handle h, const char* name, int64_t size, bool writable,
               bool optional = false) const {
    if (optional && h.is_none()) return nullptr;
    Arr a = arr(h, name, false, writable);
    if (a.size != size)
      fail(std::string(name) + " has " + std::to_string(a.size) + " elements, expected " +
           std::to_string(size));
    return a.f();
  }
  void dims(const Arr& a, const char* name, int64_t ndim) const {
    if (a.ndim != ndim)
      fail(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got " +
           std::to_string(a.ndim));
  }
  void disjoint(const Arr& a, const char* an, const Arr& b, const char* bn) const {
    const char* pa = static_cast<const char*>(a.data);
    const char* pb = static_cast<const char*>(b.data);
    if (pa < b.end() && pb < a.end())
      fail(std::string(an) + " must not overlap " + bn);
  }
  // A layer's KV cache for B sequences: kcache and vcache (B, n_head, max_T, C / n_head)
  // with room for Tn new positions at pos (grouped-query attention passes its KV heads as
  // n_head and their width as C). Returns max_T.
  int64_t kv_cache(const Arr& kc, const Arr& vc, int64_t B, int64_t n_head, int64_t C,
                   int64_t pos, int64_t Tn) const {
    dims(kc, "kcache", 4);
    expect(kc.shape == vc.shape, "kcache and vcache shapes differ");
    expect(kc.shape[0] == B && kc.shape[1] == n_head && kc.shape[3] == C / n_head,
           "kcache must be (B, n_head, max_T, C / n_head)");
    expect(pos >= 0 && pos + Tn <= kc.shape[2], "pos + new positions exceed the cache length");
    return kc.shape[2];
  }
  // A continuous-batching step's caches (S, Hkv, max_T, D) and its B rows' slots and
  // positions (int32, distinct slots in [0, S), positions in [0, max_T)); returns max_T.
  int64_t batch_rows(const Arr& kc, const Arr& vc, const Arr& sl, const Arr& ps, int64_t B,
                     int64_t Hkv, int64_t D) const {
    dims(kc, "kcache", 4);
    expect(kc.shape == vc.shape, "kcache and vcache shapes differ");
    expect(kc.shape[1] == Hkv && kc.shape[3] == D,
           "kcache must be (slots, n_kv_head, max_T, head dim)");
    const int64_t S = kc.shape[0], maxT = kc.shape[2];
    expect(sl.size == B && ps.size == B, "slots and positions must have B entries");
    std::vector<char> used(S, 0);
    for (int64_t b = 0; b < B; ++b) {
      const int32_t s = sl.i()[b], p = ps.i()[b];
      expect(s >= 0 && s < S, "slot " + std::to_string(s) + " outside [0, " +
                              std::to_string(S) + ")");
      expect(!used[s], "slot " + std::to_string(s) + " appears twice");
      used[s] = 1;
      expect(p >= 0 && p < maxT, "position " + std::to_string(p) + " outside [0, " +
                                 std::to_string(maxT) + ")");
    }
    return maxT;
  }
  void ids(const Arr& t, int64_t lo, int64_t hi, const char* name) const {
    for (int64_t i = 0; i < t.size; ++i)
      if (t.i()[i] < lo || t.i()[i] >= hi)
        fail(std::string(name) + " must be in [" + std::to_string(lo) + ", " +
             std::to_string(hi) + "), got " + std::to_string(t.i()[i]));
  }

 private:
  const char* kernel_;
};

}  // namespace sllm
