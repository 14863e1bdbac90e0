/* adapter.c — rxsync/txsync for emulated adapters: the netmap kernel side of a port's
 * rings, filled and drained by the binding's rx/tx (one call per ring per batch). */
#include "adapter.h"

void vp_io_rxsync(struct vp_io *io) {
    if (io->link_down == VP_LINK_GONE) return;        /* nothing to read from */
    for (uint32_t q = 0; q < io->nq; q++) {
        struct vp_ring *k = &io->kport.rx[q];
        uint32_t space = vp_ring_space(k);
        if (space) io->rx(io, q, k, space);
        vp_ring_publish(k);
    }
}

/* The binding consumes slots from k->cons on, advancing it past each frame it is done
 * with (sent, or dropped and counted); what it leaves stays for the next txsync, unless the
 * link is down: then, as a switch does for a down port, what the interface would not take
 * is dropped (tx_link_down), not retried until the guest is back and then sent stale. The
 * binding still tries each time (the worker's view of the link may be a moment old). */
void vp_io_txsync(struct vp_io *io) {
    struct vp_ring *k = &io->kport.tx[0];
    uint32_t avail = vp_ring_avail(k);
    if (io->link_down == VP_LINK_GONE) {          /* no fds to try */
        io->st->tx_link_down += avail;
        k->cons = (k->cons + avail) % k->nslots;
    } else if (avail || io->tx_inflight) {
        uint64_t again = io->st->tx_again;
        io->tx(io, k, avail);
        if (io->link_down && (avail = vp_ring_avail(k)) != 0) {
            io->st->tx_again = again;               /* not kept for later after all */
            io->st->tx_link_down += avail;
            k->cons = (k->cons + avail) % k->nslots;
        }
    }
    vp_ring_release(k);
    io->tx_backlog = vp_ring_avail(k) != 0 || io->tx_inflight;
}

/* the pipeline's port p (the user side of io's rings) meets the stages through these */
static void port_rxsync(struct vp_port *p) {
    struct vp_io *io = p->io;
    if (io->tx_backlog) {                     /* frames an earlier txsync could not hand on */
        vp_io_txsync(io);
        p->tx_pending = io->tx_backlog;
    }
    vp_io_rxsync(io);
}

static void port_txsync(struct vp_port *p) {
    vp_io_txsync(p->io);
    p->tx_pending = ((struct vp_io *)p->io)->tx_backlog;
}

/* io NULL: detach (the port is closing) */
void vp_io_attach(struct vp_port *p, struct vp_io *io) {
    p->io = io;
    p->tx_pending = 0;
    p->vnet_hdr = io ? (uint16_t)io->vnet_hdr : 0;
    p->rxsync = io ? port_rxsync : NULL;
    p->txsync = io ? port_txsync : NULL;
}
