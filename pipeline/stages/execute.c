/* execute.c — datapath actions: outputs are grouped per port for transmit; a flow whose
 * actions modify packets (masked set with checksum updates, push/pop VLAN) runs its
 * action program in order on a copy of the packet, copying it into each output's ring. */
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include "execute.h"
#include "transmit.h"
#include "../../bindings/adapter.h"

/* An action set's own memory: what a replaced or freed set held is released. */
static void actions_clear(struct vp_actions *a) {
    free(a->more);
    free(a->ops);
    memset(a, 0, sizeof(*a));
}

int vp_actions_set(struct vp_dp *dp, uint32_t id, const uint16_t *out, uint32_t nout) {
    struct vp_actions *a;
    uint16_t *more = NULL;
    if (id >= dp->max_actions || nout > VP_MAX_PROGRAM) return -1;
    if (nout > VP_INLINE_OUTPUTS) {
        if (!(more = malloc(nout * sizeof(*more)))) return -1;
        memcpy(more, out, nout * sizeof(*more));
    }
    a = &dp->actions[id];
    actions_clear(a);
    a->nout = nout;
    if (more) a->more = more;
    else memcpy(a->out, out, nout * sizeof(*out));
    if (id >= dp->nactions) dp->nactions = id + 1;
    return 0;
}

int vp_actions_set_ops(struct vp_dp *dp, uint32_t id, const struct vp_op *ops, uint32_t nops) {
    struct vp_actions *a;
    struct vp_op *prog;
    uint32_t nout = 0;
    if (id >= dp->max_actions || nops == 0 || nops > VP_MAX_PROGRAM) return -1;
    for (uint32_t i = 0; i < nops; i++) {
        if ((ops[i].kind < VP_OP_OUTPUT || ops[i].kind > VP_OP_POP_VLAN) && ops[i].kind != VP_OP_METER) return -1;
        if (ops[i].kind == VP_OP_METER && ops[i].port >= VP_MAX_METERS) return -1;
        if (ops[i].kind == VP_OP_SET && (ops[i].field < VP_F_DL_SRC || ops[i].field > VP_F_TP_DST)) return -1;
        if (ops[i].kind == VP_OP_OUTPUT) nout++;
    }
    if (!(prog = malloc(nops * sizeof(*prog)))) return -1;
    memcpy(prog, ops, nops * sizeof(*ops));
    a = &dp->actions[id];
    actions_clear(a);
    a->ops = prog;
    a->nops = nops;
    a->nout = nout;
    if (id >= dp->nactions) dp->nactions = id + 1;
    return 0;
}

void vp_actions_free(struct vp_dp *dp) {
    for (uint32_t i = 0; i < dp->nactions; i++) actions_clear(&dp->actions[i]);
    dp->nactions = 0;
}

static inline const uint16_t *outputs(const struct vp_actions *a) {
    return a->nout <= VP_INLINE_OUTPUTS ? a->out : a->more;
}

/* --- header editing ----------------------------------------------------------------- */

/* The packet may sit in a buffer its sender can still write: each byte that decides an
 * offset is loaded once (ring/shared.h); edits are computed in private copies. */
static inline uint16_t rd16(const uint8_t *p) { return ntohs(vp_pkt_u16(p)); }
static inline void wr16(uint8_t *p, uint16_t v) { v = htons(v); memcpy(p, &v, 2); }

/* RFC 1624: HC' = ~(~HC + ~m + m') over the 16-bit words that changed. A partial
 * checksum (the pseudo-header sum, left for the receiver or a port to complete) is not
 * complemented: P' = P + ~m + m'. */
static void csum_update(uint8_t *csum, const uint8_t *old, const uint8_t *new, uint32_t n, int partial) {
    uint32_t s = partial ? rd16(csum) : (uint16_t)~rd16(csum);
    for (uint32_t i = 0; i < n; i += 2) {
        s += (uint16_t)~rd16(old + i);
        s += rd16(new + i);
    }
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    wr16(csum, partial ? (uint16_t)s : (uint16_t)~s);
}

struct layers { uint32_t l3, l4; uint16_t et; uint8_t proto; uint8_t l4ok; };

