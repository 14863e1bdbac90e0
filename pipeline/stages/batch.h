/* batch.h — what the stages share: the flow key, a batch of packet descriptors, the
 * datapath (ports, flow table, action sets, counters) they operate on, and the named lists
 * of stages, drop reasons, parse errors and datapath actions. */
#ifndef VP_BATCH_H
#define VP_BATCH_H
#include "../../ring/region.h"
#include "../../bindings/vnet.h"

/* The lists C and Python share, each written once, here (as VPP's foreach_*_error and
 * Open vSwitch's OFPACTS): every `_(ID, name)` of VP_FOREACH_X is the C constant VP_X_ID,
 * numbered in order from 0, with VP_X_N after the last; pipeline/native_build.py gives the
 * built module the same constants and each list's names (pipeline/names.py reads them). */

/* stages, each with its counters (cycles, packets) */
#define VP_FOREACH_STAGE(_) \
    _(RECEIVE, receive) \
    _(EXTRACT, extract) \
    _(LOOKUP, lookup) \
    _(EXECUTE, execute) \
    _(TRANSMIT, transmit)

/* parse errors, each with its counter (the packet is still forwarded on what parsed) */
#define VP_FOREACH_PERR(_) \
    _(ETH_SHORT, eth_short) \
    _(VLAN_TRUNC, vlan_trunc) \
    _(VLAN_DEPTH, vlan_depth) \
    _(ARP_TRUNC, arp_trunc) \
    _(IPV4_TRUNC, ipv4_trunc) \
    _(IPV4_BAD, ipv4_bad) \
    _(IPV6_TRUNC, ipv6_trunc) \
    _(IPV6_EXT, ipv6_ext) \
    _(L4_TRUNC, l4_trunc) \
    _(ND_BAD, nd_bad) \
    _(IPV6_BAD, ipv6_bad)               /* not counted any more: OVS parses whatever the version says */

/* drop reasons of the fast path, per datapath and per input port (ring errors: per ring) */
#define VP_FOREACH_DROP(_) \
    _(ACTION, action_drop)              /* a rule said drop, or no rule */ \
    _(NO_PORT, no_port) \
    _(TX_FULL, tx_ring_full) \
    _(TOO_BIG, too_big) \
    _(UPCALL_LOST, upcall_lost)         /* no slow path */ \
    _(UPCALL_QUEUE, upcall_queue) \
    _(FLOW_LIMIT, flow_limit) \
    _(NO_ROOM, no_room)                 /* a VLAN push on a full buffer */ \
    _(UPCALL_RATE, upcall_rate) \
    _(BAD_OFFLOAD, bad_offload)         /* offload metadata that does not fit the frame */ \
    _(UPCALL_DISCONNECT, upcall_disconnect) /* handed to a slow path that went away first */ \
    _(WORKER_RESTART, worker_restart)   /* with the slow path when the worker died */ \
    _(SLOWPATH, slowpath_drop)          /* the slow path kept it (controller, unknown flow) */ \
    _(BAD_REPLY, bad_reply)             /* the slow path's answer for it was refused */ \
    _(TX_BAD_SLOT, tx_bad_slot)         /* the out ring's slot named no valid buffer */ \
    _(METER, meter)                     /* over an OpenFlow meter's band */

/* datapath actions (struct vp_op kind); 0 is none, refused in an action set */
#define VP_FOREACH_OP(_) \
    _(NONE, none) \
    _(OUTPUT, output) \
    _(SET, set) \
    _(PUSH_VLAN, push_vlan) \
    _(POP_VLAN, pop_vlan) \
    _(REPARSE, reparse)                 /* parse the frame anew (as OVS's userspace datapath after a userspace()) */ \
    _(METER, meter)                     /* port: the meter's slot; a packet over its band is dropped */

/* header fields a set action writes, with their width in bytes; 0 is none */
#define VP_FOREACH_F(_) \
    _(NONE, none, 0) \
    _(DL_SRC, dl_src, 6) \
    _(DL_DST, dl_dst, 6) \
    _(NW_SRC, nw_src, 4) \
    _(NW_DST, nw_dst, 4) \
    _(IPV6_SRC, ipv6_src, 16) \
    _(IPV6_DST, ipv6_dst, 16) \
    _(NW_TOS, nw_tos, 1) \
    _(NW_TTL, nw_ttl, 1) \
    _(TP_SRC, tp_src, 2) \
    _(TP_DST, tp_dst, 2) \
    _(ICMP, icmp, 2)                    /* ICMP/ICMPv6 type and code, one 16-bit word */ \
    _(IPV6_LABEL, ipv6_label, 4) \
    _(ARP_OP, arp_op, 2) \
    _(ARP_SPA, arp_spa, 4) \
    _(ARP_TPA, arp_tpa, 4) \
    _(ARP_SHA, arp_sha, 6) \
    _(ARP_THA, arp_tha, 6) \
    _(ND_TARGET, nd_target, 16) \
    _(ND_SLL, nd_sll, 6) \
    _(ND_TLL, nd_tll, 6)

