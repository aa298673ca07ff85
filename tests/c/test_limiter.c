/* test_limiter.c — the GCRA limiter core (csrc/fq_limiter.c) without Python.
 *
 *  - config: T rounded up, the out-of-range configurations refused;
 *  - format/attach: a wrong magic, a damaged configuration byte, a short mapping refused;
 *  - GCRA on a fake clock: burst at once, then one point per T, retry_ns exact;
 *  - the key table: keys in their own buckets, reuse of a refilled slot, FQ_EFULL with the
 *    time until the oldest live key frees, eviction of the oldest with FQ_LIM_EVICT;
 *  - a BUSY slot left by a dead process becomes a full bucket, the insert lock of a dead
 *    process is taken over; a damaged tat is FQ_ECORRUPT;
 *  - 4 threads on the real clock admit no more than burst + elapsed / T (+1), and nearly that.
 */
#define _GNU_SOURCE
#include "fqtest.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fq_limiter.h"
#include "fq_os.h"
#include "fq_status.h"

static const uint8_t BOOT[16] = "boot-id-0123456";

static fq_lim *make(uint32_t cap, uint32_t window, uint64_t points, int64_t dur, uint64_t burst) {
    uint64_t size;
    if (fq_lim_size(cap, &size) < 0) return NULL;
    void *mem = calloc(1, size);
    fq_lim *lim = calloc(1, sizeof *lim);
    if (fq_lim_format(mem, size, cap, window, points, dur, burst, BOOT) < 0 ||
        fq_lim_attach(lim, mem, size, (uint32_t)getpid()) < 0) {
        free(mem);
        free(lim);
        return NULL;
    }
    return lim;
}

static void drop(fq_lim *lim) {
    free(lim->hdr);
    free(lim);
}

static void test_config(void) {
    int64_t t = 0, tau = 0;
    CHECK(fq_lim_config(100, 1000000000, 100, &t, &tau) == 0 && t == 10000000 && tau == 1000000000,
          "t=%lld", (long long)t);
    CHECK(fq_lim_config(3, 1000000000, 1, &t, &tau) == 0 && t == 333333334, "ceil t=%lld", (long long)t);
    CHECK(fq_lim_config(0, 1000, 1, &t, &tau) == FQ_EINVAL, "points 0");
    CHECK(fq_lim_config(10, 0, 1, &t, &tau) == FQ_EINVAL, "duration 0");
    CHECK(fq_lim_config(10, 1000, 0, &t, &tau) == FQ_EINVAL, "burst 0");
    CHECK(fq_lim_config(2000, 1000, 1, &t, &tau) == FQ_EINVAL, "T < 1ns");
    CHECK(fq_lim_config(1, FQ_LIM_MAX_NS, 2, &t, &tau) == FQ_EINVAL, "tau too large");
    uint64_t size;
    CHECK(fq_lim_size(3, &size) == FQ_EINVAL, "capacity not a power of two");
    CHECK(fq_lim_size(16, &size) == 0 && size == FQ_LIM_HDR_SIZE + 256, "size");
}

static void test_attach(void) {
    uint64_t size;
    fq_lim_size(8, &size);
    uint8_t *mem = calloc(1, size);
    fq_lim lim;
    REQUIRE(fq_lim_format(mem, size, 8, 4, 10, 1000000000, 10, BOOT) == 0, "format");
    CHECK(fq_lim_attach(&lim, mem, size, 1) == 0, "attach");
    CHECK(fq_lim_same_boot(&lim, BOOT), "same boot");
    CHECK(fq_lim_attach(&lim, mem, size - 1, 1) == FQ_ETRUNCATED, "short");
    CHECK(fq_lim_attach(&lim, mem, 100, 1) == FQ_ETRUNCATED, "shorter than a header");
    for (int off = 0; off < FQ_LIM_CRC_END + 4; off++) {
        mem[off] ^= 0x20;
        int rc = fq_lim_attach(&lim, mem, size, 1);
        CHECK(rc == FQ_ECORRUPT || rc == FQ_EMAGIC, "flipped byte %d: rc=%d", off, rc);
        mem[off] ^= 0x20;
    }
    CHECK(fq_lim_attach(&lim, mem, size, 1) == 0, "attach after the flips undone");
    uint8_t other[16] = "another-boot-id";
    lim.hdr->global = 12345;
    fq_lim_reset(&lim, other);
    CHECK(lim.hdr->global == 0 && fq_lim_same_boot(&lim, other), "reset");
    CHECK(fq_lim_attach(&lim, mem, size, 1) == 0, "attach after reset (crc rewritten)");
    free(mem);
}

static void test_gcra(void) {
    fq_lim *lim = make(0, 0, 10, 1000000000, 5);   /* T = 100 ms, burst 5 */
    REQUIRE(lim, "make");
    int64_t retry = -1, t0 = 1000000000;
    for (int i = 0; i < 5; i++) CHECK(fq_lim_consume(lim, 0, 1, t0, 0, &retry) == 0, "burst %d", i);
    CHECK(fq_lim_consume(lim, 0, 1, t0, 0, &retry) == 1 && retry == 100000000, "retry=%lld",
          (long long)retry);
    CHECK(fq_lim_consume(lim, 0, 1, t0 + 99999999, 0, &retry) == 1 && retry == 1, "1 ns early");
    CHECK(fq_lim_consume(lim, 0, 1, t0 + 100000000, 0, &retry) == 0, "one per T");
    CHECK(fq_lim_available(lim, 0, t0 + 100000000) == 0, "none left");
    CHECK(fq_lim_available(lim, 0, t0 + 400000000) == 3, "3 refilled");
    CHECK(fq_lim_consume(lim, 0, 6, t0, 0, &retry) == FQ_EINVAL, "n > burst");
    CHECK(fq_lim_consume(lim, 0, 0, t0, 0, &retry) == FQ_EINVAL, "n = 0");
    CHECK(fq_lim_consume(lim, 7, 1, t0, 0, &retry) == FQ_EINVAL, "a key without a table");
    /* a tat no process of this boot could have written */
    lim->hdr->global = (uint64_t)(t0 + 3000000000LL);
    CHECK(fq_lim_consume(lim, 0, 1, t0, 0, &retry) == FQ_ECORRUPT, "damaged tat");
    drop(lim);
}

