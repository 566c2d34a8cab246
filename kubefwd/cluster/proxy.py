"""Reaching the API server through a proxy, as kubectl does: HTTP(S) CONNECT or SOCKS5.

The proxy comes from the kubeconfig cluster's ``proxy-url`` or, when that is absent, from
``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` (upper case first, then lower case), read the way
Go's ``httpproxy`` reads them: ``localhost`` and loopback addresses are never proxied through
the environment, ``NO_PROXY`` holds hosts, domains (``.example.com`` matches subdomains only,
``example.com`` the domain too), ``*``, IPs, CIDRs, and any of them with ``:port``.

Both the list/watch client and the tunnels get their TCP connection from ``open_socket``:
for an ``http``/``https`` proxy a ``CONNECT host:port`` (TLS to the proxy for ``https``,
``Proxy-Authorization: Basic`` from the URL's credentials), for ``socks5`` a SOCKS5 CONNECT
with the name resolved here, for ``socks5h`` with the name resolved by the proxy, and
user/password authentication (RFC 1929) from the URL. Messages name the proxy by
``Proxy.display``, which never contains the password.
"""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import struct
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from kubefwd.errors import TunnelError
from kubefwd.support.sockets import close_quietly

__all__ = ["Proxy", "ProxyError", "open_socket", "parse_proxy_url", "proxy_from_environment"]

SCHEMES = ("http", "https", "socks5", "socks5h")
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}
_HEAD_LIMIT = 16 * 1024

_SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class ProxyError(TunnelError):
    """The proxy could not be reached or refused to connect us (exit code 4)."""


@dataclass(frozen=True)
class Proxy:
    """A parsed proxy URL; ``repr`` and ``display`` leave the password out."""

    scheme: str
    host: str
    port: int
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @property
    def display(self) -> str:
        """The URL without its password, for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{urllib.parse.quote(self.username, safe='')}@" if self.username else ""
        return f"{self.scheme}://{user}{host}:{self.port}"


def parse_proxy_url(raw: str) -> Proxy:
    """Parse ``raw`` (``scheme://[user[:password]@]host[:port]``; no scheme means http, as
    Go reads the environment). Raises ValueError naming the URL without its password."""
    text = raw.strip()
    if "://" not in text:
        text = "http://" + text
    try:
        url = urllib.parse.urlsplit(text)
        port = url.port
    except ValueError as e:
        raise ValueError(f"invalid proxy URL {_without_password(text)!r}: {e}") from None
    scheme = url.scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"unsupported proxy scheme {scheme!r} in "
                         f"{_without_password(text)!r} (use {', '.join(SCHEMES)})")
    if not url.hostname:
        raise ValueError(f"invalid proxy URL {_without_password(text)!r}: no host")
    return Proxy(
        scheme=scheme,
        host=url.hostname,
        port=port or _DEFAULT_PORTS[scheme],
        username=urllib.parse.unquote(url.username or ""),
        password=urllib.parse.unquote(url.password or ""),
    )


def _without_password(text: str) -> str:
    try:
        url = urllib.parse.urlsplit(text)
    except ValueError:
        return "<unparsable>"
    if url.password is None:
        return text
    netloc = url.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit(url._replace(netloc=f"{url.username}@{netloc}"))


def _env(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name, "")
        if value:
            return value
    return ""


def proxy_from_environment(scheme: str, host: str, port: int,
                           environ: Mapping[str, str]) -> str | None:
    """The proxy URL the environment gives for ``scheme://host:port``, or None, following
    Go's ``httpproxy`` (what kubectl uses)."""
    if scheme == "https":
        raw = _env(environ, "HTTPS_PROXY", "https_proxy")
    else:
        raw = _env(environ, "HTTP_PROXY", "http_proxy")
        if raw and environ.get("REQUEST_METHOD"):
            return None  # Go refuses HTTP_PROXY in a CGI environment
    if not raw:
        return None
    if not use_proxy(host, port, _env(environ, "NO_PROXY", "no_proxy")):
        return None
    return raw


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def use_proxy(host: str, port: int, no_proxy: str) -> bool:
    """Whether ``host:port`` goes through the environment's proxy given ``no_proxy``."""
    host = host.strip().lower().strip("[]")
    if host == "localhost":
        return False
    ip = _ip(host)
    if ip is not None and ip.is_loopback:
        return False
    for entry in no_proxy.split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return False
        if "/" in entry:
            try:
                net = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if ip is not None and ip.version == net.version and ip in net:
                return False
            continue
        entry_host, entry_port = _split_host_port(entry)
        if not entry_host:
            continue
        if entry_port and entry_port != str(port):
            continue
        entry_ip = _ip(entry_host)
        if entry_ip is not None:
            if ip is not None and ip == entry_ip:
                return False
            continue
        if entry_host.startswith("*."):
            entry_host = entry_host[1:]
        if entry_host.startswith("."):
            if host.endswith(entry_host):
                return False
        elif host == entry_host or host.endswith("." + entry_host):
            return False
    return True


def _split_host_port(entry: str) -> tuple[str, str]:
    if entry.startswith("["):
        end = entry.find("]")
        if end < 0:
            return "", ""
        rest = entry[end + 1:]
        return entry[1:end], rest[1:] if rest.startswith(":") else ""
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, port
    return entry, ""


