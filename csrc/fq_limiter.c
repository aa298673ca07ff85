/* fq_limiter.c — GCRA buckets in a shared-memory file; see fq_limiter.h for the format,
 * the algorithm and the key table's rules. */
#define _GNU_SOURCE
#include "fq_limiter.h"

#include <string.h>
#include <time.h>

#include "fq_crc32c.h"
#include "fq_os.h"
#include "fq_status.h"

#define RELAXED __ATOMIC_RELAXED
#define ACQUIRE __ATOMIC_ACQUIRE
#define RELEASE __ATOMIC_RELEASE
#define ACQ_REL __ATOMIC_ACQ_REL

#define GEN(s) ((uint32_t)((s) >> FQ_LIM_TAT_BITS))
#define TAT(s) ((int64_t)((s)&FQ_LIM_TAT_MASK))
#define PACK(g, t) (((uint64_t)(g) << FQ_LIM_TAT_BITS) | ((uint64_t)(t)&FQ_LIM_TAT_MASK))
#define BUSY(oldgen, pid) \
    (((uint64_t)FQ_LIM_GEN_BUSY << FQ_LIM_TAT_BITS) | ((uint64_t)(oldgen) << 40) | (uint64_t)(pid))
#define BUSY_GEN(s) ((uint32_t)(((s) >> 40) & 0xFu))
#define BUSY_PID(s) ((uint32_t)(s))

enum { MOVED = 2 };   /* gcra(): the slot was re-keyed under us; look the key up again */

static inline uint32_t next_gen(uint32_t g) { return g + 1 >= FQ_LIM_GEN_BUSY ? 0 : g + 1; }

int64_t fq_lim_coarse_ns(void) {
#ifdef CLOCK_MONOTONIC_COARSE
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#else
    return fq_monotonic_ns();
#endif
}

int64_t fq_lim_coarse_res_ns(void) {
#ifdef CLOCK_MONOTONIC_COARSE
    struct timespec ts;
    if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) == 0)
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
#endif
    return 0;
}

static inline int64_t clock_now(int64_t fixed, int flags) {
    if (fixed >= 0) return fixed;
    return (flags & FQ_LIM_COARSE) ? fq_lim_coarse_ns() : fq_monotonic_ns();
}

int fq_lim_size(uint32_t capacity, uint64_t *size) {
    if (capacity > FQ_LIM_MAX_CAPACITY || (capacity & (capacity - 1)) != 0) return FQ_EINVAL;
    *size = FQ_LIM_HDR_SIZE + (uint64_t)capacity * sizeof(fq_lim_slot);
    return 0;
}

int fq_lim_config(uint64_t points, int64_t duration_ns, uint64_t burst, int64_t *emission_ns,
                  int64_t *tau_ns) {
    if (points < 1 || burst < 1 || duration_ns < 1) return FQ_EINVAL;
    /* T < 1 ns cannot be represented: more than 1e9 points per second */
    if (points > (uint64_t)duration_ns) return FQ_EINVAL;
    /* ceil: the limiter may admit a hair less than asked, never more */
    uint64_t t = ((uint64_t)duration_ns + points - 1) / points;
    if (burst >= (uint64_t)FQ_LIM_MAX_NS / t) return FQ_EINVAL;
    *emission_ns = (int64_t)t;
    *tau_ns = (int64_t)(burst * t);
    return 0;
}

static uint32_t header_crc(const fq_lim_hdr *h) { return fq_crc32c(0, h, FQ_LIM_CRC_END); }

int fq_lim_format(void *mem, size_t len, uint32_t capacity, uint32_t window, uint64_t points,
                  int64_t duration_ns, uint64_t burst, const uint8_t boot_id[16]) {
    uint64_t size;
    int64_t t, tau;
    int rc = fq_lim_size(capacity, &size);
    if (rc < 0) return rc;
    if (len < size) return FQ_ETRUNCATED;
    if ((rc = fq_lim_config(points, duration_ns, burst, &t, &tau)) < 0) return rc;
    if (window > capacity) window = capacity;
    if (window > FQ_LIM_MAX_WINDOW) window = FQ_LIM_MAX_WINDOW;
    if (capacity > 0 && window == 0) return FQ_EINVAL;
    fq_lim_hdr *h = mem;
    memset(h, 0, size);
    memcpy(h->magic, FQ_LIM_MAGIC, 8);
    h->version = FQ_LIM_VERSION;
    h->header_size = FQ_LIM_HDR_SIZE;
    h->capacity = capacity;
    h->window = window;
    h->points = points;
    h->duration_ns = duration_ns;
    h->burst = burst;
    h->emission_ns = t;
    h->tau_ns = tau;
    memcpy(h->boot_id, boot_id, 16);
    h->size = size;
    h->crc = header_crc(h);
    return 0;
}

