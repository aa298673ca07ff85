/* fq_producer.c — the idempotent producer's sequence rule (see fq_producer.h). */
#include "fq_producer.h"

#include <stddef.h>

int fq_pentry_check_slow(const fq_pentry *e, int16_t epoch, int32_t first_seq, int32_t last_seq,
                         const fq_pbatch **dup) {
    if (!e || e->count == 0) return FQ_PSEQ_APPEND;
    if (epoch < e->epoch) return FQ_PSEQ_FENCED;
    for (int i = 0; i < e->count; i++) {
        const fq_pbatch *b = &e->batches[i];
        if (b->first_seq == first_seq && b->last_seq == last_seq) {
            if (dup) *dup = b;
            return FQ_PSEQ_DUPLICATE;
        }
    }
    if (first_seq == fq_seq_next(e->batches[e->head].last_seq)) return FQ_PSEQ_APPEND;
    return FQ_PSEQ_OUT_OF_ORDER;
}

int32_t fq_pentry_next_seq(const fq_pentry *e) {
    if (!e || e->count == 0) return -1;
    return fq_seq_next(e->batches[e->head].last_seq);
}
