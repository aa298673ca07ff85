/* test_main.c — runs the C-level test suites of fastq's core and reports.
 *
 *   test_core [suite ...]     suites: crc32c codec ring log queue limiter (default: all)
 *   FQ_TEST_SEED=N            replay a randomized run
 *
 * Prints the platform, which CRC-32C path is in use, one line per suite and a closing
 * "N passed, N failed" line counting checks; exits 1 if any check failed.
 */
#define _GNU_SOURCE
#include "fqtest.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fq_crc32c.h"

uint64_t fqt_seed;
static uint64_t n_checks, n_failed;

int fqt_check(int ok, const char *file, int line, const char *expr, const char *fmt, ...) {
    __atomic_fetch_add(&n_checks, 1, __ATOMIC_RELAXED);
    if (ok) return 1;
    uint64_t k = __atomic_fetch_add(&n_failed, 1, __ATOMIC_RELAXED);
    if (k < 30) {   /* one broken loop must not bury the rest of the report */
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        fprintf(stderr, "FAIL %s:%d: %s: %s\n", file, line, expr, msg);
    }
    return 0;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const struct {
    const char *name;
    void (*run)(void);
} suites[] = {
    {"crc32c", suite_crc32c},
    {"codec", suite_codec},
    {"ring", suite_ring},
    {"log", suite_log},
    {"queue", suite_queue},
    {"limiter", suite_limiter},
};

static const char *arch(void) {
#if defined(__aarch64__)
    return "aarch64";
#elif defined(__x86_64__)
    return "x86_64";
#else
    return "other";
#endif
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *env = getenv("FQ_TEST_SEED");
    fqt_seed = env && *env ? strtoull(env, NULL, 0)
                           : ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    /* before anything else touches the CRC: its one-time initialisation raced by threads */
    suite_crc32c_first_use();
    printf("fastq C core tests: arch=%s crc32c=%s seed=%" PRIu64 " (FQ_TEST_SEED=%" PRIu64
           " replays)\n",
           arch(), fq_crc32c_hw() ? "hardware" : "table", fqt_seed, fqt_seed);
    int ran = 0;
    for (size_t i = 0; i < sizeof suites / sizeof suites[0]; i++) {
        int wanted = argc < 2;
        for (int a = 1; a < argc; a++) wanted |= strcmp(argv[a], suites[i].name) == 0;
        if (!wanted) continue;
        uint64_t c0 = n_checks, f0 = n_failed;
        double t0 = now_s();
        suites[i].run();
        ran++;
        printf("  %-7s %8" PRIu64 " checks, %" PRIu64 " failed  (%.2f s)\n", suites[i].name,
               n_checks - c0, n_failed - f0, now_s() - t0);
    }
    if (ran == 0) {
        fprintf(stderr, "no such suite\n");
        return 2;
    }
    printf("%" PRIu64 " passed, %" PRIu64 " failed\n", n_checks - n_failed, n_failed);
    return n_failed ? 1 : 0;
}
