"""Which objects a transfer takes: include/exclude rules, size and age bounds (as rclone's filters).

Rules are globs written as rclone writes them, matched against an object's name relative to the
transfer's source prefix (the same name its copy gets under each destination prefix):

``*``      any run of characters other than ``/``        ``**``   any run of characters, ``/`` too
``?``      one character other than ``/``                ``[a-z]`` ``[!0-9]`` ``[^0-9]`` a character class
``{a,b}``  either alternative (they may nest)            ``\\c``   the character ``c`` itself

A glob that starts with ``/`` is anchored at the source prefix; any other glob matches a whole
trailing run of path elements (``*.json`` matches ``a.json`` and ``2024/01/a.json``, not ``xa/json``).

Order of evaluation (rclone's): every ``include`` rule in the order given, then every ``exclude``
rule, then the ``filter`` rules (``"+ glob"`` / ``"- glob"``, for any other order), and, when
``include`` rules were given, an implied ``- **`` at the end. The first rule that matches decides;
an object no rule matches is taken. Then ``min_size`` / ``max_size`` (bytes, both inclusive) and
``min_age`` / ``max_age`` (modified at least / at most that long ago, or before / after a date).

Filters apply while listing: :meth:`Filter.list_prefixes` names the only key prefixes that can hold
a taken object (``--include '/2024/**'`` lists ``2024/`` alone), so the rest is never listed.

No Python glob library has these semantics (``**`` matches across ``/`` anywhere in rclone, not
only as a whole path element; an unanchored glob matches from any element), and the listing
prefixes need the parsed glob anyway: hence the small translator below.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from gateway.stores.base import ObjectInfo
from planner.errors import BadOptionError, TransferError

#: rclone's duration units (``fs/parseduration.go``: a month is 30 days, a year 365).
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "M": 30 * 86400,
                   "y": 365 * 86400}
_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h|d|w|M|y)")
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bBkKmMgGtTpP])(?:i?[bB])?\s*$")
#: A glob's alternatives are expanded into at most this many listing prefixes (else: list it all).
MAX_LIST_PREFIXES = 256

GLOB_HINT = ("write a glob as rclone does: * (within a path element), ** (across /), ?, [a-z], {a,b}; "
             "/ at the start anchors it at the source prefix")


# -- globs ---------------------------------------------------------------------------------------------

def glob_to_regex(glob: str) -> re.Pattern:
    """The compiled regex of an rclone glob (see the module docstring); ``BadOptionError`` naming the
    fault for a glob rclone would refuse too, and for the two it reads otherwise (a trailing ``/``, a
    ``{{regex}}``), saying what to write instead."""
    if not glob or glob == "/":
        raise BadOptionError(f"empty filter glob {glob!r}", hint="write e.g. '*.json' or '/2024/**'")
    if glob.endswith("/"):
        raise BadOptionError(f"filter glob {glob!r} names a directory",
                             hint=f"write {glob + '**'!r} to match everything below it")
    if "{{" in glob:
        raise BadOptionError(f"filter glob {glob!r} holds a regular expression ({{{{...}}}})",
                             hint="regular expressions are not supported; " + GLOB_HINT)
    anchored = glob.startswith("/")
    body = _translate(glob[1:] if anchored else glob, glob)
    return re.compile(("^" if anchored else "(?:^|/)") + body + r"\Z", re.DOTALL)


def _translate(text: str, glob: str) -> str:
    out: list[str] = []
    depth = 0  # open {alternatives}
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 == len(text):
                raise BadOptionError(f"filter glob {glob!r} ends with a lone backslash", hint=r"write \\ for a backslash")
            out.append(re.escape(text[i + 1]))
            i += 2
            continue
        if c == "*":
            stars = len(text[i:]) - len(text[i:].lstrip("*"))
            if stars > 2:
                raise BadOptionError(f"too many stars in filter glob {glob!r}", hint="* or ** only; " + GLOB_HINT)
            out.append(".*" if stars == 2 else "[^/]*")
            i += stars
            continue
        if c == "?":
            out.append("[^/]")
        elif c == "[":
            end, cls = _char_class(text, i, glob)
            out.append(cls)
            i = end
            continue
        elif c == "]":
            raise BadOptionError(f"mismatched ']' in filter glob {glob!r}", hint=r"write \] for the character ]")
        elif c == "{":
            depth += 1
            out.append("(?:")
        elif c == "}":
            if not depth:
                raise BadOptionError(f"mismatched '}}' in filter glob {glob!r}", hint=r"write \} for the character }")
            depth -= 1
            out.append(")")
        elif c == "," and depth:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise BadOptionError(f"mismatched '{{' in filter glob {glob!r}", hint=r"close it with }, or write \{")
    return "".join(out)


def _char_class(text: str, start: int, glob: str) -> tuple[int, str]:
    """``[...]`` from ``text[start]``: (index after it, regex class). ``!`` or ``^`` first negates."""
    i = start + 1
    parts = ["["]
    if i < len(text) and text[i] in "!^":
        parts.append("^")
        i += 1
    first = True
    while i < len(text):
        c = text[i]
        if c == "]" and not first:
            parts.append("]")
            return i + 1, "".join(parts)
        if c == "\\" and i + 1 < len(text):
            parts.append(re.escape(text[i + 1]))
            i += 2
        else:
            parts.append(c if c == "-" else re.escape(c))
            i += 1
        first = False
    raise BadOptionError(f"mismatched '[' in filter glob {glob!r}", hint=r"close it with ], or write \[")


def literal_prefixes(glob: str) -> list[str] | None:
    """The key prefixes every match of an anchored glob starts with (its alternatives expanded), or
    None when it can match anywhere (unanchored) or has too many alternatives to list apart."""
    if not glob.startswith("/"):
        return None
    found = _prefixes(glob[1:])
    return None if found is None or len(found) > MAX_LIST_PREFIXES else sorted(set(found))


def _prefixes(text: str) -> list[str] | None:
    literal = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            literal.append(text[i + 1])
            i += 2
        elif c in "*?[":
            break
        elif c == "{":
            close, alternatives = _split_braces(text, i)
            head = "".join(literal)
            out: list[str] = []
            for alt in alternatives:
                tails = _prefixes(alt + text[close + 1:])
                if tails is None:
                    return None
                out += [head + t for t in tails]
                if len(out) > MAX_LIST_PREFIXES:
                    return None
            return out
        else:
            literal.append(c)
            i += 1
    return ["".join(literal)]


def _split_braces(text: str, start: int) -> tuple[int, list[str]]:
    """The index of the ``}`` closing ``text[start]`` and the alternatives inside (top level commas)."""
    depth, i, alts, begin = 0, start, [], start + 1
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                alts.append(text[begin:i])
                return i, alts
        elif c == "," and depth == 1:
            alts.append(text[begin:i])
            begin = i + 1
        i += 1
    raise BadOptionError(f"mismatched '{{' in filter glob {text!r}")  # glob_to_regex refused it already


# -- sizes and ages ------------------------------------------------------------------------------------

def parse_filter_size(value: int | str, option: str) -> int:
    """Bytes from an int, or from a size with its unit (``100KiB``, ``1.5G``, ``0B``; binary units).
    A number without a unit is refused: rclone reads it as KiB, we would read bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadOptionError(f"{option} must be a size, got {value!r}", hint="write e.g. 100KiB, 64MiB or 1G")
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE_RE.match(value)
        if not m:
            hint = (f"write {value.strip()}B for bytes or {value.strip()}KiB (rclone reads a bare number as KiB)"
                    if value.strip().isdigit() else "write e.g. 100KiB, 64MiB or 1G")
            raise BadOptionError(f"cannot read {option} {value!r}", hint=hint)
        n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if n < 0:
        raise BadOptionError(f"{option} must not be negative, got {value!r}")
    return n