static struct layers find_layers(const uint8_t *p, uint32_t len) {
    struct layers L = {0, 0, 0, 0, 0};
    uint32_t off = 12;
    if (len < 14) return L;
    L.et = rd16(p + 12);
    while ((L.et == 0x8100 || L.et == 0x88a8) && len >= off + 6) {
        off += 4;
        L.et = rd16(p + off);
    }
    L.l3 = off + 2;
    if (L.et == 0x0800 && len >= L.l3 + 20) {
        uint32_t ihl = (vp_pkt_u8(p + L.l3) & 15) * 4u;
        L.proto = vp_pkt_u8(p + L.l3 + 9);
        L.l4 = L.l3 + ihl;
        L.l4ok = ihl >= 20 && !(rd16(p + L.l3 + 6) & 0x1fff) && len >= L.l4 + 8;
    } else if (L.et == 0x86dd && len >= L.l3 + 40) {
        L.proto = vp_pkt_u8(p + L.l3 + 6);
        L.l4 = L.l3 + 40;
        L.l4ok = (L.proto == 6 || L.proto == 17) && len >= L.l4 + 8;
    } else {
        L.et = L.et == 0x0800 || L.et == 0x86dd ? 0 : L.et;   /* too short to be that */
    }
    return L;
}

/* the L4 checksum that covers the pseudo-header and ports, if the packet has one */
static uint8_t *l4_csum(uint8_t *p, uint32_t len, const struct layers *L) {
    if (!L->l4ok) return NULL;
    if (L->proto == 6 && len >= L->l4 + 18) return p + L->l4 + 16;
    if (L->proto == 17 && rd16(p + L->l4 + 6)) return p + L->l4 + 6;   /* 0: no checksum */
    return NULL;
}

/* write value under mask at p[0..w), updating up to two checksums over the even-aligned
 * span; `partial` is the L4 checksum field when it holds a partial checksum: it covers
 * only the pseudo-header (pseudo != 0), the rest is summed when it is completed */
static void write_field(uint8_t *pkt, uint32_t at, uint32_t w, const uint8_t *value, const uint8_t *mask,
                        uint8_t *c1, uint8_t *c2, const uint8_t *partial, int pseudo) {
    uint8_t before[20], after[20];
    uint32_t s = at & ~1u, e = (at + w + 1) & ~1u;
    memcpy(before, pkt + s, e - s);
    memcpy(after, before, e - s);
    for (uint32_t i = 0; i < w; i++)
        after[at - s + i] = (uint8_t)((before[at - s + i] & ~mask[16 - w + i]) | (value[16 - w + i] & mask[16 - w + i]));
    memcpy(pkt + s, after, e - s);
    if (c1 && (c1 != partial || pseudo)) csum_update(c1, before, after, e - s, c1 == partial);
    if (c2 && (c2 != partial || pseudo)) csum_update(c2, before, after, e - s, c2 == partial);
}

/* apply one modifying op to a packet of `len` bytes in a buffer of `cap` (with its offload
 * metadata, or NULL); returns the new length (unchanged when the packet has no such
 * header), 0 when it does not fit */