int fq_lim_attach(fq_lim *lim, void *mem, size_t len, uint32_t pid) {
    fq_lim_hdr *h = mem;
    uint64_t size;
    int64_t t, tau;
    if (len < FQ_LIM_HDR_SIZE) return FQ_ETRUNCATED;
    if (memcmp(h->magic, FQ_LIM_MAGIC, 8) != 0 || h->version != FQ_LIM_VERSION) return FQ_EMAGIC;
    if (h->crc != header_crc(h) || h->header_size != FQ_LIM_HDR_SIZE) return FQ_ECORRUPT;
    if (fq_lim_size(h->capacity, &size) < 0 || h->size != size) return FQ_ECORRUPT;
    if (h->window > h->capacity || h->window > FQ_LIM_MAX_WINDOW || (h->capacity && !h->window))
        return FQ_ECORRUPT;
    if (fq_lim_config(h->points, h->duration_ns, h->burst, &t, &tau) < 0 || t != h->emission_ns ||
        tau != h->tau_ns)
        return FQ_ECORRUPT;
    if (len < size) return FQ_ETRUNCATED;
    lim->hdr = h;
    lim->slots = (fq_lim_slot *)((char *)mem + FQ_LIM_HDR_SIZE);
    lim->mask = h->capacity ? (uint64_t)h->capacity - 1 : 0;
    lim->window = h->window;
    lim->me = pid;
    lim->burst = h->burst;
    lim->emission_ns = t;
    lim->tau_ns = tau;
    return 0;
}

int fq_lim_same_boot(const fq_lim *lim, const uint8_t boot_id[16]) {
    return memcmp(lim->hdr->boot_id, boot_id, 16) == 0;
}

int fq_lim_reset(fq_lim *lim, const uint8_t boot_id[16]) {
    fq_lim_hdr *h = lim->hdr;
    memset(lim->slots, 0, (size_t)h->capacity * sizeof(fq_lim_slot));
    __atomic_store_n(&h->global, 0, RELEASE);
    h->lock = 0;
    h->lock_steals = h->inserts = h->evictions = h->busy_recoveries = 0;
    memcpy(h->boot_id, boot_id, 16);
    h->crc = header_crc(h);
    return 0;
}

int fq_lim_lock(fq_lim *lim) {
    uint32_t *lock = &lim->hdr->lock, me = lim->me, expect = 0;
    if (__atomic_compare_exchange_n(lock, &expect, me, 0, ACQUIRE, RELAXED)) return 0;
    int64_t next_check = fq_monotonic_ns() + FQ_LIM_LOCK_CHECK_NS;
    for (uint32_t i = 1;; i++) {
        uint32_t owner = __atomic_load_n(lock, RELAXED);
        if (owner == 0) {
            expect = 0;
            if (__atomic_compare_exchange_n(lock, &expect, me, 0, ACQUIRE, RELAXED)) return 0;
            continue;
        }
        if (i < 128) fq_cpu_relax(); else fq_yield();
        if ((i & 15) != 0) continue;
        int64_t now = fq_monotonic_ns();
        if (now < next_check) continue;
        next_check = now + FQ_LIM_LOCK_CHECK_NS;
        /* a holder killed inside insert() left at most one BUSY slot, which consumers
         * repair on their own: taking the lock over needs no repair */
        if (owner != me && fq_pid_dead(owner) &&
            __atomic_compare_exchange_n(lock, &owner, me, 0, ACQUIRE, RELAXED)) {
            __atomic_fetch_add(&lim->hdr->lock_steals, 1, RELAXED);
            return 1;
        }
    }
}

