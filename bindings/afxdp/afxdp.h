/* afxdp.h — AF_XDP sockets (libxdp's xsk rings, a UMEM per queue) as netmap rings,
 * fed by a 6-instruction XDP program attached through a bpf_link. */
#include "../adapter.h"
/* cdef-begin */
#define VP_XDP_AUTO 0
#define VP_XDP_NATIVE 1
#define VP_XDP_GENERIC 2
#define VP_ZC_AUTO 0
#define VP_ZC_ON 1
#define VP_ZC_OFF 2
struct vp_afxdp_info {
    int ifindex;
    uint32_t mode;            /* VP_XDP_NATIVE or VP_XDP_GENERIC: what attached */
    uint32_t zerocopy;        /* 1 if every queue bound in zero-copy mode */
    uint32_t prog_id;
    uint32_t sg;              /* multi-buffer: frames longer than a UMEM frame arrive whole */
};
int vp_afxdp_open(struct vp_io *io, const char *ifname, uint32_t first_queue, uint32_t nq,
                  uint32_t mode, uint32_t zc, uint32_t sg, struct vp_afxdp_info *info, char *err, size_t errlen);
void vp_afxdp_close(struct vp_io *io);
void vp_afxdp_poll_stats(struct vp_io *io);
/* cdef-end */
