/* fq_index.h — Kafka-style sparse indexes of a segment.
 *
 * .index      8-byte entries:  relativeOffset uint32 BE | position uint32 BE
 * .timeindex 12-byte entries:  timestamp int64 BE | relativeOffset uint32 BE
 *
 * Entries are appended in ascending order of every field. Files are preallocated and
 * zero-filled; the number of valid entries is kept by the caller.
 */
#ifndef FQ_INDEX_H
#define FQ_INDEX_H
#include <stddef.h>
#include <stdint.h>

#define FQ_INDEX_ENTRY 8
#define FQ_TIMEINDEX_ENTRY 12

/* Largest i < n with entry[i].relativeOffset <= rel; -1 if none (or n == 0). */
int64_t fq_index_floor(const uint8_t *idx, int64_t n, uint32_t rel);
/* Smallest i < n with entry[i].timestamp >= ts; n if none. */
int64_t fq_timeindex_ceil(const uint8_t *tidx, int64_t n, int64_t ts);
/* Largest i < n with entry[i].timestamp <= ts... (floor); -1 if none. */
int64_t fq_timeindex_floor(const uint8_t *tidx, int64_t n, int64_t ts);

void fq_index_put(uint8_t *idx, int64_t i, uint32_t rel, uint32_t pos);
void fq_index_get(const uint8_t *idx, int64_t i, uint32_t *rel, uint32_t *pos);
void fq_timeindex_put(uint8_t *tidx, int64_t i, int64_t ts, uint32_t rel);
void fq_timeindex_get(const uint8_t *tidx, int64_t i, int64_t *ts, uint32_t *rel);

#endif
