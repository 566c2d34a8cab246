"""The proxy rules kubectl follows (Go's httpproxy), and proxy URLs that never leak a password."""

from __future__ import annotations

import pytest

from kubefwd.cluster.proxy import parse_proxy_url, proxy_from_environment, use_proxy


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "expected"),
    [
        ("api.example.com", 443, "", True),
        ("localhost", 443, "", False),  # never proxied, whatever NO_PROXY says
        ("127.0.0.1", 6443, "", False),
        ("127.9.9.9", 6443, "", False),
        ("::1", 6443, "", False),
        ("api.example.com", 443, "*", False),
        ("api.example.com", 443, "example.com", False),  # the domain and its subdomains
        ("example.com", 443, "example.com", False),
        ("example.com", 443, ".example.com", True),  # a leading dot: subdomains only
        ("api.example.com", 443, ".example.com", False),
        ("api.example.com", 443, "*.example.com", False),
        ("notexample.com", 443, "example.com", True),
        ("API.Example.COM", 443, " other.org , EXAMPLE.com ", False),
        ("api.example.com", 443, "api.example.com:443", False),
        ("api.example.com", 6443, "api.example.com:443", True),
        ("10.1.2.3", 443, "10.0.0.0/8", False),
        ("11.1.2.3", 443, "10.0.0.0/8", True),
        ("10.1.2.3", 443, "10.1.2.3", False),
        ("10.1.2.3", 6443, "10.1.2.3:443", True),
        ("2001:db8::5", 443, "2001:db8::/32", False),
        ("2001:db8::5", 443, "[2001:db8::5]:443", False),
        ("api.example.com", 443, "10.0.0.0/8", True),  # a CIDR matches addresses only
    ],
)
def test_no_proxy_rules(host: str, port: int, no_proxy: str, expected: bool) -> None:
    assert use_proxy(host, port, no_proxy) is expected


def test_environment_picks_the_scheme_upper_case_first() -> None:
    env = {"HTTPS_PROXY": "http://upper:1", "https_proxy": "http://lower:1",
           "http_proxy": "http://plain:1"}
    assert proxy_from_environment("https", "api.example.com", 443, env) == "http://upper:1"
    assert proxy_from_environment("http", "api.example.com", 80, env) == "http://plain:1"
    env = {"https_proxy": "socks5://lower:1080", "no_proxy": "example.com"}
    assert proxy_from_environment("https", "k8s.io", 443, env) == "socks5://lower:1080"
    assert proxy_from_environment("https", "api.example.com", 443, env) is None
    assert proxy_from_environment("https", "127.0.0.1", 443, env) is None
    # Go ignores HTTP_PROXY inside a CGI request (it may come from a request header).
    assert proxy_from_environment("http", "k8s.io", 80,
                                  {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}) is None


def test_proxy_urls() -> None:
    p = parse_proxy_url("http://al%40ce:p%3Ass@proxy.corp:3128")
    assert (p.scheme, p.host, p.port, p.username, p.password) == (
        "http", "proxy.corp", 3128, "al@ce", "p:ss")
    assert p.display == "http://al%40ce@proxy.corp:3128"
    assert "p:ss" not in repr(p) and "p%3Ass" not in p.display
    assert parse_proxy_url("proxy.corp").display == "http://proxy.corp:80"  # no scheme: http
    assert parse_proxy_url("socks5h://[::1]").display == "socks5h://[::1]:1080"
    assert parse_proxy_url("https://p").port == 443
    with pytest.raises(ValueError) as e:
        parse_proxy_url("ftp://u:hunter2@p:21")
    assert "hunter2" not in str(e.value) and "unsupported proxy scheme 'ftp'" in str(e.value)
    with pytest.raises(ValueError) as e:
        parse_proxy_url("http://u:hunter2@p:notaport")
    assert "hunter2" not in str(e.value)
