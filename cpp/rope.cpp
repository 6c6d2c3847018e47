// Rotary position embeddings (llama): the q and k heads of each qkv row turn by the angles
// positions[n] * theta^(-2i/D), i < D/2, in Hugging Face's rotate-half pairing. The
// angles, their cosines and sines are computed in float64 and rounded to float32, as the
// numpy reference does, once per (theta, D) into a table of positions shared by every
// call: computing them per row would cost D/2 sines and cosines a row, more than the
// rotation itself.
#include <math.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <vector>

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {
namespace {

// Positions below this share a table (at most kTableRows * D floats: 8 MiB at D = 64);
// rows beyond it (contexts longer than any model here) compute their angles themselves.
constexpr int64_t kTableRows = 1 << 15;
constexpr size_t kTables = 4;  // (theta, D) pairs kept: a few models in one process

// inv_freq[i] = theta^(-2i/D), i < D/2
std::vector<double> inverse_frequencies(double theta, int64_t D) {
  std::vector<double> f(D / 2);
  for (int64_t i = 0; i < D / 2; ++i) f[i] = pow(theta, -(2.0 * i) / D);
  return f;
}

// cs[0..D/2) = cos, cs[D/2..D) = sin of pos * inv_freq, in float64 rounded to float32
void angles(float* cs, int64_t pos, const std::vector<double>& inv_freq) {
  const int64_t half = (int64_t)inv_freq.size();
  for (int64_t i = 0; i < half; ++i) {
    const double a = (double)pos * inv_freq[i];
    cs[i] = (float)cos(a);
    cs[half + i] = (float)sin(a);
  }
}

// The angles of positions [0, rows), row p at cs[p * D]; immutable once built.
struct RopeTable {
  double theta;
  int64_t D, rows;
  std::vector<float> cs;
};

std::mutex g_tables_mutex;
std::vector<std::shared_ptr<const RopeTable>> g_tables;  // most recently built last

// A table for (theta, D) covering positions [0, rows): the cached one, or a new one with
// room to grow (decoding asks for one more position per token).
std::shared_ptr<const RopeTable> table_for(double theta, int64_t D, int64_t rows) {
  std::lock_guard<std::mutex> lock(g_tables_mutex);
  auto same = std::find_if(g_tables.begin(), g_tables.end(), [&](const auto& t) {
    return t->theta == theta && t->D == D;
  });
  if (same != g_tables.end() && (*same)->rows >= rows) return *same;
  if (same != g_tables.end()) g_tables.erase(same);
  else if (g_tables.size() >= kTables) g_tables.erase(g_tables.begin());
  auto t = std::make_shared<RopeTable>();
  t->theta = theta;
  t->D = D;
  t->rows = std::min(kTableRows, std::max<int64_t>(256, rows * 2));
  t->cs.resize(t->rows * D);
  const std::vector<double> inv_freq = inverse_frequencies(theta, D);
  parallel_grains(t->rows, 256, true, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) angles(t->cs.data() + p * D, p, inv_freq);
  });
  g_tables.push_back(t);
  return t;
}

void rope(float* qkv, const int32_t* positions, int64_t N, int64_t H, int64_t Hkv, int64_t D,
          double theta, float sign) {
  const Ops& o = ops();
  const int64_t W = (H + 2 * Hkv) * D, heads = H + Hkv;  // V, the last Hkv heads, stays
  int64_t rows = 1;
  for (int64_t n = 0; n < N; ++n) rows = std::max<int64_t>(rows, positions[n] + 1);
  if (rows <= kTableRows) {
    const std::shared_ptr<const RopeTable> t = table_for(theta, D, rows);
    parallel_rows(N, W, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        o.rope_row(qkv + r * W, t->cs.data() + positions[r] * D, heads, D, sign);
    });
    return;
  }
  const std::vector<double> inv_freq = inverse_frequencies(theta, D);
  parallel_rows(N, W, [&](int64_t r0, int64_t r1) {
    std::vector<float> cs(D);
    for (int64_t r = r0; r < r1; ++r) {
      angles(cs.data(), positions[r], inv_freq);
      o.rope_row(qkv + r * W, cs.data(), heads, D, sign);
    }
  });
}

}  // namespace

void rope_fwd(float* qkv, const int32_t* positions, int64_t N, int64_t H, int64_t Hkv,
              int64_t D, double theta) {
  rope(qkv, positions, N, H, Hkv, D, theta, 1.0f);
}

void rope_bwd(float* dqkv, const int32_t* positions, int64_t N, int64_t H, int64_t Hkv,
              int64_t D, double theta) {
  rope(dqkv, positions, N, H, Hkv, D, theta, -1.0f);
}

}  // namespace sllm
