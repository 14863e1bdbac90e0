/* nmreq.h — netmap's control requests (NIOCCTRL, API 14), restated from
 * ../shared/netmap-abi.md §3: header, register and info bodies, VALE bodies. */
#ifndef VP_NMREQ_H
#define VP_NMREQ_H
#include "../../ring/netmap.h"
/* cdef-begin */
#define NETMAP_REQ_IFNAMSIZ 64
#define NETMAP_REQ_REGISTER 1
#define NETMAP_REQ_PORT_INFO_GET 2
#define NETMAP_REQ_VALE_ATTACH 3
#define NETMAP_REQ_VALE_DETACH 4
#define NETMAP_REQ_VALE_LIST 5
#define NETMAP_REQ_VALE_NEWIF 8
#define NETMAP_REQ_VALE_DELIF 9
#define NETMAP_REQ_POOLS_INFO_GET 12
#define NR_REG_ALL_NIC 1
#define NR_REG_SW 2
#define NR_REG_NIC_SW 3
#define NR_REG_ONE_NIC 4
#define NR_REG_ONE_SW 8
#define NR_MONITOR_TX 0x100
#define NR_MONITOR_RX 0x200
#define NR_ZCOPY_MON 0x400
#define NR_EXCLUSIVE 0x800
#define NR_RX_RINGS_ONLY 0x2000
#define NR_TX_RINGS_ONLY 0x4000
#define NR_ACCEPT_VNET_HDR 0x8000
#define NR_DO_RX_POLL 0x10000
#define NR_NO_TX_POLL 0x20000

struct nmreq_header {
    uint16_t nr_version;
    uint16_t nr_reqtype;
    uint32_t nr_reserved;         /* must be 0 */
    char nr_name[64];
    uint64_t nr_options;          /* user pointer to the first nmreq_option, or 0 */
    uint64_t nr_body;             /* user pointer to the body, or 0 when there is none */
};
struct nmreq_register {
    uint64_t nr_offset;
    uint64_t nr_memsize;
    uint32_t nr_tx_slots;
    uint32_t nr_rx_slots;
    uint16_t nr_tx_rings;
    uint16_t nr_rx_rings;
    uint16_t nr_host_tx_rings;
    uint16_t nr_host_rx_rings;
    uint16_t nr_mem_id;
    uint16_t nr_ringid;
    uint32_t nr_mode;
    uint32_t nr_extra_bufs;
    uint64_t nr_flags;            /* after a 4-byte hole */
};
struct nmreq_port_info_get {
    uint64_t nr_memsize;
    uint32_t nr_tx_slots;
    uint32_t nr_rx_slots;
    uint16_t nr_tx_rings;
    uint16_t nr_rx_rings;
    uint16_t nr_host_tx_rings;
    uint16_t nr_host_rx_rings;
    uint16_t nr_mem_id;
    uint16_t pad[3];
};
struct nmreq_vale_attach {
    struct nmreq_register reg;
    uint32_t port_index;
    uint32_t pad1;
};
struct nmreq_vale_detach {
    uint32_t port_index;
    uint32_t pad1;
};
struct nmreq_vale_list {
    uint16_t nr_bridge_idx;
    uint16_t pad1;
    uint32_t nr_port_idx;
};
struct nmreq_vale_newif {
    uint32_t nr_tx_slots;
    uint32_t nr_rx_slots;
    uint16_t nr_tx_rings;
    uint16_t nr_rx_rings;
    uint16_t nr_mem_id;
    uint16_t pad1;
};
/* cdef-end */
#endif
