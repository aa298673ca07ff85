"""Fixtures shared by every test module."""
from __future__ import annotations

import pytest

from faultfs import small_fs


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