void fq_lim_unlock(fq_lim *lim) { __atomic_store_n(&lim->hdr->lock, 0, RELEASE); }

/* Wait while *word is BUSY (a re-key in progress, a few instructions long); a BUSY left
 * by a dead process becomes a full bucket of the next gen. Returns the new state. */
static uint64_t wait_busy(fq_lim *lim, uint64_t *word, uint64_t s) {
    int64_t next_check = -1;
    for (uint32_t i = 1;; i++) {
        if (i < 64) fq_cpu_relax(); else fq_yield();
        uint64_t cur = __atomic_load_n(word, ACQUIRE);
        if (cur != s) return cur;
        if ((i & 15) != 0) continue;
        int64_t now = fq_monotonic_ns();
        if (next_check < 0) next_check = now + FQ_LIM_LOCK_CHECK_NS;
        if (now < next_check) continue;
        next_check = now + FQ_LIM_LOCK_CHECK_NS;
        uint32_t pid = BUSY_PID(s);
        if (pid != lim->me && fq_pid_dead(pid)) {
            uint64_t repaired = PACK(next_gen(BUSY_GEN(s)), 0);
            if (__atomic_compare_exchange_n(word, &cur, repaired, 0, ACQ_REL, ACQUIRE)) {
                __atomic_fetch_add(&lim->hdr->busy_recoveries, 1, RELAXED);
                return repaired;
            }
            return cur;
        }
    }
}

/* One GCRA decision on a state word. keyw: the slot's key word, re-checked after each
 * load of the state (NULL for the global bucket). 0 admitted, 1 refused, MOVED, < 0. */
static int gcra(fq_lim *lim, uint64_t *word, const uint64_t *keyw, uint64_t key, uint64_t n,
                int64_t fixed_now, int flags, int64_t *retry_ns) {
    const int64_t tau = lim->tau_ns, cost = (int64_t)n * lim->emission_ns;
    uint64_t s = __atomic_load_n(word, ACQUIRE);
    for (;;) {
        if (GEN(s) == FQ_LIM_GEN_BUSY) {
            s = wait_busy(lim, word, s);
            continue;
        }
        if (keyw && __atomic_load_n(keyw, ACQUIRE) != key) return MOVED;
        /* the clock is read after the state is loaded: whoever wrote tat read its clock
         * before, so a valid tat is <= now + tau and anything later is damage */
        int64_t now = clock_now(fixed_now, flags);
        if (now >= FQ_LIM_MAX_NS) return FQ_EUNSUPPORTED;
        int64_t tat = TAT(s);
        if (tat > now + tau + FQ_LIM_SLACK_NS) return FQ_ECORRUPT;
        int64_t new_tat = (tat > now ? tat : now) + cost;
        if (new_tat - now > tau) {
            *retry_ns = new_tat - tau - now;
            return 1;
        }
        if (__atomic_compare_exchange_n(word, &s, PACK(GEN(s), new_tat), 0, ACQ_REL, ACQUIRE))
            return 0;
    }
}

static fq_lim_slot *find(fq_lim *lim, uint64_t key) {
    for (uint32_t i = 0; i < lim->window; i++) {
        fq_lim_slot *sl = &lim->slots[(key + i) & lim->mask];
        uint64_t k = __atomic_load_n(&sl->key, ACQUIRE);
        if (k == key) return sl;
        if (k == 0) return NULL;   /* slots never empty again: the key is not further on */
    }
    return NULL;
}

