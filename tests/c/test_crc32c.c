/* test_crc32c.c — CRC-32C: the dispatched path (SSE4.2 on x86-64, ARMv8 CRC32C
 * instructions on aarch64) against the slicing-by-8 table, a bit-at-a-time reference
 * written here, RFC 3720's vectors and values computed by google-crc32c.
 *
 * The hardware body has four regimes: bytes up to 8-alignment, 8-byte steps, a 3-way
 * interleave over 3 x 256 bytes and one over 3 x 8192 bytes joined by shift tables. The
 * lengths below cross every boundary (767/768/769, 24575/24576/24577) at every start
 * alignment 0..15.
 */
#define _GNU_SOURCE
#include "fqtest.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "fq_crc32c.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif

/* One bit at a time, straight from the definition (reflected 0x82F63B78). */
static uint32_t crc_bitwise(uint32_t crc, const uint8_t *p, size_t n) {
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1u)));
    }
    return ~crc;
}

/* The buffer google-crc32c's values below were computed on: xorshift64 (13, 7, 17) from
 * 0x9E3779B97F4A7C15, the low byte of each step. */
static void fill_reference(uint8_t *buf, size_t n) {
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        buf[i] = (uint8_t)s;
    }
}

static const struct {
    size_t len;
    uint32_t crc;
} google_vectors[] = {   /* google_crc32c.value(buf[:len]) */
    {0, 0x00000000u},     {1, 0x4F1EAA24u},     {7, 0x9F9064B5u},     {8, 0x5DD425C2u},
    {9, 0x6BE94104u},     {15, 0x9B3A9A1Eu},    {63, 0x43051DA0u},    {64, 0x84FFEA4Au},
    {255, 0x04B9A4B5u},   {256, 0xCDEC28F8u},   {767, 0x7F7C480Cu},   {768, 0x0635A867u},
    {769, 0x585FDDA3u},   {1024, 0x8C8354E4u},  {4095, 0x5ACB853Fu},  {8192, 0x7C8FCD73u},
    {24575, 0xFF5D1A33u}, {24576, 0x48F8727Eu}, {24577, 0x5914FC0Fu}, {49152, 0x20904647u},
    {65535, 0x0F61928Eu}, {65536, 0x015C30FDu},
};

/* ---- first use from several threads at once: the lazy init's state machine ---------- */
enum { FIRST_USE_THREADS = 4 };
static pthread_barrier_t first_use_barrier;
static uint32_t first_use_result[FIRST_USE_THREADS];

static void *first_use_thread(void *arg) {
    size_t i = (size_t)arg;
    pthread_barrier_wait(&first_use_barrier);
    first_use_result[i] = fq_crc32c(0, "123456789", 9);
    return NULL;
}

void suite_crc32c_first_use(void) {
    pthread_t t[FIRST_USE_THREADS];
    pthread_barrier_init(&first_use_barrier, NULL, FIRST_USE_THREADS);
    for (size_t i = 0; i < FIRST_USE_THREADS; i++)
        pthread_create(&t[i], NULL, first_use_thread, (void *)i);
    for (size_t i = 0; i < FIRST_USE_THREADS; i++) pthread_join(t[i], NULL);
    pthread_barrier_destroy(&first_use_barrier);
    for (size_t i = 0; i < FIRST_USE_THREADS; i++)
        CHECK(first_use_result[i] == 0xE3069283u, "thread %zu saw 0x%08X on first use", i,
              first_use_result[i]);
}

