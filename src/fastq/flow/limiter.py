"""RateLimiter: a GCRA rate limiter in a shared-memory file, exact across processes.

    limiter = fastq.RateLimiter("api-publish", broker, points=100, duration=1.0)  # 100/s
    try:
        limiter.consume(1, key=user_id)
        q.publish(message)
    except fastq.RateLimited as e:     # e.retry_after: seconds until it would pass
        return 429

Every process that opens ``<broker>/limiters/<name>.limiter`` shares the same buckets: a
decision is one compare-and-swap on a 64-bit word of the mapping (csrc/fq_limiter.h has
the format, the algorithm and the key table's rules), so four processes hammering one
limiter admit exactly what one would — no lock, no server, no round trip.

Why not an existing library (checked before writing this one):

- ``aiolimiter``: a leaky bucket for one asyncio event loop; in-process only.
- ``pyrate-limiter`` (4.x): leaky buckets with in-memory, multiprocessing (a
  ``multiprocessing`` lock around a shared list), SQLite (optionally file-locked), Redis and
  Postgres backends: across processes every decision takes a lock or a round trip
  (~0.1 M decisions/s across 4 processes in bench/bench_limiter.py, against ~5 M here).
- ``limits``: fixed/moving/sliding windows over storage backends (in-memory for one
  process, Redis, Memcached, MongoDB, etcd): cross-process again means a server.
None offers lock-free shared memory between the processes of one machine, which is
fastq's whole deployment model (one directory, no server).

Semantics:

- ``points`` per ``duration`` seconds; ``burst`` (default ``points``) is the bucket's size:
  a full bucket admits ``burst`` points at once, then one point per ``duration/points``.
  Over any interval of t seconds a bucket admits at most ``burst + t*points/duration``
  points (the emission interval is rounded up to a whole ns, so never more).
- Keys (``key=``: str, bytes or an int that fits 64 bits, at most 1024 bytes; None is the
  limiter's one global bucket) have their own buckets in a fixed table of ``max_keys``
  slots (rounded up to a power of two; 0: no keys). A key whose bucket refilled holds no state and its
  slot is reused. ``on_full``: what a new key does when the 32 slots it may use all hold
  keys still limited — ``"evict"`` (default) takes the slot of the key closest to refilled
  (that key may then over-admit by what it still owed; counted in ``stats()["evictions"]``)
  and ``"refuse"`` raises :class:`fastq.RateLimited` until one frees (exact, but new
  keys wait). Size ``max_keys`` for the keys limited at once, not for all keys ever.
- The clock is CLOCK_MONOTONIC: shared by every process of one boot, blind to wall-clock
  jumps, stopped during suspend (no refill while asleep: conservative). When the
  bucket's tolerance spans 16 ticks of the kernel's coarse clock or more (``clock="auto"``,
  the default), decisions read CLOCK_MONOTONIC_COARSE (same clock at tick resolution,
  1-4 ms; ~25 ns instead of up to ~180 ns on a VM): refills then arrive once a tick and
  the bound above holds within one tick's worth of points. ``clock="exact"`` always reads
  the exact clock. After a reboot the monotonic clock starts again, so the file records
  the boot id (Linux: /proc/sys/kernel/random/boot_id; elsewhere the boot time to 10 s)
  and the first opener of a new boot resets every bucket to full, under the file's flock.
- The configuration is stored in the file. Opening an existing limiter with a different
  ``points``/``duration``/``burst``/``max_keys`` raises :class:`fastq.InvalidArgument`
  (two processes disagreeing about a limit is a bug to surface, not to resolve silently);
  pass no ``points`` to open it with the stored configuration, or ``RateLimiter.delete``
  it first (processes that still have the old one open keep using the old file).
- Damaged, truncated or foreign files raise :class:`fastq.CorruptRecord`, never crash; a
  bucket whose state cannot be (damaged bytes) raises CorruptRecord on use.

Process/thread safety: one RateLimiter may be shared by threads; any number of processes
may open the same limiter. Objects survive ``fork`` (the child re-registers its pid).
"""
from __future__ import annotations

import asyncio
import errno
import hashlib
import math
import os
import tempfile
import time
import weakref
from typing import Any

from .._core import _storage
from .._core._codec import os_errors
from .._core._storage import LimiterCore
from ..broker.config import validate_name
from ..errors import InvalidArgument, StorageError, Timeout

__all__ = ["RateLimiter", "AsyncRateLimiter", "limiter_path"]

DIRNAME = "limiters"
SUFFIX = ".limiter"
DEFAULT_MAX_KEYS = 4096
WINDOW = 32            # slots a key may use: its home slot and the next 31
ON_FULL = ("evict", "refuse")
CLOCKS = ("auto", "exact", "coarse")
COARSE_TICKS = 16      # "auto" reads the coarse clock when tau spans this many ticks

