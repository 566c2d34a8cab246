"""Read buffers for the simulated cluster's per-connection threads.

``bytearray(n)`` writes n zero bytes: for the large buffers a session or a relay reads into
(up to 1 MiB, so that bulk transfers take few system calls) that is a page fault and a page
clear per 4 KiB on every new connection, whether it ever carries more than a few bytes or
not. An anonymous mapping is zero-filled by the kernel page by page, when first touched: a
connection that moves a request and an answer costs a page or two.
"""

from __future__ import annotations

import mmap

# Below this a plain bytearray is as cheap.
_MAPPED_FROM = 64 * 1024


def read_buffer(size: int) -> bytearray | mmap.mmap:
    """A writable, zero-filled buffer of ``size`` bytes (supports the buffer protocol,
    indexing and slice assignment of equal length)."""
    if size < _MAPPED_FROM:
        return bytearray(size)
    return mmap.mmap(-1, size)
