"""A transactional producer process for tests/test_idempotent_kill.py (not a test module).

    python idempotent_worker.py BROKER TXID N PROGRESS DUPS EVERY PAUSE

Publishes records TXID:0 .. TXID:N-1, record i to partition i % 2 with sequence i // 2,
resuming after the last record its PROGRESS file says was acknowledged. It writes
PROGRESS only every EVERY records, so a process killed -9 leaves up to EVERY - 1 records
that were appended but never acknowledged: the next instance publishes them again, with
the same sequences, and each such publish answered from a stored batch is a line in
DUPS. Prints "ready" once its producer is open, then "publishing" after its first publish
(the kill loop starts its clock there: on a starved machine a kill timed from "ready"
could land before any publish, every time, and no retry would be exercised).
"""
import os
import sys
import time

import fastq


def main():
    path, txid, n, progress, dups, every, pause = sys.argv[1:8]
    n, every, pause = int(n), int(every), float(pause)
    b = fastq.open(path)
    p = b.topic("t", partitions=2).producer(transactional_id=txid)
    fd = os.open(progress, os.O_RDWR | os.O_CREAT, 0o644)
    data = os.pread(fd, 20, 0)
    i = int(data) + 1 if data else 0
    dfd = os.open(dups, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    print("ready", flush=True)
    first_done = False
    while i < n:
        seen = p.duplicates
        m = p.publish(b"%s:%d" % (txid.encode(), i), partition=i % 2, sequence=i // 2)
        if p.duplicates != seen:
            os.write(dfd, b"%d %d\n" % (i, m.offset))
        if not first_done:
            print("publishing", flush=True)
            first_done = True
        if (i + 1) % every == 0 or i == n - 1:
            os.pwrite(fd, b"%020d" % i, 0)
        i += 1
        if pause:
            time.sleep(pause)
    p.close()
    b.close()


if __name__ == "__main__":
    main()
