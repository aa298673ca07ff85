"""``fastq dump FILE``: a segment file batch by batch (base offset, count, position,
size, CRC check, timestamps), as ``kafka-dump-log`` prints one; ``--records`` adds each
record. Reads the file only; in the active segment of a log it stops at the committed
end the log's state names, so a segment another process is writing dumps cleanly.

A ``.index`` or ``.timeindex`` file is dumped entry by entry (formats: docs/FORMAT.md,
csrc/fq_index.h, decoded by ``_codec.index_get`` / ``timeindex_get``): offset →
position, and timestamp → offset, each offset absolute (segment base + the stored
relative offset). The entries end at the zero-filled preallocated rest of the file; an
entry that does not ascend there is a problem (``index-entry``, exit 1) in a sealed
segment, and the end of the written entries in the active one (its writer may be
mid-entry)."""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
import sys

import click

from .._core._codec import BATCH_HEADER_SIZE, INDEX_ENTRY, TIMEINDEX_ENTRY, decode_batch, index_get, timeindex_get
from ..errors import CorruptRecord
from ..log.verify import read_state
from ._root import cli
from ._common import CliError, fmt_time, progress
from .io import _text

_SEGMENT_RE = re.compile(r"\d{20}\.(log|index|timeindex)")
_HEAD = struct.Struct(">qi")          # baseOffset i64 BE, batchLength i32 BE


def dump_segment(path: str, *, records: bool = False, on_progress=None):
    """Yield one dict per batch of the segment at ``path``, then at most one
    ``{"problem": ...}`` dict where reading had to stop (damage or a torn tail)."""
    with open(path, "rb") as f:
        size = _committed_size(path, os.fstat(f.fileno()).st_size)
        if size == 0:
            return
        mm = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
    try:
        yield from _walk(mm, size, records, on_progress)
    finally:
        mm.close()


