"""Small real filesystems for fault tests: a full disk is a real ENOSPC from the kernel,
not a mock. Not a test module.

``small_fs(kind, size)`` mounts a fresh tmpfs (``kind="tmpfs"``) or a loop-mounted ext4
image (``kind="ext4"``, 1 KiB blocks, so a sparse file's unallocated page is a real
hole) of ``size`` bytes and yields its path; the mount is removed afterwards. Mounting
needs root (CI and the developers' machines run as root); elsewhere the test is skipped
with the reason. ``fill(path, leave)`` takes all but about ``leave`` bytes of the
filesystem's free space with a filler file and returns a function that frees it again.

The pytest fixtures ``tmpfs_dir`` and ``ext4_dir`` (in conftest.py) hand a test an 8 MiB
filesystem of each kind.

Injected faults: the C layer's system calls fail on demand through
``fastq._core._storage._fault_inject`` (see docs/ARCHITECTURE.md, "Fault injection");
``c_fault(point, errno, after, times)`` arms one for a with-block. The system calls
fastq's Python modules make themselves (``os.open``, ``os.write``, ``os.fsync``,
``os.replace``, ...) fail through ``os_fault(module, name, errno, after, times)``, which
swaps the module's ``os`` for a proxy whose ``name`` raises ``OSError(errno)`` — the
real ``os`` module, and so pytest, is untouched.
"""
from __future__ import annotations

import contextlib
import errno as _errno
import os
import shutil
import subprocess
import tempfile
import uuid

import pytest


def _run(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True)


def _cannot_mount(reason: str):
    pytest.skip(f"needs a small filesystem to fill ({reason}); run the suite as root on Linux "
                "(CI does) to include this fault test")


@contextlib.contextmanager
def small_fs(kind: str = "tmpfs", size: int = 8 << 20):
    """Mount a fresh ``kind`` filesystem of ``size`` bytes; yield its path; unmount."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        _cannot_mount("mounting needs root")
    if shutil.which("mount") is None:
        _cannot_mount("no mount command")
    base = tempfile.mkdtemp(prefix=f"fastq-{kind}-")
    mnt = os.path.join(base, "mnt")
    os.mkdir(mnt)
    image = None
    try:
        if kind == "tmpfs":
            r = _run("mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", mnt)
        elif kind == "ext4":
            if shutil.which("mkfs.ext4") is None:
                _cannot_mount("no mkfs.ext4 (Debian's e2fsprogs)")
            image = os.path.join(base, "fs.img")
            with open(image, "wb") as f:
                f.truncate(size)
            r = _run("mkfs.ext4", "-q", "-F", "-b", "1024", "-m", "0", "-L", uuid.uuid4().hex[:8], image)
            if r.returncode == 0:
                r = _run("mount", "-o", "loop", image, mnt)
        else:
            raise ValueError(f"kind must be 'tmpfs' or 'ext4', got {kind!r}")
        if r.returncode != 0:
            _cannot_mount(f"mount failed: {r.stderr.strip()}")
        try:
            yield mnt
        finally:
            if _run("umount", mnt).returncode != 0:
                _run("umount", "-l", mnt)   # a leaked fd or mapping; detach, freed when closed
    finally:
        shutil.rmtree(base, ignore_errors=True)


def free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: str, leave: int = 0):
    """Take all but about ``leave`` bytes of the free space of the filesystem holding
    ``path`` (with files named ``.filler*`` in ``path``). Returns a function that frees it."""
    made = []
    n = 0
    while True:
        room = free_bytes(path) - leave
        if room <= 0:
            break
        name = os.path.join(path, f".filler{n}")
        n += 1
        made.append(name)
        fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            chunk = b"\xff" * min(room, 1 << 20)
            written = 0
            while written < room:
                try:
                    written += os.write(fd, chunk[: room - written])
                except OSError:
                    break
        finally:
            os.close(fd)
        if written < room:
            break

    def release():
        for name in made:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    return release


@contextlib.contextmanager
def c_fault(point: str, err: int, after: int = 0, times: int = 1):
    """Arm the C fault point ``point`` (``fastq._core._storage.FAULT_POINTS``) for the block:
    its calls after the first ``after`` fail with ``err``, ``times`` of them (< 0: all).
    Yields a function returning how many calls failed so far. Disarms every point after."""
    from fastq._core import _storage

    _storage._fault_inject(point, err, after, times)
    try:
        yield lambda: _storage._fault_hits(point)
    finally:
        _storage._fault_clear()


class _OsProxy:
    """Stands in for the ``os`` module inside one fastq module: attribute reads go to the
    real ``os`` except the failing functions."""

    def __init__(self, real, failing: dict):
        self._real = real
        self._failing = failing

    def __getattr__(self, name):
        f = self._failing.get(name)
        return f if f is not None else getattr(self._real, name)


class _Counter:
    def __init__(self):
        self.calls = 0
        self.hits = 0


@contextlib.contextmanager
def os_fault(module, name: str, err: int, after: int = 0, times: int = 1, path_contains: str | None = None):
    """Make ``module.os.<name>`` (e.g. ``fastq.log``, ``"fsync"``) raise
    ``OSError(err)`` for the block: calls after the first ``after`` fail, ``times`` of
    them (< 0: all). With ``path_contains``, only calls whose first argument is a path
    containing it count. Yields a counter (``.calls``, ``.hits``)."""
    real = getattr(module.os, name)
    count = _Counter()

    def failing(*args, **kwargs):
        if path_contains is not None and not (args and isinstance(args[0], str) and path_contains in args[0]):
            return real(*args, **kwargs)
        n = count.calls
        count.calls += 1
        if n >= after and (times < 0 or n - after < times):
            count.hits += 1
            target = args[0] if args and isinstance(args[0], str) else None
            raise OSError(err, os.strerror(err), target)
        return real(*args, **kwargs)

    saved = module.os
    module.os = _OsProxy(saved, {name: failing})
    try:
        yield count
    finally:
        module.os = saved


ERRNOS = {"ENOSPC": _errno.ENOSPC, "EIO": _errno.EIO, "EDQUOT": _errno.EDQUOT}
