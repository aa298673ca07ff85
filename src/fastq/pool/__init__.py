"""Worker processes scaled by runnable depth (issue 17, docs/BACKPRESSURE.md "Worker pools
and autoscaling"): :class:`WorkerPool` over a :class:`fastq.Queue` or a
:class:`fastq.TaskQueue`.

Modules, bottom to top: ``scaling`` (the rule: ceil(depth / per_worker) in [min, max],
cooldown, hysteresis — pure policy), ``_child`` (a worker process), ``pool``
(:class:`WorkerPool`: spawns, retires and replaces processes, the decision thread).
"""
from __future__ import annotations

from .pool import WorkerPool, runnable_depth
from .scaling import Scaler, ScaleDecision, desired_workers

__all__ = ["WorkerPool", "ScaleDecision", "Scaler", "desired_workers", "runnable_depth"]