_open_limiters: "weakref.WeakSet[RateLimiter]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for lim in list(_open_limiters):
        lim._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _boot_id() -> bytes:
    """16 bytes naming this boot of the machine."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as f:
            text = f.read().strip().replace(b"-", b"")
        return bytes.fromhex(text.decode())[:16].ljust(16, b"\0")
    except (OSError, ValueError):
        boot = int((time.time() - time.monotonic()) / 10)   # boot time, 10 s grain
        return b"boot" + boot.to_bytes(12, "little", signed=True)


def _directory(broker) -> str:
    path = getattr(broker, "path", broker)
    try:
        return os.path.abspath(os.fspath(path))
    except TypeError:
        raise InvalidArgument(f"broker must be a fastq Broker or a directory path, got {broker!r}") from None


def limiter_path(name: str, broker) -> str:
    """The file of rate limiter ``name`` under ``broker`` (a Broker or its directory)."""
    validate_name("rate limiter", name)
    return os.path.join(_directory(broker), DIRNAME, name + SUFFIX)


def _int_arg(what: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an int, got {value!r}")
    if value < low:
        raise InvalidArgument(f"{what} must be >= {low}, got {value}")
    return value


def _duration_ns(duration) -> int:
    if isinstance(duration, bool) or not isinstance(duration, (int, float)):
        raise InvalidArgument(f"duration must be a number of seconds, got {duration!r}")
    if not (math.isfinite(duration) and duration > 0):
        raise InvalidArgument(f"duration must be a finite number of seconds > 0, got {duration!r}")
    ns = round(duration * 1e9)
    if ns < 1:
        raise InvalidArgument(f"duration={duration!r} is below 1 ns")
    return ns


def _timeout(timeout) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
        raise InvalidArgument(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
    return float(timeout)


class RateLimiter(LimiterCore):
    """A rate limiter shared by every process that opens ``name`` under ``broker`` (a
    :class:`fastq.Broker`, an async broker, or the broker's directory). See the module
    docstring (:mod:`fastq.flow.limiter`) for the semantics.

    ``points`` per ``duration`` seconds (None: open an existing limiter with its stored
    configuration); ``burst``: bucket size (default ``points``); ``max_keys``: slots of
    the per-key table (rounded up to a power of two; 0: no keys); ``on_full``: ``"evict"``
    or ``"refuse"``; ``clock``: ``"auto"``, ``"exact"`` or ``"coarse"``.

    Decisions: :meth:`consume` (raises :class:`fastq.RateLimited`), :meth:`try_consume`
    (True/False), :meth:`acquire` (sleeps until admitted, :class:`fastq.Timeout` after
    ``timeout``), :meth:`available`. A refused or timed-out call takes nothing.
    Close with :meth:`close` or use as a context manager.
    """

    def __init__(self, name: str, broker, points: int | None = None, duration: float = 1.0, *,
                 burst: int | None = None, max_keys: int = DEFAULT_MAX_KEYS, on_full: str = "evict",
                 clock: str = "auto"):
        path = limiter_path(name, broker)
        if on_full not in ON_FULL:
            raise InvalidArgument(f"on_full must be one of {ON_FULL}, got {on_full!r}")
        if clock not in CLOCKS:
            raise InvalidArgument(f"clock must be one of {CLOCKS}, got {clock!r}")
        config = None
        if points is not None:
            points = _int_arg("points", points, 1)
            duration_ns = _duration_ns(duration)
            burst = points if burst is None else _int_arg("burst", burst, 1)
            max_keys = _int_arg("max_keys", max_keys, 0)
            if max_keys > _storage.LIMITER_MAX_KEYS:
                raise InvalidArgument(f"max_keys={max_keys}: at most {_storage.LIMITER_MAX_KEYS}")
            capacity = 1 << (max_keys - 1).bit_length() if max_keys else 0
            if _storage.limiter_config(points, duration_ns, burst) is None:
                raise InvalidArgument(
                    f"rate limiter {name!r}: points={points} per duration={duration!r} s with "
                    f"burst={burst} is out of range (at most 1e9 points per second, and "
                    f"burst * duration / points below ~18 years)")
            config = (points, duration_ns, burst, capacity)
            if not os.path.exists(path):
                self._create(path, config)
        elif burst is not None:
            raise InvalidArgument("burst given without points: pass points and duration too")
        flags = _storage.LIMITER_EVICT if on_full == "evict" else 0
        try:
            self._open(path, name, _boot_id(), flags)
        except StorageError as e:
            if e.errno != errno.ENOENT:
                raise
            raise InvalidArgument(f"rate limiter {name!r} does not exist under {_directory(broker)}: "
                                  f"pass points and duration to create it") from None
        try:
            if config is not None:
                stored = (self.points, round(self.duration * 1e9), self.burst, self.max_keys)
                if stored != config:
                    raise InvalidArgument(
                        f"rate limiter {name!r} exists with points={stored[0]} duration="
                        f"{stored[1] / 1e9!r} burst={stored[2]} max_keys={stored[3]}; opened with "
                        f"points={config[0]} duration={config[1] / 1e9!r} burst={config[2]} "
                        f"max_keys={config[3]}: open it without points to use the stored "
                        f"configuration, or RateLimiter.delete() it first")
            res = _storage.limiter_coarse_resolution()
            coarse = clock == "coarse" or (clock == "auto" and 0 < res and
                                           self.burst * self.emission_interval >= COARSE_TICKS * res)
            self._use_coarse_clock(coarse and res > 0)
        except BaseException:
            self.close()
            raise
        self.on_full = on_full
        _open_limiters.add(self)

    @staticmethod
    def _create(path: str, config: tuple) -> None:
        """Write a fresh file beside `path` and link it into place: an existing limiter
        (another process won the race) is never replaced."""
        directory = os.path.dirname(path)
        with os_errors("create the limiters directory", directory):
            os.makedirs(directory, exist_ok=True)
        with os_errors("create rate limiter", directory):
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=SUFFIX, dir=directory)
            os.close(fd)
        try:
            points, duration_ns, burst, capacity = config
            _storage.limiter_create(tmp, capacity, min(WINDOW, capacity), points, duration_ns,
                                    burst, _boot_id())
            with os_errors("create rate limiter", path):
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def acquire(self, points: int = 1, key=None, timeout: float | None = None) -> None:
        """Take ``points`` from the bucket of ``key``, sleeping until they are there.
        Raises :class:`fastq.Timeout` (nothing taken) when they will not be there within
        ``timeout`` seconds — at once when the wait already exceeds it."""
        timeout = _timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            wait = self._retry_after(points, key)
            if wait == 0.0:
                return
            if deadline is not None and time.monotonic() + wait > deadline:
                raise Timeout(f"rate limiter {self.name!r}: {points} point(s)"
                              f"{'' if key is None else f' for key {key!r}'} not available "
                              f"within timeout={timeout} s (next in {wait:.3f} s)")
            time.sleep(wait)

    @classmethod
    def delete(cls, name: str, broker) -> None:
        """Remove limiter ``name``'s file. Processes that have it open keep deciding on the
        old file until they reopen it."""
        path = limiter_path(name, broker)
        with os_errors("delete rate limiter", path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "RateLimiter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __reduce__(self):
        raise TypeError("a RateLimiter is not picklable: open it by name in the other process")

    def __repr__(self) -> str:
        if self.closed:
            return f"<RateLimiter {self.name!r} closed>"
        return (f"<RateLimiter {self.name!r} {self.points}/{self.duration:g}s burst={self.burst} "
                f"max_keys={self.max_keys}>")


class AsyncRateLimiter:
    """asyncio face of a :class:`RateLimiter` (as :class:`fastq.AsyncQueue` is of a Queue):
    ``await consume(...)``, ``await try_consume(...)``, ``await acquire(...)``.

    A decision is a CAS on shared memory (sub-microsecond) and runs inline; ``acquire``
    waits with ``asyncio.sleep``, so a cancelled ``acquire`` has taken nothing. Wrap an
    open limiter (``AsyncRateLimiter(limiter)``: closing this one does not close it) or
    open one off the event loop with ``await AsyncRateLimiter.open(name, broker, ...)``.
    """

    def __init__(self, limiter: RateLimiter, *, _owned: bool = False):
        if not isinstance(limiter, RateLimiter):
            raise InvalidArgument(f"AsyncRateLimiter wraps a RateLimiter, got {limiter!r}")
        self.limiter = limiter
        self._owned = _owned

    @classmethod
    async def open(cls, name: str, broker, points: int | None = None, duration: float = 1.0,
                   **options: Any) -> "AsyncRateLimiter":
        """Open (or create) a limiter in a worker thread (it touches the disk)."""
        lim = await asyncio.to_thread(RateLimiter, name, broker, points, duration, **options)
        return cls(lim, _owned=True)

    async def consume(self, points: int = 1, key=None) -> None:
        self.limiter.consume(points, key)

    async def try_consume(self, points: int = 1, key=None) -> bool:
        return self.limiter.try_consume(points, key)

    async def acquire(self, points: int = 1, key=None, timeout: float | None = None) -> None:
        """As :meth:`RateLimiter.acquire`, sleeping on the event loop."""
        timeout = _timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            wait = self.limiter._retry_after(points, key)
            if wait == 0.0:
                return
            if deadline is not None and loop.time() + wait > deadline:
                raise Timeout(f"rate limiter {self.limiter.name!r}: {points} point(s) not "
                              f"available within timeout={timeout} s (next in {wait:.3f} s)")
            await asyncio.sleep(wait)

    def available(self, key=None) -> int:
        return self.limiter.available(key)

    async def close(self) -> None:
        if self._owned:
            self.limiter.close()

    async def __aenter__(self) -> "AsyncRateLimiter":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<AsyncRateLimiter {self.limiter!r}>"


# -- integrations: a queue's publish, a task worker ------------------------------------------

def as_limiter(name: str, broker, spec, what: str) -> tuple[RateLimiter, bool]:
    """The RateLimiter a ``rate_limit=``/``limiter=`` option names, and whether the caller
    owns it (opened here: close it with the object that uses it). ``spec``: a RateLimiter,
    ``(points, duration)``, or a dict ``{"max": points, "duration": seconds}`` (BullMQ's
    limiter) — the latter two open limiter ``name`` under ``broker``."""
    if isinstance(spec, RateLimiter):
        return spec, False
    if isinstance(spec, tuple) and len(spec) == 2:
        return RateLimiter(name, broker, spec[0], spec[1]), True
    if isinstance(spec, dict) and "max" in spec:
        unknown = set(spec) - {"max", "duration", "group_key"}
        if unknown:
            raise InvalidArgument(f"{what}: unknown key(s) {sorted(unknown)}; known: max, duration, group_key")
        return RateLimiter(name, broker, spec["max"], spec.get("duration", 1.0)), True
    raise InvalidArgument(f"{what} must be a fastq.RateLimiter, (points, duration) or "
                          f"{{'max': points, 'duration': seconds}}, got {spec!r}")


def limit_publish(queue, spec) -> None:
    """``broker.queue(name, rate_limit=spec)``: every ``publish`` through this handle takes
    one point (``publish_many``: one per message, all or none) before storing, and raises
    :class:`fastq.RateLimited` — nothing stored — when they are not there (a producer
    decides: retry after ``e.retry_after``, answer 429, or call ``limiter.acquire()``
    first to wait). ``spec`` None removes the limit. The limiter of a ``(points,
    duration)`` spec is ``queue.<name>.publish``, shared by every process."""
    unlimit_publish(queue)
    if spec is None:
        return
    lim, owned = as_limiter(f"queue.{queue.name}.publish", queue.broker, spec, "rate_limit")
    publish = type(queue).publish.__get__(queue)
    publish_many = type(queue).publish_many.__get__(queue)

    def limited_publish(data, **options):
        lim.consume(1)
        return publish(data, **options)

    def limited_publish_many(items, **options):
        items = list(items)
        if items:
            lim.consume(len(items))
        return publish_many(items, **options)

    # instance attributes shadow the class's (compiled) methods for this handle only
    queue.publish = limited_publish
    queue.publish_many = limited_publish_many
    queue.__dict__["rate_limit"] = lim
    queue.__dict__["_rate_limit_owned"] = owned


def unlimit_publish(queue) -> None:
    """Remove a :func:`limit_publish` limit (closing the limiter when it opened it)."""
    d = queue.__dict__
    for k in ("publish", "publish_many"):
        d.pop(k, None)
    lim = d.pop("rate_limit", None)
    if d.pop("_rate_limit_owned", False) and lim is not None:
        lim.close()


def group_key_function(spec):
    """The ``group_key`` of a worker's ``limiter`` dict as a function of a job's data: a
    callable is used as it is, a str names a field of the data (a dict). Keys that are
    not str, bytes or a 64-bit int become ``str(key)``, long ones their SHA-256; a missing
    one is None (the limiter's global bucket)."""
    if spec is None:
        return None
    if callable(spec):
        fn = spec
    elif isinstance(spec, str):
        def fn(data):
            return data.get(spec) if isinstance(data, dict) else None
    else:
        raise InvalidArgument(f"group_key must be a callable or the name of a data field, got {spec!r}")

    def key_of(data):
        k = fn(data)
        if k is None:
            return None
        if type(k) is int and -(1 << 63) <= k < (1 << 63):
            return k
        if type(k) is not bytes:
            k = str(k)
        if len(k) > 256:        # a group's key must never fail the job: long ones by digest
            k = hashlib.sha256(k.encode() if isinstance(k, str) else k).digest()
        return k
    return key_of
