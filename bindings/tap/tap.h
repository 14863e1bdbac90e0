/* tap.h — TAP devices (IFF_TAP|IFF_NO_PI, optionally multi-queue) as netmap rings. */
#include "../adapter.h"
/* cdef-begin */
int vp_tap_open(const char *name, int queues, int vnet, char *err, size_t errlen);
void vp_tap_init(struct vp_io *io);
/* cdef-end */
