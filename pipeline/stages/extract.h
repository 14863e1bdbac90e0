/* extract.h — parse each packet of a batch into a fixed-layout flow key and a hash. */
#include "batch.h"
/* cdef-begin */
void vp_extract(struct vp_dp *dp, struct vp_batch *b);
void vp_extract_one(const uint8_t *p, uint32_t len, uint32_t in_port, struct vp_flow_key *k, uint64_t *perr);
uint32_t vp_key_hash_path(const struct vp_flow_key *k, int hw);
int vp_crc32c_cpu(void);
int vp_crc32c_used(void);
/* cdef-end */
