/* fq_crc32c.c — CRC-32C (Castagnoli) with run-time dispatch.
 *
 * Three implementations compute the same function:
 *   - x86-64: SSE4.2 `crc32` on 8 bytes at a time,
 *   - aarch64: ARMv8 CRC32C instructions on 8 bytes at a time,
 *   - anywhere: slicing-by-8 tables (fq_crc32c_sw).
 * The hardware paths run three independent CRC streams over adjacent blocks of long
 * buffers (the instruction has a latency of 3 cycles but a throughput of 1/cycle) and
 * join them with "shift by N zero bytes" tables, as in Mark Adler's crc32c.c.
 *
 * Initialisation (tables + choice of implementation) happens once, on first use, under a
 * tiny C11-atomic state machine, so any thread may call fq_crc32c first.
 */
#include "fq_crc32c.h"

#include <stdatomic.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FQ_CRC_X86 1
#include <nmmintrin.h>
#elif defined(__aarch64__) && (defined(__GNUC__) || defined(__clang__))
#define FQ_CRC_ARM 1
#include <arm_acle.h>
#if defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_CRC32
#define HWCAP_CRC32 (1 << 7)
#endif
#endif
#endif

#define POLY 0x82F63B78u
/* block sizes of the 3-way interleaved hardware loop */
#define LONG_BLOCK 8192
#define SHORT_BLOCK 256

typedef uint32_t (*crc_fn)(uint32_t, const void *, size_t);

static uint32_t sw_table[8][256];
#if defined(FQ_CRC_X86) || defined(FQ_CRC_ARM)
static uint32_t shift_long[4][256];  /* multiply a CRC register by x^(8*LONG_BLOCK) */
static uint32_t shift_short[4][256]; /* ... by x^(8*SHORT_BLOCK) */
#endif

/* 0 = not started, 1 = a thread is building the tables, 2 = ready */
static atomic_int init_state;
static _Atomic(crc_fn) impl;

/* ---- slicing-by-8 ------------------------------------------------------------------ */

static void build_sw_table(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        sw_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = sw_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = sw_table[0][c & 0xff] ^ (c >> 8);
            sw_table[k][n] = c;
        }
    }
}

static uint32_t crc_sw(uint32_t crc, const void *data, size_t n) {
    const uint8_t *p = data;
    crc = ~crc;
    while (n && ((uintptr_t)p & 7)) {
        crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        n--;
    }
    while (n >= 8) {
        /* byte loads keep this endian-neutral; compilers merge them on little-endian */
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        crc = sw_table[7][lo & 0xff] ^ sw_table[6][(lo >> 8) & 0xff] ^
              sw_table[5][(lo >> 16) & 0xff] ^ sw_table[4][lo >> 24] ^
              sw_table[3][hi & 0xff] ^ sw_table[2][(hi >> 8) & 0xff] ^
              sw_table[1][(hi >> 16) & 0xff] ^ sw_table[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = sw_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* ---- zero-shift operators (GF(2) matrices), for joining interleaved streams -------- */
#if defined(FQ_CRC_X86) || defined(FQ_CRC_ARM)

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec) {
    uint32_t sum = 0;
    while (vec) {
        if (vec & 1) sum ^= *mat;
        vec >>= 1;
        mat++;
    }
    return sum;
}

static void gf2_square(uint32_t *square, const uint32_t *mat) {
    for (int n = 0; n < 32; n++) square[n] = gf2_times(mat, mat[n]);
}

/* Operator that appends `len` zero bytes (len a power of two) to a CRC register. */
static void zeros_op(uint32_t *even, size_t len) {
    uint32_t odd[32];
    uint32_t row = 1;
    odd[0] = POLY; /* one zero bit */
    for (int n = 1; n < 32; n++) {
        odd[n] = row;
        row <<= 1;
    }
    gf2_square(even, odd); /* two zero bits */
    gf2_square(odd, even); /* four */
    /* the first square in the loop gives one zero byte, then each step doubles */
    for (;;) {
        gf2_square(even, odd);
        len >>= 1;
        if (len == 0) return;
        gf2_square(odd, even);
        len >>= 1;
        if (len == 0) break;
    }
    memcpy(even, odd, sizeof odd);
}

static void build_shift_table(uint32_t tbl[4][256], size_t len) {
    uint32_t op[32];
    zeros_op(op, len);
    for (uint32_t n = 0; n < 256; n++) {
        tbl[0][n] = gf2_times(op, n);
        tbl[1][n] = gf2_times(op, n << 8);
        tbl[2][n] = gf2_times(op, n << 16);
        tbl[3][n] = gf2_times(op, n << 24);
    }
}

static inline uint32_t shift_crc(uint32_t tbl[4][256], uint32_t crc) {
    return tbl[0][crc & 0xff] ^ tbl[1][(crc >> 8) & 0xff] ^ tbl[2][(crc >> 16) & 0xff] ^
           tbl[3][crc >> 24];
}

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8); /* both hardware targets are little-endian */
    return v;
}

