/* fq_batch.h — Kafka RecordBatch v2 (magic 2): encode, validate, decode.
 *
 * Byte layout of one batch (all fixed-width integers big-endian, as in Kafka):
 *
 *   off len field
 *   0   8   baseOffset            int64   (outside the CRC: rewritten on append)
 *   8   4   batchLength           int32   bytes after this field (total = 12 + batchLength)
 *   12  4   partitionLeaderEpoch  int32   (outside the CRC; fastq writes 0)
 *   16  1   magic                 int8    = 2
 *   17  4   crc                   uint32  CRC-32C of bytes [21, end)
 *   21  2   attributes            int16   bits 0-2 compression (fastq: 0 none), bit 3
 *                                          timestamp type, bit 4 transactional, bit 5 control
 *   23  4   lastOffsetDelta       int32
 *   27  8   baseTimestamp         int64   (Kafka calls it firstTimestamp)
 *   35  8   maxTimestamp          int64
 *   43  8   producerId            int64   (-1: no idempotent producer; see fq_producer.h)
 *   51  2   producerEpoch         int16   (-1)
 *   53  4   baseSequence          int32   (-1; else the first record's sequence)
 *   57  4   recordCount           int32
 *   61  ... records
 *
 * One record (varints are zigzag):
 *   length varint (bytes after this field) | attributes int8 (0) |
 *   timestampDelta varlong | offsetDelta varint | keyLength varint (-1 = null) | key |
 *   valueLength varint (-1 = null) | value | headerCount varint |
 *   headers: headerKeyLength varint | headerKey (UTF-8) | headerValueLength varint (-1 = null) | value
 */
#ifndef FQ_BATCH_H
#define FQ_BATCH_H
#include <stddef.h>
#include <stdint.h>

#define FQ_BATCH_OFF_BASE_OFFSET 0
#define FQ_BATCH_OFF_LENGTH 8
#define FQ_BATCH_OFF_LEADER_EPOCH 12
#define FQ_BATCH_OFF_MAGIC 16
#define FQ_BATCH_OFF_CRC 17
#define FQ_BATCH_OFF_ATTRIBUTES 21
#define FQ_BATCH_OFF_LAST_OFFSET_DELTA 23
#define FQ_BATCH_OFF_BASE_TIMESTAMP 27
#define FQ_BATCH_OFF_MAX_TIMESTAMP 35
#define FQ_BATCH_OFF_PRODUCER_ID 43
#define FQ_BATCH_OFF_PRODUCER_EPOCH 51
#define FQ_BATCH_OFF_BASE_SEQUENCE 53
#define FQ_BATCH_OFF_RECORD_COUNT 57
#define FQ_BATCH_HEADER_SIZE 61   /* bytes before the first record */
#define FQ_BATCH_LOG_OVERHEAD 12  /* baseOffset + batchLength */
#define FQ_BATCH_MAGIC 2
/* attributes bits */
#define FQ_ATTR_COMPRESSION_MASK 0x07
#define FQ_ATTR_TIMESTAMP_LOG_APPEND 0x08
#define FQ_ATTR_TRANSACTIONAL 0x10
#define FQ_ATTR_CONTROL 0x20

/* A header or record field as (pointer, length); length -1 means null. */
typedef struct fq_header {
    const uint8_t *key;     /* header key, UTF-8, never null */
    int32_t key_len;
    const uint8_t *value;
    int32_t value_len;      /* -1 = null */
} fq_header;

typedef struct fq_record_in {
    int64_t timestamp;      /* ms since epoch */
    const uint8_t *key;
    int32_t key_len;        /* -1 = null key */
    const uint8_t *value;
    int32_t value_len;      /* -1 = null value (tombstone) */
    const fq_header *headers;
    int32_t n_headers;
} fq_record_in;

/* Summary of a validated batch. */
typedef struct fq_batch_info {
    int64_t base_offset;
    int32_t batch_length;     /* as stored: bytes after the length field */
    int64_t total_size;       /* 12 + batch_length */
    int16_t attributes;
    int32_t last_offset_delta;
    int64_t base_timestamp;
    int64_t max_timestamp;
    int64_t producer_id;
    int16_t producer_epoch;
    int32_t base_sequence;
    int32_t record_count;
    uint32_t crc;
} fq_batch_info;

/* One decoded record: pointers into the batch buffer (zero-copy). */
typedef struct fq_record_view {
    int32_t size;             /* bytes of the record including its length varint */
    int8_t attributes;
    int64_t timestamp_delta;
    int32_t offset_delta;
    const uint8_t *key;
    int32_t key_len;          /* -1 = null */
    const uint8_t *value;
    int32_t value_len;        /* -1 = null */
    const uint8_t *headers;   /* start of the first header (after headerCount) */
    int32_t n_headers;
    int32_t headers_len;      /* bytes of the header area */
} fq_record_view;

/* Encoded size of one record (including its length varint) given its deltas. */
int64_t fq_record_size(const fq_record_in *r, int64_t timestamp_delta, int32_t offset_delta);

/* Encoded size of a whole batch of n records (base timestamp = recs[0].timestamp).
 * Returns FQ_EINVAL for n < 1 or negative lengths below -1. */
int64_t fq_batch_size(const fq_record_in *recs, int32_t n);

/* How many of recs[0:n], from the first, fit one batch of at most max_bytes: k >= 1 with
 * that batch's size in *size, or 0 when recs[0] alone is larger (its batch size in
 * *size). Linear in k: the greedy split of a large append. Negative status on bad
 * records (as fq_batch_size). */
