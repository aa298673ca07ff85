/* fq_hash.c — Kafka's murmur2 (see fq_hash.h). Unsigned arithmetic mirrors Java's
 * wrapping int math; >>> is a logical shift. */
#include "fq_hash.h"

int32_t fq_murmur2(const uint8_t *data, size_t n) {
    const uint32_t seed = 0x9747b28cu, m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = seed ^ (uint32_t)n;
    size_t n4 = n / 4;
    for (size_t i = 0; i < n4; i++) {
        const uint8_t *p = data + i * 4;
        uint32_t k = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    const uint8_t *tail = data + (n & ~(size_t)3);
    switch (n % 4) {
    case 3: h ^= (uint32_t)tail[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)tail[1] << 8;  /* fall through */
    case 1:
        h ^= (uint32_t)tail[0];
        h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return (int32_t)h;
}
