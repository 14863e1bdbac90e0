/* tap.c — one read() or write() per frame on the TAP fds (the kernel has no batched call
 * for them), looped here in C once per batch; one fd per queue, tx on queue 0. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include "tap.h"

#ifndef TUN_F_USO4                 /* UDP segmentation offload: Linux 6.2 */
#define TUN_F_USO4 0x20
#define TUN_F_USO6 0x40
#endif

/* Opens one queue of TAP `name` (Python calls it once per queue), creating the device if
 * it does not exist: it then lives as long as its fds. With vnet, frames are read and
 * written with a virtio_net_hdr in front and the device offers TSO and checksum offload
 * to its stack, as QEMU's TAPs do: super-frames and partial checksums pass whole.
 * Returns the fd, or -errno with err. */
int vp_tap_open(const char *name, int queues, int vnet, char *err, size_t errlen) {
    struct ifreq ifr;
    int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open /dev/net/tun: %s", strerror(errno));
        return -errno;
    }
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (queues > 1 ? IFF_MULTI_QUEUE : 0) | (vnet ? IFF_VNET_HDR : 0);
    snprintf(ifr.ifr_name, IFNAMSIZ, "%s", name);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        int e = errno;
        if (e == EBUSY)
            snprintf(err, errlen, "TAP %s is held by another process (a QEMU guest?); "
                     "attach to its host side with packet:%s or afxdp:%s instead", name, name, name);
        else if (e == EINVAL)
            snprintf(err, errlen, "%s exists and is not a TAP device%s", name,
                     queues > 1 ? " with multi-queue (IFF_MULTI_QUEUE)" : " (or it is a multi-queue TAP: give queues=N)");
        else if (e == EPERM)
            snprintf(err, errlen, "permission denied creating TAP %s: needs CAP_NET_ADMIN "
                     "(or a persistent TAP owned by this user)", name);
        else
            snprintf(err, errlen, "TUNSETIFF %s: %s", name, strerror(e));
        close(fd);
        return -e;
    }
    if (vnet) {
        int hl = VP_VNET_HDR_LEN;
        unsigned off = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        if (ioctl(fd, TUNSETVNETHDRSZ, &hl) < 0 ||
            (ioctl(fd, TUNSETOFFLOAD, off | TUN_F_USO4 | TUN_F_USO6) < 0 && ioctl(fd, TUNSETOFFLOAD, off) < 0)) {
            int e = errno;
            snprintf(err, errlen, "TAP %s: offloads (TUNSETVNETHDRSZ/TUNSETOFFLOAD): %s", name, strerror(e));
            close(fd);
            return -e;
        }
    }
    return fd;
}

static uint32_t tap_rx(struct vp_io *io, uint32_t q, struct vp_ring *k, uint32_t space) {
    static char scratch[65536 + 64];   /* the tail of a frame longer than a buffer */
    uint32_t n = 0;
    while (n < space) {
        char *buf = vp_io_rx_buf(k);
        struct iovec iov[2] = {{buf, k->buf_size}, {scratch, sizeof(scratch)}};
        ssize_t got;
        if (!buf) { k->st.bad_buf++; k->faulty = 1; break; }
        got = readv(io->fd[q], iov, 2);
        io->st->syscalls++;
        if (got < 0) {
            if (errno != EAGAIN && errno != EINTR) { io->st->rx_errors++; vp_io_error(io, errno); }
            break;
        }
        if (got == 0) break;
        if ((size_t)got > k->buf_size) { io->st->rx_truncated++; continue; }
        if (io->vnet_hdr && got >= VP_VNET_HDR_LEN) {
            io->st->rx_gso += buf[1] != VP_GSO_NONE;
            io->st->rx_csum_partial += (buf[0] & VP_OL_CSUM) != 0;
        }
        vp_io_rx_commit(io, k, (uint32_t)got);
        n++;
    }
    return n;
}

static uint32_t tap_tx(struct vp_io *io, struct vp_ring *k, uint32_t avail) {
    uint32_t done = 0;
    while (done < avail) {
        uint32_t idx;
        uint16_t len;
        if (vp_slot_take(k, k->cons, &idx, &len)) {
            ssize_t w = write(io->fd[0], vp_buf(k, idx), len);
            io->st->syscalls++;
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) { io->st->tx_again++; break; }
            if (w < 0) {
                io->st->tx_errors++;       /* EIO: the TAP is down; the frame is dropped */
                vp_io_error(io, errno);
            } else {
                io->st->tx_packets++;
                io->st->tx_bytes += len - io->vnet_hdr;
            }
        }
        k->cons = nm_ring_next(k->nslots, k->cons);
        done++;
    }
    return done;
}

void vp_tap_init(struct vp_io *io) {
    io->rx = tap_rx;
    io->tx = tap_tx;
}
