// Cache-blocked GEMM (Goto/BLIS loop order) and the matmul kernels.
//
// Per block of kc x nc, op(B) is packed into nr-wide, zero-padded column panels (so the
// register tile never branches and a panel sits in L1 at unit stride), unless few rows of
// op(A) would reuse them (see reads_b_in_place). op(A) is read in place by the register
// tile, row-major or transposed (its mc x kc block stays in L2 without a copy; copying it
// cost more than it saved at the model's sizes).
#include <algorithm>

#if SLLM_X86
#include <xmmintrin.h>
#endif

#include "arch.h"
#include "kernels.h"
#include "runtime.h"

namespace sllm {
namespace {

constexpr int64_t kSmallM = 4;  // at most this many rows: no packing (decode, GEMV)
// Up to this many rows (a batched decode step, a short prompt) a non-transposed B is read
// in place by the register tile: each packed B panel would be reused by at most
// kDirectMaxRows / mr row tiles, too few to pay for copying the weight on every call. (Read
// in place, M = 8..64 rows of small- and medium-model's weights took 0.55-0.95x the
// packed path's time, 2 threads, both builds alternating, 2026-12-05.)
constexpr int64_t kDirectMaxRows = 64;
// ... when the weight is at most this many floats (256 KB). A larger one comes from memory
// on every step (medium-model's 1 MB layers), and streaming it in whole rows while packing
// beats the register tile's strided reads of 128 bytes a row: in-process A/B of the 16-row
// decode step, 10 rounds, load 6.6 (so ratios only): every weight in place 0.85x on
// small-model but 1.24x on medium-model; up to 64K floats 0.92x and 1.01x.
constexpr int64_t kDirectMaxFloats = 1 << 16;
constexpr int64_t kMc = 96;     // rows of A swept per packed B block (stays in L2)
constexpr int64_t kNc = 512;    // columns of B packed at once
// Non-transposed GEMMs up to this depth, over at most this many column panels, skip
// packing: a packed A panel would be reused by too few column panels to pay for itself
// (attention's P V and dS K, narrow projections). Same results either way.
constexpr int64_t kDirectMaxK = 256, kDirectMaxPanels = 4;
// Below this many multiply-adds (~20 us on one core) waking a second thread costs more
// than it saves. (At 4M, the seed model's smaller GEMMs ran on one thread: 1M made its
// forward matmuls 13-19% and its step 4-5% faster, both settings alternating in one
// training process, 4 runs, 2026-11-30.)
constexpr int64_t kParallelMacs = 1 << 20;
// ... and against packed panels (a decode step's 5-64 rows), where no thread packs: from
// 256K, so small-model's 16-row qkv and attention projections split too. The 16-row step
// took 0.92-0.93x the time of a 1M threshold (in-process A/B, 20 rounds, load 1.5) and
// 0.93-1.04x with a busy loop on the other core (64K: 1.09-1.12x there).
constexpr int64_t kPackedParallelMacs = 1 << 18;
// ... and one sequence's GEMV on packed panels from 128K: medium-model's qkv, fc and
// fc_proj split, its attention projection and every small-model layer stay on one thread.
// On a quiet machine the 2-thread decode of medium-model took 0.70x the time of 512K
// (2,285 vs 1,591 tok/s, 10 rounds interleaved in one process, load 1.3; splitting from 32K
// as well, and small-model from 32K 1.12x the time), but with a busy loop on the other core
// 1.18x (min 0.53x the rate) and at load 3 with other engineers' builds up to 1.5x: a
// worker that loses its core mid-task stalls the layer (a guard that stopped splitting for
// 50-500 ms after a late worker did not help).
constexpr int64_t kGemvParallelMacs = 1 << 17;

Scratch g_pack;
Scratch g_dweight;  // matmul_bwd's dW product when it is computed transposed

// dst[c * ld_dst + r] = src[r * ld_src + c] for r < rows, c < cols (or += with add):
// 4x4 blocks in SSE registers (baseline on every x86-64), 4 floats per load and store.
void transpose(float* dst, int64_t ld_dst, const float* src, int64_t ld_src, int64_t rows,
               int64_t cols, bool add = false) {
  int64_t r = 0;
#if SLLM_X86
  for (; r + 4 <= rows; r += 4) {
    const float* s = src + r * ld_src;
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      __m128 v[4] = {_mm_loadu_ps(s + c), _mm_loadu_ps(s + ld_src + c),
                     _mm_loadu_ps(s + 2 * ld_src + c), _mm_loadu_ps(s + 3 * ld_src + c)};
      _MM_TRANSPOSE4_PS(v[0], v[1], v[2], v[3]);
      for (int i = 0; i < 4; ++i) {
        float* d = dst + (c + i) * ld_dst + r;
        _mm_storeu_ps(d, add ? _mm_add_ps(_mm_loadu_ps(d), v[i]) : v[i]);
      }
    }
    for (; c < cols; ++c)
      for (int64_t i = 0; i < 4; ++i)
        dst[c * ld_dst + r + i] = add ? dst[c * ld_dst + r + i] + s[i * ld_src + c]
                                      : s[i * ld_src + c];
  }
#endif
  for (; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      dst[c * ld_dst + r] = add ? dst[c * ld_dst + r] + src[r * ld_src + c] : src[r * ld_src + c];
}

void pack_b(float* dst, const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t j0,
            int64_t k0, int64_t kc, int nr) {
  const int64_t n = std::min<int64_t>(nr, N - j0);
  if (trans_b) {  // rows of B become the panel's columns
    transpose(dst, nr, B + j0 * ldb + k0, ldb, n, kc);
    for (int64_t k = 0; k < kc; ++k)
      for (int64_t j = n; j < nr; ++j) dst[k * nr + j] = 0.0f;
    return;
  }
  ops().pack_b_rows(dst, B, ldb, j0, k0, kc, (int)n);
}

// GEMV-like path for a few rows (decoding: M = 1): no packing; the columns are split over
// the threads in one fork/join for all rows (arows: M * K floats when trans_a).
void gemm_small_m(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool trans_a,
                  const float* B, int64_t ldb, bool trans_b, float* C, int64_t ldc,
                  bool accumulate, const float* bias, float* arows) {
  const Ops& o = ops();
  if (trans_a)  // gather the strided rows once
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) arows[i * K + k] = A[k * lda + i];
  // A part of >= 256K multiply-adds (~20 us): decoding's per-layer GEMVs run on one thread,
  // so a second thread that another process keeps off its core cannot stall each kernel;
  // the wide lm_head still splits. Splitting every decode GEMV (a lower threshold) was
  // slower end to end (2026-11-30, modes interleaved in one process): with 2 threads,
  // 0.81-0.84x (small-model) and 0.87x (medium) of this threshold's tokens/s on a quiet
  // machine, 0.55-0.7x with another process on a core; timing both modes per size and
  // keeping the faster gave 0.9x.
  const int64_t parts = std::min<int64_t>(num_threads(), std::max<int64_t>(1, M * N * K >> 18));
  parallel_ranges(N, (int)parts, 16, [&](int64_t j0, int64_t j1) {
    if (trans_b && !trans_a)
      return o.gemm_dots(C, ldc, A, lda, B, ldb, M, K, j0, j1, accumulate, bias);
    for (int64_t i = 0; i < M; ++i) {
      const float* a = trans_a ? arows + i * K : A + i * lda;
      o.gemm_row(C + i * ldc, a, B, ldb, trans_b, K, j0, j1, accumulate, bias);
    }
  });
}

// The register tile for M rows: the height that computes fewer rows in all (16 rows:
// 2 x 8, not 3 x 6; 8 rows on avx512 took 0.65-0.7x the time of 6 + 2, 16 rows 0.85-0.97x,
// processes alternating; attention's 64-row blocks 8 x 8, not 11 x 6: the seed model's
// step 0.96x, attention_fwd 0.95x, attention_bwd 0.94x, 2026-12-05). Every height adds the
// same products in the same order, so the choice never changes a result.
struct Tile {
  int mr;
  decltype(Ops::gemm_micro) micro;
};

Tile tile_for(int64_t M) {
  const Ops& o = ops();
  const auto rows_computed = [M](int h) { return (M + h - 1) / h * h; };
  if (rows_computed(o.tall_mr) < rows_computed(o.mr)) return {o.tall_mr, o.gemm_micro_tall};
  return {o.mr, o.gemm_micro};
}

// Few rows (kDirectMaxRows), or small K and few column panels, neither operand transposed:
// the register tile reads A and B in place. Only a last, narrower column panel is copied
// (zero-padded) so loads stay in bounds.
void gemm_direct(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* B,
                 int64_t ldb, float* C, int64_t ldc, bool accumulate, const float* bias,
                 float* pack) {
  const Ops& o = ops();
  const Tile t = tile_for(M);
  const int mr = t.mr, nr = o.nr;
  const auto micro = t.micro;
  for (int64_t j = 0; j < N; j += nr) {
    const int n = (int)std::min<int64_t>(nr, N - j);
    const float* b = B + j;
    int64_t stride = ldb;
    if (n < nr) {
      for (int64_t k = 0; k < K; ++k)
        for (int jj = 0; jj < nr; ++jj) pack[k * nr + jj] = jj < n ? B[k * ldb + j + jj] : 0.0f;
      b = pack;
      stride = nr;
    }
    // depth in blocks of kc, each added to C as gemm_serial's packed loops add them, so
    // every element is the same sum whichever path (and row count) computes it
    for (int64_t i = 0; i < M; i += mr)
      for (int64_t k0 = 0; k0 < K; k0 += o.kc)
        micro(std::min<int64_t>(o.kc, K - k0), A + i * lda + k0, lda, 1, b + k0 * stride,
              stride, C + i * ldc + j, ldc, (int)std::min<int64_t>(mr, M - i), n,
              accumulate || k0 > 0, k0 == 0 && bias ? bias + j : nullptr);
  }
}

// The register tile over an M x N block of C (M <= kMc, so op(A)'s rows stay in L2): row
// i of op(A) starts at a + i * a_is, read with gemm_micro's strides a_is, a_ks; column j
// of op(B) starts at b + j * b_js, its kc rows ldb apart (nr-wide panels packed with depth
// kc: b_js = kc, ldb = nr; B in place: b_js = 1); bias (when given) for the block's columns.
void sweep(int64_t M, int64_t N, int64_t kc, const float* a, int64_t a_is, int64_t a_ks,
           const float* b, int64_t b_js, int64_t ldb, float* C, int64_t ldc,
           bool accumulate, const float* bias) {
  const Ops& o = ops();
  const Tile t = tile_for(M);
  for (int64_t j = 0; j < N; j += o.nr)
    for (int64_t i = 0; i < M; i += t.mr)
      t.micro(kc, a + i * a_is, a_is, a_ks, b + j * b_js, ldb, C + i * ldc + j, ldc,
              (int)std::min<int64_t>(t.mr, M - i), (int)std::min<int64_t>(o.nr, N - j),
              accumulate, bias ? bias + j : nullptr);
}

// A row-major op(B) is read in place by the register tile, its whole nr-wide column panels,
// when its rows are exactly one panel wide (ldb = nr: B is laid out as its packed panel
// already; matmul_bwd's dW against the seed model's 32-wide activations: 0.98-1.00x the
// time), or when a packed panel would be reused by at most kMc / mr row tiles and kc rows
// of B span few pages (a row under 4 KB). Packing those cost more: the seed model's
// matmul_bwd 0.93-0.96x the time in place, small-model's 0.96-0.97x; rows of 4 KB and
// more (medium-model's) 1.02-1.04x (one thread, in-process A/B, 2026-12-05). Same results
// either way.
bool reads_b_in_place(int64_t M, int64_t ldb, bool trans_b) {
  return !trans_b && (ldb == ops().nr || (M <= kMc && ldb < 1024));
}

}  // namespace