static void test_keys(void) {
    fq_lim *lim = make(4, 4, 10, 1000000000, 2);   /* T = 100 ms, burst 2, 4 slots */
    REQUIRE(lim, "make");
    int64_t retry = 0, t0 = 1000000000;
    for (uint64_t k = 1; k <= 4; k++) {
        CHECK(fq_lim_consume(lim, k, 2, t0 + (int64_t)k, 0, &retry) == 0, "key %llu", (unsigned long long)k);
        CHECK(fq_lim_consume(lim, k, 1, t0 + (int64_t)k, 0, &retry) == 1, "key %llu empty", (unsigned long long)k);
    }
    CHECK(fq_lim_consume(lim, 5, 1, t0 + 10, 0, &retry) == FQ_EFULL && retry == 200000001 - 10,
          "full: retry=%lld", (long long)retry);
    CHECK(fq_lim_consume(lim, 5, 1, t0 + 10, FQ_LIM_EVICT, &retry) == 0, "evict");
    CHECK(lim->hdr->evictions == 1, "evictions=%llu", (unsigned long long)lim->hdr->evictions);
    /* key 1 (the oldest tat) was evicted: it starts over with a full bucket */
    CHECK(fq_lim_consume(lim, 1, 2, t0 + 20, FQ_LIM_EVICT, &retry) == 0, "evicted key refilled");
    /* after every bucket refilled, new keys reuse slots without evicting */
    uint64_t ev = lim->hdr->evictions;
    for (uint64_t k = 10; k < 14; k++)
        CHECK(fq_lim_consume(lim, k, 1, t0 + 2000000000, 0, &retry) == 0, "reuse %llu", (unsigned long long)k);
    CHECK(lim->hdr->evictions == ev, "no eviction for refilled slots");
    /* a BUSY mark of a dead process: repaired into a full bucket */
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    waitpid(pid, NULL, 0);
    fq_lim_slot *sl = NULL;
    for (uint32_t i = 0; i < 4; i++)
        if (lim->slots[i].key == 10) sl = &lim->slots[i];
    REQUIRE(sl, "key 10 in the table");
    sl->state = ((uint64_t)FQ_LIM_GEN_BUSY << FQ_LIM_TAT_BITS) | ((uint64_t)3 << 40) | (uint32_t)pid;
    CHECK(fq_lim_consume(lim, 10, 2, t0 + 2000000000, 0, &retry) == 0, "recovered from BUSY");
    CHECK(lim->hdr->busy_recoveries == 1 && (sl->state >> FQ_LIM_TAT_BITS) == 4, "gen moved on: %llx",
          (unsigned long long)sl->state);
    /* the insert lock held by a dead process: taken over, the insert goes through */
    lim->hdr->lock = (uint32_t)pid;
    CHECK(fq_lim_consume(lim, 77, 1, t0 + 2000000000, FQ_LIM_EVICT, &retry) == 0, "insert after takeover");
    CHECK(lim->hdr->lock_steals == 1 && lim->hdr->lock == 0, "steals=%llu lock=%u",
          (unsigned long long)lim->hdr->lock_steals, lim->hdr->lock);
    drop(lim);
}

struct hammer {
    fq_lim *lim;
    uint64_t key;
    int64_t until;
    uint64_t admitted;
};

static void *hammer_run(void *arg) {
    struct hammer *h = arg;
    int64_t retry;
    while (fq_monotonic_ns() < h->until)
        if (fq_lim_consume(h->lim, h->key, 1, -1, 0, &retry) == 0) h->admitted++;
    return NULL;
}

static void test_threads(void) {
    /* 20000/s, burst 2000 (100 ms: a loaded box may deschedule every thread for a few
     * ms, and a full bucket drops what it cannot hold), 4 threads on the global bucket
     * and 4 on one key, 200 ms */
    for (int keyed = 0; keyed < 2; keyed++) {
        fq_lim *lim = make(16, 8, 20000, 1000000000, 2000);
        REQUIRE(lim, "make");
        struct hammer hs[4];
        pthread_t th[4];
        int64_t t0 = fq_monotonic_ns();
        for (int i = 0; i < 4; i++) {
            hs[i] = (struct hammer){lim, keyed ? 42 : 0, t0 + 200000000, 0};
            pthread_create(&th[i], NULL, hammer_run, &hs[i]);
        }
        uint64_t total = 0;
        for (int i = 0; i < 4; i++) {
            pthread_join(th[i], NULL);
            total += hs[i].admitted;
        }
        double elapsed = (double)(fq_monotonic_ns() - t0);
        double bound = 2000 + elapsed / 50000.0 + 1;
        CHECK(total <= bound && total >= 0.9 * (2000 + 200000000 / 50000.0),
              "keyed=%d admitted %llu, bound %.0f", keyed, (unsigned long long)total, bound);
        drop(lim);
    }
}

void suite_limiter(void) {
    test_config();
    test_attach();
    test_gcra();
    test_keys();
    test_threads();
}
