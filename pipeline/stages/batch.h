/* batch.h — what the five stages share: the flow key, a batch of packet descriptors,
 * and the datapath (ports, flow table, action sets, counters) they operate on. */
#ifndef VP_BATCH_H
#define VP_BATCH_H
#include "../../ring/region.h"
#include "../../bindings/vnet.h"

/* cdef-begin */
#define VP_BATCH_MAX 1024
#define VP_MAX_PORTS 64
#define VP_INLINE_OUTPUTS 8     /* outputs kept in the action set itself (the rest: `more`) */
#define VP_MAX_PROGRAM 65535    /* datapath actions in one action set; longer lists are refused */
#define VP_ACT_MISS -1
#define VP_ACT_PENDING -2
#define VP_ACT_EMPTY -3

/* layers that parsed completely (part of the key: a flow truncated at L3 is another flow) */
#define VP_L2 1
#define VP_VLAN 2
#define VP_L3 4
#define VP_L4 8
#define VP_FRAG_ANY 1
#define VP_FRAG_LATER 2

/* parse error reasons, each with its own counter */
#define VP_PERR_ETH_SHORT 0
#define VP_PERR_VLAN_TRUNC 1
#define VP_PERR_VLAN_DEPTH 2
#define VP_PERR_ARP_TRUNC 3
#define VP_PERR_IPV4_TRUNC 4
#define VP_PERR_IPV4_BAD 5
#define VP_PERR_IPV6_TRUNC 6
#define VP_PERR_IPV6_EXT 7
#define VP_PERR_L4_TRUNC 8
#define VP_PERR_ND_BAD 9
#define VP_PERR_IPV6_BAD 10     /* not counted any more: OVS parses whatever the version says */
#define VP_PERR_N 11

/* drop reasons of the fast path (per datapath; ring errors are per ring) */
#define VP_DROP_ACTION 0
#define VP_DROP_NO_PORT 1
#define VP_DROP_TX_FULL 2
#define VP_DROP_TOO_BIG 3
#define VP_DROP_UPCALL_LOST 4
#define VP_DROP_UPCALL_QUEUE 5
#define VP_DROP_FLOW_LIMIT 6
#define VP_DROP_NO_ROOM 7
#define VP_DROP_UPCALL_RATE 8
#define VP_DROP_BAD_OFFLOAD 9   /* offload metadata that does not fit the frame, or cannot be segmented */
#define VP_DROP_UPCALL_DISCONNECT 10  /* handed to a slow path that went away before answering */
#define VP_DROP_WORKER_RESTART 11     /* handed to the slow path by a worker that died before the answer */
#define VP_DROP_SLOWPATH 12           /* the slow path kept it (controller, unknown flow) */
#define VP_DROP_BAD_REPLY 13          /* the slow path's answer for it was refused */
#define VP_DROP_TX_BAD_SLOT 14        /* the out ring's slot named no valid buffer (the peer wrote it) */
#define VP_DROP_METER 15              /* over an OpenFlow meter's band */
#define VP_DROP_N 16

#define VP_ST_RECEIVE 0
#define VP_ST_EXTRACT 1
#define VP_ST_LOOKUP 2
#define VP_ST_EXECUTE 3
#define VP_ST_TRANSMIT 4
#define VP_ST_N 5

struct vp_vlan { uint16_t tpid; uint16_t tci; };

/* Fixed-layout flow key after Open vSwitch's struct flow. Multi-byte fields are in
 * network byte order, as on the wire; tci carries 0x1000 (CFI) when the tag exists. */
struct vp_flow_key {
    uint32_t in_port;
    uint16_t layers;
    uint16_t pad0;
    uint8_t dl_dst[6];
    uint8_t dl_src[6];
    uint16_t dl_type;
    uint16_t pad1;
    struct vp_vlan vlans[2];
    uint32_t nw_src;
    uint32_t nw_dst;
    uint8_t ipv6_src[16];
    uint8_t ipv6_dst[16];
    uint32_t ipv6_label;
    uint8_t nw_proto;
    uint8_t nw_tos;
    uint8_t nw_ttl;
    uint8_t nw_frag;
    uint8_t arp_sha[6];
    uint8_t arp_tha[6];
    uint8_t nd_target[16];
    uint16_t tp_src;
    uint16_t tp_dst;
    uint16_t tcp_flags;
    uint16_t pad2;
    uint32_t pad3;
};

