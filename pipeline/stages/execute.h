/* execute.h — apply each hit's datapath actions, queueing packets per output port. */
#include "batch.h"
/* cdef-begin */
uint32_t vp_execute(struct vp_dp *dp, struct vp_batch *b);
int vp_actions_set(struct vp_dp *dp, uint32_t id, const uint16_t *out, uint32_t nout);
int vp_actions_set_ops(struct vp_dp *dp, uint32_t id, const struct vp_op *ops, uint32_t nops);
void vp_actions_free(struct vp_dp *dp);
uint32_t vp_ops_apply(const struct vp_op *ops, uint32_t nops, uint8_t *pkt, uint32_t len, uint32_t cap);
uint32_t vp_execute_packet(struct vp_dp *dp, uint32_t id, const uint8_t *data, uint32_t len,
                           const struct vp_offload *ol, uint32_t in_port);
/* cdef-end */
