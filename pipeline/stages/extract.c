/* extract.c — Ethernet, one 802.1Q/802.1ad tag (Open vSwitch's default vlan-limit=1), ARP,
 * IPv4, IPv6 (extension headers), TCP/UDP/SCTP, ICMP/ICMPv6 (ND) into struct vp_flow_key,
 * following Open vSwitch's miniflow_extract() field for field, so that the slow path
 * classifies a frame exactly as OVS would. Never reads past len; a truncated or malformed
 * header ends parsing where OVS's parser ends it. */
#include <string.h>
#include <arpa/inet.h>
#include "extract.h"

#define ETH_IPV4 0x0800
#define ETH_ARP 0x0806
#define ETH_RARP 0x8035
#define ETH_IPV6 0x86dd
#define ETH_VLAN 0x8100
#define ETH_QINQ 0x88a8
#define DL_TYPE_NONE 0x05ff   /* OVS's dl_type for 802.2 frames without SNAP */
#define VLAN_LIMIT 1          /* tags parsed; OVS's other_config:vlan-limit default */

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline int is_zero6(const uint8_t *m) { return !(m[0] | m[1] | m[2] | m[3] | m[4] | m[5]); }

/* ICMPv6 neighbour discovery: target and link-layer address options, as OVS's
 * parse_icmpv6(): a missing target or a bad option length ends the walk keeping what was
 * found; a second source or target address option voids all three fields */
static void parse_nd(const uint8_t *p, uint32_t n, struct vp_flow_key *k, uint64_t *perr) {
    uint32_t off = 8 + 16;
    if (n < off) return;
    memcpy(k->nd_target, p + 8, 16);
    while (n - off >= 8) {
        uint32_t olen = (uint32_t)p[off + 1] * 8;
        if (olen == 0 || olen > n - off) return;
        if (olen == 8 && (p[off] == 1 || p[off] == 2)) {
            uint8_t *lla = p[off] == 1 ? k->arp_sha : k->arp_tha;
            if (!is_zero6(lla)) {
                memset(k->nd_target, 0, 16);
                memset(k->arp_sha, 0, 6);
                memset(k->arp_tha, 0, 6);
                perr[VP_PERR_ND_BAD]++;
                return;
            }
            memcpy(lla, p + off + 2, 6);
        }
        off += olen;
    }
}

/* the transport header by protocol number alone (OVS does not check it against the IP
 * version: ICMP inside IPv6 and ICMPv6 inside IPv4 are parsed too) */
static void parse_l4(const uint8_t *p, uint32_t n, struct vp_flow_key *k, uint64_t *perr) {
    switch (k->nw_proto) {
    case 6: {
        uint32_t doff;
        if (n < 20) goto trunc;
        doff = (uint32_t)(p[12] >> 4) * 4;
        if (doff < 20 || doff > n) goto trunc;
        k->tcp_flags = htons(ntohs(rd16(p + 12)) & 0x0fff);
        break;
    }
    case 17:
        if (n < 8) goto trunc;
        break;
    case 132:
        if (n < 12) goto trunc;
        break;
    case 1:
        if (n < 8) goto trunc;
        k->tp_src = htons(p[0]);
        k->tp_dst = htons(p[1]);
        k->layers |= VP_L4;
        return;
    case 58:
        if (n < 8) goto trunc;
        k->tp_src = htons(p[0]);
        k->tp_dst = htons(p[1]);
        k->layers |= VP_L4;
        if ((p[0] == 135 || p[0] == 136) && p[1] == 0) parse_nd(p, n, k, perr);
        return;
    default:
        return;
    }
    k->tp_src = rd16(p);
    k->tp_dst = rd16(p + 2);
    k->layers |= VP_L4;
    return;
trunc:
    perr[VP_PERR_L4_TRUNC]++;
}

