/* extract.h — parse each packet of a batch into a fixed-layout flow key and a hash. */
#ifndef VP_EXTRACT_H
#define VP_EXTRACT_H
#include "batch.h"
/* cdef-begin */
/* where a parse found the network and transport headers (offsets from the frame's start,
 * 0 = none) and where the network packet ends (link-layer padding after it): what Open
 * vSwitch's packet offsets are, which its header rewrites and checksum updates rely on */
struct vp_layout { uint32_t l3; uint32_t l4; uint32_t end; };
uint32_t vp_extract(struct vp_dp *dp, struct vp_batch *b);
void vp_extract_one(const uint8_t *p, uint32_t len, uint32_t in_port, struct vp_flow_key *k, uint64_t *perr);
void vp_parse(const uint8_t *p, uint32_t len, uint32_t in_port, struct vp_flow_key *k, uint64_t *perr,
              struct vp_layout *L);
uint32_t vp_key_hash_path(const struct vp_flow_key *k, int hw);
int vp_crc32c_cpu(void);
int vp_crc32c_used(void);
/* cdef-end */
#endif
