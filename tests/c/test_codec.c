/* test_codec.c — the byte-level codecs: varints, Kafka RecordBatch v2 encode/validate/
 * decode, the sparse indexes' searches and Kafka's murmur2 partitioner hash.
 *
 * Everything here is endian- and signedness-sensitive (plain char is unsigned on aarch64,
 * big-endian fields are assembled from bytes), which is why it runs on both ISAs.
 */
#include "fqtest.h"

#include <stdlib.h>
#include <string.h>

#include "fq_batch.h"
#include "fq_producer.h"
#include "fq_hash.h"
#include "fq_index.h"
#include "fq_status.h"
#include "fq_varint.h"

static void check_varints(fqt_rng *rng) {
    static const int64_t edges[] = {0, 1, -1, 63, -64, 64, -65, 127, 128, 8191, -8192,
                                    INT32_MAX, INT32_MIN, (int64_t)INT32_MAX + 1,
                                    (int64_t)INT32_MIN - 1, INT64_MAX, INT64_MIN};
    uint8_t b[16];
    for (size_t i = 0; i < sizeof edges / sizeof edges[0] + 2000; i++) {
        int64_t v = i < sizeof edges / sizeof edges[0]
                        ? edges[i]
                        : (int64_t)(fqt_next(rng) >> fqt_below(rng, 64));
        if (i & 1) v = -v;
        int n = fq_varlong_encode(b, v);
        int64_t back = 0;
        int m = fq_varlong_decode(b, (size_t)n, &back);
        CHECK(n == fq_varlong_size(v) && m == n && back == v,
              "varlong %" PRId64 ": %d bytes (size says %d), decoded %d bytes as %" PRId64, v, n,
              fq_varlong_size(v), m, back);
        CHECK(fq_varlong_decode(b, (size_t)n - 1, &back) == FQ_ETRUNCATED,
              "varlong %" PRId64 " cut by one byte is not ETRUNCATED", v);
        if (v >= INT32_MIN && v <= INT32_MAX) {
            int32_t v32 = (int32_t)v, back32 = 0;
            n = fq_varint_encode(b, v32);
            m = fq_varint_decode(b, (size_t)n, &back32);
            CHECK(n == fq_varint_size(v32) && m == n && back32 == v32,
                  "varint %d: %d bytes, decoded %d bytes as %d", v32, n, m, back32);
        }
    }
    /* an int32 varint has 5 bytes at most, and the 5th holds 4 bits */
    static const uint8_t overlong[] = {0x80, 0x80, 0x80, 0x80, 0x80, 0x00};
    static const uint8_t too_wide[] = {0xff, 0xff, 0xff, 0xff, 0x1f};
    static const uint8_t widest[] = {0xfe, 0xff, 0xff, 0xff, 0x0f};   /* zigzag: INT32_MAX */
    int32_t x = 0;
    CHECK(fq_varint_decode(overlong, sizeof overlong, &x) == FQ_ECORRUPT, "6-byte int32 accepted");
    CHECK(fq_varint_decode(too_wide, sizeof too_wide, &x) == FQ_ECORRUPT, "33-bit int32 accepted");
    CHECK(fq_varint_decode(widest, sizeof widest, &x) == 5 && x == INT32_MAX,
          "largest int32 varint decoded as %d", x);
    CHECK(fq_varint_decode(b, 0, &x) == FQ_ETRUNCATED, "empty input is not ETRUNCATED");
}

/* Records with null and empty keys/values, headers and spread-out timestamps. */
enum { NREC = 40 };
typedef struct {
    fq_record_in in[NREC];
    fq_header hdr[NREC][3];
    uint8_t bytes[NREC][300];
} batch_input;

static void make_records(batch_input *b, fqt_rng *rng) {
    memset(b, 0, sizeof *b);
    int64_t base_ts = 1700000000000 + (int64_t)fqt_below(rng, 1000000);
    for (int i = 0; i < NREC; i++) {
        fq_record_in *r = &b->in[i];
        uint8_t *mem = b->bytes[i];
        for (int k = 0; k < 300; k++) mem[k] = (uint8_t)fqt_next(rng);
        /* negative deltas too: base is the first record's timestamp, not the smallest */
        r->timestamp = base_ts + (int64_t)fqt_below(rng, 200000) - 100000;
        if (i == 7) r->timestamp = INT64_MIN;   /* deltas wrap modulo 2^64 */
        if (i == 8) r->timestamp = INT64_MAX;
        r->key_len = i % 5 == 0 ? -1 : (int32_t)fqt_below(rng, 40);
        r->key = r->key_len >= 0 ? mem : NULL;
        r->value_len = i % 7 == 3 ? -1 : (int32_t)fqt_below(rng, 200);
        r->value = r->value_len >= 0 ? mem + 40 : NULL;
        r->n_headers = i % 3;
        for (int h = 0; h < r->n_headers; h++) {
            b->hdr[i][h].key = mem + 240 + 20 * h;
            b->hdr[i][h].key_len = 1 + h;
            b->hdr[i][h].value = h == 1 ? NULL : mem + 250 + 20 * h;
            b->hdr[i][h].value_len = h == 1 ? -1 : 5;
        }
        r->headers = r->n_headers ? b->hdr[i] : NULL;
    }
}

