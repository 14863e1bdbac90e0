/* execute.c — datapath actions: outputs are grouped per port for transmit; a flow whose
 * actions modify packets (masked set with checksum updates, push/pop VLAN) runs its
 * action program in order on a copy of the packet, copying it into each output's ring.
 * Packets are edited as Open vSwitch's datapath edits them (lib/packets.c). */
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include "execute.h"
#include "transmit.h"
#include "extract.h"

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
        /* 0 is VP_OP_NONE / VP_F_NONE: an op or field left unset */
        if (ops[i].kind == VP_OP_NONE || ops[i].kind >= VP_OP_N) return -1;
        if (ops[i].kind == VP_OP_SET && (ops[i].field == VP_F_NONE || ops[i].field >= VP_F_N)) return -1;
        if (ops[i].kind == VP_OP_METER && ops[i].port >= VP_MAX_METERS) return -1;
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

/* --- header editing, as Open vSwitch's datapath does it (lib/packets.c) ------------------
 * Offsets come from one parse of the frame as received (vp_parse, the same rules as
 * OVS's miniflow_extract) and move with VLAN pushes and pops, as OVS's packet offsets do.
 * Checksums are updated with OVS's RFC 1624 step per 16-bit word, in OVS's order, so even
 * the choice between 0x0000 and 0xffff comes out the same. */

/* The packet may sit in a buffer its sender can still write (ring/shared.h): each byte that
 * decides an offset is loaded once, and an edit is computed from a private copy of what it
 * replaces (which is also what the checksum update takes out). */
static inline uint16_t rd16(const uint8_t *p) { return ntohs(vp_pkt_u16(p)); }
static inline uint8_t rd8(const uint8_t *p) { return vp_pkt_u8(p); }
static inline void wr16(uint8_t *p, uint16_t v) { v = htons(v); memcpy(p, &v, 2); }

