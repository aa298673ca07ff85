"""Helpers shared by the storage-engine tests (tests/test_log*.py): seeds, a fast
scratch directory, a record-tuple view of a log, random append operations and forked
children, and an interrupter for blocking waits. Not a test module."""
from __future__ import annotations

import os
import random
import shutil
import signal
import tempfile
import threading

import pytest

TORTURE = bool(os.environ.get("FASTQ_TORTURE"))


def seed_for(name: str) -> int:
    """A seed for one randomized test: FASTQ_SEED if set, else fresh. Printed, so a
    failing run can be replayed with FASTQ_SEED=<seed>."""
    seed = int(os.environ.get("FASTQ_SEED", random.randrange(2**32)))
    print(f"{name}: seed={seed} (replay with FASTQ_SEED={seed})")
    return seed


class Interrupted(Exception):
    """Raised by the interrupt_after fixture's signal handler."""


@pytest.fixture
def interrupt_after():
    """interrupt_after(s): after s seconds, a signal handler raises Interrupted in the
    main thread — as Ctrl-C raises KeyboardInterrupt — while it blocks in a wait."""
    if not hasattr(signal, "SIGUSR1"):
        pytest.skip("needs a POSIX signal to send to the waiting process (SIGUSR1); this "
                    "platform has none, and waits there are not interrupted by one")

    def handler(signum, frame):
        raise Interrupted()

    old = signal.signal(signal.SIGUSR1, handler)
    timers = []

    def arm(s):
        th = threading.Timer(s, os.kill, (os.getpid(), signal.SIGUSR1))
        timers.append(th)
        th.start()

    yield arm
    for th in timers:
        th.join()
    signal.signal(signal.SIGUSR1, old)


def child_env(tmp_path) -> dict:
    """The environment for a test's child Python process: TMPDIR points into the test's
    tmp_path, so what the child creates with tempfile goes with the test's scratch
    directory instead of piling up in /tmp."""
    return {**os.environ, "TMPDIR": str(tmp_path)}


@pytest.fixture
def fast_dir(tmp_path):
    """A scratch directory on tmpfs when there is one (/dev/shm on Linux): the
    recovery loops open and close a log thousands of times and each clean close
    fsyncs, which costs milliseconds on a disk and nothing on tmpfs. Falls back to
    tmp_path elsewhere."""
    base = "/dev/shm"
    if os.path.isdir(base) and os.access(base, os.W_OK):
        d = tempfile.mkdtemp(prefix="fastq-test-", dir=base)
        try:
            yield d
        finally:
            shutil.rmtree(d, ignore_errors=True)
    else:
        yield str(tmp_path)


def _b(x):
    return None if x is None else bytes(x)


def rec_tuple(rec):
    """(offset, timestamp, key, value, headers) with the views copied to bytes."""
    return (rec.offset, rec.timestamp, _b(rec.key), _b(rec.value), rec.headers)


def read_all(log, start=None, end=None):
    """Every record from `start` (default: the log start) as rec_tuple()s."""
    return [rec_tuple(r) for r in log.read(log.start_offset if start is None else start, end)]


# -- random operations ------------------------------------------------------------------
# An op is (kind, records); a record is (key, value, headers, timestamp) with bytes /
# None / list of (str, bytes|None) / int. apply_op() performs it and returns the first
# offset; every op is one batch as long as it fits max_record_bytes.

def random_value(rng: random.Random, max_len: int):
    r = rng.random()
    if r < 0.05:
        return None
    if r < 0.10:
        return b""
    return rng.randbytes(rng.randrange(1, max_len))


def random_op(rng: random.Random, max_len: int = 200, max_batch: int = 8, ts0: int = 1_600_000_000_000):
    kind = rng.choice(("one", "one", "many", "batch"))
    if kind == "one":
        key = rng.choice((None, b"", rng.randbytes(rng.randrange(1, 12))))
        headers = rng.choice(([], [("h", b"x")], [("k\u00e9y", None), ("t", rng.randbytes(3))]))
        recs = [(key, random_value(rng, max_len), headers, ts0 + rng.randrange(10**6))]
    elif kind == "many":
        key = rng.choice((None, rng.randbytes(4)))
        ts = ts0 + rng.randrange(10**6)
        recs = [(key, rng.randbytes(rng.randrange(0, max_len)), [], ts)
                for _ in range(rng.randrange(1, max_batch + 1))]
    else:
        recs = [(rng.choice((None, rng.randbytes(5))), random_value(rng, max_len),
                 rng.choice(([], [("b", rng.randbytes(2))])), ts0 + rng.randrange(10**6))
                for _ in range(rng.randrange(1, max_batch + 1))]
    return kind, recs


def apply_op(log, op) -> int:
    kind, recs = op
    if kind == "one":
        key, value, headers, ts = recs[0]
        return log.append(value, key=key, headers=headers, timestamp=ts)
    if kind == "many":
        return log.append_many([r[1] for r in recs], key=recs[0][0], timestamp=recs[0][3])
    return log.append_batch([(v, k, h, ts) for (k, v, h, ts) in recs])


def op_tuples(op, first_offset: int):
    """The rec_tuple()s an op's records read back as, starting at first_offset."""
    return [(first_offset + i, ts, k, v, list(h)) for i, (k, v, h, ts) in enumerate(op[1])]


def fork_child(body, close_fds=()) -> int:
    """Run body() in a forked child that leaves with os._exit (0 on success, 1 on an
    exception, which is printed). The child first closes `close_fds` (other children's
    pipe ends, so EOF still means what the parent thinks). It must open its own Log."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            for fd in close_fds:
                os.close(fd)
            body()
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, timeout: float = 60.0) -> int:
    """waitpid with a timeout (kill -9 and fail when the child hangs)."""
    import time
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError(f"child {pid} hung for {timeout} s")
        time.sleep(0.002)


def tree_snapshot(root: str) -> dict:
    """Every directory's mtime and every file's size, mtime and bytes under ``root``: equal
    snapshots before and after a call prove it wrote nothing there."""
    out = {}
    for d, _, files in os.walk(root):
        out[d] = os.stat(d).st_mtime_ns
        for f in files:
            p = os.path.join(d, f)
            st = os.stat(p)
            with open(p, "rb") as fh:
                out[p] = (st.st_size, st.st_mtime_ns, fh.read())
    return out
