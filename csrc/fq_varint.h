/* fq_varint.h — Kafka/protobuf varints: unsigned LEB128 and zigzag-encoded signed.
 * Kafka record fields use the zigzag (signed) form: varint for int32, varlong for int64.
 *
 * Encoders write at most FQ_VARINT_MAX (5) / FQ_VARLONG_MAX (10) bytes and return the
 * count. Decoders return bytes consumed (> 0), FQ_ETRUNCATED if the input ends inside
 * the number, FQ_ECORRUPT if it is longer than the type allows (overlong encodings are
 * rejected) or its last permitted byte carries bits that do not fit the type (the 5th
 * byte of an int32 holds 4 bits, the 10th of an int64 1 bit). Non-minimal encodings
 * within the byte limit (0x80 0x00 for 0) are accepted, as Kafka and protobuf accept them.
 */
#ifndef FQ_VARINT_H
#define FQ_VARINT_H
#include <stddef.h>
#include <stdint.h>

#define FQ_VARINT_MAX 5
#define FQ_VARLONG_MAX 10

static inline uint32_t fq_zigzag32(int32_t v) { return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31); }
static inline uint64_t fq_zigzag64(int64_t v) { return ((uint64_t)v << 1) ^ (uint64_t)(v >> 63); }
static inline int32_t fq_unzigzag32(uint32_t v) { return (int32_t)(v >> 1) ^ -(int32_t)(v & 1); }
static inline int64_t fq_unzigzag64(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

/* number of bytes the zigzag varint of v takes */
int fq_varint_size(int32_t v);
int fq_varlong_size(int64_t v);

int fq_varint_encode(uint8_t *dst, int32_t v);    /* zigzag int32 */
int fq_varlong_encode(uint8_t *dst, int64_t v);   /* zigzag int64 */
int fq_uvarint_encode(uint8_t *dst, uint64_t v);  /* plain unsigned */

int fq_varint_decode(const uint8_t *src, size_t avail, int32_t *out);
int fq_varlong_decode(const uint8_t *src, size_t avail, int64_t *out);
int fq_uvarint_decode(const uint8_t *src, size_t avail, uint64_t *out);

#endif
