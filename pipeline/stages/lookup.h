/* lookup.h — find each packet's flow in the exact-match flow table. */
#include "batch.h"
/* cdef-begin */
int vp_flows_init(struct vp_dp *dp, uint32_t limit);
uint32_t vp_lookup(struct vp_dp *dp, struct vp_batch *b);
int vp_flow_install(struct vp_dp *dp, const struct vp_flow_key *k, int32_t action, int32_t mf_entry);
int vp_flow_insert_pending(struct vp_dp *dp, const struct vp_flow_key *k, uint32_t hash, uint32_t upcall_id);
int vp_flow_remove(struct vp_dp *dp, const struct vp_flow_key *k);
uint32_t vp_flow_sweep(struct vp_dp *dp, uint64_t idle_ns, uint64_t pending_ns, uint32_t *expired_pending);
int32_t vp_flow_find(struct vp_dp *dp, const struct vp_flow_key *k);
uint32_t vp_flow_dump(struct vp_dp *dp, uint32_t start, uint32_t *entries, uint32_t max, uint32_t *next);
int vp_megaflows_init(struct vp_dp *dp, uint32_t limit);
int vp_megaflow_install(struct vp_dp *dp, const struct vp_flow_key *k, const struct vp_flow_key *mask, int32_t action);
int vp_megaflow_remove_entry(struct vp_dp *dp, uint32_t e);
uint32_t vp_megaflow_dump(struct vp_dp *dp, uint32_t start, uint32_t *entries, uint32_t max, uint32_t *next);
uint32_t vp_megaflow_sweep(struct vp_dp *dp, uint64_t idle_ns);
void vp_megaflow_rerank(struct vp_dp *dp);
uint32_t vp_flows_forget_mac(struct vp_dp *dp, const uint8_t *mac, uint32_t home);
/* cdef-end */
