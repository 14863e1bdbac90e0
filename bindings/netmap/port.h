/* port.h — the kernel side of a real netmap port: NIOCCTRL requests and the sync ioctls,
 * encoded by this platform's own _IOWR/_IO (Linux and FreeBSD differ). */
#ifndef VP_NETMAP_PORT_H
#define VP_NETMAP_PORT_H
#include "nmreq.h"
#include "../../ring/region.h"
/* cdef-begin */
int vp_netmap_ctrl(int fd, struct nmreq_header *h);
int vp_netmap_sync(int fd, int tx);
void vp_netmap_port_sync(struct vp_port *p, int tx);
unsigned long vp_netmap_ioctl_number(int which);
/* cdef-end */
#endif
