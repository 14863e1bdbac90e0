/* shared.h — the one way valepipe's C code touches memory that another party may write at
 * the same moment (a ring peer, the kernel): every access happens exactly once, where it
 * is written, so the value a check saw is the value that is used afterwards.
 *
 * Plain loads from such memory are not enough: the compiler may load a field again
 * instead of keeping it in a register (or merge, drop or tear loads), and a peer that
 * rewrites it in between gets past the check. Use these everywhere such memory is read:
 *   VP_READ_ONCE / VP_WRITE_ONCE      one field of a slot, a header, a descriptor
 *   VP_LOAD_ACQUIRE / VP_STORE_RELEASE ring cursors (head, cur, tail, block status):
 *                                      ordered with the slots and buffers they publish
 *   vp_pkt_u8 / vp_pkt_u16 / vp_pkt_u32 bytes of a packet in a shared buffer, each load
 *                                      once (u16/u32 unaligned, as stored: network order)
 * Bulk copies into private memory (memcpy) read each byte once; what is used after them
 * is the private copy. */
#ifndef VP_SHARED_H
#define VP_SHARED_H
#include <stdint.h>

#define VP_READ_ONCE(x) (*(const volatile __typeof__(x) *)&(x))
#define VP_WRITE_ONCE(x, v) (*(volatile __typeof__(x) *)&(x) = (v))
#define VP_LOAD_ACQUIRE(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define VP_STORE_RELEASE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

typedef uint16_t vp_unaligned_u16 __attribute__((aligned(1), may_alias));
typedef uint32_t vp_unaligned_u32 __attribute__((aligned(1), may_alias));

static inline uint8_t vp_pkt_u8(const uint8_t *p) { return *(const volatile uint8_t *)p; }
static inline uint16_t vp_pkt_u16(const uint8_t *p) { return *(const volatile vp_unaligned_u16 *)p; }
static inline uint32_t vp_pkt_u32(const uint8_t *p) { return *(const volatile vp_unaligned_u32 *)p; }
#endif
