/* pcap.c — records walked out of a file held in memory, every length checked against the
 * file and the buffers; records appended to a buffer flushed with one write per batch. */
#include <errno.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include "pcap.h"

uint64_t vp_now_ns(void);

static inline uint32_t rd32(const uint8_t *p, uint32_t swapped) {
    uint32_t v;
    memcpy(&v, p, 4);
    return swapped ? __builtin_bswap32(v) : v;
}

static uint32_t pcap_rx(struct vp_io *io, uint32_t q, struct vp_ring *k, uint32_t space) {
    struct vp_pcap_in *in = io->priv;
    uint32_t n = 0;
    (void)q;
    while (n < space && !in->eof) {
        uint64_t ts;
        uint32_t caplen;
        char *buf;
        if (in->size - in->off < 16) {               /* end of this pass */
            if (in->size - in->off) io->st->rx_errors++;   /* a cut-off record header */
            if (in->loops == 0) { in->eof = 1; break; }
            if (in->loops > 0) in->loops--;
            in->off = 24;
            in->t0_ns = 0;
            if (in->size - in->off < 16) { in->eof = 1; break; }
            continue;
        }
        ts = (uint64_t)rd32(in->data + in->off, in->swapped) * 1000000000ull
           + (uint64_t)rd32(in->data + in->off + 4, in->swapped) * (in->nsec ? 1 : 1000);
        caplen = rd32(in->data + in->off + 8, in->swapped);
        if (caplen > in->size - in->off - 16) {      /* record runs past the file */
            io->st->rx_errors++;
            in->off = in->size;
            continue;
        }
        if (in->recorded_rate) {
            uint64_t now = vp_now_ns();
            if (!in->t0_ns) { in->t0_ns = now; in->t0_file_ns = ts; }
            if (ts > in->t0_file_ns && ts - in->t0_file_ns > now - in->t0_ns) break;   /* not due yet */
        }
        if (caplen == 0) {
            io->st->rx_errors++;
        } else if (caplen > k->buf_size) {
            io->st->rx_truncated++;
        } else if (!(buf = vp_io_rx_buf(k))) {
            k->st.bad_buf++;
            k->faulty = 1;
            break;
        } else {
            memcpy(buf, in->data + in->off + 16, caplen);
            vp_io_rx_commit(io, k, caplen);
            n++;
        }
        in->off += 16 + (uint64_t)caplen;
    }
    return n;
}

void vp_pcap_flush(struct vp_pcap_out *m) {
    uint32_t off = 0;
    while (off < m->used) {
        ssize_t w = write(m->fd, m->buf + off, m->used - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) { m->write_errors++; m->last_errno = w < 0 ? errno : EIO; break; }
        off += (uint32_t)w;
    }
    m->used = 0;
}

void vp_pcap_mirror(struct vp_pcap_out *m, const char *data, uint32_t len) {
    struct timespec ts;
    uint32_t rec[4];
    if (len > sizeof(m->buf) - 16) { m->write_errors++; return; }
    if (m->used + 16 + len > sizeof(m->buf)) vp_pcap_flush(m);
    clock_gettime(CLOCK_REALTIME, &ts);
    rec[0] = (uint32_t)ts.tv_sec;
    rec[1] = (uint32_t)(ts.tv_nsec / 1000);
    rec[2] = rec[3] = len;
    memcpy(m->buf + m->used, rec, 16);
    memcpy(m->buf + m->used + 16, data, len);
    m->used += 16 + len;
    m->packets++;
    m->bytes += len;
}

static uint32_t pcap_tx(struct vp_io *io, struct vp_ring *k, uint32_t avail) {
    struct vp_pcap_out *out = io->priv;
    uint64_t errs = out->write_errors;
    for (uint32_t i = 0; i < avail; i++) {
        uint32_t idx;
        uint16_t len;
        if (vp_slot_take(k, k->cons, &idx, &len)) {
            vp_pcap_mirror(out, vp_buf(k, idx), len);
            io->st->tx_packets++;
            io->st->tx_bytes += len;
        }
        k->cons = nm_ring_next(k->nslots, k->cons);
    }
    vp_pcap_flush(out);
    if (out->write_errors != errs) { io->st->tx_errors++; vp_io_error(io, out->last_errno); }
    return avail;
}

/* a file being read cannot transmit: what the pipeline sends to it is counted */
static uint32_t discard_tx(struct vp_io *io, struct vp_ring *k, uint32_t avail) {
    for (uint32_t i = 0; i < avail; i++) {
        uint32_t idx;
        uint16_t len;
        if (vp_slot_take(k, k->cons, &idx, &len)) io->st->tx_discarded++;
        k->cons = nm_ring_next(k->nslots, k->cons);
    }
    return avail;
}

static uint32_t no_rx(struct vp_io *io, uint32_t q, struct vp_ring *k, uint32_t space) {
    (void)io; (void)q; (void)k; (void)space;
    return 0;
}

void vp_pcap_in_init(struct vp_io *io, struct vp_pcap_in *in) {
    io->priv = in;
    io->rx = pcap_rx;
    io->tx = discard_tx;
}

void vp_pcap_out_init(struct vp_io *io, struct vp_pcap_out *out) {
    io->priv = out;
    io->rx = no_rx;
    io->tx = pcap_tx;
}

static void mirror_frame(void *m, const char *data, uint32_t len) { vp_pcap_mirror(m, data, len); }
static void mirror_flush(void *m) { vp_pcap_flush(m); }

/* every frame sent through port p is written to m too (m NULL: no more) */
void vp_pcap_mirror_attach(struct vp_port *p, struct vp_pcap_out *m) {
    p->mirror = m;
    p->mirror_frame = m ? mirror_frame : NULL;
    p->mirror_flush = m ? mirror_flush : NULL;
}
