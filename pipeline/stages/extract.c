/* extract.c — Ethernet, one 802.1Q/802.1ad tag (Open vSwitch's default vlan-limit=1), ARP,
 * IPv4, IPv6 (extension headers), TCP/UDP/SCTP, ICMP/ICMPv6 (ND) into struct vp_flow_key,
 * following Open vSwitch's miniflow_extract() field for field, so that the slow path
 * classifies a frame exactly as OVS would. Never reads past len; a truncated or malformed
 * header ends parsing where OVS's parser ends it. */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#include "extract.h"
#include "keyhash.h"

#define ETH_IPV4 0x0800
#define ETH_ARP 0x0806
#define ETH_RARP 0x8035
#define ETH_IPV6 0x86dd
#define ETH_VLAN 0x8100
#define ETH_QINQ 0x88a8
#define DL_TYPE_NONE 0x05ff   /* OVS's dl_type for 802.2 frames without SNAP */
#define VLAN_LIMIT 1          /* tags parsed; OVS's other_config:vlan-limit default */

/* The frame may sit in a buffer its sender can still write: every byte that decides an
 * offset or a length is loaded once (ring/shared.h), so a bound checked is the bound
 * used; addresses are copied into the private key with memcpy. */
#define rd8(p) vp_pkt_u8(p)
#define rd16(p) vp_pkt_u16(p)
#define rd32(p) vp_pkt_u32(p)
static inline int is_zero6(const uint8_t *m) { return !(m[0] | m[1] | m[2] | m[3] | m[4] | m[5]); }

/* ICMPv6 neighbour discovery: target and link-layer address options, as OVS's
 * parse_icmpv6(): a missing target or a bad option length ends the walk keeping what was
 * found; a second source or target address option voids all three fields */