// The single-thread BLIS loops over one region of C, packing into `pack` (gemm_pack_size).
void gemm_serial(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool trans_a,
                 const float* B, int64_t ldb, bool trans_b, float* C, int64_t ldc,
                 bool accumulate, const float* bias, float* pack) {
  const Ops& o = ops();
  const int nr = o.nr;
  // (gemm_direct copies a last, narrower column panel whole: K * nr floats of `pack`)
  if (!trans_a && !trans_b && K > 0 && K * nr <= kNc * o.kc &&
      ((M <= kDirectMaxRows && K * N <= kDirectMaxFloats) || (K <= std::min<int64_t>(o.kc, kDirectMaxK) && N <= kDirectMaxPanels * nr)))
    return gemm_direct(M, N, K, A, lda, B, ldb, C, ldc, accumulate, bias, pack);
  const bool b_in_place = reads_b_in_place(M, ldb, trans_b);
  for (int64_t j0 = 0; j0 < N; j0 += kNc) {
    const int64_t nc = std::min(kNc, N - j0);
    const int64_t whole = b_in_place ? nc / nr * nr : 0;  // columns read in place
    for (int64_t k0 = 0; k0 < std::max<int64_t>(K, 1); k0 += o.kc) {
      const int64_t kc = std::min<int64_t>(o.kc, K - k0);
      const bool acc = accumulate || k0 > 0;
      const float* bias_now = k0 == 0 && bias ? bias + j0 : nullptr;
      for (int64_t j = whole; j < nc; j += nr)
        pack_b(pack + (j - whole) * kc, B, ldb, trans_b, N, j0 + j, k0, kc, nr);
      for (int64_t i0 = 0; i0 < M; i0 += kMc) {
        const int64_t mc = std::min(kMc, M - i0);
        // op(A)'s rows in place: lda apart, or (A transposed) one float apart, each row's
        // depth lda apart. A transposed tile touches a line of A per k, kc lines that stay
        // in L1 over the block's column panels: copying them into mr-tall panels cost more
        // (matmul_bwd's dW on the seed model 0.84-0.99x the time without the copy, small-
        // and medium-model 0.97-1.00x, one thread, in-process A/B, 2026-12-05).
        const float* a = trans_a ? A + k0 * lda + i0 : A + i0 * lda + k0;
        const int64_t a_is = trans_a ? 1 : lda, a_ks = trans_a ? lda : 1;
        float* c = C + i0 * ldc + j0;
        if (whole > 0)
          sweep(mc, whole, kc, a, a_is, a_ks, B + k0 * ldb + j0, 1, ldb, c, ldc, acc, bias_now);
        if (whole < nc)
          sweep(mc, nc - whole, kc, a, a_is, a_ks, pack, kc, nr, c + whole, ldc, acc,
                bias_now ? bias_now + whole : nullptr);
      }
    }
  }
}

