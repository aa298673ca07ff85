/* fq_varint.c — LEB128 varints (unsigned) and Kafka's zigzag signed forms.
 *
 * Decoders take untrusted bytes: they never read past `avail`, reject encodings longer
 * than the type allows (5 bytes for int32, 10 for int64) and reject a last byte whose
 * bits would not fit the type (Kafka's Java reader silently drops them; we call that
 * corruption). Non-minimal encodings inside the byte limit (0x80 0x00 for 0) are
 * accepted, as Kafka and protobuf accept them.
 */
#include "fq_varint.h"

#include "fq_status.h"

int fq_varint_size(int32_t v) {
    uint32_t u = fq_zigzag32(v);
    int n = 1;
    while (u >= 0x80) {
        u >>= 7;
        n++;
    }
    return n;
}

int fq_varlong_size(int64_t v) {
    uint64_t u = fq_zigzag64(v);
    int n = 1;
    while (u >= 0x80) {
        u >>= 7;
        n++;
    }
    return n;
}

int fq_uvarint_encode(uint8_t *dst, uint64_t v) {
    int n = 0;
    while (v >= 0x80) {
        dst[n++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    dst[n++] = (uint8_t)v;
    return n;
}

int fq_varint_encode(uint8_t *dst, int32_t v) { return fq_uvarint_encode(dst, fq_zigzag32(v)); }

int fq_varlong_encode(uint8_t *dst, int64_t v) { return fq_uvarint_encode(dst, fq_zigzag64(v)); }

/* Decode at most `maxlen` bytes into a value of `bits` bits. */
static inline int uvarint_decode_n(const uint8_t *src, size_t avail, int maxlen, int bits,
                                   uint64_t *out) {
    if (avail && src[0] < 0x80) { /* one-byte fast path: most lengths and deltas */
        *out = src[0];
        return 1;
    }
    uint64_t v = 0;
    for (int i = 0; i < maxlen; i++) {
        if ((size_t)i >= avail) return FQ_ETRUNCATED;
        uint8_t b = src[i];
        int shift = 7 * i;
        if (i == maxlen - 1) {
            /* last permitted byte: no continuation, and only the bits that fit */
            if (b & 0x80) return FQ_ECORRUPT;
            if ((uint64_t)b >> (bits - shift)) return FQ_ECORRUPT;
            *out = v | ((uint64_t)b << shift);
            return i + 1;
        }
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return i + 1;
        }
    }
    return FQ_ECORRUPT; /* not reached */
}

int fq_uvarint_decode(const uint8_t *src, size_t avail, uint64_t *out) {
    return uvarint_decode_n(src, avail, FQ_VARLONG_MAX, 64, out);
}

int fq_varint_decode(const uint8_t *src, size_t avail, int32_t *out) {
    uint64_t u;
    int rc = uvarint_decode_n(src, avail, FQ_VARINT_MAX, 32, &u);
    if (rc > 0) *out = fq_unzigzag32((uint32_t)u);
    return rc;
}

int fq_varlong_decode(const uint8_t *src, size_t avail, int64_t *out) {
    uint64_t u;
    int rc = uvarint_decode_n(src, avail, FQ_VARLONG_MAX, 64, &u);
    if (rc > 0) *out = fq_unzigzag64(u);
    return rc;
}
