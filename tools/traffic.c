/* traffic.c — the generator copies prebuilt frames into a TX ring one batch per
 * publish; the sink counts and releases RX slots. Both sleep when idle so a
 * generator and a sink can share one core. On a real netmap port the kernel moves
 * tail only in a sync ioctl, so each step makes one, as pkt-gen does in its ioctl mode. */
#include <string.h>
#include <sched.h>
#include <time.h>
#ifdef __linux__
#include <sys/prctl.h>
#endif
#include <arpa/inet.h>
#include "traffic.h"
#include "../bindings/netmap/port.h"

static uint16_t csum(const uint8_t *p, uint32_t n) {
    uint32_t s = 0;
    for (uint32_t i = 0; i + 1 < n; i += 2) s += (uint32_t)p[i] << 8 | p[i + 1];
    if (n & 1) s += (uint32_t)p[n - 1] << 8;
    while (s >> 16) s = (s & 0xffff) + (s >> 16);
    return (uint16_t)~s;
}

/* flow f: UDP/IPv4 from 198.18.0.0 + (f mod 65536), source port 1024 + f / 65536,
 * to 198.19.0.1:9 (the RFC 2544 benchmark range) */
int vp_gen_build(uint8_t *frames, uint32_t stride, uint32_t nflows, uint32_t len, const uint8_t *dst_mac, const uint8_t *src_mac) {
    if (len < 42 || len > stride || len > 65535 || nflows == 0 || nflows > 65536u * 64000u) return -1;
    for (uint32_t f = 0; f < nflows; f++) {
        uint8_t *p = frames + (size_t)f * stride, *ip = p + 14, *udp = ip + 20;
        uint32_t src = htonl(0xc6120000u + (f & 0xffff)), dst = htonl(0xc6130001u);
        uint16_t v;
        memset(p, 0, len);
        memcpy(p, dst_mac, 6);
        memcpy(p + 6, src_mac, 6);
        p[12] = 0x08; p[13] = 0x00;
        ip[0] = 0x45;
        v = htons((uint16_t)(len - 14)); memcpy(ip + 2, &v, 2);
        ip[8] = 64; ip[9] = 17;
        memcpy(ip + 12, &src, 4);
        memcpy(ip + 16, &dst, 4);
        v = htons(csum(ip, 20)); memcpy(ip + 10, &v, 2);
        v = htons((uint16_t)(1024 + f / 65536)); memcpy(udp, &v, 2);
        v = htons(9); memcpy(udp + 2, &v, 2);
        v = htons((uint16_t)(len - 34)); memcpy(udp + 4, &v, 2);
        for (uint32_t i = 42; i < len; i++) p[i] = (uint8_t)i;
    }
    return 0;
}

/* Paced sending: slot k of a schedule is due k/rate after its origin (1/rate apart), and
 * each slot is either sent or skipped. Falling behind by a scheduling delay (a loaded
 * machine wakes a sleeper milliseconds late) is made up at once, so the rate holds; a
 * sender held up for longer (ring full, its pipeline stopped) does not catch up afterwards
 * in a burst: once more than 200 ms (or a batch) of slots are due and unsent, they are
 * skipped. Stamped frames (latency) go on time or not at all: more than a batch, or
 * 100 us, of them due (a generator preempted, its vCPU stopped) are skipped, or the
 * generator's own stall would come out as a burst and be measured as the pipeline's
 * latency. Whole slots are counted, so sent + pace_skipped is the schedule exactly.
 * Returns how many packets are due by `now` in all (against g->sent). */
#define STAMPED_LATE_NS 100000.0
static uint64_t slots_done(const struct vp_gen *g) { return g->sent + g->pace_skipped - g->pace_sent; }

static uint64_t paced_due(struct vp_gen *g, uint64_t now) {
    double gap = 1e9 / g->rate_pps;
    if (!g->pace_ns) { g->pace_ns = now; g->pace_sent = g->sent + g->pace_skipped; }
    if (now < g->pace_ns) return g->sent;
    uint64_t slots = (uint64_t)((double)(now - g->pace_ns) / gap), done = slots_done(g);
    if (slots <= done) return g->sent;
    double late = g->stamp_at ? STAMPED_LATE_NS / gap : g->rate_pps * 0.2;
    if (g->stamp_at ? late > (double)g->batch : late < (double)g->batch) late = (double)g->batch;
    if (late < 1) late = 1;
    if ((double)(slots - done) > late) {    /* more than `late` due: skip them all */
        g->pace_skipped += slots - done;
        return g->sent;
    }
    return g->sent + (slots - done);
}

/* Sending is over (its count sent, or its end_ns come; end_ns 0: its count): the slots
 * its schedule had due by its end and did not send (the sender held up across it) count
 * as skipped, so sent + pace_skipped is the whole schedule; nothing is sent afterwards. */