int64_t gemm_pack_size() { return kNc * ops().kc + 64; }

int64_t gemm_packed_b_size(int64_t N, int64_t K) {
  const int nr = ops().nr;
  return (N + nr - 1) / nr * nr * K;
}

void gemm_pack_b(float* dst, const float* B, int64_t ldb, bool trans_b, int64_t N, int64_t K) {
  const int nr = ops().nr;
  for (int64_t j = 0; j < N; j += nr) pack_b(dst + j * K, B, ldb, trans_b, N, j, 0, K, nr);
}

void gemm_rows_packed_b(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                        const float* packed, float* C, int64_t ldc) {
  for (int64_t i0 = 0; i0 < M; i0 += kMc)
    sweep(std::min(kMc, M - i0), N, K, A + i0 * lda, lda, 1, packed, K, ops().nr,
          C + i0 * ldc, ldc, false, nullptr);
}

// One GEMM: C (M x N) = [C +] op(A) @ op(B) [+ bias].
struct Gemm {
  int64_t M, N, K;
  const float* A;
  int64_t lda;
  bool trans_a;
  const float* B;
  int64_t ldb;
  bool trans_b;
  float* C;
  int64_t ldc;
  bool accumulate;
  const float* bias;
};

namespace {

// C is cut into a few row (or, when C is short and wide, column) chunks that threads take
// dynamically, each running the serial loops with that thread's own packing buffer: no
// barrier inside, and a thread that loses its core to another process delays only its
// current chunk. Each element of C is one fixed-order sum whatever the chunking, so
// results do not depend on the thread count.
struct Plan {
  bool split_rows;
  int64_t panels, chunks;
};

Plan plan(const Gemm& g, int threads) {
  const Ops& o = ops();
  const int64_t m_panels = (g.M + o.mr - 1) / o.mr, n_panels = (g.N + o.nr - 1) / o.nr;
  // Splitting rows makes every chunk pack all of op(B), splitting columns read (or, when
  // transposed, pack) all of op(A): split the longer side. Chunks of at least one packing
  // block each, a few per thread.
  const bool split_rows = g.M >= g.N ? m_panels >= threads : n_panels < threads;
  const int64_t panels = split_rows ? m_panels : n_panels;
  const int64_t block = split_rows ? kMc / o.mr : kNc / o.nr;
  const int64_t chunks = threads == 1 ? 1 : std::min<int64_t>(
      panels, std::min<int64_t>(threads * 3, std::max<int64_t>(threads, panels / block)));
  return {split_rows, panels, chunks};
}

void run_chunk(const Gemm& g, const Plan& p, int64_t chunk, float* buf) {
  const Ops& o = ops();
  int64_t p0, p1;
  split_range(p.panels, (int)p.chunks, (int)chunk, 1, &p0, &p1);
  if (p0 >= p1) return;
  if (p.split_rows) {
    const int64_t i0 = p0 * o.mr, i1 = std::min(g.M, p1 * o.mr);
    const float* a = g.trans_a ? g.A + i0 : g.A + i0 * g.lda;
    gemm_serial(i1 - i0, g.N, g.K, a, g.lda, g.trans_a, g.B, g.ldb, g.trans_b,
                g.C + i0 * g.ldc, g.ldc, g.accumulate, g.bias, buf);
  } else {
    const int64_t j0 = p0 * o.nr, j1 = std::min(g.N, p1 * o.nr);
    const float* b = g.trans_b ? g.B + j0 * g.ldb : g.B + j0;
    gemm_serial(g.M, j1 - j0, g.K, g.A, g.lda, g.trans_a, b, g.ldb, g.trans_b, g.C + j0,
                g.ldc, g.accumulate, g.bias ? g.bias + j0 : nullptr, buf);
  }
}

// Up to kMaxJobs independent GEMMs (none writes what another reads) in one fork/join:
// backward's dx and dW share it, which halves the thread wake-ups per matmul_bwd.
constexpr int kMaxJobs = 2;

void gemm_many(const Gemm* jobs, int count) {
  auto guard = g_pack.lock();
  int64_t macs = 0;
  for (int j = 0; j < count; ++j) {
    const Gemm& g = jobs[j];
    if (g.M > 0 && g.N > 0 && (g.M <= kSmallM || g.K == 0))
      gemm_small_m(g.M, g.N, g.K, g.A, g.lda, g.trans_a, g.B, g.ldb, g.trans_b, g.C, g.ldc,
                   g.accumulate, g.bias, g_pack.get(g.M * g.K + 1));
    else if (g.M > 0 && g.N > 0)
      macs += g.M * g.N * g.K;
  }
  if (macs == 0) return;
  const int threads = macs < kParallelMacs ? 1 : num_threads();
  Plan plans[kMaxJobs];
  int64_t first[kMaxJobs + 1] = {0};  // chunk index where each job starts
  for (int j = 0; j < count; ++j) {
    const Gemm& g = jobs[j];
    const bool packed = g.M > kSmallM && g.N > 0 && g.K > 0;
    plans[j] = packed ? plan(g, threads) : Plan{true, 0, 0};
    first[j + 1] = first[j] + plans[j].chunks;
  }
  const int64_t per_thread = gemm_pack_size();
  float* pack = g_pack.get(per_thread * threads);
  parallel_for(first[count], [&](int64_t c, int thread) {
    int j = 0;
    while (c >= first[j + 1]) ++j;
    run_chunk(jobs[j], plans[j], c - first[j], pack + thread * per_thread);
  }, threads);
}

}  // namespace

void gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, bool trans_a,
          const float* B, int64_t ldb, bool trans_b, float* C, int64_t ldc, bool accumulate,
          const float* bias) {
  const Gemm g{M, N, K, A, lda, trans_a, B, ldb, trans_b, C, ldc, accumulate, bias};
  gemm_many(&g, 1);
}

void matmul_fwd(float* out, const float* inp, const float* weight, const float* bias,
                bool trans_w, int64_t N, int64_t C, int64_t OC) {
  // weight is (C, OC), or (OC, C) used transposed
  gemm(N, OC, C, inp, C, false, weight, trans_w ? C : OC, trans_w, out, OC, false, bias);
}

void matmul_bwd(float* dinp, float* dweight, float* dbias, const float* dout, const float* inp,
                const float* weight, bool trans_w, int64_t N, int64_t C, int64_t OC) {
  // dW = inp^T @ dout (C x OC), stored as (C,OC), or as (OC,C) for a transposed weight
  // (a tied lm_head). Both factors are read over the N rows, op(A) transposed in place:
  // make op(A) the wider of inp and dout, so that the side op(B) packs (or, on the seed
  // model, reads in place) is the narrower, and the product's rows fill whole register
  // tiles (32 rows take 6 six-row tiles, 36 rows of work; 96 rows 16). When that
  // orientation is not the stored one, the product goes to a scratch and is added
  // transposed. (The narrower
  // side as op(A) took 1.03-1.08x the time on the seed model's matmul_bwd shapes, 1.00-1.07x
  // on small-model's, 0.99-1.04x on medium-model's; one thread, in-process A/B, 2026-12-05.)
  const bool stored_c_rows = !trans_w;              // dW's rows run over C
  const bool c_rows = C >= OC;                      // the product's rows run over C
  const int64_t rows = c_rows ? C : OC, cols = c_rows ? OC : C;
  Gemm jobs[kMaxJobs];
  int count = 0;
  auto guard = g_dweight.lock();
  float* product = c_rows == stored_c_rows ? dweight : g_dweight.get(C * OC);
  jobs[count++] = {rows, cols, N, c_rows ? inp : dout, c_rows ? C : OC, true,
                   c_rows ? dout : inp, c_rows ? OC : C, false, product, cols,
                   product == dweight, nullptr};
  if (dinp)  // dinp (N,C) = dout (N,OC) @ W^T
    jobs[count++] = {N, C, OC, dout, OC, false, weight, trans_w ? C : OC, !trans_w, dinp, C,
                     false, nullptr};
  gemm_many(jobs, count);
  if (product != dweight)  // dweight (cols x rows) += product^T, 64 of its rows per task
    parallel_for((cols + 63) / 64, [&](int64_t blk, int) {
      const int64_t r0 = blk * 64, n = std::min<int64_t>(64, cols - r0);
      transpose(dweight + r0 * rows, rows, product + r0, cols, rows, n, true);
    }, C * OC > (1 << 16) ? 0 : 1);
  if (dbias) {
    const int64_t blocks = (OC + 63) / 64;
    const Ops& o = ops();
    parallel_for(blocks, [&](int64_t blk, int) {
      const int64_t c0 = blk * 64, n = std::min<int64_t>(64, OC - c0);
      float sum[64] = {0};
      o.column_sums(sum, dout + c0, N, OC, n);
      for (int64_t c = 0; c < n; ++c) dbias[c0 + c] += sum[c];
    }, N * OC > (1 << 16) ? 0 : 1);
  }
}

