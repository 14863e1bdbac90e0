/* port.c — NIOCCTRL and NIOC{TX,RX}SYNC on a /dev/netmap fd; errno is returned, not set. */
#include <errno.h>
#include "port.h"

int vp_netmap_ctrl(int fd, struct nmreq_header *h) {
    return ioctl(fd, VP_NIOCCTRL, h) < 0 ? errno : 0;
}

int vp_netmap_sync(int fd, int tx) {
    return ioctl(fd, tx ? VP_NIOCTXSYNC : VP_NIOCRXSYNC) < 0 ? errno : 0;
}

/* the pipeline's sync on a port: a refusal (interface gone, ring reset) is counted on the
 * port and reported by the worker, and the next batch tries again */
static void port_sync(struct vp_port *p, int tx) {
    int e = vp_netmap_sync(p->fd, tx);
    if (e) {
        p->sync_errors++;
        p->sync_errno = e;
    }
}
static void port_rxsync(struct vp_port *p) { port_sync(p, 0); }
static void port_txsync(struct vp_port *p) { port_sync(p, 1); }

/* the pipeline's port p is registered on fd (-1: closing): its syncs are the kernel's */
void vp_netmap_port_attach(struct vp_port *p, int fd) {
    p->fd = fd;
    p->rxsync = fd >= 0 ? port_rxsync : NULL;
    p->txsync = fd >= 0 ? port_txsync : NULL;
}

/* what the compiler made of the macros, for the test that compares them with ioctl.py */
unsigned long vp_netmap_ioctl_number(int which) {
    return which == 0 ? (unsigned long)VP_NIOCCTRL : which == 1 ? (unsigned long)VP_NIOCTXSYNC
                                                               : (unsigned long)VP_NIOCRXSYNC;
}