static void parse_nd(const uint8_t *p, uint32_t n, struct vp_flow_key *k, uint64_t *perr) {
    uint32_t off = 8 + 16;
    if (n < off) return;
    memcpy(k->nd_target, p + 8, 16);
    while (n - off >= 8) {
        uint32_t olen = (uint32_t)rd8(p + off + 1) * 8;
        uint8_t type = rd8(p + off);
        if (olen == 0 || olen > n - off) return;
        if (olen == 8 && (type == 1 || type == 2)) {
            uint8_t *lla = type == 1 ? k->arp_sha : k->arp_tha;
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
        doff = (uint32_t)(rd8(p + 12) >> 4) * 4;
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
    case 1: case 58: {
        uint8_t type, code;
        if (n < 8) goto trunc;
        type = rd8(p);
        code = rd8(p + 1);
        k->tp_src = htons(type);
        k->tp_dst = htons(code);
        k->layers |= VP_L4;
        if (k->nw_proto == 58 && (type == 135 || type == 136) && code == 0) parse_nd(p, n, k, perr);
        return;
    }
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
    ihl = (uint32_t)(rd8(p) & 15) * 4;
    if (ihl < 20) { perr[VP_PERR_IPV4_BAD]++; return; }
    if (ihl > n) { perr[VP_PERR_IPV4_TRUNC]++; return; }
    tot = ntohs(rd16(p + 2));
    if (tot < ihl) { perr[VP_PERR_IPV4_BAD]++; return; }
    if (tot > n) { perr[VP_PERR_IPV4_TRUNC]++; return; }
    k->nw_tos = rd8(p + 1);
    k->nw_ttl = rd8(p + 8);
    k->nw_proto = rd8(p + 9);
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
    nh = rd8(p + 6);
    for (;;) {
        uint32_t hlen;
        if (nh != 0 && nh != 43 && nh != 60 && nh != 51 && nh != 44) break;
        if (n - off < 8) goto bad;
        if (nh == 44) {
            /* a non-zero offset/flags word marks a fragment; a later one keeps
             * nw_proto = 44 and ends the walk just after the fragment header */
            uint16_t fo = ntohs(rd16(p + off + 2));
            nh = rd8(p + off);
            off += 8;
            if (fo) {
                frag = VP_FRAG_ANY;
                if (fo & 0xfff8) { frag |= VP_FRAG_LATER; nh = 44; break; }
            }
            continue;
        }
        hlen = rd8(p + off + 1);
        hlen = nh == 51 ? (hlen + 2) * 4 : (hlen + 1) * 8;
        if (hlen > n - off) goto bad;
        nh = rd8(p + off);
        off += hlen;
    }
    w0 = ntohl(rd32(p));
    k->nw_tos = (uint8_t)(w0 >> 20);
    k->ipv6_label = htonl(w0 & 0xfffff);
    k->nw_ttl = rd8(p + 7);
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
    if (ntohs(rd16(p)) != 1 || ntohs(rd16(p + 2)) != ETH_IPV4 || rd8(p + 4) != 6 || rd8(p + 5) != 4) return;
    op = ntohs(rd16(p + 6));
    if (op <= 0xff) k->nw_proto = (uint8_t)op;
    memcpy(k->arp_sha, p + 8, 6);
    k->nw_src = rd32(p + 14);
    memcpy(k->arp_tha, p + 18, 6);
    k->nw_dst = rd32(p + 24);
    k->layers |= VP_L3;
}

/* 16-byte stores, written out: a memset of the 120 bytes becomes `rep stos`, which takes
 * longer to start than this takes to finish (and a loop of them is turned back into one) */
_Static_assert(sizeof(struct vp_flow_key) == 120, "key_zero writes 120 bytes");
static inline void key_zero(struct vp_flow_key *k) {
#if defined(__SSE2__)
    __m128i z = _mm_setzero_si128(), *q = (__m128i *)k;
    _mm_storeu_si128(q, z);
    _mm_storeu_si128(q + 1, z);
    _mm_storeu_si128(q + 2, z);
    _mm_storeu_si128(q + 3, z);
    _mm_storeu_si128(q + 4, z);
    _mm_storeu_si128(q + 5, z);
    _mm_storeu_si128(q + 6, z);
    *(uint64_t *)(q + 7) = 0;
#else
    memset(k, 0, sizeof(*k));
#endif
}

void vp_parse(const uint8_t *p, uint32_t len, uint32_t in_port, struct vp_flow_key *k, uint64_t *perr,
              struct vp_layout *L) {
    uint32_t off = 12;
    uint16_t et;
    int nv = 0;
    key_zero(k);
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
        if (len - off >= 8 && rd8(l) == 0xaa && rd8(l + 1) == 0xaa && rd8(l + 2) == 0x03 && !rd8(l + 3)
            && !rd8(l + 4) && !rd8(l + 5)) {
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

/* --- the key hash (keyhash.h): its path is chosen once, when the extension loads ------- */
int vp_crc32c_hw;
uint32_t vp_crc32c_table[8][256];
static int crc32c_cpu;

__attribute__((constructor)) static void keyhash_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int j = 0; j < 8; j++) c = c & 1 ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        vp_crc32c_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            vp_crc32c_table[t][i] = (vp_crc32c_table[t - 1][i] >> 8) ^ vp_crc32c_table[0][vp_crc32c_table[t - 1][i] & 0xff];
#if defined(__x86_64__)
    unsigned a, b, c, d;
    crc32c_cpu = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_SSE4_2);
#endif
    const char *want = getenv("VALEPIPE_CRC32C");
    vp_crc32c_hw = crc32c_cpu && !(want && strcmp(want, "portable") == 0);
}

#define KEY_WORDS (sizeof(struct vp_flow_key) / 8)

/* Which of the key's 15 words extract can have written, by the kind of packet (Open
 * vSwitch's miniflow idea: hash what the key holds, not its whole size). Every other word
 * is 0 in a key extract made, so equal keys still hash equal; a key made elsewhere with
 * more in it only hashes into the same bucket more often (the table compares whole keys). */
#define KW(f) (offsetof(struct vp_flow_key, f) / 8)
_Static_assert(KEY_WORDS == 15 && KW(vlans) == 3 && KW(nw_src) == 4 && KW(nw_dst) == 4 && KW(ipv6_src) == 5 &&
               KW(ipv6_label) == 9 && KW(nw_frag) == 9 && KW(arp_sha) == 10 && KW(tp_src) == 13 &&
               KW(tp_dst) == 13 && KW(tcp_flags) == 14, "the word lists below follow struct vp_flow_key");
static const uint8_t W_L2[] = {0, 1, 2, 3};                             /* port, layers, MACs, type, tag */
static const uint8_t W_IPV4[] = {0, 1, 2, 3, 4, 9, 13, 14};             /* + addresses, proto/tos/ttl/frag, ports, flags */
static const uint8_t W_IPV6[] = {0, 1, 2, 3, 5, 6, 7, 8, 9, 13, 14};    /* + 128-bit addresses, label */
static const uint8_t W_ARP[] = {0, 1, 2, 3, 4, 9, 10, 11};              /* + IPs, op, sha and tha */
static const uint8_t W_ALL[] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};  /* ICMPv6 (ND) */

enum { KIND_L2, KIND_IPV4, KIND_IPV6, KIND_ARP, KIND_ALL };

