// The packed layout of quantized weights (quant.h): ggml's rows regrouped R at a time for
// the tier in use, once, when a model is loaded or quantized. The file on disk keeps
// ggml's rows.
#include <cstring>

#include "pool.h"
#include "quant.h"

namespace sllm {
namespace {

// Bytes of a block before its codes: d, and q4_1's m.
constexpr int64_t head_bytes(int qtype) { return qtype == Q4_1 ? 4 : 2; }

// Calls f(offset in the group, offset in the ggml block, is a code byte) for every byte of
// block b of row r of a packed group of R rows of nb blocks (the layout of quant.h).
template <class F>
void each_byte(int qtype, int R, int64_t nb, int64_t b, int r, F&& f) {
  const int64_t h = head_bytes(qtype), codes = kBlockBytes[qtype] - h;
  for (int64_t i = 0; i < h; ++i)  // d (and m): field i/2 of this block's head
    f(b * h * R + (i / 2) * 2 * R + 2 * r + i % 2, i, false);
  for (int64_t j = 0; j < codes; ++j)
    f(nb * h * R + b * codes * R + (j / 4) * 4 * R + 4 * r + j % 4, h + j, true);
}

uint8_t flip_of(int qtype) { return qtype == Q8_0 && qops().offset ? 0x80 : 0; }

}  // namespace

void pack_q(uint8_t* dst, const uint8_t* src, int qtype, int64_t OC, int64_t nb) {
  const int R = qops().rows;
  const int64_t B = kBlockBytes[qtype], groups = (OC + R - 1) / R;
  const int64_t gbytes = qgroup_bytes(qtype, nb, R);
  const uint8_t flip = flip_of(qtype);
  // padding rows stay zero: d = 0, so they add nothing and their outputs are dropped
  std::memset(dst, 0, (size_t)(groups * gbytes));
  parallel_for(groups, [&](int64_t g, int) {
    uint8_t* group = dst + g * gbytes;
    for (int r = 0; r < R && g * R + r < OC; ++r)
      for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* block = src + ((g * R + r) * nb + b) * B;
        each_byte(qtype, R, nb, b, r, [&](int64_t at, int64_t from, bool code) {
          group[at] = block[from] ^ (code ? flip : 0);
        });
      }
  });
}

void unpack_q(uint8_t* dst, const uint8_t* packed, int qtype, int64_t OC, int64_t nb) {
  const int64_t B = kBlockBytes[qtype];
  parallel_for(OC, [&](int64_t r, int) {
    for (int64_t b = 0; b < nb; ++b) unpack_block(dst + (r * nb + b) * B, packed, qtype, nb, r, b);
  });
}

const uint8_t* unpack_block(uint8_t* block, const uint8_t* packed, int qtype, int64_t nb,
                            int64_t row, int64_t b) {
  // each_byte's layout, a field at a time: the head's 2-byte fields, then 4-byte chunks
  const int R = qops().rows;
  const int64_t r = row % R, h = head_bytes(qtype), codes = kBlockBytes[qtype] - h;
  const uint8_t* group = packed + row / R * qgroup_bytes(qtype, nb, R);
  for (int64_t i = 0; i < h; i += 2) std::memcpy(block + i, group + b * h * R + i * R + 2 * r, 2);
  const uint8_t* chunks = group + nb * h * R + b * codes * R + 4 * r;
  for (int64_t j = 0; j < codes; j += 4) std::memcpy(block + h + j, chunks + j * R, 4);
  if (const uint8_t flip = flip_of(qtype))
    for (int64_t j = 0; j < codes; ++j) block[h + j] ^= flip;
  return block;
}

}  // namespace sllm
