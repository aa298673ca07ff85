"""``Backoff`` for task retries (BullMQ's ``backoff``) — the policy lives in
:mod:`fastq.flow.backoff`, below queues, so queue nacks and task retries share it; this
module keeps ``fastq.tasks.backoff.Backoff`` importable.

A backoff is stored with the job (as ``{"type", "delay", "cap", "jitter"}`` in its
options), so whichever worker process runs the retry computes the same policy.
"""
from __future__ import annotations

from ..flow.backoff import Backoff

__all__ = ["Backoff"]
