/* fuzz_vnet.c — libFuzzer entry for the offload kernels (bindings/vnet.c), built with
 * AddressSanitizer and UBSan (`make fuzz`, and briefly in `make test`). An input is a
 * virtio_net_hdr (10 bytes) and a frame, as a guest's NIC or a TAP hands them over; every
 * buffer is exactly as long as the kernel may use, so a write or read past it is a report.
 * Beyond not crashing: inferred metadata always passes the check, and segmentation is
 * deterministic and fills each segment within its buffer. */
#include <stdlib.h>
#include <string.h>
#include "bindings/vnet.h"

static uint8_t *copy(const uint8_t *p, size_t n) {
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, p, n);
    return c;
}

static void segment(const uint8_t *f, uint32_t len, const struct vp_offload *ol, uint32_t cap) {
    uint32_t n = vp_gso_count(f, len, ol, cap);
    uint8_t **bufs;
    uint16_t *lens, *lens2;
    if (!n) return;
    if (n > VP_GSO_MAX_SEGS) abort();
    bufs = calloc(n, sizeof(*bufs));
    lens = calloc(n, sizeof(*lens));
    lens2 = calloc(n, sizeof(*lens2));
    for (uint32_t i = 0; i < n; i++) bufs[i] = malloc(cap);
    if (vp_gso_segment(f, len, ol, bufs, lens, n) != n) abort();
    for (uint32_t i = 0; i < n; i++)
        if (lens[i] == 0 || lens[i] > cap) abort();
    /* the same input cuts the same way */
    if (vp_gso_segment(f, len, ol, bufs, lens2, n) != n || memcmp(lens, lens2, n * sizeof(*lens))) abort();
    for (uint32_t i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    free(lens);
    free(lens2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct vp_offload ol;
    uint32_t len;
    uint8_t *f;
    if (size < VP_VNET_HDR_LEN || size - VP_VNET_HDR_LEN > 65535) return 0;
    len = (uint32_t)(size - VP_VNET_HDR_LEN);
    f = copy(data + VP_VNET_HDR_LEN, len);
    if (vp_vnet_parse(data, len, &ol) == 0) {
        if (ol.flags & VP_OL_CSUM) vp_csum_complete(f, len, &ol);
        segment(f, len, &ol, 2048);
        segment(f, len, &ol, VP_VNET_BUF_SIZE);
    }
    free(f);
    /* a frame without metadata (AF_XDP): what is inferred must be valid for it */
    f = copy(data + VP_VNET_HDR_LEN, len);
    if (vp_vnet_infer(f, len, 1500, &ol) && vp_vnet_check(&ol, len)) abort();
    if (vp_offload_any(&ol)) {
        if (ol.flags & VP_OL_CSUM) vp_csum_complete(f, len, &ol);
        segment(f, len, &ol, 2048);
    }
    free(f);
    return 0;
}