static uint32_t op_apply(const struct vp_op *op, uint8_t *p, uint32_t len, uint32_t cap, struct vp_offload *ol) {
    if (op->kind == VP_OP_PUSH_VLAN) {
        if (len < 14) return len;
        if (len + 4 > cap) return 0;
        memmove(p + 16, p + 12, len - 12);
        wr16(p + 12, op->tpid);
        wr16(p + 14, op->tci);
        if (ol && ol->flags & VP_OL_CSUM) ol->csum_start += 4;
        return len + 4;
    }
    if (op->kind == VP_OP_POP_VLAN) {
        uint16_t et = len >= 18 ? rd16(p + 12) : 0;
        if (et != 0x8100 && et != 0x88a8) return len;
        memmove(p + 12, p + 16, len - 16);
        if (ol && ol->flags & VP_OL_CSUM) ol->csum_start -= 4;
        return len - 4;
    }
    if (op->kind != VP_OP_SET) return len;
    struct layers L = find_layers(p, len);
    uint8_t *ipc = L.et == 0x0800 ? p + L.l3 + 10 : NULL;
    const uint8_t *pc = ol && ol->flags & VP_OL_CSUM ? p + ol->csum_start + ol->csum_off : NULL;
    switch (op->field) {
    case VP_F_DL_DST: if (len >= 14) write_field(p, 0, 6, op->value, op->mask, NULL, NULL, NULL, 0); break;
    case VP_F_DL_SRC: if (len >= 14) write_field(p, 6, 6, op->value, op->mask, NULL, NULL, NULL, 0); break;
    case VP_F_NW_SRC: case VP_F_NW_DST:
        if (L.et == 0x0800)
            write_field(p, L.l3 + (op->field == VP_F_NW_SRC ? 12 : 16), 4, op->value, op->mask, ipc, l4_csum(p, len, &L), pc, 1);
        break;
    case VP_F_IPV6_SRC: case VP_F_IPV6_DST:
        if (L.et == 0x86dd)
            write_field(p, L.l3 + (op->field == VP_F_IPV6_SRC ? 8 : 24), 16, op->value, op->mask, l4_csum(p, len, &L), NULL, pc, 1);
        break;
    case VP_F_NW_TOS:
        if (L.et == 0x0800) {
            write_field(p, L.l3 + 1, 1, op->value, op->mask, ipc, NULL, pc, 0);
        } else if (L.et == 0x86dd) {          /* traffic class straddles the first two bytes */
            uint8_t b0 = vp_pkt_u8(p + L.l3), b1 = vp_pkt_u8(p + L.l3 + 1);
            uint8_t tc = (uint8_t)(((b0 & 0x0f) << 4) | (b1 >> 4));
            tc = (uint8_t)((tc & ~op->mask[15]) | (op->value[15] & op->mask[15]));
            p[L.l3] = (uint8_t)((b0 & 0xf0) | (tc >> 4));
            p[L.l3 + 1] = (uint8_t)((b1 & 0x0f) | (tc << 4));
        }
        break;
    case VP_F_NW_TTL:
        if (L.et == 0x0800) write_field(p, L.l3 + 8, 1, op->value, op->mask, ipc, NULL, pc, 0);
        else if (L.et == 0x86dd) write_field(p, L.l3 + 7, 1, op->value, op->mask, NULL, NULL, NULL, 0);
        break;
    case VP_F_TP_SRC: case VP_F_TP_DST:
        if (L.l4ok && (L.proto == 6 || L.proto == 17))
            write_field(p, L.l4 + (op->field == VP_F_TP_SRC ? 0 : 2), 2, op->value, op->mask, l4_csum(p, len, &L), NULL, pc, 0);
        break;
    }
    return len;
}

uint32_t vp_op_apply(const struct vp_op *op, uint8_t *p, uint32_t len, uint32_t cap) {
    return op_apply(op, p, len, cap, NULL);
}

/* an OpenFlow meter's band: 1 when the packet fits, 0 when it is over (and counted) */
static int meter_pass(struct vp_dp *dp, uint32_t slot, uint32_t len) {
    struct vp_meter *m;
    uint64_t now, cap, cost, dt;
    if (!dp->meters || slot >= VP_MAX_METERS) return 1;
    m = &dp->meters[slot];
    if (!m->rate) return 1;
    now = vp_now_ns();
    cap = m->burst * 1000000000ull;             /* burst < 2^32: no overflow */
    dt = m->last_ns && now > m->last_ns ? now - m->last_ns : 0;
    if (!m->last_ns || dt >= cap / m->rate) m->tokens = cap;
    else if ((m->tokens += m->rate * dt) > cap) m->tokens = cap;
    m->last_ns = now;
    cost = m->pktps ? 1000000000ull : (uint64_t)len * 8000000ull;
    m->packets++;
    m->bytes += len;
    if (m->tokens >= cost) { m->tokens -= cost; return 1; }
    m->drop_packets++;
    m->drop_bytes += len;
    return 0;
}

/* run a modifying program on one packet held in `buf` (capacity cap), in order; each
 * output copies the packet as it is at that point into the port's ring */
