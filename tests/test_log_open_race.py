"""Opening a log whose directory another process creates at the same moment (two producers
publishing to a queue lane that does not exist yet both create its log)."""
import os

import pytest

from fastq.errors import InvalidArgument
from fastq.log import Log


def test_log_opens_when_another_process_makes_its_directory_first(tmp_path, monkeypatch):
    """The directory appears between Log's isdir check and its exists check: that is the
    other process's log directory, not "exists and is not a directory" (the bench's queue
    scenario lost a producer to this)."""
    path = str(tmp_path / "lane")
    real_isdir = os.path.isdir
    made = []

    def isdir(p):
        if p == path and not made:
            made.append(p)
            os.mkdir(path)            # the other process, right after our first look
            return False
        return real_isdir(p)

    monkeypatch.setattr(os.path, "isdir", isdir)
    lg = Log(path)
    try:
        assert made == [path]
        assert lg.append(b"x") == 0 and lg.end_offset == 1
    finally:
        lg.close()


def test_log_path_that_is_a_file_is_still_refused(tmp_path):
    path = tmp_path / "lane"
    path.write_bytes(b"not a log")
    with pytest.raises(InvalidArgument, match="not a directory"):
        Log(str(path))