/* The hardware body, written once for both ISAs: STEP8(crc, u64) and STEP1(crc, u8). */
#define HW_BODY(STEP8, STEP1)                                                        \
    const uint8_t *p = data;                                                         \
    uint64_t c0 = (uint32_t)~crc;                                                    \
    while (n && ((uintptr_t)p & 7)) {                                                \
        c0 = STEP1(c0, *p++);                                                        \
        n--;                                                                         \
    }                                                                                \
    while (n >= 3 * (size_t)LONG_BLOCK) {                                            \
        uint64_t c1 = 0, c2 = 0;                                                     \
        const uint8_t *end = p + LONG_BLOCK;                                         \
        do {                                                                         \
            c0 = STEP8(c0, load64(p));                                               \
            c1 = STEP8(c1, load64(p + LONG_BLOCK));                                  \
            c2 = STEP8(c2, load64(p + 2 * LONG_BLOCK));                              \
            p += 8;                                                                  \
        } while (p < end);                                                           \
        c0 = shift_crc(shift_long, (uint32_t)c0) ^ c1;                               \
        c0 = shift_crc(shift_long, (uint32_t)c0) ^ c2;                               \
        p += 2 * LONG_BLOCK;                                                         \
        n -= 3 * LONG_BLOCK;                                                         \
    }                                                                                \
    while (n >= 3 * (size_t)SHORT_BLOCK) {                                           \
        uint64_t c1 = 0, c2 = 0;                                                     \
        const uint8_t *end = p + SHORT_BLOCK;                                        \
        do {                                                                         \
            c0 = STEP8(c0, load64(p));                                               \
            c1 = STEP8(c1, load64(p + SHORT_BLOCK));                                 \
            c2 = STEP8(c2, load64(p + 2 * SHORT_BLOCK));                             \
            p += 8;                                                                  \
        } while (p < end);                                                           \
        c0 = shift_crc(shift_short, (uint32_t)c0) ^ c1;                              \
        c0 = shift_crc(shift_short, (uint32_t)c0) ^ c2;                              \
        p += 2 * SHORT_BLOCK;                                                        \
        n -= 3 * SHORT_BLOCK;                                                        \
    }                                                                                \
    while (n >= 8) {                                                                 \
        c0 = STEP8(c0, load64(p));                                                   \
        p += 8;                                                                      \
        n -= 8;                                                                      \
    }                                                                                \
    while (n) {                                                                      \
        c0 = STEP1(c0, *p++);                                                        \
        n--;                                                                         \
    }                                                                                \
    return ~(uint32_t)c0;

#endif /* hardware */

#if defined(FQ_CRC_X86)
#define X86_STEP8(c, v) _mm_crc32_u64((c), (v))
#define X86_STEP1(c, b) _mm_crc32_u8((uint32_t)(c), (b))

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const void *data,
                                                         size_t n) {
    HW_BODY(X86_STEP8, X86_STEP1)
}

static int hw_available(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("sse4.2") != 0;
}

#elif defined(FQ_CRC_ARM)
#define ARM_STEP8(c, v) __crc32cd((uint32_t)(c), (v))
#define ARM_STEP1(c, b) __crc32cb((uint32_t)(c), (b))

__attribute__((target("+crc"))) static uint32_t crc_hw(uint32_t crc, const void *data,
                                                       size_t n) {
    HW_BODY(ARM_STEP8, ARM_STEP1)
}

static int hw_available(void) {
#if defined(__APPLE__)
    return 1; /* every Apple ARM64 CPU has the CRC32 extension */
#elif defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_CRC32) != 0;
#else
    return 0;
#endif
}
#endif

/* ---- dispatch ---------------------------------------------------------------------- */

static crc_fn init_once(void) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&init_state, &expected, 1)) {
        crc_fn chosen = crc_sw;
        build_sw_table();
#if defined(FQ_CRC_X86) || defined(FQ_CRC_ARM)
        if (hw_available()) {
            build_shift_table(shift_long, LONG_BLOCK);
            build_shift_table(shift_short, SHORT_BLOCK);
            chosen = crc_hw;
        }
#endif
        atomic_store_explicit(&impl, chosen, memory_order_release);
        atomic_store_explicit(&init_state, 2, memory_order_release);
        return chosen;
    }
    /* another thread is building: the tables take microseconds, spin */
    while (atomic_load_explicit(&init_state, memory_order_acquire) != 2) {
    }
    return atomic_load_explicit(&impl, memory_order_acquire);
}

static inline crc_fn get_impl(void) {
    crc_fn f = atomic_load_explicit(&impl, memory_order_acquire);
    return f ? f : init_once();
}

uint32_t fq_crc32c(uint32_t crc, const void *data, size_t n) {
    return get_impl()(crc, data, n);
}

uint32_t fq_crc32c_sw(uint32_t crc, const void *data, size_t n) {
    get_impl(); /* makes sure the table exists */
    return crc_sw(crc, data, n);
}

int fq_crc32c_hw(void) { return get_impl() != crc_sw; }
