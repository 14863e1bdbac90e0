/* vnet.c — offload metadata of frames (virtio_net_hdr): checked before use, partial
 * checksums completed, and GSO super-frames cut into segments as Linux's own software
 * GSO cuts them (tcp_gso_segment / inet_gso_segment / __udp_gso_segment): the same bytes. */
#include <string.h>
#include "vnet.h"

static inline uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline void wr16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static inline void wle16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }

static inline uint32_t fold(uint64_t s) {
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint32_t)s;
}

/* RFC 1071 sum of big-endian 16-bit words, folded (not complemented). Summed as
 * little-endian 64-bit words with end-around carry, then byte-swapped: the ones'
 * complement sum does not depend on byte order. */
static uint32_t sum_be(const uint8_t *p, uint32_t n) {
    uint64_t s = 0, c = 0, v;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&v, p, 8);
        s += v;
        c += s < v;
    }
    uint64_t t = (s & 0xffffffffu) + (s >> 32) + c;
    if (n >= 4) { uint32_t w; memcpy(&w, p, 4); t += w; p += 4; n -= 4; }
    if (n >= 2) { uint16_t w; memcpy(&w, p, 2); t += w; p += 2; n -= 2; }
    if (n) t += p[0];
    uint32_t f = fold(t);
    return ((f >> 8) | (f << 8)) & 0xffff;
}

int vp_vnet_check(const struct vp_offload *ol, uint32_t len) {
    uint32_t gso = ol->gso_type & ~VP_GSO_ECN;
    if (ol->flags & ~(VP_OL_CSUM | VP_OL_CSUM_VALID)) return -1;
    if (ol->flags & VP_OL_CSUM && (ol->csum_start < 14 || (uint32_t)ol->csum_start + ol->csum_off + 2 > len))
        return -1;
    if (gso == VP_GSO_NONE) return ol->gso_type == VP_GSO_NONE ? 0 : -1;
    /* a super-frame's checksum field holds the pseudo-header sum (what Linux sends) */
    if (!(ol->flags & VP_OL_CSUM) || ol->gso_size == 0 || ol->gso_size == 0xffff) return -1;
    if (gso == VP_GSO_TCPV4 || gso == VP_GSO_TCPV6) return ol->csum_off == 16 ? 0 : -1;
    if (gso == VP_GSO_UDP_L4) return ol->csum_off == 6 && ol->gso_type == gso ? 0 : -1;
    return -1;                     /* UFO (IP fragmentation) and unknown kinds */
}

int vp_vnet_parse(const uint8_t *h, uint32_t len, struct vp_offload *ol) {
    ol->flags = h[0];
    ol->gso_type = h[1];
    ol->gso_size = le16(h + 4);
    ol->csum_start = le16(h + 6);
    ol->csum_off = le16(h + 8);
    if (!(ol->flags & VP_OL_CSUM)) ol->csum_start = ol->csum_off = 0;
    if (ol->gso_type == VP_GSO_NONE) ol->gso_size = 0;
    return vp_vnet_check(ol, len);
}

void vp_vnet_write(uint8_t *h, const struct vp_offload *ol) {
    h[0] = ol->flags;
    h[1] = ol->gso_type;
    wle16(h + 2, ol->flags & VP_OL_CSUM ? ol->csum_start + ol->csum_off + 2u : 0);   /* hdr_len: a hint */
    wle16(h + 4, ol->gso_size);
    wle16(h + 6, ol->csum_start);
    wle16(h + 8, ol->csum_off);
}

void vp_csum_complete(uint8_t *f, uint32_t len, const struct vp_offload *ol) {
    /* the field holds the pseudo-header sum: summing it with the rest is the checksum */
    uint32_t s = ~sum_be(f + ol->csum_start, len - ol->csum_start) & 0xffff;
    wr16(f + ol->csum_start + ol->csum_off, s ? s : 0xffff);
}

/* --- headers ------------------------------------------------------------------------ */

struct hdrs {
    uint32_t l3, l4, hlen;    /* network header, transport header, end of headers */
    uint8_t v6, proto;
};