void vp_gen_settle(struct vp_gen *g, uint64_t end_ns) {
    if (g->done) return;
    g->done = 1;
    if (!end_ns || g->rate_pps <= 0 || !g->pace_ns || end_ns <= g->pace_ns) return;
    uint64_t slots = (uint64_t)((double)(end_ns - g->pace_ns) * g->rate_pps / 1e9), done = slots_done(g);
    if (slots > done) g->pace_skipped += slots - done;
}

/* one generator step: fill up to a batch of slots; returns how many were sent */
static uint32_t gen_step(struct vp_gen *g, uint64_t now) {
    struct vp_ring *r = g->ring;
    uint32_t n = vp_ring_space(r), sent = 0, first = vp_ring_produce(r);
    if (n > g->batch) n = g->batch;
    if (g->count && g->sent + n > g->count) n = (uint32_t)(g->count - g->sent);
    if (g->rate_pps > 0) {
        uint64_t due = paced_due(g, now);
        n = due > g->sent ? (uint32_t)(due - g->sent < n ? due - g->sent : n) : 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        struct netmap_slot *s = vp_slot(r, vp_ring_produce(r));
        uint32_t idx = VP_READ_ONCE(s->buf_idx);
        if (!vp_buf_ok(r, idx)) { r->st.bad_buf++; r->faulty = 1; break; }
        memcpy(vp_buf(r, idx), g->frames + (size_t)g->next * g->stride, g->frame_len);
        VP_WRITE_ONCE(s->len, (uint16_t)g->frame_len);
        VP_WRITE_ONCE(s->flags, 0);
        vp_ring_produced(r);
        if (++g->next == g->nframes) g->next = 0;
        sent++;
    }
    if (sent && g->stamp_at) {
        /* the send time, as late as it can be taken: just before the frames are published */
        uint64_t t = vp_now_ns();
        for (uint32_t i = 0, si = first; i < sent; i++, si = nm_ring_next(r->nslots, si)) {
            uint32_t idx = VP_READ_ONCE(vp_slot(r, si)->buf_idx);
            if (vp_buf_ok(r, idx)) memcpy(vp_buf(r, idx) + g->stamp_at, &t, sizeof(t));
        }
    }
    if (sent) vp_ring_publish(r);
    /* sends what was published and reclaims completed slots (tail) for the next step */
    if (g->fd >= 0 && vp_netmap_sync(g->fd, 1)) g->sync_errors++;
    g->sent += sent;
    if (sent) g->last_send_ns = now;
    else g->ring_full++;
    return sent;
}

/* a log-linear histogram bucket: exact below 64 ns, then 32 per power of two (±1.6%) */
static inline uint32_t latency_bucket(uint64_t v) {
    uint32_t msb, b;
    if (v < 64) return (uint32_t)v;
    msb = 63 - (uint32_t)__builtin_clzll(v);
    b = ((msb - 5) << 5) + (uint32_t)(v >> (msb - 5));
    return b < VP_LAT_BUCKETS ? b : VP_LAT_BUCKETS - 1;
}

/* a received frame's time since its generator stamped it (`now` was read after the ring) */
static inline void latency_record(struct vp_latency *l, const char *frame, uint32_t len, uint32_t at, uint64_t now) {
    uint64_t t, d;
    if (len < at + sizeof(t)) { l->unstamped++; return; }
    memcpy(&t, frame + at, sizeof(t));
    if (t > now || now - t > VP_LAT_MAX_NS) { l->unstamped++; return; }     /* not a stamp of ours */
    d = now - t;
    l->count++;
    l->sum_ns += d;
    if (d > l->max_ns) l->max_ns = d;
    if (!l->min_ns || d < l->min_ns) l->min_ns = d;
    l->hist[latency_bucket(d)]++;
}

/* one sink step: count and release what the ring holds (up to a batch) */
static uint32_t sink_step(struct vp_sink *s, uint64_t now) {
    struct vp_ring *r = s->ring;
    uint32_t n, got = 0;
    /* returns the slots released last step and brings in what arrived since */
    if (s->fd >= 0 && vp_netmap_sync(s->fd, 0)) s->sync_errors++;
    n = vp_ring_avail(r);
    /* read after the ring: every frame it holds arrived before now (a `now` read first
     * would make frames that arrived while this process was preempted look early) */
    if (s->lat && n) now = vp_now_ns();
    if (n > s->batch) n = s->batch;
    for (uint32_t i = 0; i < n; i++) {
        uint32_t idx, si = r->cons;
        uint16_t len;
        r->cons = nm_ring_next(r->nslots, si);
        if (!vp_slot_take(r, si, &idx, &len)) continue;
        if (s->lat) latency_record(s->lat, vp_buf(r, idx), len, s->stamp_at, now);
        s->bytes += len;
        got++;
    }
    if (n) {
        vp_ring_release(r);
        s->packets += got;
        if (!s->first_ns) s->first_ns = now;
        s->last_ns = now;
    } else {
        s->empty_polls++;
    }
    return n;
}