/* OVS's recalc_csum16(): ~fold(~HC + ~m + m'), values as network-order integers */
static uint16_t recalc16(uint16_t csum, uint16_t old, uint16_t new) {
    uint32_t s = (uint32_t)(uint16_t)~csum + (uint16_t)~old + new;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

/* recalc_csum32/128: word by word, in memory order */
static uint16_t recalc_words(uint16_t csum, const uint8_t *old, const uint8_t *new, uint32_t n) {
    for (uint32_t i = 0; i < n; i += 2) csum = recalc16(csum, rd16(old + i), rd16(new + i));
    return csum;
}

static void csum_words(uint8_t *csum, const uint8_t *old, const uint8_t *new, uint32_t n) {
    wr16(csum, recalc_words(rd16(csum), old, new, n));
}

/* a UDP checksum of 0 means "none" (RFC 768): a computed 0 is sent as 0xffff */
static void udp_csum_words(uint8_t *csum, const uint8_t *old, const uint8_t *new, uint32_t n) {
    uint16_t c = recalc_words(rd16(csum), old, new, n);
    wr16(csum, c ? c : 0xffff);
}

/* a partial checksum (offload: the pseudo-header sum, not complemented, left for the
 * receiver or a port to complete) follows a pseudo-header field: P' = P + ~m + m' */
static void partial_words(uint8_t *csum, const uint8_t *old, const uint8_t *new, uint32_t n) {
    uint32_t s = rd16(csum);
    for (uint32_t i = 0; i < n; i += 2) s += (uint16_t)~rd16(old + i) + (uint32_t)rd16(new + i);
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    wr16(csum, (uint16_t)s);
}

static uint32_t crc32c(const uint8_t *p, uint32_t n) {
    uint32_t crc = 0xffffffffu;
    while (n--) {
        crc ^= *p++;
        for (int b = 0; b < 8; b++) crc = (crc >> 1) ^ (0x82f63b78u & (0u - (crc & 1)));
    }
    return ~crc;
}

struct pkt {
    uint8_t *p;
    uint32_t len;
    struct vp_layout L;       /* l3/l4/end offsets (0: none) */
    uint16_t dl_type;
    uint8_t proto;            /* the flow's nw_proto: which transport header set_l4 edits */
    uint8_t l3ok;             /* the network header parsed (IPv4/IPv6 addresses present) */
    struct vp_offload *ol;    /* offload metadata it came with, or NULL */
    uint8_t reparsed;         /* parsed anew mid-program: rewrites go where the parse says */
    uint16_t flow_dl_type;    /* the type the first parse found: what translation saw */
};

/* whether the checksum field at c holds a partial checksum: it covers only the
 * pseudo-header, so it follows address changes only; the rest is summed when it is completed */
static int partial(const struct pkt *k, const uint8_t *c) {
    return k->ol && k->ol->flags & VP_OL_CSUM && c == k->p + k->ol->csum_start + k->ol->csum_off;
}

/* a frame's headers as a parse of it found them (its key and layout) */
static void pkt_init(struct pkt *k, uint8_t *p, uint32_t len, struct vp_offload *ol, const struct vp_flow_key *key,
                     const struct vp_layout *L) {
    k->p = p;
    k->len = len;
    k->ol = ol;
    k->reparsed = 0;
    k->L = *L;
    k->dl_type = k->flow_dl_type = ntohs(key->dl_type);
    k->proto = key->nw_proto;
    k->l3ok = (key->layers & VP_L3) && (k->dl_type == 0x0800 || k->dl_type == 0x86dd);
}

static void pkt_parse(struct pkt *k, uint8_t *p, uint32_t len, struct vp_offload *ol) {
    struct vp_flow_key key;
    struct vp_layout L;
    uint64_t perr[VP_PERR_N];                /* counted once, by extract */
    vp_parse(p, len, 0, &key, perr, &L);
    pkt_init(k, p, len, ol, &key, &L);
}

static uint32_t l4_size(const struct pkt *k) {
    return k->L.l4 && k->L.end > k->L.l4 ? k->L.end - k->L.l4 : 0;
}

/* OVS's packet_set_ipv4_addr(): the transport checksum first (by the header's protocol
 * and the bytes there are, fragment or not), then the header checksum */
static void set_ipv4_addr(struct pkt *k, uint32_t at, const uint8_t *old, const uint8_t *new) {
    uint8_t *ip = k->p + k->L.l3, *l4 = k->p + k->L.l4, proto = rd8(ip + 9);
    uint32_t n4 = l4_size(k);
    if (proto == 6 && n4 >= 20)
        (partial(k, l4 + 16) ? partial_words : csum_words)(l4 + 16, old, new, 4);
    else if (proto == 17 && n4 >= 8 && partial(k, l4 + 6))
        partial_words(l4 + 6, old, new, 4);
    else if (proto == 17 && n4 >= 8 && rd16(l4 + 6))
        udp_csum_words(l4 + 6, old, new, 4);
    csum_words(ip + 10, old, new, 4);
    memcpy(k->p + at, new, 4);
}

/* OVS's packet_rh_present(): the transport protocol behind the extension headers, whether
 * its checksum covers this fragment, and whether a routing header with segments left is
 * there (the destination in the header is then not the one the checksum covers) */
static int ipv6_rh_present(const struct pkt *k, uint8_t *proto, int *recalc) {
    const uint8_t *d = k->p + k->L.l3;
    uint32_t rem = (k->L.l4 ? k->L.l4 : k->len) - k->L.l3, len;
    if (rem < 40) return 0;
    *proto = rd8(d + 6);
    d += 40;
    rem -= 40;
    for (;;) {
        uint8_t nh = *proto;
        if (nh != 0 && nh != 43 && nh != 60 && nh != 51 && nh != 44) break;
        if (rem < 8) return 0;
        if (nh == 51) {
            *proto = rd8(d);
            len = ((uint32_t)rd8(d + 1) + 2) * 4;
        } else if (nh == 44) {
            uint16_t offlg = rd16(d + 2);
            *recalc = !(offlg & 0xfff8) && (offlg & 1);
            *proto = rd8(d);
            len = 8;
        } else if (nh == 43) {
            if (rd8(d + 3) > 0) return 1;
            *proto = rd8(d);
            len = ((uint32_t)rd8(d + 1) + 1) * 8;
        } else {
            *proto = rd8(d);
            len = ((uint32_t)rd8(d + 1) + 1) * 8;
        }
        if (rem < len) return 0;
        rem -= len;
        d += len;
    }
    return 0;
}

static void set_ipv6_addr(struct pkt *k, uint32_t at, const uint8_t *old, const uint8_t *new, int is_dst) {
    uint8_t proto = 0, *l4 = k->p + k->L.l4;
    int recalc = 1, rh = ipv6_rh_present(k, &proto, &recalc);
    uint32_t n4 = l4_size(k);
    if (recalc && !(is_dst && rh) && k->L.l4) {
        if (proto == 6 && n4 >= 20)
            (partial(k, l4 + 16) ? partial_words : csum_words)(l4 + 16, old, new, 16);
        else if (proto == 17 && n4 >= 8 && partial(k, l4 + 6))
            partial_words(l4 + 6, old, new, 16);
        else if (proto == 17 && n4 >= 8 && rd16(l4 + 6))
            udp_csum_words(l4 + 6, old, new, 16);
        else if (proto == 58 && n4 >= 4)
            (partial(k, l4 + 2) ? partial_words : csum_words)(l4 + 2, old, new, 16);
    }
    memcpy(k->p + at, new, 16);
}

/* a w-byte field at p: its bytes now (old, a private copy) and with the op's masked value
 * written (out); returns whether they differ */
static int masked(uint8_t *out, uint8_t *old, const uint8_t *p, uint32_t w, const struct vp_op *op) {
    memcpy(old, p, w);
    for (uint32_t i = 0; i < w; i++) {
        uint8_t m = op->mask[16 - w + i];
        out[i] = (uint8_t)((old[i] & ~m) | (op->value[16 - w + i] & m));
    }
    return memcmp(out, old, w) != 0;
}

/* OVS's packet_set_tcp_port/udp_port/sctp_port/icmp(): one port (or ICMP type and code
 * together) at offset `off` of the transport header, if that header is whole */
static void set_l4(struct pkt *k, uint32_t off, const struct vp_op *op) {
    uint8_t *l4 = k->p + k->L.l4, nw[2], old[2], proto = k->proto;
    uint32_t n4 = l4_size(k);
    if (!k->L.l4) return;
    if (op->field == VP_F_ICMP) {
        /* type and code in one step, whatever the IP version says the protocol is */
        if (n4 < 8 || !masked(nw, old, l4, 2, op)) return;
        if (!partial(k, l4 + 2)) wr16(l4 + 2, recalc16(rd16(l4 + 2), rd16(old), rd16(nw)));
        memcpy(l4, nw, 2);
        return;
    }
    if (!masked(nw, old, l4 + off, 2, op)) return;
    if (proto == 6) {
        uint32_t doff = n4 >= 20 ? (uint32_t)(rd8(l4 + 12) >> 4) * 4 : 0;
        if (doff < 20 || doff > n4) return;
        if (!partial(k, l4 + 16)) wr16(l4 + 16, recalc16(rd16(l4 + 16), rd16(old), rd16(nw)));
        memcpy(l4 + off, nw, 2);
    } else if (proto == 17) {
        if (n4 < 8) return;
        if (rd16(l4 + 6) && !partial(k, l4 + 6)) {
            uint16_t c = recalc16(rd16(l4 + 6), rd16(old), rd16(nw));
            wr16(l4 + 6, c ? c : 0xffff);
        }
        memcpy(l4 + off, nw, 2);
    } else if (proto == 132) {
        uint32_t old, good, fresh;
        if (n4 < 12) return;
        memcpy(&old, l4 + 8, 4);
        memset(l4 + 8, 0, 4);
        good = crc32c(l4, n4);
        memcpy(l4 + off, nw, 2);
        fresh = crc32c(l4, n4);
        old ^= good ^ fresh;
        memcpy(l4 + 8, &old, 4);
    }
}

/* OVS's odp_set_nd()/packet_set_nd(): the target address (ICMPv6 checksum updated as for an
 * IPv6 address), or the MAC of the first link-layer address option, if that option is of
 * the kind being set. The walk keeps OVS's arithmetic (it subtracts the next option's
 * length), so the option it finds is the one OVS finds. */
static void set_nd(struct pkt *k, const struct vp_op *op) {
    uint8_t *l4 = k->p + k->L.l4, nw[16], old[16], *opt = l4 + 24;
    const uint8_t *end = k->p + k->len;
    int32_t rem = (int32_t)l4_size(k) - 24;
    if (!k->L.l4 || rem < 0) return;
    if (op->field == VP_F_ND_TARGET) {
        if (masked(nw, old, l4 + 8, 16, op)) {
            if (!partial(k, l4 + 2)) csum_words(l4 + 2, old, nw, 16);
            memcpy(l4 + 8, nw, 16);
        }
        return;
    }
    while (rem >= 8) {
        uint8_t type = rd8(opt), olen = rd8(opt + 1);
        if (!olen) return;
        if ((type == 1 || type == 2) && olen == 1) {
            if (type == (op->field == VP_F_ND_SLL ? 1 : 2) && opt + 8 <= end && masked(nw, old, opt + 2, 6, op)) {
                if (!partial(k, l4 + 2)) csum_words(l4 + 2, old, nw, 6);
                memcpy(opt + 2, nw, 6);
            }
            return;
        }
        opt += olen * 8;
        if (opt + 2 > end) return;               /* OVS would read on; the frame ends here */
        rem -= rd8(opt + 1) * 8;
    }
}

/* apply one modifying op to a packet whose buffer holds `cap` bytes; returns the new
 * length (unchanged when the packet has no such header), 0 when it does not fit */
static uint32_t apply_op(const struct vp_op *op, struct pkt *k, uint32_t cap) {
    uint8_t *p = k->p, nw[16], old[16];
    uint32_t len = k->len;
    if (op->kind == VP_OP_PUSH_VLAN) {
        if (len < 14) return len;
        if (len + 4 > cap) return 0;
        memmove(p + 16, p + 12, len - 12);
        wr16(p + 12, op->tpid);
        wr16(p + 14, op->tci & ~0x1000);
        k->len = len + 4;
        if (k->L.l3) k->L.l3 += 4;
        if (k->L.l4) k->L.l4 += 4;
        if (k->L.end) k->L.end += 4;
        if (k->ol && k->ol->flags & VP_OL_CSUM) k->ol->csum_start += 4;
        return k->len;
    }
    if (op->kind == VP_OP_POP_VLAN) {
        uint16_t et = len >= 18 ? rd16(p + 12) : 0;
        if (et != 0x8100 && et != 0x88a8) return len;
        memmove(p + 12, p + 16, len - 16);
        k->len = len - 4;
        if (k->L.l3) k->L.l3 -= 4;
        if (k->L.l4) k->L.l4 -= 4;
        if (k->L.end) k->L.end -= 4;
        if (k->ol && k->ol->flags & VP_OL_CSUM) k->ol->csum_start -= 4;
        return k->len;
    }
    if (op->kind == VP_OP_REPARSE) {
        /* OVS's userspace datapath parses the packet again after a userspace() action (a
         * CONTROLLER), one VLAN tag deep; the rewrites after it take their offsets from that
         * parse and check nothing else: an IP rewrite lands where the parse put the network
         * header, whatever the frame's type now says (but here never past its end) */
        struct vp_offload *ol = k->ol;
        uint16_t flow_dl_type = k->flow_dl_type;
        pkt_parse(k, p, len, ol);
        k->reparsed = 1;
        k->flow_dl_type = flow_dl_type;
        return len;
    }
    if (op->kind != VP_OP_SET) return len;
    uint8_t *ip = p + k->L.l3;
    int v4 = k->l3ok && k->dl_type == 0x0800, v6 = k->l3ok && k->dl_type == 0x86dd;
    if (k->reparsed) {
        /* which IP header a TTL or TOS rewrite is for: the datapath action says (set(ipv4)
         * or set(ipv6)), as the flow translated had it */
        v4 = k->L.l3 && k->flow_dl_type == 0x0800 && k->L.l3 + 20 <= len;
        v6 = k->L.l3 && k->flow_dl_type == 0x86dd && k->L.l3 + 40 <= len;
    }
    switch (op->field) {
    case VP_F_DL_DST: case VP_F_DL_SRC:
        if (len >= 14) {
            uint32_t at = op->field == VP_F_DL_DST ? 0 : 6;
            masked(nw, old, p + at, 6, op);
            memcpy(p + at, nw, 6);
        }
        break;
    case VP_F_NW_SRC: case VP_F_NW_DST:
        if (v4) {
            uint32_t at = k->L.l3 + (op->field == VP_F_NW_SRC ? 12 : 16);
            if (masked(nw, old, p + at, 4, op)) set_ipv4_addr(k, at, old, nw);
        }
        break;
    case VP_F_IPV6_SRC: case VP_F_IPV6_DST:
        if (v6) {
            uint32_t at = k->L.l3 + (op->field == VP_F_IPV6_SRC ? 8 : 24);
            if (masked(nw, old, p + at, 16, op)) set_ipv6_addr(k, at, old, nw, op->field == VP_F_IPV6_DST);
        }
        break;
    case VP_F_NW_TOS:
        if (v4) {
            if (masked(nw, old, ip + 1, 1, op)) {
                wr16(ip + 10, recalc16(rd16(ip + 10), old[0], nw[0]));
                ip[1] = nw[0];
            }
        } else if (v6) {                      /* traffic class straddles the first two bytes */
            uint8_t b0 = rd8(ip), b1 = rd8(ip + 1);
            uint8_t tc = (uint8_t)(((b0 & 0x0f) << 4) | (b1 >> 4));
            tc = (uint8_t)((tc & ~op->mask[15]) | (op->value[15] & op->mask[15]));
            ip[0] = (uint8_t)((b0 & 0xf0) | (tc >> 4));
            ip[1] = (uint8_t)((b1 & 0x0f) | (tc << 4));
        }
        break;
    case VP_F_NW_TTL:
        if (v4) {
            if (masked(nw, old, ip + 8, 1, op)) {
                wr16(ip + 10, recalc16(rd16(ip + 10), (uint16_t)(old[0] << 8), (uint16_t)(nw[0] << 8)));
                ip[8] = nw[0];
            }
        } else if (v6) {
            masked(nw, old, ip + 7, 1, op);
            ip[7] = nw[0];
        }
        break;
    case VP_F_TP_SRC: case VP_F_TP_DST: case VP_F_ICMP:
        if (v4 || v6) set_l4(k, op->field == VP_F_TP_DST ? 2 : 0, op);
        break;
    case VP_F_IPV6_LABEL:                     /* the low 20 bits of the first word */
        if (v6) {
            uint32_t m = ((uint32_t)op->mask[13] << 16 | op->mask[14] << 8 | op->mask[15]) & 0xfffff;
            uint32_t v = ((uint32_t)op->value[13] << 16 | op->value[14] << 8 | op->value[15]) & m;
            uint32_t w = htonl((ntohl(vp_pkt_u32(ip)) & ~m) | v);
            memcpy(ip, &w, 4);
        }
        break;
    case VP_F_ND_TARGET: case VP_F_ND_SLL: case VP_F_ND_TLL:
        if (v6) set_nd(k, op);
        break;
    case VP_F_ARP_OP: case VP_F_ARP_SHA: case VP_F_ARP_SPA: case VP_F_ARP_THA: case VP_F_ARP_TPA:
        /* OVS's set_arp(): fields of the ARP header, no checksum, no length check: of a frame
         * that ends inside the header, the bytes it has are written (OVS writes the rest past
         * its end) */
        if ((k->reparsed ? k->flow_dl_type : k->dl_type) == 0x0806 && k->L.l3) {
            static const uint8_t at[] = {6, 14, 24, 8, 18}, width[] = {2, 4, 4, 6, 6};
            uint32_t f = op->field - VP_F_ARP_OP, w = width[f], from = k->L.l3 + at[f];
            for (uint32_t i = 0; i < w && from + i < len; i++) {
                uint8_t m = op->mask[16 - w + i], b = rd8(p + from + i);
                p[from + i] = (uint8_t)((b & ~m) | (op->value[16 - w + i] & m));
            }
        }
        break;
    }
    return len;
}

/* the modifying ops of a program applied to one frame, outputs skipped (tests compare
 * this with a reference model); returns the final length, 0 when a push did not fit */
uint32_t vp_ops_apply(const struct vp_op *ops, uint32_t nops, uint8_t *p, uint32_t len, uint32_t cap) {
    struct pkt k;
    pkt_parse(&k, p, len, NULL);
    for (uint32_t i = 0; i < nops; i++)
        if (ops[i].kind != VP_OP_OUTPUT && ops[i].kind != VP_OP_METER && apply_op(&ops[i], &k, cap) == 0) return 0;
    return k.len;
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

/* run a modifying program on one packet k (its buffer holds cap bytes), with its offload
 * metadata (moved with the headers), in order; each output copies the packet as it is at
 * that point into the port's ring */
static void run_ops(struct vp_dp *dp, const struct vp_actions *a, struct pkt *k, uint32_t cap, uint32_t in_port) {
    uint32_t len = k->len;
    for (uint32_t i = 0; i < a->nops; i++) {
        const struct vp_op *op = &a->ops[i];
        if (op->kind == VP_OP_OUTPUT) {
            vp_emit(dp, op->port, k->p, len, k->ol, in_port);
            continue;
        }
        if (op->kind == VP_OP_METER) {
            if (!meter_pass(dp, op->port, len)) { VP_DROP(dp, VP_DROP_METER, in_port, 1); return; }
            continue;
        }
        uint32_t n = apply_op(op, k, cap);
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
    struct pkt k;
    pkt_parse(&k, buf, len, &ol);
    run_ops(dp, a, &k, sizeof(buf), in_port);
    return a->nout;
}

uint32_t vp_execute(struct vp_dp *dp, struct vp_batch *b) {
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
            struct pkt k;
            memcpy(buf, pk->data, pk->len);
            if (pk->parsed) {
                /* the headers where extract found them: no second parse */
                struct vp_layout L = {pk->l3, pk->l4, pk->l_end};
                pkt_init(&k, buf, pk->len, &ol, &b->key[i], &L);
            } else {
                pkt_parse(&k, buf, pk->len, &ol);     /* a stage of one's own did the extracting */
            }
            run_ops(dp, a, &k, sizeof(buf), pk->port);
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
    return b->n;
}