/* OVS's ipv4_sanity_check(): header length and total length, not the version */
static void parse_ipv4(const uint8_t *p, uint32_t n, struct vp_flow_key *k, uint64_t *perr, struct vp_layout *L) {
    uint32_t ihl, tot;
    uint16_t frag;
    if (n < 20) { perr[VP_PERR_IPV4_TRUNC]++; return; }
    ihl = (uint32_t)(p[0] & 15) * 4;
    if (ihl < 20) { perr[VP_PERR_IPV4_BAD]++; return; }
    if (ihl > n) { perr[VP_PERR_IPV4_TRUNC]++; return; }
    tot = ntohs(rd16(p + 2));
    if (tot < ihl) { perr[VP_PERR_IPV4_BAD]++; return; }
    if (tot > n) { perr[VP_PERR_IPV4_TRUNC]++; return; }
    k->nw_tos = p[1];
    k->nw_ttl = p[8];
    k->nw_proto = p[9];
    k->nw_src = rd32(p + 12);
    k->nw_dst = rd32(p + 16);
    frag = ntohs(rd16(p + 6));
    if (frag & 0x3fff) {                    /* MF or a fragment offset */
        k->nw_frag = VP_FRAG_ANY;
        if (frag & 0x1fff) k->nw_frag |= VP_FRAG_LATER;
    }
    k->layers |= VP_L3;
    L->l4 = L->l3 + ihl;
    L->end = L->l3 + tot;                   /* what follows is link-layer padding */
    if (!(k->nw_frag & VP_FRAG_LATER)) parse_l4(p + ihl, tot - ihl, k, perr);
}

/* OVS's ipv6_sanity_check() and parse_ipv6_ext_hdrs(): the addresses stand even when an
 * extension header is cut short; everything after them then reads as 0 */
static void parse_ipv6(const uint8_t *p, uint32_t n, struct vp_flow_key *k, uint64_t *perr, struct vp_layout *L) {
    uint32_t w0, plen, off = 40;
    uint8_t nh, frag = 0;
    if (n < 40) { perr[VP_PERR_IPV6_TRUNC]++; return; }
    plen = ntohs(rd16(p + 4));
    if (plen > n - 40) { perr[VP_PERR_IPV6_TRUNC]++; return; }
    n = 40 + plen;                         /* ignore link-layer padding */
    L->end = L->l3 + n;
    memcpy(k->ipv6_src, p + 8, 16);
    memcpy(k->ipv6_dst, p + 24, 16);
    k->layers |= VP_L3;
    nh = p[6];
    for (;;) {
        uint32_t hlen;
        if (nh != 0 && nh != 43 && nh != 60 && nh != 51 && nh != 44) break;
        if (n - off < 8) goto bad;
        if (nh == 44) {
            /* a non-zero offset/flags word marks a fragment; a later one keeps
             * nw_proto = 44 and ends the walk just after the fragment header */
            uint16_t fo = ntohs(rd16(p + off + 2));
            nh = p[off];
            off += 8;
            if (fo) {
                frag = VP_FRAG_ANY;
                if (fo & 0xfff8) { frag |= VP_FRAG_LATER; nh = 44; break; }
            }
            continue;
        }
        hlen = nh == 51 ? ((uint32_t)p[off + 1] + 2) * 4 : ((uint32_t)p[off + 1] + 1) * 8;
        if (hlen > n - off) goto bad;
        nh = p[off];
        off += hlen;
    }
    w0 = ntohl(rd32(p));
    k->nw_tos = (uint8_t)(w0 >> 20);
    k->ipv6_label = htonl(w0 & 0xfffff);
    k->nw_ttl = p[7];
    k->nw_proto = nh;
    k->nw_frag = frag;
    L->l4 = L->l3 + off;
    if (!(frag & VP_FRAG_LATER)) parse_l4(p + off, n - off, k, perr);
    return;
bad:
    perr[VP_PERR_IPV6_EXT]++;
}

static void parse_arp(const uint8_t *p, uint32_t n, struct vp_flow_key *k, uint64_t *perr) {
    uint16_t op;
    if (n < 28) { perr[VP_PERR_ARP_TRUNC]++; return; }
    if (ntohs(rd16(p)) != 1 || ntohs(rd16(p + 2)) != ETH_IPV4 || p[4] != 6 || p[5] != 4) return;
    op = ntohs(rd16(p + 6));
    if (op <= 0xff) k->nw_proto = (uint8_t)op;
    memcpy(k->arp_sha, p + 8, 6);
    k->nw_src = rd32(p + 14);
    memcpy(k->arp_tha, p + 18, 6);
    k->nw_dst = rd32(p + 24);
    k->layers |= VP_L3;
}