static int same_bytes(const uint8_t *a, int32_t alen, const uint8_t *b, int32_t blen) {
    if (alen != blen) return 0;
    if (alen <= 0) return 1;   /* -1 null or empty: the length says it */
    return memcmp(a, b, (size_t)alen) == 0;
}

static void check_batch_round_trip(fqt_rng *rng) {
    static batch_input in;
    make_records(&in, rng);
    int64_t size = fq_batch_size(in.in, NREC);
    REQUIRE(size > FQ_BATCH_HEADER_SIZE, "fq_batch_size returned %" PRId64, size);
    uint8_t *buf = malloc((size_t)size + 16);
    REQUIRE(buf != NULL, "malloc");
    CHECK(fq_batch_encode(buf, (size_t)size - 1, 0, 0, in.in, NREC) == FQ_ETOOBIG,
          "encode into one byte too few is not ETOOBIG");
    int64_t n = fq_batch_encode(buf, (size_t)size, 1234567, 0, in.in, NREC);
    REQUIRE(n == size, "encode wrote %" PRId64 " bytes, fq_batch_size said %" PRId64, n, size);

    fq_batch_info info;
    int rc = fq_batch_validate(buf, (size_t)n, 1 << 20, 1, &info);
    REQUIRE(rc == 0, "validate of a fresh batch: %d", rc);
    int64_t max_ts = INT64_MIN;
    for (int i = 0; i < NREC; i++)
        if (in.in[i].timestamp > max_ts) max_ts = in.in[i].timestamp;
    CHECK(info.base_offset == 1234567 && info.total_size == n && info.record_count == NREC &&
              info.last_offset_delta == NREC - 1 && info.base_timestamp == in.in[0].timestamp &&
              info.max_timestamp == max_ts && info.producer_id == -1 &&
              info.producer_epoch == -1 && info.base_sequence == -1 && info.attributes == 0,
          "header fields: base %" PRId64 " size %" PRId64 " count %d last %d", info.base_offset,
          info.total_size, info.record_count, info.last_offset_delta);
    CHECK(fq_batch_check_records(buf, &info) == 0, "check_records of a fresh batch");

    const uint8_t *p = buf + FQ_BATCH_HEADER_SIZE, *end = buf + n;
    for (int i = 0; i < NREC; i++) {
        fq_record_view v;
        rc = fq_record_decode(p, (size_t)(end - p), &v);
        if (!CHECK(rc > 0, "record %d: decode %d", i, rc)) break;
        const fq_record_in *r = &in.in[i];
        int64_t ts = (int64_t)((uint64_t)info.base_timestamp + (uint64_t)v.timestamp_delta);
        CHECK(ts == r->timestamp && v.offset_delta == i, "record %d: ts %" PRId64 " delta %d", i,
              ts, v.offset_delta);
        CHECK(same_bytes(v.key, v.key_len, r->key, r->key_len), "record %d: key (len %d vs %d)",
              i, v.key_len, r->key_len);
        CHECK(same_bytes(v.value, v.value_len, r->value, r->value_len),
              "record %d: value (len %d vs %d)", i, v.value_len, r->value_len);
        CHECK(v.n_headers == r->n_headers, "record %d: %d headers", i, v.n_headers);
        const uint8_t *h = v.headers, *hend = v.headers + v.headers_len;
        for (int k = 0; k < v.n_headers && k < r->n_headers; k++) {
            fq_header hv;
            int hn = fq_header_decode(h, (size_t)(hend - h), &hv);
            if (!CHECK(hn > 0, "record %d header %d: decode %d", i, k, hn)) break;
            CHECK(same_bytes(hv.key, hv.key_len, r->headers[k].key, r->headers[k].key_len) &&
                      same_bytes(hv.value, hv.value_len, r->headers[k].value,
                                 r->headers[k].value_len),
                  "record %d header %d differs", i, k);
            h += hn;
        }
        p += rc;
    }
    CHECK(p == end, "records end %td bytes before the batch end", end - p);

    /* baseOffset is outside the CRC: rewriting it keeps the batch valid */
    fq_batch_set_base_offset(buf, 99);
    rc = fq_batch_validate(buf, (size_t)n, 1 << 20, 1, &info);
    CHECK(rc == 0 && info.base_offset == 99, "after set_base_offset: rc %d base %" PRId64, rc,
          info.base_offset);
    CHECK(fq_batch_validate(buf, (size_t)n - 1, 1 << 20, 1, &info) == FQ_ETRUNCATED,
          "a batch missing its last byte is not ETRUNCATED");

    /* One changed byte anywhere in the CRC-covered range [21, end) fails the check; with
     * the check off the same batch passes validation wherever the framing still holds
     * (the last record's value bytes), so it is the CRC that caught it. */
    int caught = 0, covered = 0;
    for (int64_t at = FQ_BATCH_OFF_ATTRIBUTES; at < n; at++) {
        uint8_t old = buf[at];
        buf[at] ^= (uint8_t)(1u << (at % 8));
        covered++;
        caught += fq_batch_validate(buf, (size_t)n, 1 << 20, 1, NULL) != 0;
        buf[at] = old;
    }
    CHECK(caught == covered, "%d of %d single-byte corruptions passed the CRC check",
          covered - caught, covered);
    const fq_record_in *last = &in.in[NREC - 1];
    if (last->value_len > 0) {
        /* the last value sits just before the record's header count and headers */
        int64_t at = -1;
        for (int64_t k = n - last->value_len; k > FQ_BATCH_HEADER_SIZE && at < 0; k--)
            if (memcmp(buf + k, last->value, (size_t)last->value_len) == 0) at = k;
        REQUIRE(at > 0, "the last value is not in the batch");
        buf[at] ^= 0x5a;
        CHECK(fq_batch_validate(buf, (size_t)n, 1 << 20, 1, NULL) == FQ_ECORRUPT,
              "a changed value byte is not ECORRUPT");
        CHECK(fq_batch_validate(buf, (size_t)n, 1 << 20, 0, NULL) == 0,
              "with the CRC check off a changed value byte should pass the framing checks");
        buf[at] ^= 0x5a;
    }
    /* the magic byte and a compression bit are their own errors */
    buf[FQ_BATCH_OFF_MAGIC] = 1;
    CHECK(fq_batch_validate(buf, (size_t)n, 1 << 20, 0, NULL) == FQ_EMAGIC, "magic 1 accepted");
    buf[FQ_BATCH_OFF_MAGIC] = FQ_BATCH_MAGIC;
    CHECK(fq_batch_encode(buf, (size_t)n, 0, 1, in.in, NREC) == FQ_EINVAL,
          "encode with a compression bit is not EINVAL");
    free(buf);
}

