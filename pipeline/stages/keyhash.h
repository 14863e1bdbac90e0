/* keyhash.h — the flow-key hash: CRC32C over the key's words, with the CPU's crc32
 * instruction where it has one (SSE4.2, checked at load time, not assumed at build time)
 * and a table-driven CRC32C giving the very same values where it has not. */
#ifndef VP_KEYHASH_H
#define VP_KEYHASH_H
#include <stdint.h>
#include <stddef.h>

extern int vp_crc32c_hw;                 /* 1: this CPU has the crc32 instruction */
extern uint32_t vp_crc32c_table[8][256]; /* slicing-by-8 tables of the Castagnoli polynomial */

/* _mm_crc32_u64's result: CRC32C of the 8 bytes of w (little-endian) continuing from crc.
 * The instruction is reached through asm, so the extension is built for any x86-64 CPU
 * and only executes it after the CPU said it has it. */
static inline uint64_t vp_crc32c_u64(uint64_t crc, uint64_t w, const int hw) {
#if defined(__x86_64__)
    if (hw) {
        __asm__("crc32q %1, %0" : "+r"(crc) : "r"(w));
        return crc;
    }
#endif
    (void)hw;
    uint64_t x = (uint32_t)crc ^ w;
    return vp_crc32c_table[7][x & 0xff] ^ vp_crc32c_table[6][(x >> 8) & 0xff] ^
           vp_crc32c_table[5][(x >> 16) & 0xff] ^ vp_crc32c_table[4][(x >> 24) & 0xff] ^
           vp_crc32c_table[3][(x >> 32) & 0xff] ^ vp_crc32c_table[2][(x >> 40) & 0xff] ^
           vp_crc32c_table[1][(x >> 48) & 0xff] ^ vp_crc32c_table[0][x >> 56];
}

/* CRC32C over n 64-bit words in two chains whose latencies overlap (as Open vSwitch does
 * on x86); `hw` is a constant at each use, so each caller gets one straight-line version. */
static inline __attribute__((always_inline)) uint32_t vp_hash_words(const uint64_t *w, size_t n, const int hw) {
    uint64_t a = 0x243f6a88, b = 0x85a308d3;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        a = vp_crc32c_u64(a, w[i], hw);
        b = vp_crc32c_u64(b, w[i + 1], hw);
    }
    if (i < n) a = vp_crc32c_u64(a, w[i], hw);
    return (uint32_t)(a ^ (b << 15 | b >> 17)) * 0x9e3779b1u;
}

/* the same over the n words w[idx[0..n)] (idx and n constant at each use: unrolled) */
static inline __attribute__((always_inline)) uint32_t vp_hash_listed(const uint64_t *w, const uint8_t *idx, size_t n,
                                                                     const int hw) {
    uint64_t a = 0x243f6a88, b = 0x85a308d3;
    size_t i;
    for (i = 0; i + 1 < n; i += 2) {
        a = vp_crc32c_u64(a, w[idx[i]], hw);
        b = vp_crc32c_u64(b, w[idx[i + 1]], hw);
    }
    if (i < n) a = vp_crc32c_u64(a, w[idx[i]], hw);
    return (uint32_t)(a ^ (b << 15 | b >> 17)) * 0x9e3779b1u;
}
#endif