static int find_l3(const uint8_t *f, uint32_t len, struct hdrs *h) {
    uint32_t off = 12;
    uint16_t et;
    if (len < 14) return -1;
    et = rd16(f + 12);
    for (int d = 0; d < 2 && (et == 0x8100 || et == 0x88a8) && off + 6 <= len; d++) {
        off += 4;
        et = rd16(f + off);
    }
    h->l3 = off + 2;
    if (et == 0x0800 && h->l3 + 20 <= len) h->v6 = 0;
    else if (et == 0x86dd && h->l3 + 40 <= len) h->v6 = 1;
    else return -1;
    return 0;
}

static uint32_t pseudo(const uint8_t *f, const struct hdrs *h, uint32_t l4len) {
    uint64_t s = h->v6 ? sum_be(f + h->l3 + 8, 32) + (l4len >> 16) + (l4len & 0xffff)
                       : sum_be(f + h->l3 + 12, 8) + l4len;
    return fold(s + h->proto);
}

/* the headers of a super-frame, as its metadata says they are; -1 if they are not */
static int gso_headers(const uint8_t *f, uint32_t len, const struct vp_offload *ol, struct hdrs *h) {
    uint32_t gso = ol->gso_type & ~VP_GSO_ECN;
    if (vp_vnet_check(ol, len) || gso == VP_GSO_NONE || find_l3(f, len, h)) return -1;
    h->l4 = ol->csum_start;
    h->proto = gso == VP_GSO_UDP_L4 ? 17 : 6;
    if ((gso == VP_GSO_TCPV4 && h->v6) || (gso == VP_GSO_TCPV6 && !h->v6)) return -1;
    if (!h->v6) {
        uint32_t ihl = (f[h->l3] & 15) * 4u;
        if (f[h->l3] >> 4 != 4 || ihl < 20 || h->l3 + ihl != h->l4 || f[h->l3 + 9] != h->proto ||
            (rd16(f + h->l3 + 6) & 0x3fff))                      /* a fragment is not segmented */
            return -1;
    } else if (h->l4 < h->l3 + 40 || (h->l4 == h->l3 + 40 && f[h->l3 + 6] != h->proto)) {
        return -1;
    }
    if (h->proto == 6) {
        uint32_t thlen = h->l4 + 13 <= len ? (f[h->l4 + 12] >> 4) * 4u : 0;
        if (thlen < 20) return -1;
        h->hlen = h->l4 + thlen;
    } else {
        h->hlen = h->l4 + 8;
    }
    return h->hlen <= len ? 0 : -1;
}

uint32_t vp_gso_count(const uint8_t *f, uint32_t len, const struct vp_offload *ol, uint32_t cap) {
    struct hdrs h;
    uint32_t n;
    if (gso_headers(f, len, ol, &h)) return 0;
    n = len == h.hlen ? 1 : (len - h.hlen + ol->gso_size - 1) / ol->gso_size;
    if ((n > 1 ? h.hlen + ol->gso_size : len) > cap) return 0;      /* a segment must fit a buffer */
    return n <= VP_GSO_MAX_SEGS ? n : 0;
}