#define VP_STAGE_ITEM(id, name) VP_STAGE_##id,
#define VP_PERR_ITEM(id, name) VP_PERR_##id,
#define VP_DROP_ITEM(id, name) VP_DROP_##id,
#define VP_OP_ITEM(id, name) VP_OP_##id,
#define VP_F_ITEM(id, name, width) VP_F_##id,
enum { VP_FOREACH_STAGE(VP_STAGE_ITEM) VP_STAGE_N };
enum { VP_FOREACH_PERR(VP_PERR_ITEM) VP_PERR_N };
enum { VP_FOREACH_DROP(VP_DROP_ITEM) VP_DROP_N };
enum { VP_FOREACH_OP(VP_OP_ITEM) VP_OP_N };
enum { VP_FOREACH_F(VP_F_ITEM) VP_F_N };

/* cdef-begin */
#define VP_BATCH_MAX 1024
#define VP_MAX_PORTS 64
#define VP_MAX_MASKS 64
#define VP_MAX_METERS 1024
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
    /* where extract found the network and transport headers and the network packet's end
     * (struct vp_layout, narrowed: frames are < 64 KB), so execute never parses again;
     * parsed = 0 (receive) until extract wrote them and the packet's key */
    uint16_t l3, l4, l_end, parsed;
    struct vp_offload ol;     /* GSO / partial checksum it came with (all zero: none) */
};

/* A stage's kernel: one call for the whole batch; returns the packets it handled (its
 * counter). It sets `handoff` when the batch has work for its stage's Python side (misses
 * to send up): the chain then returns to Python before the next stage. */
struct vp_batch {
    uint32_t n;
    uint32_t cap;             /* packets receive may take */
    uint32_t nmiss;
    uint32_t handoff;
    struct vp_pkt pkt[VP_BATCH_MAX];
    struct vp_flow_key key[VP_BATCH_MAX];
};

/* one datapath action (VP_OP_*): output, masked set of a header field (VP_F_*), VLAN push/pop, reparse */
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
    uint16_t out[VP_INLINE_OUTPUTS]; /* datapath port indexes, when nout <= VP_INLINE_OUTPUTS */
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
    uint32_t pkt[VP_BATCH_MAX]; /* batch indexes */
};

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
    uint64_t parse_err[VP_PERR_N];
    uint64_t drops[VP_DROP_N];
    uint64_t stage_cycles[VP_STAGE_N]; /* vp_cycles() spent in each stage */
    uint64_t stage_pkts[VP_STAGE_N];
    uint64_t batch_cycles;    /* whole batches in the C chain: stages, commit, the chain's own work */
    uint64_t tx_swapped;
    uint64_t tx_copied;
    uint64_t tx_segmented;    /* super-frames cut into segments for a port that takes no GSO */
    uint64_t tx_segments;     /* the segments they became */
    uint64_t csum_completed;  /* partial checksums completed for a port that takes none */
};

struct vp_dp {
    uint32_t nports;
    uint32_t rr;              /* next port receive starts from */
    struct vp_port *ports[VP_MAX_PORTS];
    struct vp_flow_table flows;
    struct vp_actions *actions;
    uint32_t nactions;
    uint32_t max_actions;
    struct vp_outq *outq;     /* one per port */
    struct vp_dp_stats st;
    uint64_t now_ns;
    /* megaflows: one subtable per mask; entries keyed by (key & mask, mask number) */
    struct vp_flow_table mflows;
    struct vp_flow_key masks[VP_MAX_MASKS];
    uint64_t mask_hits[VP_MAX_MASKS];
    uint32_t mask_refs[VP_MAX_MASKS];
    uint8_t mask_order[VP_MAX_MASKS]; /* subtables by hits, re-ranked periodically */
    uint32_t nmasks;
    /* the ledger by input port: every packet a port received is delivered, dropped with a
     * reason here, or still with the slow path (upcall_inflight) */
    uint64_t port_drops[VP_MAX_PORTS][VP_DROP_N];
    uint64_t upcall_inflight[VP_MAX_PORTS];
    uint64_t tx_dirty;        /* ports whose out ring got frames since the last commit */
    void *journal;            /* struct vp_journal in memory that outlives this worker, or NULL */
    struct vp_meter *meters;  /* VP_MAX_METERS token buckets (OpenFlow meters), or NULL */
};

/* the hash of a flow key as extract made it: of the words its kind of packet can have
 * (vp_key_words); a megaflow's masked key: vp_masked_key_hash, of every word */
uint32_t vp_key_hash(const struct vp_flow_key *k);
uint32_t vp_masked_key_hash(const struct vp_flow_key *k);
uint32_t vp_key_words(const struct vp_flow_key *k);
/* cdef-end */

/* a drop of n packets that came in on dp port `port`, by reason */
#define VP_DROP(dp, reason, port, n) do { uint64_t _n = (n); (dp)->st.drops[reason] += _n; \
    (dp)->port_drops[(port) & (VP_MAX_PORTS - 1)][reason] += _n; } while (0)
#endif
