"""The SPDY client's header blocks: stored deflate blocks in one zlib stream."""

from __future__ import annotations

import tracemalloc
import zlib

from kubefwd.tunnel.spdy_client import HeaderCompressor
from kubefwd.wire import spdyframes


def _headers(i: int) -> dict[str, str]:
    return {"streamtype": "data" if i % 2 else "error", "port": str(8000 + i),
            "requestid": str(i)}


def test_blocks_are_what_zlib_writes_at_level_0_with_a_sync_flush() -> None:
    ours = HeaderCompressor()
    theirs = zlib.compressobj(0, zlib.DEFLATED, 15, 8, zlib.Z_DEFAULT_STRATEGY,
                              spdyframes.DICTIONARY)
    for i in range(50):
        raw = spdyframes.encode_header_block(_headers(i))
        assert ours.compress(_headers(i)) == theirs.compress(raw) + theirs.flush(
            zlib.Z_SYNC_FLUSH), i


def test_a_peer_inflating_with_the_spdy_dictionary_reads_every_block() -> None:
    ours, peer = HeaderCompressor(), spdyframes.HeaderDecompressor()
    for i in range(20):
        assert peer.decompress(ours.compress(_headers(i))) == _headers(i)


def test_a_block_longer_than_one_stored_block_is_split() -> None:
    ours = HeaderCompressor()
    inflate = zlib.decompressobj(15, spdyframes.DICTIONARY)
    small = ours.compress(_headers(0))
    big = bytes(range(256)) * 600  # 153,600 bytes: three stored blocks
    out = inflate.decompress(small) + inflate.decompress(ours.wrap(big))
    assert out == spdyframes.encode_header_block(_headers(0)) + big
    assert not inflate.unconsumed_tail and not inflate.eof


def test_a_compressor_holds_no_zlib_state() -> None:
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [HeaderCompressor() for _ in range(100)]
        for compressor in kept:
            compressor.compress(_headers(1))
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert grown / len(kept) < 200  # zlib's smallest deflate state is about 9 KiB
