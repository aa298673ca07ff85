"""How a queue turns ``publish(data)`` into stored bytes and back.

A codec is a pair ``(dumps, loads)``: ``dumps(obj) -> bytes-like``, ``loads(bytes) ->
obj``. Named codecs:

``"json"`` (default)
    msgspec's JSON: dicts, lists, str, int, float, bool, None, plus datetime, UUID,
    dataclasses and msgspec Structs on the way in (decoded back as plain JSON values).
``"msgpack"``
    msgspec's MessagePack: the same types, smaller and faster; bytes stay bytes.
``"pickle"``
    :mod:`pickle`, protocol 5. Only for queues whose every producer you trust: loading a
    pickle runs code.
``"raw"``
    bytes in, bytes out (``bytes``, ``bytearray``, ``memoryview``; ``str`` is refused
    rather than guessed at).

The codec is a property of the handle, not stored with the queue: every process that
opens a queue must use the same one (as with a Kafka serializer). A value the codec
cannot encode raises :class:`fastq.CodecError` at publish, before anything is written; a
stored message it cannot decode raises CodecError when ``Message.data`` is read (the
raw bytes stay readable as ``Message.body``), so one bad message never stops a consumer.
"""
from __future__ import annotations

import pickle
from typing import Any, Callable, NamedTuple

import msgspec

from ..errors import CodecError, InvalidArgument

__all__ = ["Codec", "resolve_codec", "CODECS"]


class Codec(NamedTuple):
    name: str
    dumps: Callable[[Any], Any]
    loads: Callable[[Any], Any]

    def encode(self, obj) -> Any:
        try:
            return self.dumps(obj)
        except CodecError:
            raise
        except Exception as e:   # the codecs raise TypeError, ValueError, EncodeError, PicklingError...
            raise CodecError(f"codec {self.name!r} cannot encode {type(obj).__name__}: {e}") from e

    def decode(self, buf, what: str) -> Any:
        try:
            return self.loads(buf)
        except Exception as e:
            raise CodecError(f"codec {self.name!r} cannot decode {what}: {e}") from e


def _raw_dumps(obj):
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return obj
    raise CodecError(f'codec "raw" takes bytes, bytearray or memoryview, got {type(obj).__name__} '
                     '(encode str yourself, or use codec="json")')


_json_enc = msgspec.json.Encoder()
_json_dec = msgspec.json.Decoder()
_mp_enc = msgspec.msgpack.Encoder()
_mp_dec = msgspec.msgpack.Decoder()

CODECS: dict[str, Codec] = {
    "json": Codec("json", _json_enc.encode, _json_dec.decode),
    "msgpack": Codec("msgpack", _mp_enc.encode, _mp_dec.decode),
    "pickle": Codec("pickle", lambda o: pickle.dumps(o, protocol=5), pickle.loads),
    "raw": Codec("raw", _raw_dumps, bytes),
}


def resolve_codec(codec) -> Codec:
    """A :class:`Codec` from a name in :data:`CODECS` or a ``(dumps, loads)`` pair."""
    if isinstance(codec, str):
        try:
            return CODECS[codec]
        except KeyError:
            raise InvalidArgument(f"codec={codec!r}: expected one of {sorted(CODECS)} "
                                  "or a (dumps, loads) pair") from None
    if isinstance(codec, Codec):
        return codec
    if isinstance(codec, tuple) and len(codec) == 2 and all(callable(f) for f in codec):
        dumps, loads = codec
        return Codec(getattr(dumps, "__qualname__", "custom"), dumps, loads)
    raise InvalidArgument(f"codec must be one of {sorted(CODECS)} or a (dumps, loads) pair of "
                          f"callables, got {codec!r}")