/* Put `key` in the table (under the lock). 0, or FQ_EFULL (*retry_ns set). */
static int insert(fq_lim *lim, uint64_t key, int64_t fixed_now, int flags, int64_t *retry_ns) {
    int rc = fq_lim_lock(lim);
    if (rc < 0) return rc;
    rc = 0;
    for (;;) {
        if (find(lim, key)) break;
        int64_t now = clock_now(fixed_now, flags), oldest_tat = INT64_MAX;
        fq_lim_slot *pick = NULL, *oldest = NULL;
        uint64_t ps = 0, os = 0;
        int empty = 0;
        for (uint32_t i = 0; i < lim->window && !pick; i++) {
            fq_lim_slot *sl = &lim->slots[(key + i) & lim->mask];
            if (__atomic_load_n(&sl->key, ACQUIRE) == 0) {
                pick = sl;
                empty = 1;
                break;
            }
            uint64_t s = __atomic_load_n(&sl->state, ACQUIRE);
            if (GEN(s) == FQ_LIM_GEN_BUSY) s = wait_busy(lim, &sl->state, s);
            if (GEN(s) == FQ_LIM_GEN_BUSY) continue;   /* re-keyed again meanwhile */
            if (TAT(s) <= now) {
                pick = sl;
                ps = s;
            } else if (TAT(s) < oldest_tat) {
                oldest = sl;
                os = s;
                oldest_tat = TAT(s);
            }
        }
        if (empty) {
            /* an empty slot's state is 0 (a full bucket of gen 0); nobody else writes it */
            __atomic_store_n(&pick->key, key, RELEASE);
            __atomic_fetch_add(&lim->hdr->inserts, 1, RELAXED);
            break;
        }
        int live = 0;
        if (!pick) {
            if (!oldest || !(flags & FQ_LIM_EVICT)) {
                *retry_ns = oldest ? oldest_tat - now : 1;
                rc = FQ_EFULL;
                break;
            }
            pick = oldest;
            ps = os;
            live = 1;
        }
        /* BUSY first: a consumer of the old key that loaded its state before this CAS
         * fails its own CAS; one that loads it after waits until the key is replaced */
        if (!__atomic_compare_exchange_n(&pick->state, &ps, BUSY(GEN(ps), lim->me), 0, ACQ_REL,
                                         ACQUIRE))
            continue;   /* consumed meanwhile: look again */
        __atomic_store_n(&pick->key, key, RELEASE);
        __atomic_store_n(&pick->state, PACK(next_gen(GEN(ps)), 0), RELEASE);
        __atomic_fetch_add(&lim->hdr->inserts, 1, RELAXED);
        if (live) __atomic_fetch_add(&lim->hdr->evictions, 1, RELAXED);
        break;
    }
    fq_lim_unlock(lim);
    return rc;
}

int fq_lim_consume(fq_lim *lim, uint64_t key, uint64_t n, int64_t now_ns, int flags,
                   int64_t *retry_ns) {
    if (n < 1 || n > lim->burst) return FQ_EINVAL;
    if (key == 0) return gcra(lim, &lim->hdr->global, NULL, 0, n, now_ns, flags, retry_ns);
    if (lim->window == 0) return FQ_EINVAL;
    for (;;) {
        fq_lim_slot *sl = find(lim, key);
        if (sl) {
            int rc = gcra(lim, &sl->state, &sl->key, key, n, now_ns, flags, retry_ns);
            if (rc != MOVED) return rc;
            continue;
        }
        int rc = insert(lim, key, now_ns, flags, retry_ns);
        if (rc < 0) return rc;
    }
}

int64_t fq_lim_available(fq_lim *lim, uint64_t key, int64_t now_ns) {
    uint64_t *word = &lim->hdr->global;
    if (key != 0) {
        fq_lim_slot *sl = lim->window ? find(lim, key) : NULL;
        if (!sl) return (int64_t)lim->burst;
        word = &sl->state;
    }
    uint64_t s = __atomic_load_n(word, ACQUIRE);
    if (GEN(s) == FQ_LIM_GEN_BUSY) return (int64_t)lim->burst;   /* being re-keyed: empty */
    int64_t now = clock_now(now_ns, 0), tat = TAT(s);
    int64_t debt = tat > now ? tat - now : 0;
    if (debt > lim->tau_ns) return 0;
    return (lim->tau_ns - debt) / lim->emission_ns;
}

static inline uint64_t mix64(uint64_t x) {   /* splitmix64's finalizer */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

uint64_t fq_lim_hash(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t h = mix64(seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ull)), w;
    for (; n >= 8; p += 8, n -= 8) {
        memcpy(&w, p, 8);
        h = mix64(h ^ w) + 0x9E3779B97F4A7C15ull;
    }
    if (n) {
        w = 0;
        memcpy(&w, p, n);
        h = mix64(h ^ w);
    }
    return h ? h : 1;
}