static void check_index(fqt_rng *rng) {
    enum { N = 200 };
    uint8_t idx[N * FQ_INDEX_ENTRY], tidx[N * FQ_TIMEINDEX_ENTRY];
    uint32_t rel = 0, pos = 0;
    int64_t ts = -5000;
    uint32_t rels[N];
    int64_t tss[N];
    for (int i = 0; i < N; i++) {
        rel += 1 + (uint32_t)fqt_below(rng, 50);
        pos += 61 + (uint32_t)fqt_below(rng, 4000);
        ts += (int64_t)fqt_below(rng, 3);   /* equal timestamps happen */
        rels[i] = rel;
        tss[i] = ts;
        fq_index_put(idx, i, rel, pos);
        fq_timeindex_put(tidx, i, ts, rel);
        uint32_t r2, p2;
        int64_t t2;
        fq_index_get(idx, i, &r2, &p2);
        fq_timeindex_get(tidx, i, &t2, &r2);
        CHECK(p2 == pos && t2 == ts && r2 == rel, "entry %d read back differently", i);
    }
    for (int q = 0; q < 500; q++) {
        uint32_t want = (uint32_t)fqt_below(rng, rel + 10);
        int64_t got = fq_index_floor(idx, N, want), expect = -1;
        for (int i = 0; i < N; i++)
            if (rels[i] <= want) expect = i;
        CHECK(got == expect, "index_floor(%u) = %" PRId64 ", expected %" PRId64, want, got, expect);
        int64_t t = -5010 + (int64_t)fqt_below(rng, (uint64_t)(ts + 5020));
        int64_t ceil = N, floor = -1;
        for (int i = N - 1; i >= 0; i--)
            if (tss[i] >= t) ceil = i;
        for (int i = 0; i < N; i++)
            if (tss[i] <= t) floor = i;
        CHECK(fq_timeindex_ceil(tidx, N, t) == ceil && fq_timeindex_floor(tidx, N, t) == floor,
              "time %" PRId64 ": ceil %" PRId64 "/%" PRId64 " floor %" PRId64 "/%" PRId64, t,
              fq_timeindex_ceil(tidx, N, t), ceil, fq_timeindex_floor(tidx, N, t), floor);
    }
    CHECK(fq_index_floor(idx, 0, 5) == -1, "empty index floor");
}

