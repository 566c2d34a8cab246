"""Per-connection credentials: exec results cached until shortly before they expire, client
certificates from an exec plugin rotating the TLS context, impersonation headers."""

from __future__ import annotations

import datetime
import tempfile
from typing import Any

import pytest

from kubefwd.cluster.credentials import (
    Credentials,
    ExecResult,
    TlsSettings,
    parse_expiry,
    refresh_margin,
)
from kubefwd.sim import tls as simtls


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def stamp(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def test_refresh_margin_is_a_quarter_of_the_lifetime_within_bounds() -> None:
    assert refresh_margin(20) == 5
    assert refresh_margin(2) == 1  # at least a second
    assert refresh_margin(3600) == 300  # at most five minutes
    assert parse_expiry("2027-01-15T10:00:00Z") == parse_expiry("2027-01-15T10:00:00+00:00")
    assert parse_expiry(None) is None
    with pytest.raises(ValueError, match="expirationTimestamp"):
        parse_expiry("soon")


def test_exec_results_are_due_in_the_last_quarter_of_their_life() -> None:
    result = ExecResult(token="t", expires=1000.0, fetched=980.0)
    assert not result.due(994.9)
    assert result.due(995.0)
    assert not ExecResult(token="t", fetched=0.0).due(1e12)  # no expiry: kept
    with pytest.raises(ValueError, match="neither a token"):
        ExecResult.from_status({}, 0.0)
    with pytest.raises(ValueError, match="without clientKeyData"):
        ExecResult.from_status({"clientCertificateData": "x"}, 0.0)


def test_exec_token_is_run_again_only_when_due() -> None:
    clock = Clock()
    runs: list[float] = []

    def plugin() -> dict[str, Any]:
        runs.append(clock.now)
        return {"token": f"tok{len(runs)}", "expirationTimestamp": stamp(clock.now + 20)}

    creds = Credentials("dev", exec_runner=plugin, clock=clock, token="Bearer static")
    creds.fetch()
    assert creds.headers() == {"Authorization": "Bearer tok1"}
    clock.now += 14
    assert creds.headers() == {"Authorization": "Bearer tok1"}
    clock.now += 1.5  # within 5 s of expiry
    assert creds.headers() == {"Authorization": "Bearer tok2"}
    assert len(runs) == 2


def test_failing_refresh_keeps_the_last_credential() -> None:
    clock = Clock()
    calls = {"n": 0}

    def plugin() -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] > 1:
            raise RuntimeError("plugin broke")
        return {"token": "tok", "expirationTimestamp": stamp(clock.now + 20)}

    creds = Credentials("dev", exec_runner=plugin, clock=clock)
    creds.fetch()
    clock.now += 19
    assert creds.headers() == {"Authorization": "Bearer tok"}
    assert calls["n"] == 2
    # Not run again (nor warned about) for every new connection: once per few seconds.
    for _ in range(10):
        creds.headers()
    assert calls["n"] == 2
    clock.now += 5
    creds.headers()
    assert calls["n"] == 3


def test_a_refreshed_token_source_is_asked_per_connection() -> None:
    tokens = iter(["Bearer one", "Bearer two"])
    creds = Credentials("dev", token=lambda: next(tokens))
    assert creds.headers() == {"Authorization": "Bearer one"}
    assert creds.headers() == {"Authorization": "Bearer two"}


def test_exec_client_certificate_rotates_the_tls_context() -> None:
    ca = simtls.generate()
    clock = Clock()
    issued: list[bytes] = []

    def plugin() -> dict[str, Any]:
        cert, key = ca.issue_client("robot", ("ops",), expires_in=20)
        issued.append(cert)
        return {"clientCertificateData": cert.decode(), "clientKeyData": key.decode(),
                "expirationTimestamp": stamp(clock.now + 20)}

    with tempfile.TemporaryDirectory() as keys:
        creds = Credentials("dev", exec_runner=plugin, clock=clock, key_dir=lambda: keys,
                            tls=TlsSettings(ca_pem=None, verify=True))
        creds.fetch()
        first = creds.ssl_context()
        assert first is not None and creds.ssl_context() is first
        assert creds.headers() == {}  # a certificate, no token
        clock.now += 16
        second = creds.ssl_context()
        assert second is not None and second is not first
        assert len(issued) == 2
        assert creds.ssl_context() is second


def test_impersonation_headers_repeat_the_group_header() -> None:
    creds = Credentials("dev", token="Bearer t", impersonate_user="jane",
                        impersonate_groups=("devs", "eu"))
    assert creds.impersonation == (("Impersonate-User", "jane"),
                                   ("Impersonate-Group", "devs"),
                                   ("Impersonate-Group", "eu"))
    assert Credentials("dev").impersonation == ()
