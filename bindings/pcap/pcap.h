/* pcap.h — pcap files as ports: a file read as an rx ring, a tx ring written to a file,
 * and mirrors (a copy of what any port sends). */
#include "../adapter.h"
/* cdef-begin */
struct vp_pcap_in {
    const uint8_t *data;      /* the whole file, validated header first */
    uint64_t size;
    uint64_t off;             /* next record */
    uint32_t swapped;         /* file written on the other endianness */
    uint32_t nsec;            /* timestamps in ns (magic a1b23c4d) */
    uint32_t recorded_rate;   /* 1: replay at the gaps recorded; 0: as fast as the ring takes */
    uint32_t eof;
    int64_t loops;            /* passes left after this one; -1 forever */
    uint64_t t0_file_ns;      /* first record's timestamp in this pass */
    uint64_t t0_ns;           /* when this pass started */
};
struct vp_pcap_out {
    int fd;
    uint32_t used;
    uint64_t packets;
    uint64_t bytes;
    uint64_t write_errors;
    int32_t last_errno;
    uint32_t pad;
    uint8_t buf[262144];
};
void vp_pcap_in_init(struct vp_io *io, struct vp_pcap_in *in);
void vp_pcap_out_init(struct vp_io *io, struct vp_pcap_out *out);
void vp_pcap_mirror(struct vp_pcap_out *m, const char *data, uint32_t len);
void vp_pcap_flush(struct vp_pcap_out *m);
void vp_pcap_mirror_attach(struct vp_port *p, struct vp_pcap_out *m);
/* cdef-end */