int32_t fq_batch_fit(const fq_record_in *recs, int32_t n, int64_t max_bytes, int64_t *size);

/* Encode n records as one batch into dst (cap bytes). Writes baseOffset, all header
 * fields and the CRC. base timestamp = recs[0].timestamp, maxTimestamp = the largest.
 * producerId/epoch/baseSequence = -1, leader epoch 0. Timestamp deltas wrap modulo 2^64
 * (as Java longs do), so any int64 timestamps round-trip.
 * Returns bytes written, FQ_ETOOBIG if cap is too small, FQ_EINVAL on bad input
 * (including compression bits in attributes: fastq writes uncompressed records). */
int64_t fq_batch_encode(uint8_t *dst, size_t cap, int64_t base_offset, int16_t attributes,
                        const fq_record_in *recs, int32_t n);

/* fq_batch_encode with the idempotent producer's fields (KIP-98): producerId,
 * producerEpoch and baseSequence as given (-1, -1, -1 for none; see fq_producer.h). */
int64_t fq_batch_encode_producer(uint8_t *dst, size_t cap, int64_t base_offset, int16_t attributes,
                                 int64_t producer_id, int16_t producer_epoch, int32_t base_sequence,
                                 const fq_record_in *recs, int32_t n);

/* Kafka's control records (transaction markers): a control batch has attributes
 * transactional | control, the producer's id and epoch, baseSequence -1, and one record
 * whose key is version int16 (0) | type int16 and whose value is version int16 (0) |
 * coordinatorEpoch int32, all big-endian. */
#define FQ_CONTROL_ABORT 0
#define FQ_CONTROL_COMMIT 1
#define FQ_CONTROL_BATCH_SIZE 78   /* the encoded size of a control batch */

/* Encode a COMMIT or ABORT marker batch into dst (cap >= FQ_CONTROL_BATCH_SIZE).
 * Returns bytes written, FQ_ETOOBIG, or FQ_EINVAL for another type. */
int64_t fq_batch_encode_control(uint8_t *dst, size_t cap, int64_t base_offset, int64_t producer_id,
                                int16_t producer_epoch, int16_t type, int32_t coordinator_epoch,
                                int64_t timestamp);

/* The marker type (FQ_CONTROL_ABORT / FQ_CONTROL_COMMIT) of a validated control batch, or
 * FQ_ECORRUPT when it is not one (not a control batch, not one record, a key that is not
 * version 0 of 4 bytes). */
int fq_batch_control_type(const uint8_t *batch, const fq_batch_info *info);

/* Rewrite the baseOffset field (outside the CRC). */
void fq_batch_set_base_offset(uint8_t *batch, int64_t base_offset);

/* Parse and check the batch header at buf[0..avail):
 *   FQ_ETRUNCATED  avail < 12 or the batch extends past avail (a torn tail)
 *   FQ_ECORRUPT    batchLength < 49 or > max_size, or recordCount < 0 or inconsistent
 *                  with lastOffsetDelta (need 0 <= recordCount <= lastOffsetDelta + 1,
 *                  lastOffsetDelta >= 0: compaction may drop records, never add them),
 *                  or more records than the bytes could hold (7 bytes minimum each)
 *   FQ_EMAGIC      magic != 2
 *   FQ_ECORRUPT    CRC mismatch (when check_crc is nonzero)
 * On success fills *info and returns 0. A batchLength of 0 is FQ_ECORRUPT: scanners of
 * preallocated (zero-filled) files treat a zero length field as the end of data before
 * calling this. */
int fq_batch_validate(const uint8_t *buf, size_t avail, int64_t max_size, int check_crc,
                      fq_batch_info *info);

/* Decode the record starting at p (within the records area, `avail` bytes left).
 * Returns bytes consumed (> 0) or FQ_ETRUNCATED (the length varint or the declared
 * length runs past avail) / FQ_ECORRUPT. Validates that key, value and headers stay
 * inside the record's declared length and consume it exactly (as Kafka does); lengths
 * below -1 and null header keys are corrupt. Header bytes are checked, not copied:
 * walk them with fq_header_decode over [headers, headers + headers_len). */
int fq_record_decode(const uint8_t *p, size_t avail, fq_record_view *out);

/* Decode one header at p (`avail` bytes of the header area left).
 * Returns bytes consumed or FQ_ETRUNCATED / FQ_ECORRUPT. */
int fq_header_decode(const uint8_t *p, size_t avail, fq_header *out);

/* Walk every record of a validated, uncompressed batch and check framing: record count
 * matches, offset deltas strictly ascending within 0..lastOffsetDelta, nothing runs
 * past the batch and the records end exactly at the batch end.
 * Returns 0 or FQ_ECORRUPT (also for a compressed batch, whose records cannot be walked). */
int fq_batch_check_records(const uint8_t *batch, const fq_batch_info *info);

/* Big-endian helpers. */
static inline void fq_be_put64(uint8_t *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) { p[i] = (uint8_t)v; v >>= 8; }
}
static inline void fq_be_put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}
static inline void fq_be_put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline uint64_t fq_be_get64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v = (v << 8) | p[i];
    return v;
}
static inline uint32_t fq_be_get32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static inline uint16_t fq_be_get16(const uint8_t *p) { return (uint16_t)(((uint16_t)p[0] << 8) | p[1]); }

#endif
