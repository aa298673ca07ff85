/* fq_producer.h — the idempotent producer's sequence rule (Kafka's KIP-98), per partition.
 *
 * An idempotent producer stamps every batch it appends with its producerId, its
 * producerEpoch and the baseSequence of the batch's first record; the batch's records
 * take sequences baseSequence .. baseSequence + recordCount - 1 (modulo 2^31: after
 * INT32_MAX comes 0, as in Kafka). Sequences count per (producer, partition).
 *
 * A partition keeps, per producer id, an fq_pentry: the newest epoch it has seen and the
 * sequence ranges and offsets of its last FQ_PRODUCER_BATCHES batches. The entry is
 * rebuilt from the batch headers of the log itself (fastq/_core/_pstate.pxi): the log is
 * the source of truth, the entry a cache of it. An incoming batch is judged by
 * fq_pentry_check:
 *
 *   epoch < entry's epoch          FQ_PSEQ_FENCED: a newer instance of the same
 *                                   transactional producer has written here
 *   (first, last) equals one of    FQ_PSEQ_DUPLICATE: a retry of a batch that was stored;
 *   the cached batches              *dup says where (whatever the epoch, >= the entry's)
 *   first == next(newest last)     FQ_PSEQ_APPEND
 *   anything else                  FQ_PSEQ_OUT_OF_ORDER (a gap, or a retry of a batch
 *                                   older than the cached ones, or a partial overlap)
 *
 * A producer id the partition has never seen may start at any sequence (its earlier
 * batches, if any, were removed by retention). Unlike Kafka, an epoch bump does not
 * restart the sequence at 0: a transactional producer reopened after a crash continues
 * where its previous instance stopped, so that its retry of the batch it never learned
 * the fate of is recognized as a duplicate (see fastq/broker/idempotence.py).
 */
#ifndef FQ_PRODUCER_H
#define FQ_PRODUCER_H
#include <stdint.h>

#define FQ_PRODUCER_BATCHES 5     /* batches remembered per producer (Kafka: 5 in flight) */

enum {
    FQ_PSEQ_APPEND = 0,
    FQ_PSEQ_DUPLICATE = 1,
    FQ_PSEQ_FENCED = 2,
    FQ_PSEQ_OUT_OF_ORDER = 3,
};

typedef struct fq_pbatch {
    int32_t first_seq;
    int32_t last_seq;
    int64_t base_offset;      /* offset of the batch's first record */
    int64_t max_timestamp;
} fq_pbatch;

typedef struct fq_pentry {
    int64_t producer_id;
    int16_t epoch;            /* the newest epoch seen for this producer id */
    int16_t count;            /* cached batches, 0..FQ_PRODUCER_BATCHES */
    int16_t head;             /* index of the newest cached batch */
    int16_t _pad;
    fq_pbatch batches[FQ_PRODUCER_BATCHES];
} fq_pentry;

/* The sequence after `seq` (INT32_MAX wraps to 0). */
static inline int32_t fq_seq_next(int32_t seq) { return seq == INT32_MAX ? 0 : seq + 1; }
/* The last sequence of a batch of `count` >= 1 records starting at `first`. */
static inline int32_t fq_seq_last(int32_t first, int32_t count) {
    int64_t last = (int64_t)first + count - 1;
    return (int32_t)(last > INT32_MAX ? last - INT32_MAX - 1 : last);
}

/* fq_pentry_check's slow path: a retry, a gap, or a fenced epoch. */
int fq_pentry_check_slow(const fq_pentry *e, int16_t epoch, int32_t first_seq, int32_t last_seq,
                         const fq_pbatch **dup);

/* Judge a batch (epoch, first..last) against entry `e` (NULL: an unknown producer).
 * Returns an FQ_PSEQ_* code; for FQ_PSEQ_DUPLICATE, *dup points at the cached batch.
 * Inline: the next batch of the current epoch is every append's case. */
static inline int fq_pentry_check(const fq_pentry *e, int16_t epoch, int32_t first_seq, int32_t last_seq,
                                  const fq_pbatch **dup) {
    if (!e || e->count == 0) return FQ_PSEQ_APPEND;
    if (epoch == e->epoch && first_seq == fq_seq_next(e->batches[e->head].last_seq)) return FQ_PSEQ_APPEND;
    return fq_pentry_check_slow(e, epoch, first_seq, last_seq, dup);
}
/* The sequence the producer's next batch must start with (-1 for an empty entry). */
int32_t fq_pentry_next_seq(const fq_pentry *e);
/* Record a stored batch (appended now, or found in the log) in `e`. A batch of an older
 * epoch than the entry's, found while rebuilding, changes nothing. */
static inline void fq_pentry_record(fq_pentry *e, int16_t epoch, int32_t first_seq, int32_t last_seq,
                                    int64_t base_offset, int64_t max_timestamp) {
    if (e->count > 0 && epoch < e->epoch) return;
    e->epoch = epoch;
    int16_t at = e->count == 0 ? 0 : (int16_t)((e->head + 1) % FQ_PRODUCER_BATCHES);
    e->batches[at].first_seq = first_seq;
    e->batches[at].last_seq = last_seq;
    e->batches[at].base_offset = base_offset;
    e->batches[at].max_timestamp = max_timestamp;
    e->head = at;
    if (e->count < FQ_PRODUCER_BATCHES) e->count++;
}

#endif