def parse_age(value: int | float | str, option: str, now: float) -> float:
    """The modification-time bound (seconds since the epoch) an age option names: a duration before
    ``now`` (seconds as a number; ``"90s"``, ``"1.5h"``, ``"2h45m"``, ``"7d"``, ``"2w"``, ``"1M"``,
    ``"1y"``, as rclone reads them) or a date (``"2024-05-01"``, ``"2024-05-01T12:00:00Z"``; local
    time without a zone)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadOptionError(f"{option} must be a duration or a date, got {value!r}", hint="write e.g. 2h, 7d or 2024-05-01")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip()
        seconds = _duration(text)
        if seconds is None:
            try:
                return datetime.fromisoformat(text).timestamp()
            except ValueError:
                raise BadOptionError(f"cannot read {option} {value!r}",
                                     hint="write a duration (90s, 1.5h, 2h45m, 7d, 2w, 1M, 1y) or a date "
                                          "(2024-05-01, 2024-05-01T12:00:00Z)") from None
    if seconds < 0:
        raise BadOptionError(f"{option} must not be negative, got {value!r}", hint="write e.g. 2h or 7d")
    return now - seconds


def _duration(text: str) -> float | None:
    try:
        return float(text)  # a bare number is seconds, as in rclone
    except ValueError:
        pass
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(text):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) and text else None


# -- the filter ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    include: bool
    glob: str
    regex: re.Pattern

    def __str__(self) -> str:
        return f"{'+' if self.include else '-'} {self.glob}"


def _filter_rule(text: object) -> tuple[bool, str]:
    if not isinstance(text, str) or text[:2] not in ("+ ", "- "):
        raise BadOptionError(f"filter rule {text!r} is not '+ GLOB' or '- GLOB'",
                             hint="write '+ *.json' to take, '- tmp/**' to leave out")
    return text[0] == "+", text[2:]


class Filter:
    """The rules and bounds of one transfer; ``Filter()`` takes everything. Built from the request's
    options (:meth:`from_options`), which it checks: a bad value raises ``BadOptionError`` saying
    what to write. ``now`` (seconds since the epoch) is what ages count back from."""

    def __init__(self, *, include: Iterable[str] = (), exclude: Iterable[str] = (), filter: Iterable[str] = (),
                 min_size: int | str | None = None, max_size: int | str | None = None,
                 min_age: float | str | None = None, max_age: float | str | None = None,
                 now: float | None = None) -> None:
        include, exclude, filter = _strings(include, "include"), _strings(exclude, "exclude"), _strings(filter, "filter")
        specs = [(True, g) for g in include] + [(False, g) for g in exclude] + [_filter_rule(r) for r in filter]
        if include:
            specs.append((False, "/**"))  # rclone's implied rule after --include
        self.rules = [Rule(inc, glob, glob_to_regex(glob)) for inc, glob in specs]
        self.min_size = None if min_size is None else parse_filter_size(min_size, "min_size")
        self.max_size = None if max_size is None else parse_filter_size(max_size, "max_size")
        if self.min_size is not None and self.max_size is not None and self.min_size > self.max_size:
            raise BadOptionError(f"min_size ({self.min_size} bytes) is more than max_size ({self.max_size} bytes)",
                                 hint="no object could pass: swap them or drop one")
        now = time.time() if now is None else now
        #: Objects modified after ``modified_before`` are too young (min_age), before ``modified_after`` too old.
        self.modified_before = None if min_age is None else parse_age(min_age, "min_age", now)
        self.modified_after = None if max_age is None else parse_age(max_age, "max_age", now)
        if (self.modified_before is not None and self.modified_after is not None
                and self.modified_before < self.modified_after):
            raise BadOptionError("min_age is older than max_age: no object could pass",
                                 hint="min_age is how old an object must at least be, max_age at most: "
                                      "e.g. --min-age 1h --max-age 7d")

    @classmethod
    def from_options(cls, options: dict, now: float | None = None) -> "Filter":
        """From a request's fields (``include``, ``exclude``, ``filter``, ``min_size``, ``max_size``,
        ``min_age``, ``max_age``; missing ones take everything)."""
        names = ("include", "exclude", "filter", "min_size", "max_size", "min_age", "max_age")
        return cls(**{k: options[k] for k in names if options.get(k) is not None}, now=now)

    @property
    def active(self) -> bool:
        return bool(self.rules) or any(v is not None for v in (
            self.min_size, self.max_size, self.modified_before, self.modified_after))

    # -- deciding ----------------------------------------------------------------------------------
    def path_included(self, name: str) -> bool:
        """Whether the rules take ``name`` (relative to the source prefix): the first rule that
        matches decides; none matching takes it."""
        for rule in self.rules:
            if rule.regex.search(name):
                return rule.include
        return True

    def bounds_pass(self, info: ObjectInfo) -> bool:
        """Whether the object's size and age are within the bounds. An age bound on an object whose
        store reported no modification time fails loudly rather than guess."""
        if self.min_size is not None and info.size < self.min_size:
            return False
        if self.max_size is not None and info.size > self.max_size:
            return False
        if self.modified_before is None and self.modified_after is None:
            return True
        if info.mtime is None:
            raise TransferError(f"the store reported no modification time for {info.key}, so min_age / max_age "
                                "cannot be applied", hint="leave the age filters out for this store")
        if self.modified_before is not None and info.mtime > self.modified_before:
            return False
        return self.modified_after is None or info.mtime >= self.modified_after

    def takes(self, info: ObjectInfo, name: str) -> bool:
        """Whether the object (``name`` relative to the source prefix) is taken: rules, then bounds."""
        return self.path_included(name) and self.bounds_pass(info)

    # -- listing -----------------------------------------------------------------------------------
    def list_prefixes(self) -> list[str]:
        """Prefixes (relative to the source prefix) that hold every name the rules can take, sorted,
        none a prefix of another; ``[""]`` lists everything, ``[]`` nothing. Only a rule list that
        ends in an exclude-everything rule (``- **``, implied by ``include``) confines the listing,
        to the literal heads of the anchored include rules before it."""
        cut = next((i for i, r in enumerate(self.rules) if not r.include and r.glob.lstrip("/") == "**"), None)
        if cut is None:
            return [""]
        heads: list[str] = []
        for rule in self.rules[:cut]:
            if rule.include:
                found = literal_prefixes(rule.glob)
                if found is None:
                    return [""]
                heads += found
        return _outermost(heads)

    def describe(self) -> list[str]:
        """The rules and bounds in words (rclone's ``--dump filters``, for logs and the dry run)."""
        lines = [str(r) for r in self.rules]
        if self.min_size is not None:
            lines.append(f"size >= {self.min_size} bytes")
        if self.max_size is not None:
            lines.append(f"size <= {self.max_size} bytes")
        if self.modified_before is not None:
            lines.append(f"modified at or before {datetime.fromtimestamp(self.modified_before).isoformat(timespec='seconds')}")
        if self.modified_after is not None:
            lines.append(f"modified at or after {datetime.fromtimestamp(self.modified_after).isoformat(timespec='seconds')}")
        return lines


def _strings(values: Iterable[str] | str, option: str) -> list[str]:
    if isinstance(values, str):
        values = [values]
    values = list(values)
    for v in values:
        if not isinstance(v, str):
            raise BadOptionError(f"{option} takes globs (strings), got {v!r}", hint=GLOB_HINT)
    return values


def _outermost(prefixes: list[str]) -> list[str]:
    out: list[str] = []
    for p in sorted(set(prefixes)):
        if not out or not p.startswith(out[-1]):
            out.append(p)
    return out
