"""Child processes of tests/test_limiter.py (run as ``python limiter_workers.py MODE ...``).

hammer DIR                 print "ready", read "START END" from stdin; from monotonic START
                           to END (CLOCK_MONOTONIC is shared by every process of a boot)
                           take 1 point at a time from limiter
                           "global" and from limiter "keyed" for keys k0/k1; sleep at most
                           2 ms while all three refuse; print {"global": n, "k0": n, "k1": n}
"""
import json
import sys
import time

import fastq


def hammer(directory):
    g = fastq.RateLimiter("global", directory)
    k = fastq.RateLimiter("keyed", directory)
    print("ready", flush=True)
    start, end = map(float, sys.stdin.readline().split())
    counts = {"global": 0, "k0": 0, "k1": 0}
    while time.monotonic() < start:
        time.sleep(0.001)
    while time.monotonic() < end:
        wait = 0.002            # poll at least this often: other processes compete
        took = False
        for name, lim, key in (("global", g, None), ("k0", k, "k0"), ("k1", k, "k1")):
            r = lim._retry_after(1, key)
            if r == 0.0:
                counts[name] += 1
                took = True
            else:
                wait = min(wait, r)
        if not took:
            time.sleep(wait)
    g.close()
    k.close()
    print(json.dumps(counts), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "hammer":
        hammer(sys.argv[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
