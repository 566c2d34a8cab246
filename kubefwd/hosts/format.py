"""The hosts file's format: our marked lines among foreign text, parsed and rendered.

Our lines look like ``127.1.27.1<TAB>web web.shop ...<TAB># kubefwd pid=4242 t=1764139200``
and are recognised only by that trailing marker; every other byte of the file is foreign and
is written back exactly as read (comments, CRLF, odd whitespace, a missing final newline).
Pure bytes in, bytes out: no file access and no processes, so every quirk of the format is
tested here without touching a file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

MARKER_TAG = b"# kubefwd pid="
MAX_LINE = 200  # some resolvers mishandle very long lines; split name lists past this
_MARKER = re.compile(rb"# kubefwd pid=(\d+)(?: t=(\d+))?(?: sep=(lf|crlf))?[ \t]*$")
_LINE = re.compile(rb"^[ \t]*[0-9A-Fa-f.:]+[ \t]+[^#]*" + _MARKER.pattern)
_SEP_FLAG = re.compile(rb" sep=(?:lf|crlf)(?=[ \t]*$)")
_VALID_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")

# A line that fills out an in-place write whose content is shorter than the file, so the
# write covers the whole old content in one go and a crash before the truncate leaves the
# new content plus this comment, never the old tail. Ours wherever it is: never foreign.
PAD_TAG = b"# kubefwd padding"
_PAD = re.compile(re.escape(PAD_TAG) + rb"(?: sep=(lf))?(?: -*)?[ \t]*$")


@dataclass(frozen=True)
class Marker:
    pid: int
    started: int | None = None  # owner's start time (whole seconds since the epoch)
    sep: bytes = b""  # newline we added after foreign text that lacked a final one

    def render(self) -> bytes:
        out = MARKER_TAG + str(self.pid).encode()
        if self.started is not None:
            out += b" t=%d" % self.started
        if self.sep:
            out += b" sep=" + (b"crlf" if self.sep == b"\r\n" else b"lf")
        return out


def parse_marker(line: bytes) -> Marker | None:
    """The marker of one of our lines (without its line ending), or None if it is foreign."""
    if MARKER_TAG not in line or not _LINE.match(line):
        return None
    m = _MARKER.search(line)
    assert m is not None
    sep = {b"lf": b"\n", b"crlf": b"\r\n", None: b""}[m.group(3)]
    return Marker(int(m.group(1)), int(m.group(2)) if m.group(2) else None, sep)


@dataclass
class HostsDoc:
    """A hosts file split into foreign bytes (exact) and kubefwd lines (any owner)."""

    foreign: bytes
    owned: list[tuple[bytes, Marker]]  # line body without ending, its marker
    newline: bytes = b"\n"


def _split_lines(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (body, ending) for each line; only LF ends a line, a CR before it is the ending."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end < 0:
            yield data[start:], b""
            return
        if end > start and data[end - 1 : end] == b"\r":
            yield data[start : end - 1], b"\r\n"
        else:
            yield data[start:end], b"\n"
        start = end + 1


def is_padding(line: bytes) -> bool:
    """Is this line (without its ending) the padding of an in-place write?"""
    return line.startswith(PAD_TAG) and _PAD.match(line) is not None


def padding(data: bytes, size: int) -> bytes:
    """What follows ``data`` to make it ``size`` bytes long: one padding line (after a newline
    of ours, flagged ``sep=lf``, when ``data`` lacks a final one), which ``parse_hosts`` drops.
    Longer than asked when ``size`` leaves too little room for the shortest such line."""
    lead, flag = (b"\n", b" sep=lf") if data and not data.endswith(b"\n") else (b"", b"")
    head = lead + PAD_TAG + flag
    fill = size - len(data) - len(head) - 1  # the room left for " ---..." before the newline
    return head + (b" " + b"-" * (fill - 1) if fill > 0 else b"") + b"\n"


def parse_hosts(data: bytes) -> HostsDoc:
    foreign: list[bytes] = []  # raw lines, ending included
    owned: list[tuple[bytes, Marker]] = []
    synthetic: tuple[int, bytes] | None = None  # (foreign line index, the newline we added)
    newline: bytes | None = None
    after_foreign = False  # the line before this one is foreign
    for body, ending in _split_lines(data):
        if body.startswith(PAD_TAG):
            pad = _PAD.match(body)
            if pad is not None:  # left by a write cut short: dropped, with its newline
                if pad.group(1) and after_foreign and foreign[-1].endswith(b"\n"):
                    synthetic = (len(foreign) - 1, b"\n")
                after_foreign = False
                continue
        marker = parse_marker(body)
        after_foreign = marker is None
        if marker is None:
            foreign.append(body + ending)
            if newline is None and ending:
                newline = ending
            continue
        if marker.sep and foreign and foreign[-1].endswith(marker.sep):
            synthetic = (len(foreign) - 1, marker.sep)
        owned.append((body, marker))
    # The newline we added after foreign text that had none is ours to take back, but only
    # while that text is still the end of the foreign part.
    if synthetic is not None and synthetic[0] == len(foreign) - 1:
        foreign[-1] = foreign[-1][: -len(synthetic[1])]
    return HostsDoc(b"".join(foreign), owned, newline or b"\n")


def _clean_names(names: Sequence[str], seen: set[str]) -> list[bytes]:
    out: list[bytes] = []
    for name in names:
        if not _VALID_NAME.match(name) or len(name) > 253:
            log.warning("not writing invalid host name %r", name)
            continue
        if name in seen:
            continue
        seen.add(name)
        out.append(name.encode("ascii"))
    return out


def line_names(body: bytes) -> list[str]:
    """The host names on one of our lines (its body, without the line ending)."""
    return [n.decode("ascii", "replace") for n in body.split(b"#", 1)[0].split()[1:]]


def format_entries(
    entries: Mapping[str, Sequence[str]], marker: Marker, *, taken: Iterable[str] = ()
) -> list[bytes]:
    """Our lines for a snapshot ip → names: one per IP, split when the name list is long.

    A name already written for an earlier IP, or in ``taken`` (on another running
    kubefwd's lines), is skipped, so no name ever points at two IPs.
    """
    tag = marker.render()
    seen: set[str] = set(taken)
    lines: list[bytes] = []
    for ip, names in entries.items():
        ip_b = ip.encode("ascii")
        chunk: list[bytes] = []
        width = len(ip_b)
        for name in _clean_names(names, seen):
            if chunk and width + 1 + len(name) > MAX_LINE:
                lines.append(ip_b + b"\t" + b" ".join(chunk) + b"\t" + tag)
                chunk, width = [], len(ip_b)
            chunk.append(name)
            width += 1 + len(name)
        if chunk:
            lines.append(ip_b + b"\t" + b" ".join(chunk) + b"\t" + tag)
    return lines


def render_hosts(doc: HostsDoc, lines: Sequence[bytes]) -> bytes:
    """Foreign text, then the kubefwd lines; marks a newline we had to add for them."""
    if not lines:
        return doc.foreign
    out = [doc.foreign]
    first = _SEP_FLAG.sub(b"", lines[0])
    if doc.foreign and not doc.foreign.endswith(b"\n"):
        out.append(doc.newline)
        first += b" sep=" + (b"crlf" if doc.newline == b"\r\n" else b"lf")
    out.append(first + doc.newline)
    out.extend(_SEP_FLAG.sub(b"", line) + doc.newline for line in lines[1:])
    return b"".join(out)
