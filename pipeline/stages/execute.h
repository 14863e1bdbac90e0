/* execute.h — apply each hit's datapath actions, queueing packets per output port. */
#include "batch.h"
/* cdef-begin */
void vp_execute(struct vp_dp *dp, struct vp_batch *b);
int vp_actions_set(struct vp_dp *dp, uint32_t id, const uint16_t *out, uint32_t nout);
/* cdef-end */
