/* port.h — the kernel side of a real netmap port: NIOCCTRL requests and the sync ioctls,
 * encoded by this platform's own _IOWR/_IO (Linux and FreeBSD differ). */
#ifndef VP_NETMAP_PORT_H
#define VP_NETMAP_PORT_H
#include <sys/ioctl.h>
#include "nmreq.h"
#include "../../ring/region.h"

/* netmap's ioctls, by this platform's macros (FreeBSD's _IO is IOC_VOID, Linux's 0) */
#define VP_NIOCCTRL   _IOWR('i', 151, struct nmreq_header)
#define VP_NIOCTXSYNC _IO('i', 148)
#define VP_NIOCRXSYNC _IO('i', 149)
/* cdef-begin */
int vp_netmap_ctrl(int fd, struct nmreq_header *h);
int vp_netmap_sync(int fd, int tx);
void vp_netmap_port_attach(struct vp_port *p, int fd);
unsigned long vp_netmap_ioctl_number(int which);
/* cdef-end */
#endif