static void check_murmur2(void) {
    static const struct {
        const char *key;
        int32_t hash;
    } v[] = {   /* Kafka's UtilsTest.testMurmur2 */
        {"21", -973932308},
        {"foobar", -790332482},
        {"a-little-bit-long-string", -985981536},
        {"a-little-bit-longer-string", -1486304829},
        {"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971},
        {"abc", 479470107},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        int32_t h = fq_murmur2((const uint8_t *)v[i].key, strlen(v[i].key));
        CHECK(h == v[i].hash, "murmur2(%s) = %d, Kafka says %d", v[i].key, h, v[i].hash);
    }
}

/* The idempotent producer's sequence rule (csrc/fq_producer.h), case by case. */
static void check_producer_rule(void) {
    fq_pentry e;
    memset(&e, 0, sizeof e);
    const fq_pbatch *dup = NULL;
    CHECK(fq_pentry_check(&e, 0, 17, 17, &dup) == FQ_PSEQ_APPEND, "an unknown producer starts anywhere");
    CHECK(fq_pentry_next_seq(&e) == -1, "no next sequence before a batch");
    for (int32_t i = 0; i < 7; i++) fq_pentry_record(&e, 2, i * 2, i * 2 + 1, 100 + i * 2, 1000 + i);
    CHECK(e.count == FQ_PRODUCER_BATCHES, "keeps %d batches, has %d", FQ_PRODUCER_BATCHES, e.count);
    CHECK(fq_pentry_next_seq(&e) == 14, "next sequence %d", fq_pentry_next_seq(&e));
    CHECK(fq_pentry_check(&e, 2, 14, 15, &dup) == FQ_PSEQ_APPEND, "the next batch");
    CHECK(fq_pentry_check(&e, 3, 14, 14, &dup) == FQ_PSEQ_APPEND, "a newer epoch continues");
    CHECK(fq_pentry_check(&e, 1, 14, 14, &dup) == FQ_PSEQ_FENCED, "an older epoch is fenced");
    CHECK(fq_pentry_check(&e, 1, 12, 13, &dup) == FQ_PSEQ_FENCED, "even for a retry");
    for (int32_t i = 2; i < 7; i++) {
        dup = NULL;
        CHECK(fq_pentry_check(&e, 2, i * 2, i * 2 + 1, &dup) == FQ_PSEQ_DUPLICATE && dup &&
              dup->base_offset == 100 + i * 2, "batch %d is a remembered duplicate", i);
    }
    CHECK(fq_pentry_check(&e, 2, 2, 3, &dup) == FQ_PSEQ_OUT_OF_ORDER, "past the window");
    CHECK(fq_pentry_check(&e, 2, 12, 12, &dup) == FQ_PSEQ_OUT_OF_ORDER, "a partial overlap");
    CHECK(fq_pentry_check(&e, 2, 16, 16, &dup) == FQ_PSEQ_OUT_OF_ORDER, "a gap");
    fq_pentry_record(&e, 1, 14, 14, 200, 0);
    CHECK(fq_pentry_next_seq(&e) == 14, "an older epoch's batch found while rebuilding changes nothing");
    CHECK(fq_seq_last(INT32_MAX, 2) == 0 && fq_seq_next(INT32_MAX) == 0 && fq_seq_last(5, 3) == 7,
          "sequences wrap after INT32_MAX");
}

/* Transaction markers are Kafka's control batches and read back as such. */
static void check_control_batches(void) {
    uint8_t buf[FQ_CONTROL_BATCH_SIZE];
    for (int16_t type = 0; type <= 1; type++) {
        int64_t n = fq_batch_encode_control(buf, sizeof buf, 9, 77, 3, type, 5, 1234);
        CHECK(n == FQ_CONTROL_BATCH_SIZE, "control batch of %" PRId64 " bytes", n);
        fq_batch_info info;
        CHECK(fq_batch_validate(buf, sizeof buf, INT32_MAX, 1, &info) == FQ_OK, "validates");
        CHECK(info.attributes == (FQ_ATTR_TRANSACTIONAL | FQ_ATTR_CONTROL) && info.producer_id == 77 &&
              info.producer_epoch == 3 && info.base_sequence == -1, "header fields");
        CHECK(fq_batch_control_type(buf, &info) == type, "type %d reads back", type);
    }
    CHECK(fq_batch_encode_control(buf, sizeof buf, 0, 1, 0, 2, 0, 0) == FQ_EINVAL, "type 2 refused");
    CHECK(fq_batch_encode_control(buf, 10, 0, 1, 0, 1, 0, 0) == FQ_ETOOBIG, "room checked");
}

void suite_codec(void) {
    fqt_rng rng = fqt_rng_new(fqt_seed ^ 0xC0DEC);
    check_varints(&rng);
    for (int round = 0; round < 5; round++) check_batch_round_trip(&rng);
    check_index(&rng);
    check_murmur2();
    check_producer_rule();
    check_control_batches();
}
