/* packet.h — AF_PACKET sockets (TPACKET_V2 mmap rx ring, sendmmsg tx) as netmap rings. */
#include "../adapter.h"
/* cdef-begin */
int vp_packet_open(struct vp_io *io, uint32_t q, int ifindex, int fanout, int vnet, char *err, size_t errlen);
void vp_packet_init(struct vp_io *io);
void vp_packet_close(struct vp_io *io);
void vp_packet_poll_stats(struct vp_io *io);
/* cdef-end */
