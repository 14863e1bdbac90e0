/* receive.h — take slots from the ports' rx side into the batch, without copying. */
#include "batch.h"
/* cdef-begin */
uint32_t vp_receive(struct vp_dp *dp, struct vp_batch *b);
void vp_receive_release(struct vp_dp *dp);
/* cdef-end */