def dump_index(path: str, *, on_progress=None):
    """Yield one dict per entry of the ``.index`` (``offset``, ``relative_offset``,
    ``position``) or ``.timeindex`` (``timestamp``, ``offset``, ``relative_offset``) file
    at ``path``, in file order, then at most one ``{"problem": "index-entry", ...}``
    where an entry does not ascend (see the module docstring)."""
    time_index = path.endswith(".timeindex")
    width = TIMEINDEX_ENTRY if time_index else INDEX_ENTRY
    get = timeindex_get if time_index else index_get
    base = int(os.path.basename(path)[:20])
    st = read_state(os.path.dirname(path) or ".")
    active = st is not None and st["active_base"] == base
    with open(path, "rb") as f:
        buf = f.read()
    prev = None
    for i in range(len(buf) // width):
        a, b = get(buf, i)                      # (rel, pos) or (timestamp, rel)
        if a == 0 and b == 0:
            return                              # the zero-filled rest of the file
        if prev is not None and not (a > prev[0] and b > prev[1]):   # every field ascends
            if not active:
                what = (f"timestamp {a} offset {base + b}" if time_index else f"offset {base + a} position {b}")
                yield {"problem": "index-entry", "position": i * width,
                       "detail": f"entry {i} ({what}) does not ascend from entry {i - 1}"}
            return
        prev = (a, b)
        if time_index:
            yield {"entry": i, "timestamp": a, "offset": base + b, "relative_offset": b}
        else:
            yield {"entry": i, "offset": base + a, "relative_offset": a, "position": b}
        if on_progress is not None and i % 1024 == 1023:
            on_progress((i + 1) * width)


def _committed_size(path: str, size: int) -> int:
    """The bytes of the segment to read: for the log's active segment, up to the
    committed end its state file names (a batch another process is writing past it is
    not yet data); else the whole file."""

    st = read_state(os.path.dirname(path) or ".")
    base = int(os.path.basename(path)[:20])
    if st is not None and st["active_base"] == base and 0 <= st["end_pos"] <= size:
        return st["end_pos"]
    return size


def _walk(mm, size: int, records: bool, on_progress):
    pos = 0
    while pos + _HEAD.size <= size:
        base, length = _HEAD.unpack_from(mm, pos)
        if base == 0 and length == 0 and pos > 0:
            return                                    # preallocated zeros: the end of the data
        total = _HEAD.size + length
        if length < BATCH_HEADER_SIZE - _HEAD.size or pos + total > size:
            yield {"problem": "truncated-batch" if length > 0 else "corrupt-batch", "position": pos,
                   "detail": f"batch length {length} at byte {pos} runs past the file end ({size})"
                   if length > 0 else f"batch length {length} at byte {pos}"}
            return
        view = memoryview(mm)[pos:pos + total]
        try:
            try:
                info, recs = decode_batch(view)
                crc_ok = True
            except CorruptRecord:               # the CRC, or the batch itself?
                crc_ok = False
                try:
                    info, recs = decode_batch(view, check_crc=False)
                except CorruptRecord as e:
                    yield {"problem": "corrupt-batch", "position": pos, "detail": str(e)}
                    return
        finally:
            view.release()
        doc = {"base_offset": info.base_offset, "last_offset": info.base_offset + info.last_offset_delta,
               "count": info.record_count, "position": pos, "size": info.total_size,
               "crc": f"0x{info.crc:08x}", "crc_ok": crc_ok,
               "base_timestamp": info.base_timestamp, "max_timestamp": info.max_timestamp,
               "attributes": info.attributes}
        if records:
            doc["records"] = [{"offset": o, "timestamp": ts, "key": _text(k), "value": _text(v),
                               "headers": {hk: _text(hv) for hk, hv in hs}} for o, ts, k, v, hs in recs]
        yield doc
        pos += total
        if on_progress is not None:
            on_progress(pos)


@cli.command()
@click.argument("segment", type=click.Path(dir_okay=False))
@click.option("-r", "--records", is_flag=True, help="Print every record of each batch too (.log files).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per batch or entry (JSON lines).")
def dump(segment: str, records: bool, as_json: bool) -> None:
    """Print SEGMENT (a partition's NNNNNNNNNNNNNNNNNNNN.log file) batch by batch: base and
    last offset, record count, byte position and size, whether the CRC-32C matches, and
    timestamps. Given its .index or .timeindex file: entry by entry, offset → position or
    timestamp → offset. Reads only. Exit status: 0, 1 when damage is found, 2 on an error.

    \b
    fastq dump DIR/topics/orders/0/00000000000000000000.log --records
    fastq dump DIR/topics/orders/0/00000000000000000000.timeindex --json
    """
    name = os.path.basename(segment)
    if not os.path.isfile(segment):
        raise CliError(f"{segment}: no such file")
    m = _SEGMENT_RE.fullmatch(name)
    if not m:
        raise CliError(f"{segment} is not a segment file (expected a name like 00000000000000000000.log, "
                       f"or its .index or .timeindex)")
    if m.group(1) != "log" and records:
        raise CliError(f"--records needs a .log file, not {segment}")
    index = m.group(1) != "log"
    bad = False
    with progress() as bar:
        task = bar.add_task("dump", total=os.path.getsize(segment))
        on_progress = lambda p: bar.update(task, completed=p)  # noqa: E731
        docs = (dump_index(segment, on_progress=on_progress) if index
                else dump_segment(segment, records=records, on_progress=on_progress))
        for doc in docs:
            if "problem" in doc or not doc.get("crc_ok", True):
                bad = True
            if as_json:
                click.echo(json.dumps(doc))
            elif "problem" in doc:
                click.echo(f"{doc['problem']} {segment} @ {doc['position']}: {doc['detail']}")
            elif "timestamp" in doc:
                click.echo(f"timestamp: {doc['timestamp']} ({fmt_time(doc['timestamp'])}) offset: {doc['offset']} "
                           f"relativeOffset: {doc['relative_offset']}")
            elif index:
                click.echo(f"offset: {doc['offset']} relativeOffset: {doc['relative_offset']} "
                           f"position: {doc['position']}")
            else:
                click.echo(f"baseOffset: {doc['base_offset']} lastOffset: {doc['last_offset']} "
                           f"count: {doc['count']} position: {doc['position']} size: {doc['size']} "
                           f"crc: {doc['crc']} {'ok' if doc['crc_ok'] else 'MISMATCH'} "
                           f"baseTime: {fmt_time(doc['base_timestamp'])} maxTime: {fmt_time(doc['max_timestamp'])}")
                for r in doc.get("records", ()):
                    click.echo(f"| offset: {r['offset']} timestamp: {fmt_time(r['timestamp'])} "
                               f"key: {json.dumps(r['key'])} value: {json.dumps(r['value'])}"
                               + (f" headers: {json.dumps(r['headers'])}" if r["headers"] else ""))
    sys.exit(1 if bad else 0)
