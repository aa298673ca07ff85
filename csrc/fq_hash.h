/* fq_hash.h — Kafka's default partitioner hash.
 *
 * fq_murmur2 is the murmur2 variant of Kafka's org.apache.kafka.common.utils.Utils
 * (seed 0x9747b28c), returning the same 32-bit value as Java's int. A keyed record goes
 * to partition (murmur2(key) & 0x7fffffff) % numPartitions, exactly like a Java producer.
 */
#ifndef FQ_HASH_H
#define FQ_HASH_H
#include <stddef.h>
#include <stdint.h>

int32_t fq_murmur2(const uint8_t *data, size_t n);
/* partition for a key among n (n >= 1) */
static inline int32_t fq_kafka_partition(const uint8_t *key, size_t len, int32_t n) {
    return (int32_t)(((uint32_t)fq_murmur2(key, len) & 0x7fffffffu) % (uint32_t)n);
}

#endif
