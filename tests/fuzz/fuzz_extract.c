/* fuzz_extract.c — libFuzzer entry for the extract kernel, built with AddressSanitizer and
 * UBSan (`make fuzz`, and briefly in `make test`). Each input is one frame in a buffer of
 * exactly its length, so any read past the frame is an ASan report. Beyond not crashing,
 * the key must be what the parser's contract says. */
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include "pipeline/stages/extract.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct vp_flow_key k, k2;
    uint64_t perr[VP_PERR_N] = {0}, perr2[VP_PERR_N] = {0}, nerr = 0;
    uint8_t *p;
    if (size > 65535) return 0;
    p = malloc(size ? size : 1);
    memcpy(p, data, size);
    vp_extract_one(p, (uint32_t)size, 7, &k, perr);
    /* layers parse in order: L4 only on top of L3, L3 only on top of L2 */
    if ((k.layers & VP_L4) && !(k.layers & VP_L3)) abort();
    if ((k.layers & VP_L3) && !(k.layers & VP_L2)) abort();
    if (k.in_port != 7) abort();
    /* Open vSwitch's vlan-limit=1: one tag at most, and a tag there has its CFI bit */
    if (k.vlans[1].tpid || k.vlans[1].tci) abort();
    if (!!(k.layers & VP_VLAN) != !!k.vlans[0].tpid || ((k.layers & VP_VLAN) && !(k.vlans[0].tci & htons(0x1000))))
        abort();
    /* a frame too short for Ethernet yields nothing but its error counter */
    if (size < 14 && (k.layers || perr[VP_PERR_ETH_SHORT] != 1)) abort();
    /* one frame, at most one parse error; padding fields stay zero (they are hashed) */
    for (int i = 0; i < VP_PERR_N; i++) nerr += perr[i];
    if (nerr > 1 || k.pad0 || k.pad1 || k.pad2 || k.pad3) abort();
    /* the same bytes give the same key and hash */
    vp_extract_one(p, (uint32_t)size, 7, &k2, perr2);
    if (memcmp(&k, &k2, sizeof(k)) || vp_key_hash(&k) != vp_key_hash(&k2)) abort();
    /* the hash takes only the words a key of its kind can hold: nothing was written elsewhere */
    for (uint32_t w = 0, bits = vp_key_words(&k); w < sizeof(k) / 8; w++)
        if (!(bits >> w & 1) && ((const uint64_t *)&k)[w]) abort();
    /* the portable CRC32C gives the crc32 instruction's values (where the CPU has one) */
    if (vp_crc32c_cpu() && vp_key_hash_path(&k, 0) != vp_key_hash_path(&k, 1)) abort();
    free(p);
    return 0;
}
