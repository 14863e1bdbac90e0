/* transmit.h — move queued packets into the output ports' rings (the commit publishes them). */
#include "batch.h"
/* cdef-begin */
uint32_t vp_transmit(struct vp_dp *dp, struct vp_batch *b);
uint32_t vp_emit(struct vp_dp *dp, uint32_t port, const uint8_t *data, uint32_t len, const struct vp_offload *ol,
                 uint32_t in_port);
/* cdef-end */
