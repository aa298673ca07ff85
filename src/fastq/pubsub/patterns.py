"""Channel names and subscription patterns, compiled once.

Two pattern syntaxes (a subscription says which; see docs/BACKPRESSURE.md):

* ``"nats"`` (the default, :meth:`PubSub.subscribe`): NATS subjects. A channel is
  ``.``-separated tokens; in a pattern ``*`` is exactly one whole token and ``>`` (only as
  the last token) is one or more tokens: ``orders.*.created`` matches
  ``orders.eu.created`` but not ``orders.eu.x.created``; ``orders.>`` matches
  ``orders.eu`` and ``orders.eu.created`` but not ``orders``.
* ``"glob"`` (:meth:`PubSub.psubscribe`): Redis PSUBSCRIBE globs. ``*`` is any run of
  characters (dots included), ``?`` one character, ``[abc]`` / ``[a-z]`` / ``[^a]`` a
  character class, ``\\x`` the character x: ``orders:*`` matches ``orders:eu:created``.

A pattern without wildcards is an exact channel name and is looked up in a dict; the
others are compiled to one regular expression each and tested only for channels that no
exact name settled, with the verdict cached per channel (:class:`Matcher`).

Channel names (what ``publish`` takes): 1-1024 characters, printable, no whitespace, none
of the wildcard characters ``* > ? [ ]`` and no backslash, and no empty token (no leading,
trailing or doubled ``.``). Anything else is :class:`fastq.InvalidArgument`.
"""
from __future__ import annotations

import re
from typing import Iterable

from ..errors import InvalidArgument

__all__ = ["SYNTAXES", "MAX_CHANNEL", "validate_channel", "compile_pattern", "Matcher"]

SYNTAXES = ("nats", "glob")
MAX_CHANNEL = 1024
MAX_PATTERNS = 1024                   # per subscription
_CACHE_MAX = 65536                    # channel verdicts kept per matcher before it starts afresh

_CHANNEL_RE = re.compile(r"[^\s*>?\[\]\\]+")
_NATS_TOKEN_RE = re.compile(r"[^\s*>?\[\]\\.]+")


def validate_channel(channel) -> str:
    """Return ``channel`` if it is a valid channel name, else raise InvalidArgument."""
    if not isinstance(channel, str):
        raise InvalidArgument(f"channel must be a str, got {type(channel).__name__}")
    if not 0 < len(channel) <= MAX_CHANNEL:
        raise InvalidArgument(f"channel {channel[:40]!r}: expected 1-{MAX_CHANNEL} characters, got {len(channel)}")
    if not _CHANNEL_RE.fullmatch(channel) or not channel.isprintable():
        raise InvalidArgument(f"channel {channel!r}: no whitespace, control characters, wildcards "
                              "(* > ? [ ]) or backslash in a channel name (wildcards belong in patterns)")
    if channel.startswith(".") or channel.endswith(".") or ".." in channel:
        raise InvalidArgument(f"channel {channel!r}: empty token (leading, trailing or doubled '.')")
    return channel


def _nats_regex(pattern: str) -> str | None:
    """The regex of a NATS pattern, or None if it has no wildcard (an exact channel)."""
    tokens = pattern.split(".")
    out = []
    wild = False
    for i, tok in enumerate(tokens):
        if tok == "*":
            out.append(r"[^.]+")
            wild = True
        elif tok == ">":
            if i != len(tokens) - 1:
                raise InvalidArgument(f"pattern {pattern!r}: '>' must be the last token")
            out.append(r".+")
            wild = True
        elif _NATS_TOKEN_RE.fullmatch(tok):
            out.append(re.escape(tok))
        elif tok == "":
            raise InvalidArgument(f"pattern {pattern!r}: empty token (leading, trailing or doubled '.')")
        else:
            raise InvalidArgument(f"pattern {pattern!r}: token {tok!r}: '*' and '>' stand alone as whole "
                                  "tokens in a NATS pattern (for Redis globs use psubscribe / syntax='glob')")
    return r"\.".join(out) if wild else None