static inline int key_kind(const struct vp_flow_key *k) {
    uint16_t t = ntohs(k->dl_type);
    /* ICMPv6 inside either IP version carries ND fields (parse_l4 goes by nw_proto alone) */
    if (t == ETH_IPV4) return k->nw_proto == 58 ? KIND_ALL : KIND_IPV4;
    if (t == ETH_IPV6) return k->nw_proto == 58 ? KIND_ALL : KIND_IPV6;
    if (t == ETH_ARP || t == ETH_RARP) return KIND_ARP;
    return KIND_L2;
}

static inline __attribute__((always_inline)) uint32_t key_hash(const struct vp_flow_key *k, const int hw) {
    const uint64_t *w = (const uint64_t *)k;
    switch (key_kind(k)) {
    case KIND_IPV4: return vp_hash_listed(w, W_IPV4, sizeof(W_IPV4), hw);
    case KIND_IPV6: return vp_hash_listed(w, W_IPV6, sizeof(W_IPV6), hw);
    case KIND_ARP: return vp_hash_listed(w, W_ARP, sizeof(W_ARP), hw);
    case KIND_L2: return vp_hash_listed(w, W_L2, sizeof(W_L2), hw);
    default: return vp_hash_listed(w, W_ALL, sizeof(W_ALL), hw);
    }
}

/* the words key_hash takes of k, as bits (tests check that extract writes no other) */
uint32_t vp_key_words(const struct vp_flow_key *k) {
    static const struct { const uint8_t *idx; uint32_t n; } kinds[] = {
        [KIND_L2] = {W_L2, sizeof(W_L2)}, [KIND_IPV4] = {W_IPV4, sizeof(W_IPV4)}, [KIND_IPV6] = {W_IPV6, sizeof(W_IPV6)},
        [KIND_ARP] = {W_ARP, sizeof(W_ARP)}, [KIND_ALL] = {W_ALL, sizeof(W_ALL)}};
    uint32_t bits = 0, kind = (uint32_t)key_kind(k);
    for (uint32_t i = 0; i < kinds[kind].n; i++) bits |= 1u << kinds[kind].idx[i];
    return bits;
}

uint32_t vp_key_hash(const struct vp_flow_key *k) {
    return vp_crc32c_hw ? key_hash(k, 1) : key_hash(k, 0);
}

/* a megaflow's key under its mask: every word (the mask decides which hold anything, and
 * the subtable's id is in the last one) */
uint32_t vp_masked_key_hash(const struct vp_flow_key *k) {
    return vp_crc32c_hw ? vp_hash_words((const uint64_t *)k, KEY_WORDS, 1)
                        : vp_hash_words((const uint64_t *)k, KEY_WORDS, 0);
}

/* one path on demand (hw = 1 gives 0 on a CPU without the instruction), for comparing them */
uint32_t vp_key_hash_path(const struct vp_flow_key *k, int hw) {
    if (hw && !crc32c_cpu) return 0;
    return hw ? key_hash(k, 1) : key_hash(k, 0);
}

int vp_crc32c_cpu(void) { return crc32c_cpu; }
int vp_crc32c_used(void) { return vp_crc32c_hw; }

static inline __attribute__((always_inline)) void extract_batch(struct vp_dp *dp, struct vp_batch *b, const int hw) {
    for (uint32_t i = 0; i < b->n && i < 16; i++) __builtin_prefetch(b->pkt[i].data);
    for (uint32_t i = 0; i < b->n; i++) {
        struct vp_pkt *pk = &b->pkt[i];
        if (i + 16 < b->n) __builtin_prefetch(b->pkt[i + 16].data);
        struct vp_layout L;
        vp_parse((const uint8_t *)pk->data, pk->len, pk->port, &b->key[i], dp->st.parse_err, &L);
        /* execute edits headers where this parse found them (offsets <= len < 64 KB) */
        pk->l3 = (uint16_t)L.l3;
        pk->l4 = (uint16_t)L.l4;
        pk->l_end = (uint16_t)L.end;
        pk->parsed = 1;
    }
    /* hashed in a pass of its own: a key's words read back right after the parser's narrow
     * stores to them would wait for each store to complete (no store forwarding) */
    for (uint32_t i = 0; i < b->n; i++) b->pkt[i].hash = key_hash(&b->key[i], hw);
}

uint32_t vp_extract(struct vp_dp *dp, struct vp_batch *b) {
    if (vp_crc32c_hw) extract_batch(dp, b, 1);      /* one branch per batch, not per packet */
    else extract_batch(dp, b, 0);
    return b->n;
}
