"""``fastq dump SEGMENT``: a segment file batch by batch (base offset, count, position,
size, CRC check, timestamps), as ``kafka-dump-log`` prints one; ``--records`` adds each
record. Reads the file only; in the active segment of a log it stops at the committed
end the log's state names, so a segment another process is writing dumps cleanly."""
from __future__ import annotations

import json
import mmap
import os
import re
import struct
import sys

import click

from .._core._codec import BATCH_HEADER_SIZE, decode_batch
from ..errors import CorruptRecord
from ..log.verify import read_state
from ._root import cli
from ._common import CliError, fmt_time, progress
from .io import _text

_SEGMENT_RE = re.compile(r"\d{20}\.log")
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
@click.option("-r", "--records", is_flag=True, help="Print every record of each batch too.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per batch (JSON lines).")
def dump(segment: str, records: bool, as_json: bool) -> None:
    """Print SEGMENT (a partition's NNNNNNNNNNNNNNNNNNNN.log file) batch by batch: base and
    last offset, record count, byte position and size, whether the CRC-32C matches, and
    timestamps. Reads only. Exit status: 0, 1 when a batch is damaged, 2 on an error.

    \b
    fastq dump DIR/topics/orders/0/00000000000000000000.log --records
    """
    name = os.path.basename(segment)
    if not os.path.isfile(segment):
        raise CliError(f"{segment}: no such file")
    if not _SEGMENT_RE.fullmatch(name):
        raise CliError(f"{segment} is not a segment file (expected a name like 00000000000000000000.log)")
    bad = False
    with progress() as bar:
        task = bar.add_task("dump", total=os.path.getsize(segment))
        for doc in dump_segment(segment, records=records, on_progress=lambda p: bar.update(task, completed=p)):
            if "problem" in doc or not doc["crc_ok"]:
                bad = True
            if as_json:
                click.echo(json.dumps(doc))
            elif "problem" in doc:
                click.echo(f"{doc['problem']} {segment} @ {doc['position']}: {doc['detail']}")
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
