"""The HTTP sniffer: exchanges out of the two byte streams of one connection, cut anywhere."""

from __future__ import annotations

from kubefwd.events.bus import EventBus
from kubefwd.events.types import Event, HttpRequestSeen
from kubefwd.serve.httpsniff import HEAD_LIMIT, Exchange, HttpSniffer
from kubefwd.serve.httptap import MISSES_TO_STOP, HttpTap


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sniffer() -> tuple[HttpSniffer, list[Exchange], Clock]:
    seen: list[Exchange] = []
    clock = Clock()
    return HttpSniffer(seen.append, clock), seen, clock


def summary(seen: list[Exchange]) -> list[tuple[str, str, int | None, int | None]]:
    return [(e.method, e.path, e.status, e.size) for e in seen]


def test_one_exchange_with_content_length_and_latency() -> None:
    s, seen, clock = sniffer()
    assert s.client(b"GET /a?x=1 HTTP/1.1\r\nHost: web\r\n\r\n")
    clock.now += 0.25
    assert s.server(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    assert seen == []  # the body is not all there yet
    assert s.server(b"lo")
    assert summary(seen) == [("GET", "/a?x=1", 200, 5)]
    assert seen[0].latency_ms == 250.0


def test_keep_alive_requests_each_matched() -> None:
    s, seen, _ = sniffer()
    for i in range(3):
        s.client(f"POST /p{i} HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc".encode())
        s.server(f"HTTP/1.1 20{i} OK\r\nContent-Length: {i}\r\n\r\n{'x' * i}".encode())
    assert summary(seen) == [("POST", "/p0", 200, 0), ("POST", "/p1", 201, 1),
                             ("POST", "/p2", 202, 2)]


def test_pipelined_requests_matched_in_order() -> None:
    s, seen, _ = sniffer()
    s.client(b"GET /1 HTTP/1.1\r\n\r\nHEAD /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n")
    s.server(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
             b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n"  # HEAD: no body follows
             b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    assert summary(seen) == [("GET", "/1", 200, 2), ("HEAD", "/2", 200, 0),
                             ("GET", "/3", 404, 0)]


def test_chunked_bodies_both_ways() -> None:
    s, seen, _ = sniffer()
    s.client(b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"4\r\nabcd\r\n0\r\n\r\n"
             b"GET /next HTTP/1.1\r\n\r\n")
    s.server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
             b"a;ext=1\r\n0123456789\r\n3\r\nHTT\r\n0\r\nX-Trailer: 1\r\n\r\n"
             b"HTTP/1.1 204 No Content\r\n\r\n")
    assert summary(seen) == [("POST", "/up", 200, 13), ("GET", "/next", 204, 0)]


def test_body_looking_like_http_is_skipped() -> None:
    s, seen, _ = sniffer()
    body = b"GET /fake HTTP/1.1\r\n\r\n"
    s.client(b"PUT /x HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    s.server(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
    assert s.end() is None
    assert summary(seen) == [("PUT", "/x", 201, 0)]


def test_response_without_request_is_tolerated() -> None:
    s, seen, _ = sniffer()
    assert s.server(b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 3\r\n\r\nbye")
    assert seen == []
    assert s.client(b"GET /after HTTP/1.1\r\n\r\n")
    assert s.server(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    assert summary(seen) == [("GET", "/after", 200, 0)]


def test_interim_response_and_body_until_close() -> None:
    s, seen, _ = sniffer()
    s.client(b"POST /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    s.server(b"HTTP/1.1 100 Continue\r\n\r\n")
    s.client(b"hi")
    s.server(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert seen == []
    s.end()
    assert summary(seen) == [("POST", "/big", 200, 13)]


def test_request_without_response_reported_at_end() -> None:
    s, seen, _ = sniffer()
    s.client(b"GET /slow HTTP/1.1\r\n\r\n")
    s.end()
    assert summary(seen) == [("GET", "/slow", None, None)]
    assert not s.client(b"GET / HTTP/1.1\r\n\r\n")


def test_upgrade_reports_the_exchange_then_ignores_the_rest() -> None:
    s, seen, _ = sniffer()
    s.client(b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
    assert not s.server(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81")
    assert summary(seen) == [("GET", "/ws", 101, 0)]
    assert not s.client(b"\x81\x85binary")


def test_tls_handshake_is_not_http() -> None:
    s, seen, _ = sniffer()
    assert not s.client(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert s.dead and not s.http
    assert not s.server(b"HTTP/1.1 200 OK\r\n\r\n")
    s.end()
    assert seen == []


def test_redis_and_binary_and_banners_are_not_http() -> None:
    for client, server in [(b"*1\r\n$4\r\nPING\r\n", b"+PONG\r\n"),
                           (b"PING\r\n", b"+PONG\r\n"),
                           (b"SET key value\r\n", b"+OK\r\n"),
                           (b"\x00\x00\x00\x08\x04\xd2\x16/", b"N")]:
        s, seen, _ = sniffer()
        fed = s.client(client[:1]) and s.client(client[1:])
        assert not fed, client
        assert seen == []
        assert not sniffer()[0].server(server), server  # nor is its answer, seen first
    s, seen, _ = sniffer()
    assert not s.server(b"SSH-2.0-OpenSSH_9.6\r\n")  # the server speaks first
    assert not s.client(b"GET / HTTP/1.1\r\n\r\n")


def test_a_long_first_token_is_not_a_method() -> None:
    s, _, _ = sniffer()
    assert not s.client(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ / HTTP/1.1\r\n\r\n")


def test_oversized_head_and_bad_chunk_give_up() -> None:
    s, _, _ = sniffer()
    assert s.client(b"GET / HTTP/1.1\r\n")
    assert not s.client(b"X-Big: " + b"a" * HEAD_LIMIT)
    s, _, _ = sniffer()
    s.client(b"GET / HTTP/1.1\r\n\r\n")
    assert not s.server(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")


def test_large_body_is_counted_not_copied() -> None:
    s, seen, _ = sniffer()
    s.client(b"GET /blob HTTP/1.1\r\n\r\n")
    s.server(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
    piece = memoryview(bytes(1 << 20))
    for _ in range(9):
        assert s.server(piece)
    assert s._resp.buf == bytearray()
    s.server(piece[:10000000 - 9 * len(piece)])
    assert summary(seen) == [("GET", "/blob", 200, 10000000)]


PIPELINED_CLIENT = (
    b"GET /one HTTP/1.1\r\nHost: web\r\n\r\n"
    b"POST /two HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
    b"PUT /three HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    b"HEAD /four HTTP/1.1\r\n\r\n"
    b"GET /five HTTP/1.1\n\n"
)
PIPELINED_SERVER = (
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\none"
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\ntw\r\n1\r\no\r\n0\r\n\r\n"
    b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"
    b"HTTP/1.0 302 Found\r\nLocation: /\r\n\r\nthe rest"
)
PIPELINED_EXPECTED = [("GET", "/one", 200, 3), ("POST", "/two", 201, 3),
                      ("PUT", "/three", 500, 0), ("HEAD", "/four", 200, 0),
                      ("GET", "/five", 302, 8)]


def test_pipelined_stream_split_at_every_byte_boundary() -> None:
    for cut in range(len(PIPELINED_CLIENT) + 1):
        s, seen, _ = sniffer()
        assert s.client(PIPELINED_CLIENT[:cut]) or cut == 0
        assert s.client(PIPELINED_CLIENT[cut:])
        assert s.server(PIPELINED_SERVER)
        s.end()
        assert summary(seen) == PIPELINED_EXPECTED, cut
    for cut in range(len(PIPELINED_SERVER) + 1):
        s, seen, _ = sniffer()
        assert s.client(PIPELINED_CLIENT)
        s.server(PIPELINED_SERVER[:cut])
        assert s.server(PIPELINED_SERVER[cut:])
        s.end()
        assert summary(seen) == PIPELINED_EXPECTED, cut


def test_pipelined_stream_one_byte_at_a_time_interleaved() -> None:
    s, seen, _ = sniffer()
    client, server = PIPELINED_CLIENT, PIPELINED_SERVER
    for i in range(max(len(client), len(server))):
        if i < len(client):
            assert s.client(memoryview(client)[i:i + 1])
        if i < len(server):
            assert s.server(memoryview(server)[i:i + 1])
    s.end()
    assert summary(seen) == PIPELINED_EXPECTED


def test_not_http_split_at_every_boundary_is_still_refused() -> None:
    hello = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
    for cut in range(1, len(hello)):
        s, _, _ = sniffer()
        assert not (s.client(hello[:cut]) and s.client(hello[cut:])), cut


def test_tap_publishes_on_the_bus_and_stops_looking_at_other_protocols() -> None:
    bus = EventBus()
    events: list[Event] = []
    bus.attach(events.append)
    tap = HttpTap("web.shop.ctx", 80, bus)
    sniff = tap.sniffer()
    assert sniff is not None
    sniff.client(memoryview(b"GET /x HTTP/1.1\r\n\r\n"))
    sniff.server(memoryview(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"))
    seen = [e for e in events if isinstance(e, HttpRequestSeen)]
    assert [(e.key, e.port, e.method, e.path, e.status, e.size) for e in seen] == [
        ("web.shop.ctx", 80, "GET", "/x", 200, 2)]
    # Connections that end before saying anything (probes) are no verdict.
    for _ in range(MISSES_TO_STOP + 2):
        probe = tap.sniffer()
        assert probe is not None
        probe.end()
    for _ in range(MISSES_TO_STOP):
        redis = tap.sniffer()
        assert redis is not None
        assert not redis.client(memoryview(b"*1\r\n$4\r\nPING\r\n"))
    assert tap.sniffer() is None