void vp_parse(const uint8_t *p, uint32_t len, uint32_t in_port, struct vp_flow_key *k, uint64_t *perr,
              struct vp_layout *L) {
    uint32_t off = 12;
    uint16_t et;
    int nv = 0;
    memset(k, 0, sizeof(*k));
    L->l3 = L->l4 = L->end = 0;
    k->in_port = in_port;
    if (len < 14) { perr[VP_PERR_ETH_SHORT]++; return; }
    memcpy(k->dl_dst, p, 6);
    memcpy(k->dl_src, p + 6, 6);
    et = ntohs(rd16(p + 12));
    if ((et == ETH_VLAN || et == ETH_QINQ) && nv < VLAN_LIMIT) {
        if (len - off < 6) {
            perr[VP_PERR_VLAN_TRUNC]++;
        } else {
            k->vlans[nv].tpid = htons(et);
            k->vlans[nv].tci = rd16(p + off + 2) | htons(0x1000);
            off += 4;
            et = ntohs(rd16(p + off));
            nv++;
        }
    }
    k->dl_type = htons(et);
    k->layers = VP_L2 | (nv ? VP_VLAN : 0);
    L->l3 = off + 2;
    if (et == ETH_VLAN || et == ETH_QINQ) {
        /* a tag past the limit (or cut short): its TPID is the frame's type */
        if (nv) perr[VP_PERR_VLAN_DEPTH]++;
        return;
    }
    off += 2;
    if (et < 0x600) {
        /* 802.3 length field: SNAP carries an ethertype, plain LLC does not */
        const uint8_t *l = p + off;
        if (len - off >= 8 && l[0] == 0xaa && l[1] == 0xaa && l[2] == 0x03 && !l[3] && !l[4] && !l[5]) {
            et = ntohs(rd16(l + 6));
            off += 8;
            if (et < 0x600) et = DL_TYPE_NONE;
        } else {
            et = DL_TYPE_NONE;
        }
        k->dl_type = htons(et);
        L->l3 = off;
    }
    switch (et) {
    case ETH_IPV4: parse_ipv4(p + off, len - off, k, perr, L); break;
    case ETH_IPV6: parse_ipv6(p + off, len - off, k, perr, L); break;
    case ETH_ARP: case ETH_RARP: parse_arp(p + off, len - off, k, perr); break;
    default: break;
    }
}

void vp_extract_one(const uint8_t *p, uint32_t len, uint32_t in_port, struct vp_flow_key *k, uint64_t *perr) {
    struct vp_layout L;
    vp_parse(p, len, in_port, k, perr, &L);
}

#if defined(__SSE4_2__)
#include <nmmintrin.h>
/* CRC32C over the key's words, one instruction per word (as Open vSwitch does on x86) */
uint32_t vp_key_hash(const struct vp_flow_key *k) {
    const uint64_t *w = (const uint64_t *)k;
    uint64_t a = 0x243f6a88, b = 0x85a308d3;
    size_t i;
    for (i = 0; i + 1 < sizeof(*k) / 8; i += 2) {   /* two chains overlap their latency */
        a = _mm_crc32_u64(a, w[i]);
        b = _mm_crc32_u64(b, w[i + 1]);
    }
    if (i < sizeof(*k) / 8) a = _mm_crc32_u64(a, w[i]);
    return (uint32_t)(a ^ (b << 15 | b >> 17)) * 0x9e3779b1u;
}
#else
/* Pairs of key words are multiplied independently and summed, so the CPU overlaps
 * them; a serial multiply chain over 15 words cost ~30 ns per packet. */
static inline uint64_t mum(uint64_t a, uint64_t b) {
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

uint32_t vp_key_hash(const struct vp_flow_key *k) {
    const uint64_t *w = (const uint64_t *)k;
    const size_t n = sizeof(*k) / 8;
    uint64_t acc = 0x243f6a8885a308d3ull;
    size_t i;
    for (i = 0; i + 1 < n; i += 2)
        acc += mum(w[i] ^ 0xa0761d6478bd642full, w[i + 1] ^ (0xe7037ed1a0b428dbull + i));
    if (i < n) acc += mum(w[i] ^ 0x8ebc6af09c88c6e3ull, 0x589965cc75374cc3ull);
    acc = mum(acc, 0x1d8e4e27c47d124full);
    return (uint32_t)(acc ^ (acc >> 32));
}
#endif

void vp_extract(struct vp_dp *dp, struct vp_batch *b) {
    VP_TIME_BEGIN(dp);
    for (uint32_t i = 0; i < b->n && i < 16; i++) __builtin_prefetch(b->pkt[i].data);
    for (uint32_t i = 0; i < b->n; i++) {
        struct vp_pkt *pk = &b->pkt[i];
        if (i + 16 < b->n) __builtin_prefetch(b->pkt[i + 16].data);
        vp_extract_one((const uint8_t *)pk->data, pk->len, pk->port, &b->key[i], dp->st.parse_err);
        pk->hash = vp_key_hash(&b->key[i]);
    }
    VP_TIME_END(dp, VP_ST_EXTRACT, b->n);
}