/* ---- the suite ---------------------------------------------------------------------- */
static void check_dispatch(void) {
    int expect_hw = 0;
#if defined(__x86_64__)
    __builtin_cpu_init();
    expect_hw = __builtin_cpu_supports("sse4.2") != 0;
#elif defined(__aarch64__) && defined(__linux__)
    expect_hw = (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0;
#endif
    CHECK(fq_crc32c_hw() == expect_hw, "fq_crc32c_hw()=%d but the CPU says %d", fq_crc32c_hw(),
          expect_hw);
    /* FQ_EXPECT_CRC_HW=1 (make test-aarch64) insists that the instructions were exercised */
    const char *want = getenv("FQ_EXPECT_CRC_HW");
    if (want && *want == '1')
        CHECK(fq_crc32c_hw() == 1, "the hardware CRC-32C path was expected but is not in use");
}

static void check_known_vectors(void) {
    static const uint8_t iscsi_read_pdu[48] = {   /* RFC 3720 B.4 */
        0x01, 0xc0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0x14, 0,    0, 0, 0, 0, 0x04, 0, 0, 0, 0, 0x14, 0, 0, 0, 0x18,
        0x28, 0,    0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 0, 0, 0,
    };
    uint8_t b[48];
    struct {
        const char *name;
        uint32_t crc;
    } v[6] = {{"32 zero bytes", 0x8A9136AAu},  {"32 0xFF bytes", 0x62A8AB43u},
              {"bytes 0..31", 0x46DD794Eu},    {"bytes 31..0", 0x113FDB5Cu},
              {"\"123456789\"", 0xE3069283u}, {"iSCSI read PDU", 0xD9963A56u}};
    for (int k = 0; k < 6; k++) {
        size_t n = 32;
        switch (k) {
        case 0: memset(b, 0, 32); break;
        case 1: memset(b, 0xff, 32); break;
        case 2: for (int i = 0; i < 32; i++) b[i] = (uint8_t)i; break;
        case 3: for (int i = 0; i < 32; i++) b[i] = (uint8_t)(31 - i); break;
        case 4: memcpy(b, "123456789", 9); n = 9; break;
        default: memcpy(b, iscsi_read_pdu, 48); n = 48; break;
        }
        uint32_t hw = fq_crc32c(0, b, n), sw = fq_crc32c_sw(0, b, n), ref = crc_bitwise(0, b, n);
        CHECK(hw == v[k].crc && sw == v[k].crc && ref == v[k].crc,
              "%s: dispatched 0x%08X table 0x%08X bitwise 0x%08X, expected 0x%08X", v[k].name, hw,
              sw, ref, v[k].crc);
    }
}

static void check_google_vectors(uint8_t *scratch) {
    size_t max = 65536;
    fill_reference(scratch, max);
    for (size_t i = 0; i < sizeof google_vectors / sizeof google_vectors[0]; i++) {
        size_t n = google_vectors[i].len;
        uint32_t want = google_vectors[i].crc;
        uint32_t hw = fq_crc32c(0, scratch, n), sw = fq_crc32c_sw(0, scratch, n);
        CHECK(hw == want && sw == want, "len %zu: dispatched 0x%08X table 0x%08X, google 0x%08X",
              n, hw, sw, want);
    }
}

/* Every length 0..1024 at every start offset 0..15 (the same bytes copied to each
 * offset), plus the long-block boundaries: dispatched == table == bitwise. */
static void check_lengths_and_alignments(uint8_t *scratch, fqt_rng *rng) {
    enum { MAXLEN = 1024 };
    uint8_t src[MAXLEN];
    for (size_t i = 0; i < MAXLEN; i++) src[i] = (uint8_t)fqt_next(rng);
    int bad = 0;
    for (size_t n = 0; n <= MAXLEN && !bad; n++) {
        uint32_t ref = crc_bitwise(0, src, n);
        for (size_t off = 0; off < 16; off++) {
            memcpy(scratch + off, src, n);
            uint32_t hw = fq_crc32c(0, scratch + off, n), sw = fq_crc32c_sw(0, scratch + off, n);
            if (!CHECK(hw == ref && sw == ref,
                       "len %zu offset %zu: dispatched 0x%08X table 0x%08X bitwise 0x%08X", n,
                       off, hw, sw, ref)) {
                bad = 1;
                break;
            }
        }
    }
    static const size_t long_lens[] = {3 * 8192 - 1, 3 * 8192, 3 * 8192 + 1, 3 * 8192 + 8,
                                       6 * 8192 + 767, 6 * 8192 + 768, 6 * 8192 + 777};
    uint8_t *big = malloc(6 * 8192 + 800);
    for (size_t i = 0; i < 6 * 8192 + 800; i++) big[i] = (uint8_t)fqt_next(rng);
    for (size_t k = 0; k < sizeof long_lens / sizeof long_lens[0]; k++) {
        size_t n = long_lens[k];
        uint32_t ref = crc_bitwise(0, big, n);
        for (size_t off = 0; off < 16; off++) {
            memcpy(scratch + off, big, n);
            uint32_t hw = fq_crc32c(0, scratch + off, n), sw = fq_crc32c_sw(0, scratch + off, n);
            CHECK(hw == ref && sw == ref,
                  "len %zu offset %zu: dispatched 0x%08X table 0x%08X bitwise 0x%08X", n, off, hw,
                  sw, ref);
        }
    }
    free(big);
}

/* crc(crc(a), b) == crc(a || b) at every split of a buffer crossing the block sizes. */
static void check_continuation(uint8_t *scratch, fqt_rng *rng) {
    size_t n = 3 * 256 + 40;
    for (size_t i = 0; i < n; i++) scratch[i] = (uint8_t)fqt_next(rng);
    uint32_t whole = fq_crc32c(0, scratch, n);
    for (size_t cut = 0; cut <= n; cut++) {
        uint32_t hw = fq_crc32c(fq_crc32c(0, scratch, cut), scratch + cut, n - cut);
        uint32_t sw = fq_crc32c_sw(fq_crc32c_sw(0, scratch, cut), scratch + cut, n - cut);
        if (!CHECK(hw == whole && sw == whole, "split at %zu: 0x%08X / 0x%08X, whole 0x%08X", cut,
                   hw, sw, whole))
            break;
    }
}

/* Random lengths (up to 3 long interleave rounds) at random offsets: dispatched == table. */
static void check_random(uint8_t *scratch, size_t cap, fqt_rng *rng) {
    for (int round = 0; round < 300; round++) {
        size_t off = fqt_below(rng, 64);
        size_t n = round < 200 ? fqt_below(rng, 4096) : fqt_below(rng, cap - 64);
        for (size_t i = 0; i < n; i++) scratch[off + i] = (uint8_t)fqt_next(rng);
        uint32_t seed = round & 1 ? (uint32_t)fqt_next(rng) : 0;
        uint32_t hw = fq_crc32c(seed, scratch + off, n), sw = fq_crc32c_sw(seed, scratch + off, n);
        if (!CHECK(hw == sw, "round %d len %zu offset %zu crc-in 0x%08X: dispatched 0x%08X table 0x%08X",
                   round, n, off, seed, hw, sw))
            break;
    }
}

void suite_crc32c(void) {
    fqt_rng rng = fqt_rng_new(fqt_seed ^ 0xC7C32C);
    size_t cap = 3 * 3 * 8192 + 128;
    uint8_t *scratch = malloc(cap < 65536 + 64 ? 65536 + 64 : cap);
    REQUIRE(scratch != NULL, "malloc");
    check_dispatch();
    check_known_vectors();
    check_google_vectors(scratch);
    check_lengths_and_alignments(scratch, &rng);
    check_continuation(scratch, &rng);
    check_random(scratch, cap, &rng);
    free(scratch);
}