def _recv_exact(sock: socket.socket, n: int, proxy: Proxy) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ProxyError(f"the proxy {proxy.display} closed the connection mid-handshake")
        data += chunk
    return data


def _connect_http(sock: socket.socket, proxy: Proxy, host: str, port: int,
                  user_agent: str) -> None:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}", f"User-Agent: {user_agent}"]
    if proxy.username or proxy.password:
        token = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    # One byte at a time: nothing past the head may be consumed, it belongs to the tunnel.
    head = bytearray()
    while not head.endswith(b"\r\n\r\n"):
        if len(head) > _HEAD_LIMIT:
            raise ProxyError(f"the proxy {proxy.display} sent an oversized answer to CONNECT")
        chunk = sock.recv(1)
        if not chunk:
            raise ProxyError(f"the proxy {proxy.display} closed the connection "
                             f"instead of answering CONNECT {authority}")
        head += chunk
    status_line = bytes(head).split(b"\r\n", 1)[0].decode("latin-1").strip()
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise ProxyError(f"the proxy {proxy.display} answered CONNECT with garbage: "
                         f"{status_line[:80]!r}")
    status = int(parts[1])
    if status // 100 == 2:
        return
    hint = ""
    if status in (401, 407):  # 407 is the standard; tinyproxy, for one, answers 401
        hint = (" (wrong proxy credentials)" if proxy.username
                else " (the proxy wants credentials: put them in the proxy URL)")
    raise ProxyError(f"the proxy {proxy.display} refused CONNECT {authority}: "
                     f"{' '.join(parts[1:])}{hint}")


def _connect_socks5(sock: socket.socket, proxy: Proxy, host: str, port: int) -> None:
    methods = b"\x00\x02" if proxy.username or proxy.password else b"\x00"
    sock.sendall(b"\x05" + bytes([len(methods)]) + methods)
    version, method = _recv_exact(sock, 2, proxy)
    if version != 5:
        raise ProxyError(f"the proxy {proxy.display} does not speak SOCKS5")
    if method == 0xFF:
        raise ProxyError(f"the proxy {proxy.display} accepts none of our SOCKS5 "
                         "authentication methods (does it want a user and password?)")
    if method == 2:
        user = proxy.username.encode()
        password = proxy.password.encode()
        if len(user) > 255 or len(password) > 255:
            raise ProxyError(f"the proxy {proxy.display}: user or password too long for SOCKS5")
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(password)]) + password)
        _, status = _recv_exact(sock, 2, proxy)
        if status != 0:
            raise ProxyError(f"the proxy {proxy.display} refused our SOCKS5 user and password")
    elif method != 0:
        raise ProxyError(f"the proxy {proxy.display} chose an unknown SOCKS5 method {method}")
    address = _socks_address(proxy, host, port)
    sock.sendall(b"\x05\x01\x00" + address + struct.pack("!H", port))
    version, reply, _, atyp = _recv_exact(sock, 4, proxy)
    if reply != 0:
        why = _SOCKS_REPLIES.get(reply, f"error {reply}")
        raise ProxyError(f"the proxy {proxy.display} could not connect to {host}:{port}: {why}")
    if atyp == 1:
        _recv_exact(sock, 4 + 2, proxy)
    elif atyp == 4:
        _recv_exact(sock, 16 + 2, proxy)
    elif atyp == 3:
        length = _recv_exact(sock, 1, proxy)[0]
        _recv_exact(sock, length + 2, proxy)
    else:
        raise ProxyError(f"the proxy {proxy.display} sent a bad SOCKS5 reply")


def _socks_address(proxy: Proxy, host: str, port: int) -> bytes:
    ip = _ip(host)
    if ip is None and proxy.scheme == "socks5":
        # socks5: the name is resolved here; socks5h leaves it to the proxy.
        try:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as e:
            raise ProxyError(f"cannot resolve {host} to reach it through the proxy "
                             f"{proxy.display}: {e}") from e
        ip = _ip(str(info[0][4][0]))
    if ip is None:
        name = host.encode("idna")
        return b"\x03" + bytes([len(name)]) + name
    return (b"\x01" if ip.version == 4 else b"\x04") + ip.packed


def open_socket(proxy: Proxy, host: str, port: int, *, timeout: float,
                track: Callable[[socket.socket | None], None] = lambda s: None,
                user_agent: str = "kubefwd") -> socket.socket:
    """A connected socket to ``host:port`` through ``proxy`` (the caller adds TLS for the
    API server on top). ``track`` sees each socket as it is made, so a concurrent close can
    abort a slow proxy. Raises ProxyError."""
    try:
        raw = socket.create_connection((proxy.host, proxy.port), timeout=timeout)
    except OSError as e:
        raise ProxyError(f"cannot reach the proxy {proxy.display}: {e}") from e
    track(raw)
    sock: socket.socket = raw
    try:
        if proxy.scheme == "https":
            context = ssl.create_default_context()
            sock = context.wrap_socket(raw, server_hostname=proxy.host)
            track(sock)
        if proxy.scheme in ("http", "https"):
            _connect_http(sock, proxy, host, port, user_agent)
        else:
            _connect_socks5(sock, proxy, host, port)
    except ProxyError:
        close_quietly(sock)
        raise
    except (OSError, ValueError) as e:
        close_quietly(sock)
        raise ProxyError(f"talking to the proxy {proxy.display} failed: "
                         f"{e or type(e).__name__}") from e
    return sock
