"""What the asyncio faces of the broker share: how work goes to a thread, and how long
a blocking wait is sliced (see :mod:`fastq.broker.aio` for the rule)."""
from __future__ import annotations

import asyncio
import functools

SLICE = 0.1   # seconds: a blocking wait in a thread is cut into slices this long


async def to_thread(fn, *args, **kwargs):
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))
