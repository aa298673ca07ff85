"""One fastq.Log shared by several processes: concurrent writers never tear or
interleave records, offsets stay dense and each writer's records keep its order; a
reader tailing with wait() in another process sees every record."""
import hashlib
import os
import random

import pytest

from fastq import Log
from logutil import TORTURE, fast_dir, fork_child, read_all, seed_for, wait_child  # noqa: F401

OPTS = dict(segment_bytes=16384, max_record_bytes=4096)


def writer_value(w, i, rng_seed):
    rng = random.Random(rng_seed * 1_000_003 + w * 100_003 + i)
    body = bytes([65 + w]) * rng.randrange(0, 600)
    return b"w%d:%d:" % (w, i) + body


def writer(path, w, n, seed, mode):
    def body():
        log = Log(path, durability=mode)
        i = 0
        rng = random.Random(seed + w)
        while i < n:
            k = min(n - i, rng.choice((1, 1, 1, 3, 10)))
            vals = [writer_value(w, j, seed) for j in range(i, i + k)]
            if k == 1:
                log.append(vals[0], key=b"w%d" % w, headers=[("seq", b"%d" % i)], timestamp=i)
            else:
                log.append_batch([(v, b"w%d" % w, [("seq", b"%d" % (i + j))], i + j)
                                  for j, v in enumerate(vals)])
            i += k
        log.close()
    return body


def tail_reader(path, total, w):
    """Tail the log with wait() until `total` records were seen; write count and digest."""
    def body():
        log = Log(path)
        h = hashlib.sha256()
        off = 0
        while off < total:
            assert log.wait(off, timeout=30), f"no record {off} within 30 s"
            end = log.end_offset
            for rec in log.read(off, end):
                h.update(b"%d|%s|%s;" % (rec.offset, bytes(rec.key), bytes(rec.value)))
                off = rec.offset + 1
                rec = None
            # a read stops only at its end, also while writers roll segments meanwhile
            assert off == end, f"read stopped at {off}, before the end {end} it was given"
        os.write(w, b"%d %s" % (off, h.hexdigest().encode()))
        log.close()
    return body


@pytest.mark.parametrize("writers,n,mode", [
    (2, 3000, "os"), (3, 2000, "os"), (3, 300, "group"), (2, 200, "always"),
] + ([(3, 30000, "os"), (3, 3000, "group")] if TORTURE else []))
def test_concurrent_writers_and_tailing_reader(fast_dir, writers, n, mode):
    seed = seed_for(f"multiprocess[{writers}x{n},{mode}]")
    path = os.path.join(fast_dir, "log")
    with Log(path, durability=mode, **OPTS):
        pass
    total = writers * n
    r, w = os.pipe()
    reader = fork_child(tail_reader(path, total, w), close_fds=[r])
    os.close(w)
    pids = [fork_child(writer(path, i, n, seed, mode), close_fds=[r]) for i in range(writers)]
    for pid in pids:
        assert wait_child(pid, timeout=120) == 0
    assert wait_child(reader, timeout=60) == 0
    report = os.read(r, 4096).split()
    os.close(r)

    with Log(path) as log:
        got = read_all(log)
        assert log.end_offset == total
        segs = log.segments()
    assert [g[0] for g in got] == list(range(total)), "offsets are not dense"
    seen = [0] * writers
    h = hashlib.sha256()
    for off, ts, key, value, headers in got:
        wi = int(key[1:])
        i = seen[wi]
        assert value == writer_value(wi, i, seed), f"record {off} of writer {wi} torn or out of order"
        assert headers == [("seq", b"%d" % i)] and ts == i
        seen[wi] += 1
        h.update(b"%d|%s|%s;" % (off, key, value))
    assert seen == [n] * writers
    assert int(report[0]) == total and report[1].decode() == h.hexdigest(), \
        "the tailing reader saw something else"
    assert len(segs) > 1


def test_reader_in_other_process_sees_appends_promptly(fast_dir):
    """A reader process blocked in wait() wakes for each record the parent appends."""
    import time
    path = os.path.join(fast_dir, "log")
    r, w = os.pipe()
    r2, w2 = os.pipe()

    def body():
        log = Log(path)
        for off in range(20):
            assert log.wait(off, timeout=10)
            os.write(w, b"%d %d\n" % (off, time.monotonic_ns()))
            assert os.read(r2, 1) == b"n"          # the parent's go for the next record
        assert not log.wait(20, timeout=0.05)
        log.close()
    with Log(path) as log:
        pid = fork_child(body, close_fds=[r, w2])
        os.close(w)
        os.close(r2)
        lags = []
        for off in range(20):
            time.sleep(0.01)
            t = time.monotonic_ns()
            assert log.append(b"%d" % off) == off
            line = b""
            while not line.endswith(b"\n"):
                line += os.read(r, 1)
            got_off, woke = map(int, line.split())
            assert got_off == off
            lags.append((woke - t) / 1e6)
            os.write(w2, b"n")
        assert wait_child(pid) == 0
        os.close(r)
        os.close(w2)
    print(f"wake-up lag ms: median {sorted(lags)[10]:.3f}, max {max(lags):.3f}")
    assert sorted(lags)[10] < 50


def threaded_writer(path, w, threads, n):
    """`threads` threads appending through ONE Log object of this process; thread t's
    values are b"w<w>.<t>:<i>". Appends take turns with the other process's for the
    writer lock, and small segments make rolls (Python code, under the lock) frequent."""
    def body():
        import threading
        log = Log(path)
        errors = []

        def run(t):
            try:
                for i in range(n):
                    v = b"w%d.%d:%d:" % (w, t, i) + b"x" * (i % 300)
                    if i % 3 == 0:
                        log.append(v, headers=[("i", b"%d" % i)])
                    elif i % 3 == 1:
                        log.append_many([v])
                    else:
                        log.append(v)
            except BaseException as e:        # reported through the exit status
                errors.append(e)
        ths = [threading.Thread(target=run, args=(t,)) for t in range(threads)]
        for th in ths:
            th.start()
        for th in ths:
            th.join()
        log.close()
        assert not errors, errors
    return body


def test_threads_sharing_one_log_while_another_process_appends(fast_dir):
    """One Log object used by 4 threads in each of 2 processes: an append that waits
    for the writer lock (GIL released) or rolls (Python code) while another thread of
    the same process appends must still write its own records, whole, exactly once."""
    path = os.path.join(fast_dir, "log")
    with Log(path, segment_bytes=8192, max_record_bytes=4096):
        pass
    threads, n = 4, 1500
    pids = [fork_child(threaded_writer(path, w, threads, n)) for w in range(2)]
    for pid in pids:
        assert wait_child(pid, timeout=120) == 0
    with Log(path) as log:
        got = read_all(log)
    assert [g[0] for g in got] == list(range(2 * threads * n)), "offsets are not dense"
    last = {}
    for off, ts, key, value, headers in got:
        who, i, pad = value.split(b":")
        i = int(i)
        assert pad == b"x" * (i % 300), f"record {off} torn"
        assert last.get(who, -1) == i - 1, f"{who!r}: record {i} after {last.get(who)} (lost or doubled)"
        assert headers == ([("i", b"%d" % i)] if i % 3 == 0 else [])
        last[who] = i
    assert sorted(last.values()) == [n - 1] * (2 * threads)