namespace {

// Few rows against a weight packed once (pack_weight): every panel's tiles read it at unit
// stride, from memory straight into the tile, and nothing is copied per call. Same tiles, depth
// blocks and order as gemm_direct and the packed loops, so the same results. Tasks of a few
// panels each, taken dynamically (pool.h).
void gemm_prepacked(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                    const float* panels, float* C, int64_t ldc, const float* bias) {
  const Ops& o = ops();
  const Tile t = tile_for(M);
  const int mr = t.mr, nr = o.nr;
  const auto micro = t.micro;
  const int64_t count = (N + nr - 1) / nr;
  const int64_t per_task = std::clamp<int64_t>(count / 8, 1, 8);
  parallel_grains(count, per_task, M * N * K >= kPackedParallelMacs, [&](int64_t p0, int64_t p1) {
    for (int64_t j = p0 * nr; j < p1 * nr; j += nr) {
      const int n = (int)std::min<int64_t>(nr, N - j);
      const float* panel = panels + j * K;
      for (int64_t i = 0; i < M; i += mr)
        for (int64_t k0 = 0; k0 < K; k0 += o.kc)
          micro(std::min<int64_t>(o.kc, K - k0), A + i * lda + k0, lda, 1, panel + k0 * nr, nr,
                C + i * ldc + j, ldc, (int)std::min<int64_t>(mr, M - i), n, k0 > 0,
                k0 == 0 && bias ? bias + j : nullptr);
    }
  });
}

// A few rows (decoding one sequence) against a weight stored (K, N): its packed panels,
// read panel after panel, are one contiguous stream, where the weight itself is read in
// strips of every row (gemm_small_m's axpy over rows); same results. From
// kGemvParallelMacs the threads split it in tasks of whole panels, each a contiguous run.
// (Batch-1 decode, one thread, tokens per thread-CPU-second: medium-model 1.53x,
// small-model 1.51x the weight read in place (min 1.21x, 1.37x); in-process A/B, 12
// rounds interleaved, load 3.6, 2026-12-05.)
// A transposed weight (a tied head) keeps gemm_small_m's dot products over its rows,
// already one contiguous stream.
void gemv_prepacked(int64_t M, const float* A, const PackedWeight& w, float* C,
                    const float* bias) {
  const Ops& o = ops();
  const int64_t count = (w.N + o.nr - 1) / o.nr;
  const bool split = M * w.N * w.K >= kGemvParallelMacs;
  parallel_grains(count, std::max<int64_t>(1, count / 8), split, [&](int64_t p0, int64_t p1) {
    o.gemv_panels(C, w.N, A, w.K, w.panels, M, w.K, w.N, p0, p1, bias);
  });
}

}  // namespace

int64_t packed_weight_size(int64_t K, int64_t N) { return gemm_packed_b_size(N, K); }

void pack_weight(float* panels, const float* weight, bool trans_w, int64_t K, int64_t N) {
  gemm_pack_b(panels, weight, trans_w ? K : N, trans_w, N, K);
}

void matmul_fwd_packed(float* out, const float* inp, const PackedWeight& w, const float* bias,
                       int64_t M) {
  if (M <= kSmallM && !w.trans) return gemv_prepacked(M, inp, w, out, bias);
  if (M <= kSmallM)  // the GEMV path reads the weight as it is (pack_weight refuses K = 0)
    return matmul_fwd(out, inp, w.source, bias, w.trans, M, w.K, w.N);
  gemm_prepacked(M, w.N, w.K, inp, w.K, w.panels, out, w.N, bias);
}

}  // namespace sllm