/* Nothing to do. A ring that is full or empty for a few microseconds is the common case
 * under load (the pipeline is about to drain or fill it): keep the CPU then, yielding now
 * and again, as pkt-gen does. Only after IDLE_SPIN_NS of nothing is the tool idle for real:
 * then it sleeps, longer the longer it stays idle, up to IDLE_MAX_NS, so an idle generator
 * or sink costs a few wake-ups per millisecond, not a core. `*since` is the time idleness
 * began (0: working), reset by the caller whenever work was done. */
#define IDLE_SPIN_NS 2000000ull
#define IDLE_MAX_NS 100000ull
static void idle(uint64_t *since, uint64_t now) {
    if (!*since) *since = now;
    uint64_t idle_ns = now - *since;
    if (idle_ns < IDLE_SPIN_NS) {
        sched_yield();
        return;
    }
    uint64_t ns = (idle_ns - IDLE_SPIN_NS) / 8 + 1000;
    struct timespec ts = { 0, (long)(ns > IDLE_MAX_NS ? IDLE_MAX_NS : ns) };
    nanosleep(&ts, NULL);
}

/* A paced generator with nothing due yet sleeps until its next packet is (at most a
 * slice away): --rate 10 costs ten wake-ups a second, not a spinning core. The last
 * PACE_SPIN_NS before it is due, and while frames it sent are on their way to `s` (their
 * latency is being measured: the sink must see them arrive), it spins instead. */
#define PACE_SPIN_NS 20000ull
#define IN_FLIGHT_NS 1000000ull
#define IN_FLIGHT_NAP_NS 50000ull
static void pace_wait(const struct vp_gen *g, const struct vp_sink *s, uint64_t now, uint64_t end) {
#ifdef __linux__
    /* the default 50 us timer slack would stretch every wait of a fast paced sender */
    static int slack_set;
    if (!slack_set) { prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0); slack_set = 1; }
#endif
    uint64_t due = g->pace_ns + (uint64_t)((double)(slots_done(g) + 1) * 1e9 / g->rate_pps);
    int in_flight = s && s->packets < g->sent;
    if (due > end) due = end;
    if (g->end_ns && due > g->end_ns) due = g->end_ns;
    if (due <= now) return;
    if (due - now < PACE_SPIN_NS || (in_flight && now - g->last_send_ns < IN_FLIGHT_NS)) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#endif
        return;
    }
    uint64_t ns = due - now - PACE_SPIN_NS / 2;
    /* stamped frames still on their way (through a worker that naps): the sink beside us
     * looks every IN_FLIGHT_NAP_NS, or they would wait for the next send to be read */
    if (in_flight && s->lat && ns > IN_FLIGHT_NAP_NS) ns = IN_FLIGHT_NAP_NS;
    struct timespec ts = { (time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull) };
    nanosleep(&ts, NULL);
}

static int gen_done(const struct vp_gen *g, uint64_t now) {
    return g->done || (g->count && g->sent >= g->count) || (g->end_ns && now >= g->end_ns);
}
static int sink_done(const struct vp_sink *s) { return s->count && s->packets >= s->count; }

uint64_t vp_gen_run(struct vp_gen *g, uint64_t max_ns) {
    uint64_t t0 = vp_now_ns(), now = t0, before = g->sent;
    uint64_t since = 0;
    if (!g->start_ns) g->start_ns = t0;
    if (g->frame_len > g->ring->buf_size) return 0;
    while (now - t0 < max_ns && !gen_done(g, now)) {
        if (gen_step(g, now)) since = 0;
        else if (g->rate_pps > 0 && vp_ring_space(g->ring)) pace_wait(g, NULL, now, t0 + max_ns);
        else idle(&since, now);
        now = vp_now_ns();
    }
    g->bytes = g->sent * g->frame_len;
    return g->sent - before;
}

uint64_t vp_sink_run(struct vp_sink *s, uint64_t max_ns) {
    uint64_t t0 = vp_now_ns(), now = t0, before = s->packets;
    uint64_t since = 0;
    while (now - t0 < max_ns && !sink_done(s)) {
        if (!sink_step(s, now)) idle(&since, now); else since = 0;
        now = vp_now_ns();
    }
    return s->packets - before;
}

/* pkt-gen's txrx on two ports in one loop: no scheduler between sending and draining */
uint64_t vp_gen_sink_run(struct vp_gen *g, struct vp_sink *s, uint64_t max_ns) {
    uint64_t t0 = vp_now_ns(), now = t0, before = s->packets;
    uint64_t since = 0;
    if (!g->start_ns) g->start_ns = t0;
    if (g->frame_len > g->ring->buf_size) return 0;
    while (now - t0 < max_ns && !(gen_done(g, now) && sink_done(s))) {
        uint32_t work = gen_done(g, now) ? 0 : gen_step(g, now);
        work += sink_step(s, now);
        if (work) since = 0;
        else if (g->rate_pps > 0 && !gen_done(g, now) && vp_ring_space(g->ring)) pace_wait(g, s, now, t0 + max_ns);
        else idle(&since, now);
        now = vp_now_ns();
    }
    g->bytes = g->sent * g->frame_len;
    return s->packets - before;
}