static void run_ops(struct vp_dp *dp, const struct vp_actions *a, uint8_t *buf, uint32_t len, uint32_t cap,
                    struct vp_offload *ol, uint32_t in_port) {
    for (uint32_t i = 0; i < a->nops; i++) {
        const struct vp_op *op = &a->ops[i];
        if (op->kind == VP_OP_OUTPUT) {
            vp_emit(dp, op->port, buf, len, ol, in_port);
            continue;
        }
        if (op->kind == VP_OP_METER) {
            if (!meter_pass(dp, op->port, len)) { VP_DROP(dp, VP_DROP_METER, in_port, 1); return; }
            continue;
        }
        uint32_t n = op_apply(op, buf, len, cap, ol);
        if (n == 0) { VP_DROP(dp, VP_DROP_NO_ROOM, in_port, 1); return; }
        len = n;
    }
}

/* a packet the slow path returned, with the offload metadata it went up with (or NULL),
 * for the port it came in on */
uint32_t vp_execute_packet(struct vp_dp *dp, uint32_t id, const uint8_t *data, uint32_t len,
                           const struct vp_offload *ol_in, uint32_t in_port) {
    uint8_t buf[65536];
    struct vp_offload ol = {0};
    const struct vp_actions *a;
    if (id >= dp->nactions || len > sizeof(buf) - 8) { VP_DROP(dp, VP_DROP_BAD_REPLY, in_port, 1); return 0; }
    if (ol_in) {
        ol = *ol_in;
        if (vp_vnet_check(&ol, len)) { VP_DROP(dp, VP_DROP_BAD_OFFLOAD, in_port, 1); return 0; }
    }
    a = &dp->actions[id];
    if (a->nout == 0) { VP_DROP(dp, VP_DROP_ACTION, in_port, 1); return 0; }
    memcpy(buf, data, len);
    if (!a->nops) {
        const uint16_t *out = outputs(a);
        for (uint32_t o = 0; o < a->nout; o++) vp_emit(dp, out[o], buf, len, &ol, in_port);
        return a->nout;
    }
    run_ops(dp, a, buf, len, sizeof(buf), &ol, in_port);
    return a->nout;
}

void vp_execute(struct vp_dp *dp, struct vp_batch *b) {
    VP_TIME_BEGIN(dp);
    for (uint32_t i = 0; i < b->n; i++) {
        struct vp_pkt *pk = &b->pkt[i];
        const struct vp_actions *a;
        pk->nout = 0;
        if (pk->action < 0) continue;              /* miss: the upcall owns it */
        if ((uint32_t)pk->action >= dp->nactions) { VP_DROP(dp, VP_DROP_ACTION, pk->port, 1); continue; }
        a = &dp->actions[pk->action];
        if (a->nops) {
            /* on a copy: the frame in the ring stays as it came until the batch commits, so
             * a batch cut short by a crash replays on the same bytes */
            uint8_t buf[65536];
            struct vp_offload ol = pk->ol;
            memcpy(buf, pk->data, pk->len);
            run_ops(dp, a, buf, pk->len, sizeof(buf), &ol, pk->port);
            if (a->nout == 0) VP_DROP(dp, VP_DROP_ACTION, pk->port, 1);
            continue;
        }
        if (a->nout == 0) { VP_DROP(dp, VP_DROP_ACTION, pk->port, 1); continue; }
        const uint16_t *out = outputs(a);
        for (uint32_t o = 0; o < a->nout; o++) {
            uint16_t port = out[o];
            if (port >= dp->nports) { VP_DROP(dp, VP_DROP_NO_PORT, pk->port, 1); continue; }
            struct vp_outq *q = &dp->outq[port];
            /* one batch fits a queue; repeated outputs to one port could overrun it */
            if (q->n == VP_BATCH_MAX) { VP_DROP(dp, VP_DROP_TX_FULL, pk->port, 1); continue; }
            q->pkt[q->n++] = i;
            pk->nout++;
        }
    }
    VP_TIME_END(dp, VP_ST_EXECUTE, b->n);
}
