/* transmit.h — move queued packets into the output ports' rings and publish them. */
#include "batch.h"
/* cdef-begin */
uint32_t vp_transmit(struct vp_dp *dp, struct vp_batch *b);
uint32_t vp_emit(struct vp_dp *dp, uint32_t port, const uint8_t *data, uint32_t len, const struct vp_offload *ol);
uint32_t vp_inject(struct vp_dp *dp, uint32_t port, const uint8_t *blob, const uint16_t *lens, uint32_t n);
/* cdef-end */
