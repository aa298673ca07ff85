"""Fixtures shared by every test module."""
from __future__ import annotations

import os

import pytest

import fastq
from faultfs import small_fs

# `make wheel` sets this to the venv the built wheel was installed into: a run that would
# import fastq from anywhere else (src/ of a checkout) tests the wrong thing, so it stops.
_INSTALLED = os.environ.get("FASTQ_TEST_INSTALLED")
if _INSTALLED and not os.path.realpath(fastq.__file__).startswith(os.path.realpath(_INSTALLED) + os.sep):
    raise pytest.UsageError(f"FASTQ_TEST_INSTALLED={_INSTALLED} but fastq was imported from {fastq.__file__}")


@pytest.fixture
def tmpfs_dir():
    """A fresh 8 MiB tmpfs (skipped with the reason where mounting is not allowed)."""
    with small_fs("tmpfs", 8 << 20) as path:
        yield path


@pytest.fixture
def ext4_dir():
    """A fresh 8 MiB loop-mounted ext4 with 1 KiB blocks (skipped with the reason where
    mounting is not allowed)."""
    with small_fs("ext4", 8 << 20) as path:
        yield path