uint32_t vp_gso_segment(const uint8_t *f, uint32_t len, const struct vp_offload *ol,
                        uint8_t **out, uint16_t *out_len, uint32_t nout) {
    struct hdrs h;
    uint32_t mss = ol->gso_size, payload, n, seq = 0;
    uint16_t id = 0;
    if (gso_headers(f, len, ol, &h)) return 0;
    payload = len - h.hlen;
    n = payload ? (payload + mss - 1) / mss : 1;
    if (n > nout || n > VP_GSO_MAX_SEGS) return 0;
    if (!h.v6) id = rd16(f + h.l3 + 4);
    if (h.proto == 6) seq = (uint32_t)rd16(f + h.l4 + 4) << 16 | rd16(f + h.l4 + 6);
    for (uint32_t i = 0; i < n; i++) {
        uint8_t *o = out[i];
        uint32_t chunk = payload - i * mss < mss ? payload - i * mss : mss, seglen = h.hlen + chunk;
        memcpy(o, f, h.hlen);
        memcpy(o + h.hlen, f + h.hlen + i * mss, chunk);
        if (!h.v6) {
            uint32_t ihl = h.l4 - h.l3;          /* from the input: o may be a peer's buffer */
            wr16(o + h.l3 + 2, seglen - h.l3);
            wr16(o + h.l3 + 4, (uint16_t)(id + i));
            wr16(o + h.l3 + 10, 0);
            wr16(o + h.l3 + 10, ~sum_be(o + h.l3, ihl));
        } else {
            wr16(o + h.l3 + 4, seglen - h.l3 - 40);
        }
        if (h.proto == 6) {
            uint32_t s = seq + i * mss;
            wr16(o + h.l4 + 4, s >> 16);
            wr16(o + h.l4 + 6, s);
            if (i + 1 < n) o[h.l4 + 13] &= (uint8_t)~0x09;       /* FIN and PSH: last segment only */
            if (i > 0) o[h.l4 + 13] &= (uint8_t)~0x80;           /* CWR: first segment only */
        } else {
            wr16(o + h.l4 + 4, seglen - h.l4);
        }
        wr16(o + ol->csum_start + ol->csum_off, pseudo(o, &h, seglen - h.l4));
        vp_csum_complete(o, seglen, ol);
        out_len[i] = (uint16_t)seglen;
    }
    return n;
}

/* A frame that came without metadata (AF_XDP): an L4 checksum field holding exactly the
 * pseudo-header sum is a partial checksum (completing a checksum that happens to be
 * complete already leaves it as it is, so a wrong guess costs nothing); a TCP frame
 * longer than the MTU is a super-frame cut into MTU-sized segments. 1 if ol was set. */
int vp_vnet_infer(uint8_t *f, uint32_t len, uint32_t mtu, struct vp_offload *ol) {
    struct hdrs h;
    uint32_t l4len, at;
    memset(ol, 0, sizeof(*ol));
    if (find_l3(f, len, &h)) return 0;
    if (!h.v6) {
        uint32_t ihl = (f[h.l3] & 15) * 4u, tot = rd16(f + h.l3 + 2);
        if (f[h.l3] >> 4 != 4 || ihl < 20 || tot < ihl || h.l3 + tot > len || (rd16(f + h.l3 + 6) & 0x3fff)) return 0;
        h.proto = f[h.l3 + 9];
        h.l4 = h.l3 + ihl;
        l4len = tot - ihl;
    } else {
        h.proto = f[h.l3 + 6];
        h.l4 = h.l3 + 40;
        l4len = rd16(f + h.l3 + 4);
        if (h.l4 + l4len > len) return 0;
    }
    at = h.proto == 6 ? 16 : h.proto == 17 ? 6 : 0;
    if (!at || l4len < at + 2 || (h.proto == 6 && l4len < 20)) return 0;
    if (rd16(f + h.l4 + at) == pseudo(f, &h, l4len)) {
        ol->flags = VP_OL_CSUM;
        ol->csum_start = (uint16_t)h.l4;
        ol->csum_off = (uint16_t)at;
    }
    if (h.proto == 6 && mtu && len - h.l3 > mtu) {
        uint32_t hl = (h.l4 - h.l3) + (f[h.l4 + 12] >> 4) * 4u;
        if (hl < mtu && (f[h.l4 + 12] >> 4) >= 5) {
            ol->gso_type = (uint8_t)((h.v6 ? VP_GSO_TCPV6 : VP_GSO_TCPV4) | (f[h.l4 + 13] & 0x80 ? VP_GSO_ECN : 0));
            ol->gso_size = (uint16_t)(mtu - hl);
            if (!(ol->flags & VP_OL_CSUM)) {
                wr16(f + h.l4 + 16, pseudo(f, &h, l4len));
                ol->flags = VP_OL_CSUM;
                ol->csum_start = (uint16_t)h.l4;
                ol->csum_off = 16;
            }
        }
    }
    return vp_offload_any(ol);
}
