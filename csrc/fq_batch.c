/* fq_batch.c — Kafka RecordBatch v2: encode, validate and decode (layout in fq_batch.h).
 *
 * Decoding works on UNTRUSTED bytes read back from disk: every length is checked against
 * both the enclosing structure (record length, batch length) and the bytes available
 * before anything is read, sizes are computed in int64, and nothing is allocated.
 *
 * Timestamp deltas wrap like Java longs: delta = ts - base modulo 2^64, and the reader
 * computes base + delta modulo 2^64, so any int64 timestamp round-trips.
 */
#include "fq_batch.h"

#include <string.h>

#include "fq_crc32c.h"
#include "fq_status.h"
#include "fq_varint.h"

/* the smallest record: length, attributes, tsDelta, offsetDelta, keyLen, valueLen,
 * headerCount — one byte each */
#define MIN_RECORD_SIZE 7
/* batchLength of a batch with no records: the header after the length field */
#define MIN_BATCH_LENGTH (FQ_BATCH_HEADER_SIZE - FQ_BATCH_LOG_OVERHEAD)

/* Inlined twins of fq_varint.c's encoders: encode is called per field, so the call
 * overhead of the exported versions shows in batch encode time. */
static inline int uv_size(uint64_t u) {
    int bits = 64 - __builtin_clzll(u | 1);
    return (bits + 6) / 7;
}
static inline int vi_size(int32_t v) { return uv_size(fq_zigzag32(v)); }
static inline int vl_size(int64_t v) { return uv_size(fq_zigzag64(v)); }
static inline int uv_put(uint8_t *dst, uint64_t v) {
    int n = 0;
    while (v >= 0x80) {
        dst[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    dst[n++] = (uint8_t)v;
    return n;
}
static inline int vi_put(uint8_t *dst, int32_t v) { return uv_put(dst, fq_zigzag32(v)); }
static inline int vl_put(uint8_t *dst, int64_t v) { return uv_put(dst, fq_zigzag64(v)); }

static inline int64_t wrap_sub(int64_t a, int64_t b) {
    return (int64_t)((uint64_t)a - (uint64_t)b);
}

/* Bytes of a record after its length varint; FQ_EINVAL for bad lengths. */
static int64_t record_body_size(const fq_record_in *r, int64_t ts_delta, int32_t off_delta) {
    if (r->key_len < -1 || r->value_len < -1 || r->n_headers < 0) return FQ_EINVAL;
    if ((r->key_len > 0 && !r->key) || (r->value_len > 0 && !r->value)) return FQ_EINVAL;
    if (r->n_headers > 0 && !r->headers) return FQ_EINVAL;
    int64_t n = 1 + vl_size(ts_delta) + vi_size(off_delta);
    n += vi_size(r->key_len) + (r->key_len > 0 ? r->key_len : 0);
    n += vi_size(r->value_len) + (r->value_len > 0 ? r->value_len : 0);
    n += vi_size(r->n_headers);
    for (int32_t i = 0; i < r->n_headers; i++) {
        const fq_header *h = &r->headers[i];
        if (h->key_len < 0 || h->value_len < -1) return FQ_EINVAL; /* header keys are never null */
        if ((h->key_len > 0 && !h->key) || (h->value_len > 0 && !h->value)) return FQ_EINVAL;
        n += vi_size(h->key_len) + h->key_len;
        n += vi_size(h->value_len) + (h->value_len > 0 ? h->value_len : 0);
    }
    /* the record length field is an int32; keep it well clear of overflow */
    if (n > INT32_MAX - FQ_BATCH_HEADER_SIZE - FQ_VARINT_MAX) return FQ_ETOOBIG;
    return n;
}

int64_t fq_record_size(const fq_record_in *r, int64_t timestamp_delta, int32_t offset_delta) {
    int64_t body = record_body_size(r, timestamp_delta, offset_delta);
    if (body < 0) return body;
    return vi_size((int32_t)body) + body;
}

int64_t fq_batch_size(const fq_record_in *recs, int32_t n) {
    if (n < 1 || !recs) return FQ_EINVAL;
    int64_t total = FQ_BATCH_HEADER_SIZE;
    int64_t base_ts = recs[0].timestamp;
    for (int32_t i = 0; i < n; i++) {
        int64_t sz = fq_record_size(&recs[i], wrap_sub(recs[i].timestamp, base_ts), i);
        if (sz < 0) return sz;
        total += sz;
        if (total - FQ_BATCH_LOG_OVERHEAD > INT32_MAX) return FQ_ETOOBIG;
    }
    return total;
}

int32_t fq_batch_fit(const fq_record_in *recs, int32_t n, int64_t max_bytes, int64_t *size) {
    if (n < 1 || !recs || !size) return FQ_EINVAL;
    int64_t total = FQ_BATCH_HEADER_SIZE;
    int64_t base_ts = recs[0].timestamp;
    int32_t i;
    for (i = 0; i < n; i++) {
        int64_t sz = fq_record_size(&recs[i], wrap_sub(recs[i].timestamp, base_ts), i);
        if (sz < 0) return (int32_t)sz;
        if (total + sz > max_bytes || total + sz - FQ_BATCH_LOG_OVERHEAD > INT32_MAX) {
            if (i == 0) total += sz;        /* the first record alone is too large: its size */
            break;
        }
        total += sz;
    }
    *size = total;
    return i;
}

static inline uint8_t *put_bytes(uint8_t *p, const uint8_t *src, int32_t len) {
    p += vi_put(p, len);
    if (len > 0) {
        memcpy(p, src, (size_t)len);
        p += len;
    }
    return p;
}

int64_t fq_batch_encode(uint8_t *dst, size_t cap, int64_t base_offset, int16_t attributes,
                        const fq_record_in *recs, int32_t n) {
    return fq_batch_encode_producer(dst, cap, base_offset, attributes, -1, -1, -1, recs, n);
}

int64_t fq_batch_encode_producer(uint8_t *dst, size_t cap, int64_t base_offset, int16_t attributes,
                                 int64_t producer_id, int16_t producer_epoch, int32_t base_sequence,
                                 const fq_record_in *recs, int32_t n) {
    if (n < 1 || !recs || !dst) return FQ_EINVAL;
    /* fastq writes records uncompressed; a compression bit would mislabel them */
    if (attributes & FQ_ATTR_COMPRESSION_MASK) return FQ_EINVAL;
    if (cap < FQ_BATCH_HEADER_SIZE) return FQ_ETOOBIG;
    int64_t base_ts = recs[0].timestamp, max_ts = base_ts;
    uint8_t *p = dst + FQ_BATCH_HEADER_SIZE;
    const uint8_t *end = dst + cap;
    for (int32_t i = 0; i < n; i++) {
        const fq_record_in *r = &recs[i];
        int64_t ts_delta = wrap_sub(r->timestamp, base_ts);
        int64_t body = record_body_size(r, ts_delta, i);
        if (body < 0) return body;
        /* one check per record covers every write below */
        if (vi_size((int32_t)body) + body > end - p) return FQ_ETOOBIG;
        if (r->timestamp > max_ts) max_ts = r->timestamp;
        p += vi_put(p, (int32_t)body);
        *p++ = 0; /* record attributes: unused by Kafka */
        p += vl_put(p, ts_delta);
        p += vi_put(p, i);
        p = put_bytes(p, r->key, r->key_len);
        p = put_bytes(p, r->value, r->value_len);
        p += vi_put(p, r->n_headers);
        for (int32_t j = 0; j < r->n_headers; j++) {
            const fq_header *h = &r->headers[j];
            p = put_bytes(p, h->key, h->key_len);
            p = put_bytes(p, h->value, h->value_len);
        }
        if (p - dst - FQ_BATCH_LOG_OVERHEAD > INT32_MAX) return FQ_ETOOBIG;
    }
    int64_t total = p - dst;
    fq_be_put64(dst + FQ_BATCH_OFF_BASE_OFFSET, (uint64_t)base_offset);
    fq_be_put32(dst + FQ_BATCH_OFF_LENGTH, (uint32_t)(total - FQ_BATCH_LOG_OVERHEAD));
    fq_be_put32(dst + FQ_BATCH_OFF_LEADER_EPOCH, 0);
    dst[FQ_BATCH_OFF_MAGIC] = FQ_BATCH_MAGIC;
    fq_be_put16(dst + FQ_BATCH_OFF_ATTRIBUTES, (uint16_t)attributes);
    fq_be_put32(dst + FQ_BATCH_OFF_LAST_OFFSET_DELTA, (uint32_t)(n - 1));
    fq_be_put64(dst + FQ_BATCH_OFF_BASE_TIMESTAMP, (uint64_t)base_ts);
    fq_be_put64(dst + FQ_BATCH_OFF_MAX_TIMESTAMP, (uint64_t)max_ts);
    fq_be_put64(dst + FQ_BATCH_OFF_PRODUCER_ID, (uint64_t)producer_id);
    fq_be_put16(dst + FQ_BATCH_OFF_PRODUCER_EPOCH, (uint16_t)producer_epoch);
    fq_be_put32(dst + FQ_BATCH_OFF_BASE_SEQUENCE, (uint32_t)base_sequence);
    fq_be_put32(dst + FQ_BATCH_OFF_RECORD_COUNT, (uint32_t)n);
    uint32_t crc = fq_crc32c(0, dst + FQ_BATCH_OFF_ATTRIBUTES,
                             (size_t)(total - FQ_BATCH_OFF_ATTRIBUTES));
    fq_be_put32(dst + FQ_BATCH_OFF_CRC, crc);
    return total;
}

int64_t fq_batch_encode_control(uint8_t *dst, size_t cap, int64_t base_offset, int64_t producer_id,
                                int16_t producer_epoch, int16_t type, int32_t coordinator_epoch,
                                int64_t timestamp) {
    if (type != FQ_CONTROL_ABORT && type != FQ_CONTROL_COMMIT) return FQ_EINVAL;
    uint8_t key[4], value[6];
    fq_be_put16(key, 0);
    fq_be_put16(key + 2, (uint16_t)type);
    fq_be_put16(value, 0);
    fq_be_put32(value + 2, (uint32_t)coordinator_epoch);
    fq_record_in r = {timestamp, key, 4, value, 6, NULL, 0};
    return fq_batch_encode_producer(dst, cap, base_offset, FQ_ATTR_TRANSACTIONAL | FQ_ATTR_CONTROL,
                                    producer_id, producer_epoch, -1, &r, 1);
}

int fq_batch_control_type(const uint8_t *batch, const fq_batch_info *info) {
    if (!(info->attributes & FQ_ATTR_CONTROL) || info->record_count != 1) return FQ_ECORRUPT;
    if (info->attributes & FQ_ATTR_COMPRESSION_MASK) return FQ_ECORRUPT;
    fq_record_view v;
    int rc = fq_record_decode(batch + FQ_BATCH_HEADER_SIZE,
                              (size_t)(info->total_size - FQ_BATCH_HEADER_SIZE), &v);
    if (rc < 0 || v.key_len != 4 || fq_be_get16(v.key) != 0) return FQ_ECORRUPT;
    int type = (int16_t)fq_be_get16(v.key + 2);
    return type == FQ_CONTROL_ABORT || type == FQ_CONTROL_COMMIT ? type : FQ_ECORRUPT;
}

void fq_batch_set_base_offset(uint8_t *batch, int64_t base_offset) {
    fq_be_put64(batch + FQ_BATCH_OFF_BASE_OFFSET, (uint64_t)base_offset);
}

int fq_batch_validate(const uint8_t *buf, size_t avail, int64_t max_size, int check_crc,
                      fq_batch_info *info) {
    if (avail < FQ_BATCH_LOG_OVERHEAD) return FQ_ETRUNCATED;
    int64_t length = (int32_t)fq_be_get32(buf + FQ_BATCH_OFF_LENGTH);
    if (length < MIN_BATCH_LENGTH || length > max_size) return FQ_ECORRUPT;
    int64_t total = FQ_BATCH_LOG_OVERHEAD + length;
    if ((uint64_t)total > avail) return FQ_ETRUNCATED;
    if ((int8_t)buf[FQ_BATCH_OFF_MAGIC] != FQ_BATCH_MAGIC) return FQ_EMAGIC;
    int32_t count = (int32_t)fq_be_get32(buf + FQ_BATCH_OFF_RECORD_COUNT);
    int32_t last_delta = (int32_t)fq_be_get32(buf + FQ_BATCH_OFF_LAST_OFFSET_DELTA);
    /* Compaction may drop records (count < lastOffsetDelta + 1) but never adds any, and
     * each record takes at least MIN_RECORD_SIZE bytes; this bounds what a reader may
     * allocate from recordCount. */
    if (count < 0 || last_delta < 0 || (int64_t)count > (int64_t)last_delta + 1) return FQ_ECORRUPT;
    if ((int64_t)count * MIN_RECORD_SIZE > length - MIN_BATCH_LENGTH) return FQ_ECORRUPT;
    uint32_t stored = fq_be_get32(buf + FQ_BATCH_OFF_CRC);
    if (check_crc) {
        uint32_t crc = fq_crc32c(0, buf + FQ_BATCH_OFF_ATTRIBUTES,
                                 (size_t)(total - FQ_BATCH_OFF_ATTRIBUTES));
        if (crc != stored) return FQ_ECORRUPT;
    }
    if (info) {
        info->base_offset = (int64_t)fq_be_get64(buf + FQ_BATCH_OFF_BASE_OFFSET);
        info->batch_length = (int32_t)length;
        info->total_size = total;
        info->attributes = (int16_t)fq_be_get16(buf + FQ_BATCH_OFF_ATTRIBUTES);
        info->last_offset_delta = last_delta;
        info->base_timestamp = (int64_t)fq_be_get64(buf + FQ_BATCH_OFF_BASE_TIMESTAMP);
        info->max_timestamp = (int64_t)fq_be_get64(buf + FQ_BATCH_OFF_MAX_TIMESTAMP);
        info->producer_id = (int64_t)fq_be_get64(buf + FQ_BATCH_OFF_PRODUCER_ID);
        info->producer_epoch = (int16_t)fq_be_get16(buf + FQ_BATCH_OFF_PRODUCER_EPOCH);
        info->base_sequence = (int32_t)fq_be_get32(buf + FQ_BATCH_OFF_BASE_SEQUENCE);
        info->record_count = count;
        info->crc = stored;
    }
    return FQ_OK;
}

/* A length-prefixed byte field inside [p, end): -1 is null, other negatives corrupt. */
static inline int read_bytes_field(const uint8_t **pp, const uint8_t *end, int allow_null,
                                   const uint8_t **data, int32_t *len) {
    const uint8_t *p = *pp;
    int32_t n;
    int rc = fq_varint_decode(p, (size_t)(end - p), &n);
    if (rc < 0) return rc;
    p += rc;
    if (n < 0) {
        if (n != -1 || !allow_null) return FQ_ECORRUPT;
        *data = NULL;
    } else {
        if (n > end - p) return FQ_ETRUNCATED;
        *data = p;
        p += n;
    }
    *len = n;
    *pp = p;
    return FQ_OK;
}

int fq_header_decode(const uint8_t *p, size_t avail, fq_header *out) {
    const uint8_t *start = p, *end = p + avail;
    int rc = read_bytes_field(&p, end, 0, &out->key, &out->key_len);
    if (rc < 0) return rc;
    rc = read_bytes_field(&p, end, 1, &out->value, &out->value_len);
    if (rc < 0) return rc;
    return (int)(p - start);
}

int fq_record_decode(const uint8_t *p, size_t avail, fq_record_view *out) {
    int32_t length;
    int rc = fq_varint_decode(p, avail, &length);
    if (rc < 0) return rc;
    /* attributes + tsDelta + offsetDelta + keyLen + valueLen + headerCount */
    if (length < MIN_RECORD_SIZE - 1 || length > INT32_MAX - FQ_VARINT_MAX) return FQ_ECORRUPT;
    if ((uint64_t)length > avail - (size_t)rc) return FQ_ETRUNCATED;
    const uint8_t *q = p + rc;
    const uint8_t *end = q + length;
    /* From here a field running past `end` contradicts the declared length: corrupt. */
    out->size = rc + length;
    out->attributes = (int8_t)*q++;
    rc = fq_varlong_decode(q, (size_t)(end - q), &out->timestamp_delta);
    if (rc < 0) return FQ_ECORRUPT;
    q += rc;
    rc = fq_varint_decode(q, (size_t)(end - q), &out->offset_delta);
    if (rc < 0) return FQ_ECORRUPT;
    q += rc;
    if (read_bytes_field(&q, end, 1, &out->key, &out->key_len) < 0) return FQ_ECORRUPT;
    if (read_bytes_field(&q, end, 1, &out->value, &out->value_len) < 0) return FQ_ECORRUPT;
    int32_t n_headers;
    rc = fq_varint_decode(q, (size_t)(end - q), &n_headers);
    if (rc < 0) return FQ_ECORRUPT;
    q += rc;
    /* every header takes at least two bytes (key length, value length) */
    if (n_headers < 0 || (int64_t)n_headers * 2 > end - q) return FQ_ECORRUPT;
    out->headers = q;
    out->n_headers = n_headers;
    for (int32_t i = 0; i < n_headers; i++) {
        fq_header h;
        rc = fq_header_decode(q, (size_t)(end - q), &h);
        if (rc < 0) return FQ_ECORRUPT;
        q += rc;
    }
    if (q != end) return FQ_ECORRUPT; /* Kafka: the record must consume its length exactly */
    out->headers_len = (int32_t)(q - out->headers);
    return out->size;
}

int fq_batch_check_records(const uint8_t *batch, const fq_batch_info *info) {
    /* fastq stores uncompressed batches only; compressed records cannot be walked here */
    if (info->attributes & FQ_ATTR_COMPRESSION_MASK) return FQ_ECORRUPT;
    const uint8_t *p = batch + FQ_BATCH_HEADER_SIZE;
    const uint8_t *end = batch + info->total_size;
    int64_t prev = -1;
    for (int32_t i = 0; i < info->record_count; i++) {
        fq_record_view v;
        int rc = fq_record_decode(p, (size_t)(end - p), &v);
        if (rc < 0) return FQ_ECORRUPT;
        if (v.offset_delta <= prev || v.offset_delta > info->last_offset_delta) return FQ_ECORRUPT;
        prev = v.offset_delta;
        p += rc;
    }
    return p == end ? FQ_OK : FQ_ECORRUPT;
}