struct vp_pkt {
    char *data;
    uint16_t len;
    uint16_t port;            /* datapath port index it came in on */
    uint16_t ring;
    uint16_t nout;            /* outputs queued by execute */
    uint32_t slot;
    int32_t action;           /* action set id, or VP_ACT_MISS / VP_ACT_PENDING */
    uint32_t hash;
    uint32_t flow;            /* flow table entry, for stats */
    struct vp_offload ol;     /* GSO / partial checksum it came with (all zero: none) */
};

struct vp_batch {
    uint32_t n;
    uint32_t cap;
    uint32_t nmiss;
    uint32_t pad;
    struct vp_pkt pkt[1024];
    struct vp_flow_key key[1024];
};

/* one datapath action: output, masked set of a header field, VLAN push/pop, reparse */
#define VP_OP_OUTPUT 1
#define VP_OP_SET 2
#define VP_OP_PUSH_VLAN 3
#define VP_OP_POP_VLAN 4
#define VP_OP_REPARSE 5        /* parse the frame anew (as OVS's userspace datapath after a userspace()) */
#define VP_OP_METER 6          /* port: the meter's slot; a packet over its band is dropped */
#define VP_MAX_METERS 1024
#define VP_F_DL_SRC 1
#define VP_F_DL_DST 2
#define VP_F_NW_SRC 3
#define VP_F_NW_DST 4
#define VP_F_IPV6_SRC 5
#define VP_F_IPV6_DST 6
#define VP_F_NW_TOS 7
#define VP_F_NW_TTL 8
#define VP_F_TP_SRC 9
#define VP_F_TP_DST 10
#define VP_F_ICMP 11           /* ICMP/ICMPv6 type and code, one 16-bit word */
#define VP_F_IPV6_LABEL 12
#define VP_F_ARP_OP 13
#define VP_F_ARP_SPA 14
#define VP_F_ARP_TPA 15
#define VP_F_ARP_SHA 16
#define VP_F_ARP_THA 17
#define VP_F_ND_TARGET 18
#define VP_F_ND_SLL 19
#define VP_F_ND_TLL 20
struct vp_op {
    uint8_t kind;
    uint8_t field;
    uint16_t port;            /* OUTPUT: datapath port index */
    uint16_t tpid;            /* PUSH_VLAN */
    uint16_t tci;
    uint8_t value[16];        /* SET: big-endian, right-aligned in the field's width */
    uint8_t mask[16];
};

/* One action set: either outputs only (nops == 0: nout ports, in `out` while they fit,
 * else all of them in `more`), or a program of nops ops run in order (it modifies
 * packets). Lists of any length up to VP_MAX_PROGRAM; nothing is cut. */
struct vp_actions {
    uint32_t nout;            /* outputs; 0 = drop */
    uint32_t nops;            /* > 0: the program in ops */
    uint16_t out[8];          /* datapath port indexes, when nout <= VP_INLINE_OUTPUTS */
    uint16_t *more;           /* all nout port indexes when more (owned) */
    struct vp_op *ops;        /* the program (owned) */
};

/* exact-match flow table: a compact open-addressing index (hash << 32 | entry + 1,
 * linear probing, backward-shift delete) over a pool of entries that never move */
struct vp_flow {
    int32_t action;           /* >= 0 action set, VP_ACT_PENDING, or VP_ACT_EMPTY when free */
    uint32_t hash;
    uint32_t upcall_id;       /* while pending: the upcall that carried this flow */
    uint16_t tcp_flags;
    uint16_t pad;
    uint64_t packets;
    uint64_t bytes;
    uint64_t used_ns;
    uint64_t created_ns;
    struct vp_flow_key key;
    uint32_t mf;              /* exact-match entry cached from a megaflow: its entry + 1, else 0 */
    uint32_t gen;             /* bumped whenever this slot is freed or its actions replaced */
};

