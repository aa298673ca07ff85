/* fqtest.h — the small check/report harness of the C-level tests (tests/c/).
 *
 * The C core (csrc/) is tested here without Python, so the same program runs natively
 * (make test-c, and tests/test_c_core.py in the suite) and cross-built for aarch64 under
 * qemu-user (make test-aarch64). CHECK never aborts: a failed check prints where and why
 * and the run goes on; main() exits 1 if any check failed. Checks may run on any thread.
 * Randomized tests draw from fqt_rng seeded by fqt_seed, printed at start (FQ_TEST_SEED
 * replays a run).
 */
#ifndef FQTEST_H
#define FQTEST_H

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>

extern uint64_t fqt_seed;

/* Record one check; prints file:line, the expression and the message when !ok.
 * Returns ok, so callers can stop a loop after the first failure. */
int fqt_check(int ok, const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
#define CHECK(cond, ...) fqt_check(!!(cond), __FILE__, __LINE__, #cond, __VA_ARGS__)

/* A failure that stops the current suite (setup could not be done). */
#define REQUIRE(cond, ...) \
    do { if (!CHECK(cond, __VA_ARGS__)) return; } while (0)

/* xorshift64*: small, fast and the same on every platform. */
typedef struct { uint64_t s; } fqt_rng;
static inline fqt_rng fqt_rng_new(uint64_t seed) {
    fqt_rng r = {seed ? seed : 0x9E3779B97F4A7C15ull};
    return r;
}
static inline uint64_t fqt_next(fqt_rng *r) {
    r->s ^= r->s >> 12;
    r->s ^= r->s << 25;
    r->s ^= r->s >> 27;
    return r->s * 0x2545F4914F6CDD1Dull;
}
static inline uint64_t fqt_below(fqt_rng *r, uint64_t n) { return n ? fqt_next(r) % n : 0; }

/* Each suite is one function, listed in test_main.c's table. */
void suite_crc32c_first_use(void);
void suite_crc32c(void);
void suite_codec(void);
void suite_ring(void);
void suite_log(void);
void suite_queue(void);
void suite_limiter(void);

#endif
