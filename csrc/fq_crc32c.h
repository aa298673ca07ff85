/* fq_crc32c.h — CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as used by
 * Kafka RecordBatch v2. Hardware instructions chosen at run time (SSE4.2 crc32 on
 * x86-64, ARMv8 CRC32C on aarch64), slicing-by-8 table fallback elsewhere.
 *
 * fq_crc32c(0, data, n) is the standard CRC-32C of the bytes ("123456789" -> 0xE3069283).
 * To continue a CRC over more bytes pass the previous result as `crc`.
 */
#ifndef FQ_CRC32C_H
#define FQ_CRC32C_H
#include <stddef.h>
#include <stdint.h>

uint32_t fq_crc32c(uint32_t crc, const void *data, size_t n);
uint32_t fq_crc32c_sw(uint32_t crc, const void *data, size_t n); /* table version, for tests */
/* 1 when the hardware path is in use, 0 for the table. */
int fq_crc32c_hw(void);

#endif