struct vp_flow_table {
    uint64_t *index;
    struct vp_flow *entries;
    uint32_t *free;           /* stack of free entry numbers */
    uint32_t nfree;
    uint32_t mask;            /* index capacity - 1 (a power of two, >= 2 x limit) */
    uint32_t count;
    uint32_t limit;
    uint32_t hand;            /* eviction clock over the entry pool */
    uint32_t evictions;
    uint32_t cap;             /* above this many entries, inserting evicts an installed one (0: never) */
    uint32_t pad2;
};

struct vp_outq {
    uint32_t n;
    uint32_t pad;
    uint32_t pkt[1024];       /* batch indexes */
};

#define VP_MAX_MASKS 64

/* An OpenFlow meter's drop band as a token bucket; tokens in 1e-9 of a packet (pktps) or
 * of a kbit (kbps), so both refill by rate x elapsed ns */
struct vp_meter {
    uint64_t rate;            /* packets/s or kbit/s; 0: the slot is unused (everything passes) */
    uint64_t burst;           /* packets or kbit */
    uint64_t tokens;
    uint64_t last_ns;
    uint32_t pktps;
    uint32_t pad;
    uint64_t packets, bytes;  /* that met the meter */
    uint64_t drop_packets, drop_bytes;
};

struct vp_dp_stats {
    uint64_t batches;
    uint64_t packets;
    uint64_t hits;            /* exact-match hits */
    uint64_t mf_hits;         /* exact-match misses that a megaflow answered */
    uint64_t misses;          /* went to the slow path */
    uint64_t parse_err[11];
    uint64_t drops[16];
    uint64_t stage_ns[5];
    uint64_t stage_pkts[5];
    uint64_t tx_swapped;
    uint64_t tx_copied;
    uint64_t tx_segmented;    /* super-frames cut into segments for a port that takes no GSO */
    uint64_t tx_segments;     /* the segments they became */
    uint64_t csum_completed;  /* partial checksums completed for a port that takes none */
};

struct vp_dp {
    uint32_t nports;
    uint32_t rr;              /* next port receive starts from */
    struct vp_port *ports[64];
    struct vp_flow_table flows;
    struct vp_actions *actions;
    uint32_t nactions;
    uint32_t max_actions;
    struct vp_outq *outq;     /* one per port */
    struct vp_dp_stats st;
    uint64_t now_ns;
    /* megaflows: one subtable per mask; entries keyed by (key & mask, mask number) */
    struct vp_flow_table mflows;
    struct vp_flow_key masks[64];
    uint64_t mask_hits[64];
    uint32_t mask_refs[64];
    uint8_t mask_order[64];   /* subtables by hits, re-ranked periodically */
    uint32_t nmasks;
    /* the ledger by input port: every packet a port received is delivered, dropped with a
     * reason here, or still with the slow path (upcall_inflight) */
    uint64_t port_drops[64][16];
    uint64_t upcall_inflight[64];
    uint64_t tx_dirty;        /* ports whose out ring got frames since the last commit */
    void *journal;            /* struct vp_journal in memory that outlives this worker, or NULL */
    struct vp_meter *meters;  /* VP_MAX_METERS token buckets (OpenFlow meters), or NULL */
};

uint64_t vp_now_ns(void);
uint32_t vp_key_hash(const struct vp_flow_key *k);
/* cdef-end */

/* a drop of n packets that came in on dp port `port`, by reason */
#define VP_DROP(dp, reason, port, n) do { uint64_t _n = (n); (dp)->st.drops[reason] += _n; \
    (dp)->port_drops[(port) & (VP_MAX_PORTS - 1)][reason] += _n; } while (0)

#define VP_TIME_BEGIN(dp) uint64_t _t0 = vp_now_ns()
#define VP_TIME_END(dp, stage, npk) do { uint64_t _t1 = vp_now_ns(); \
    (dp)->st.stage_ns[stage] += _t1 - _t0; (dp)->st.stage_pkts[stage] += (npk); (dp)->now_ns = _t1; } while (0)
#endif