def _glob_regex(pattern: str) -> str | None:
    """The regex of a Redis glob, or None if it has no wildcard (an exact channel)."""
    out = []
    wild = False
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            out.append(".*")
            wild = True
        elif c == "?":
            out.append(".")
            wild = True
        elif c == "\\":
            if i + 1 == n:
                raise InvalidArgument(f"pattern {pattern!r}: trailing backslash")
            i += 1
            out.append(re.escape(pattern[i]))
            wild = True                  # not a channel name as written: compiled
        elif c == "[":
            j = i + 1
            neg = j < n and pattern[j] == "^"
            if neg:
                j += 1
            cls = []
            while j < n and (pattern[j] != "]" or not cls):
                ch = pattern[j]
                if ch == "\\" and j + 1 < n:
                    j += 1
                    ch = pattern[j]
                if ch == "-" and cls and j + 1 < n and pattern[j + 1] != "]":
                    lo, hi = cls[-1], pattern[j + 1]
                    if hi < lo:
                        raise InvalidArgument(f"pattern {pattern!r}: bad range {lo}-{hi}")
                    cls[-1] = f"{re.escape(lo)}-{re.escape(hi)}"
                    j += 2
                    continue
                cls.append(re.escape(ch))
                j += 1
            if j >= n:
                raise InvalidArgument(f"pattern {pattern!r}: unclosed '['")
            out.append("[" + ("^" if neg else "") + "".join(cls) + "]")
            wild = True
            i = j
        elif c == "]":
            raise InvalidArgument(f"pattern {pattern!r}: ']' without '['")
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out) if wild else None


def compile_pattern(pattern, syntax: str = "nats") -> tuple[str, str | None]:
    """Validate ``pattern``; return ``(pattern, regex)`` — regex None for an exact channel."""
    if syntax not in SYNTAXES:
        raise InvalidArgument(f"syntax={syntax!r}: expected one of {', '.join(SYNTAXES)}")
    if not isinstance(pattern, str):
        raise InvalidArgument(f"pattern must be a str, got {type(pattern).__name__}")
    if not 0 < len(pattern) <= MAX_CHANNEL or not pattern.isprintable() or any(c.isspace() for c in pattern):
        raise InvalidArgument(f"pattern {pattern[:40]!r}: expected 1-{MAX_CHANNEL} printable characters "
                              "without whitespace")
    rx = _nats_regex(pattern) if syntax == "nats" else _glob_regex(pattern)
    if rx is None:
        validate_channel(pattern)
    return pattern, rx


class Matcher:
    """Does a channel match any of a set of patterns? Exact names hit a set; wildcard
    patterns are one alternation regex, run once per distinct channel (the verdict is
    cached, up to 65,536 channels, then the cache starts afresh).

    ``patterns``: ``(pattern, syntax)`` pairs, validated here (InvalidArgument).
    Thread-safety: a dict cache; concurrent use is safe (a race recomputes a verdict)."""

    __slots__ = ("patterns", "exact", "regex", "cache")

    def __init__(self, patterns: Iterable[tuple[str, str]]):
        self.patterns: list[tuple[str, str]] = []
        self.exact: set[str] = set()
        rxs = []
        for pattern, syntax in patterns:
            _, rx = compile_pattern(pattern, syntax)
            self.patterns.append((pattern, syntax))
            if rx is None:
                self.exact.add(pattern)
            else:
                rxs.append(rx)
        if not self.patterns:
            raise InvalidArgument("subscribe needs at least one pattern")
        if len(self.patterns) > MAX_PATTERNS:
            raise InvalidArgument(f"{len(self.patterns)} patterns: at most {MAX_PATTERNS} per subscription")
        self.regex = re.compile("|".join(f"(?:{r})" for r in rxs), re.DOTALL).fullmatch if rxs else None
        self.cache: dict[str, bool] = {}

    def __call__(self, channel: str) -> bool:
        v = self.cache.get(channel)
        if v is None:
            v = channel in self.exact or (self.regex is not None and self.regex(channel) is not None)
            if len(self.cache) >= _CACHE_MAX:
                self.cache.clear()
            self.cache[channel] = v
        return v

    def __repr__(self) -> str:
        return f"<Matcher {self.patterns!r}>"
