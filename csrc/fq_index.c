/* fq_index.c — binary searches over the sparse offset and time indexes (fq_index.h).
 *
 * Entries are big-endian and ascending; the time index may hold equal timestamps, so the
 * searches are the lower/upper-bound forms (bisect_left / bisect_right) rather than
 * "find any match". A negative n is treated as an empty index.
 */
#include "fq_index.h"

#include "fq_batch.h" /* big-endian helpers */

static inline uint32_t index_rel(const uint8_t *idx, int64_t i) {
    return fq_be_get32(idx + i * FQ_INDEX_ENTRY);
}

static inline int64_t timeindex_ts(const uint8_t *tidx, int64_t i) {
    return (int64_t)fq_be_get64(tidx + i * FQ_TIMEINDEX_ENTRY);
}

int64_t fq_index_floor(const uint8_t *idx, int64_t n, uint32_t rel) {
    /* count of entries with relativeOffset <= rel (bisect_right), minus one */
    int64_t lo = 0, hi = n > 0 ? n : 0;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (index_rel(idx, mid) <= rel) lo = mid + 1;
        else hi = mid;
    }
    return lo - 1;
}

int64_t fq_timeindex_ceil(const uint8_t *tidx, int64_t n, int64_t ts) {
    /* first entry with timestamp >= ts (bisect_left) */
    int64_t lo = 0, hi = n > 0 ? n : 0;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (timeindex_ts(tidx, mid) < ts) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

int64_t fq_timeindex_floor(const uint8_t *tidx, int64_t n, int64_t ts) {
    /* last entry with timestamp <= ts (bisect_right - 1) */
    int64_t lo = 0, hi = n > 0 ? n : 0;
    while (lo < hi) {
        int64_t mid = lo + (hi - lo) / 2;
        if (timeindex_ts(tidx, mid) <= ts) lo = mid + 1;
        else hi = mid;
    }
    return lo - 1;
}

void fq_index_put(uint8_t *idx, int64_t i, uint32_t rel, uint32_t pos) {
    uint8_t *e = idx + i * FQ_INDEX_ENTRY;
    fq_be_put32(e, rel);
    fq_be_put32(e + 4, pos);
}

void fq_index_get(const uint8_t *idx, int64_t i, uint32_t *rel, uint32_t *pos) {
    const uint8_t *e = idx + i * FQ_INDEX_ENTRY;
    *rel = fq_be_get32(e);
    *pos = fq_be_get32(e + 4);
}

void fq_timeindex_put(uint8_t *tidx, int64_t i, int64_t ts, uint32_t rel) {
    uint8_t *e = tidx + i * FQ_TIMEINDEX_ENTRY;
    fq_be_put64(e, (uint64_t)ts);
    fq_be_put32(e + 8, rel);
}

void fq_timeindex_get(const uint8_t *tidx, int64_t i, int64_t *ts, uint32_t *rel) {
    const uint8_t *e = tidx + i * FQ_TIMEINDEX_ENTRY;
    *ts = (int64_t)fq_be_get64(e);
    *rel = fq_be_get32(e + 8);
}
