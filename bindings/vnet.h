/* vnet.h — virtio-net offload metadata, as Linux hands it with frames from guests, TAPs
 * and AF_PACKET (PACKET_VNET_HDR / IFF_VNET_HDR): a GSO super-frame to be cut into
 * segments, a partial L4 checksum to be completed. Validation, checksum completion and
 * TCP/UDP segmentation in C, one call per frame from the stages' batch loops. */
#ifndef VP_VNET_H
#define VP_VNET_H
#include <stdint.h>

/* cdef-begin */
#define VP_VNET_HDR_LEN 10        /* struct virtio_net_hdr, host byte order, in front of each frame */
#define VP_VNET_BUF_SIZE 65472    /* ring buffers of ports that carry it: a 64 KB frame fits */
#define VP_OL_CSUM 1              /* VIRTIO_NET_HDR_F_NEEDS_CSUM: complete the checksum at csum_start + csum_off */
#define VP_OL_CSUM_VALID 2        /* VIRTIO_NET_HDR_F_DATA_VALID: the sender checked it */
#define VP_GSO_NONE 0
#define VP_GSO_TCPV4 1
#define VP_GSO_UDP 3              /* UFO (IP fragmentation): not segmented here */
#define VP_GSO_TCPV6 4
#define VP_GSO_UDP_L4 5           /* USO: one UDP datagram per segment */
#define VP_GSO_ECN 0x80
#define VP_GSO_MAX_SEGS 1024      /* more than this from one frame is refused */

/* what a frame carries besides its bytes (a parsed virtio_net_hdr, hdr_len recomputed) */
struct vp_offload {
    uint8_t flags;            /* VP_OL_* */
    uint8_t gso_type;         /* VP_GSO_*; its segments carry gso_size bytes of payload each */
    uint16_t gso_size;
    uint16_t csum_start;      /* from the frame's first byte */
    uint16_t csum_off;        /* from csum_start */
};

int vp_vnet_parse(const uint8_t *hdr, uint32_t frame_len, struct vp_offload *ol);
int vp_vnet_check(const struct vp_offload *ol, uint32_t frame_len);
void vp_vnet_write(uint8_t *hdr, const struct vp_offload *ol);
void vp_csum_complete(uint8_t *frame, uint32_t len, const struct vp_offload *ol);
int vp_vnet_infer(uint8_t *frame, uint32_t len, uint32_t mtu, struct vp_offload *ol);
uint32_t vp_gso_count(const uint8_t *frame, uint32_t len, const struct vp_offload *ol, uint32_t cap);
uint32_t vp_gso_segment(const uint8_t *frame, uint32_t len, const struct vp_offload *ol,
                        uint8_t **out, uint16_t *out_len, uint32_t nout);
/* cdef-end */

static inline int vp_offload_any(const struct vp_offload *ol) {
    return ol->flags & VP_OL_CSUM || ol->gso_type != VP_GSO_NONE;
}
#endif
