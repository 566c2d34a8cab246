"""The credentials and TLS settings of one context, fresh for every new connection.

Every connection to the API server (a list, a watch, a tunnel's upgrade) asks for its
headers and its TLS context when it opens, so what changes over a run is picked up by the
next connection and never cuts one that is open: a ``tokenFile`` rewritten by a sidecar is
read again when its modification time changes, and an exec plugin (a token **or** a client
certificate and key, as ``clientCertificateData``/``clientKeyData``) is run again shortly
before its ``expirationTimestamp``. ``as``/``as-groups`` become ``Impersonate-User`` and
``Impersonate-Group`` headers. Part of the Kubernetes adapter: the exec plugin is run by the
official client's ``ExecProvider``, so it sees the same ``KUBERNETES_EXEC_INFO`` as kubectl's.
"""

from __future__ import annotations

import datetime
import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubefwd.errors import ConfigError

log = logging.getLogger(__name__)

# Seconds between attempts to run an exec plugin that failed.
EXEC_RETRY_AFTER = 5.0

# What an exec plugin handed out: token, or certificate and key (PEM), and when it expires.
ExecRunner = Callable[[], dict[str, Any]]


def refresh_margin(lifetime: float) -> float:
    """Seconds before expiry at which a credential is fetched again: a quarter of its
    lifetime, between 1 s and 5 min, so a new connection never presents one that expires
    during its TLS handshake, and a short-lived one is not fetched for every connection."""
    return max(1.0, min(300.0, lifetime / 4))


def parse_expiry(value: object) -> float | None:
    """An RFC 3339 ``expirationTimestamp`` as a time.time() value (None when absent)."""
    if not value:
        return None
    text = str(value).strip().replace("Z", "+00:00").replace("z", "+00:00")
    try:
        stamp = datetime.datetime.fromisoformat(text)
    except ValueError as e:
        raise ValueError(f"invalid expirationTimestamp {value!r}") from e
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=datetime.timezone.utc)
    return stamp.timestamp()


@dataclass(frozen=True)
class ExecResult:
    """One answer of an exec plugin."""

    token: str = ""
    cert_pem: str = ""
    key_pem: str = ""
    expires: float | None = None  # time.time() seconds; None: never
    fetched: float = 0.0

    @staticmethod
    def from_status(status: dict[str, Any], now: float) -> ExecResult:
        token = str(status.get("token") or "")
        cert = str(status.get("clientCertificateData") or "")
        key = str(status.get("clientKeyData") or "")
        if not token and not cert:
            raise ValueError("exec plugin returned neither a token nor clientCertificateData")
        if cert and not key:
            raise ValueError("exec plugin returned clientCertificateData without clientKeyData")
        return ExecResult(token, cert, key, parse_expiry(status.get("expirationTimestamp")),
                          now)

    def due(self, now: float) -> bool:
        if self.expires is None:
            return False
        return now >= self.expires - refresh_margin(self.expires - self.fetched)


@dataclass(frozen=True)
class TlsSettings:
    """The cluster's TLS settings, held in memory (PEM text): a context may be rebuilt at
    any time, when the files the kubeconfig's data were written to are long gone. The
    client certificate may instead come from an exec plugin."""

    ca_pem: str | None = None  # None: the system's trust store
    verify: bool = True
    cert_pem: str | None = None  # client-certificate(-data) of the kubeconfig
    key_pem: str | None = None

    @staticmethod
    def from_files(ca_file: str | None, verify: bool, cert_file: str | None,
                   key_file: str | None) -> TlsSettings:
        """Read the files the kubeconfig names (or its data was written to); OSError."""

        def read(path: str | None) -> str | None:
            if not path:
                return None
            with open(path, encoding="ascii", errors="replace") as f:
                return f.read()

        return TlsSettings(read(ca_file) if verify else None, verify, read(cert_file),
                           read(key_file))


class Credentials:
    """Headers and TLS context for each new connection of one context (thread-safe)."""

    def __init__(self, context: str, *, token: str | Callable[[], str] = "",
                 token_file: str | None = None,
                 exec_runner: ExecRunner | None = None, impersonate_user: str = "",
                 impersonate_groups: tuple[str, ...] = (), tls: TlsSettings | None = None,
                 key_dir: Callable[[], str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.context = context
        # "Bearer ..." or "Basic ..." as the loader made it, or what returns it (an
        # auth-provider the official loader refreshes).
        self._token = token
        self._exec_failed_at: float | None = None  # the last refresh failed then
        self._token_file = token_file
        self._token_file_mtime: float | None = None
        self._file_token = ""
        self._exec_runner = exec_runner
        self._exec: ExecResult | None = None
        self._impersonation: tuple[tuple[str, str], ...] = ()
        if impersonate_user:
            self._impersonation = (("Impersonate-User", impersonate_user),
                                   *(("Impersonate-Group", g) for g in impersonate_groups))
        self._tls = tls
        self._key_dir = key_dir
        self._clock = clock
        self._lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        self._ssl_for: ExecResult | None = None
        self.exec_runs = 0

    # -- what connections ask for

    @property
    def impersonation(self) -> tuple[tuple[str, str], ...]:
        """``Impersonate-User`` and one ``Impersonate-Group`` per group (``as``/``as-groups``)."""
        return self._impersonation

    def headers(self) -> dict[str, str]:
        """The Authorization header, if any: the exec plugin's token, else the token file's,
        else the kubeconfig's token (or basic credentials)."""
        with self._lock:
            auth = ""
            if self._exec_runner is not None:
                result = self._current_exec()
                if result is not None and result.token:
                    auth = f"Bearer {result.token}"
            if not auth and self._token_file:
                self._reread_token_file()
                auth = self._file_token
            if not auth:
                auth = self._static_token()
        return {"Authorization": auth} if auth else {}

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for a new connection: rebuilt when the exec plugin handed out a
        new client certificate; None for a plain-HTTP server."""
        if self._tls is None:
            return None
        with self._lock:
            result = self._current_exec() if self._exec_runner is not None else None
            if result is not None and not result.cert_pem:
                result = None
            if self._ssl is None or result is not self._ssl_for:
                self._ssl = self._build(result)
                self._ssl_for = result
            return self._ssl

    # -- exec plugin (lock held)

    def fetch(self) -> None:
        """Run the exec plugin now (at load: a plugin that fails is a configuration error,
        raised as its own exception)."""
        if self._exec_runner is None:
            return
        with self._lock:
            self._exec = self._run_exec()

    def _run_exec(self) -> ExecResult:
        assert self._exec_runner is not None
        self.exec_runs += 1
        status = self._exec_runner()
        result = ExecResult.from_status(status, self._clock())
        if result.expires is not None:
            log.debug("context %s: exec credential valid for %.0fs", self.context,
                      result.expires - result.fetched)
        return result

    def _static_token(self) -> str:
        if not callable(self._token):
            return self._token
        try:
            return self._token()
        except Exception as e:  # a failing refresh must not kill a thread
            log.warning("context %s: refreshing credentials failed: %s", self.context, e)
            return ""

    def _current_exec(self) -> ExecResult | None:
        current = self._exec
        now = self._clock()
        if current is not None and not current.due(now):
            return current
        failed = self._exec_failed_at
        if failed is not None and now - failed < EXEC_RETRY_AFTER:
            return current  # not a plugin run (and a warning) for every new connection
        try:
            self._exec = self._run_exec()
        except Exception as e:  # a failing plugin must not kill a thread: keep the old one
            if failed is None:
                log.warning("context %s: refreshing credentials failed: %s", self.context, e)
            self._exec_failed_at = now
        else:
            self._exec_failed_at = None
        return self._exec

    # -- token file (lock held)

    def _reread_token_file(self) -> None:
        assert self._token_file is not None
        try:
            mtime = os.stat(self._token_file).st_mtime
            if mtime == self._token_file_mtime:
                return
            with open(self._token_file) as f:
                token = f.read().strip()
        except OSError as e:
            log.warning("cannot read token file %s: %s", self._token_file, e)
            return
        self._token_file_mtime = mtime
        if token:
            self._file_token = f"Bearer {token}"

    # -- TLS (lock held)

    def _build(self, result: ExecResult | None) -> ssl.SSLContext:
        tls = self._tls
        assert tls is not None
        try:
            ctx = ssl.create_default_context(cadata=tls.ca_pem if tls.verify else None)
            if not tls.verify:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            if result is not None:
                self._load_pem_pair(ctx, result.cert_pem, result.key_pem)
            elif tls.cert_pem:
                self._load_pem_pair(ctx, tls.cert_pem, tls.key_pem or tls.cert_pem)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"context {self.context!r}: cannot load TLS material: {e}") from e
        # The port-forward upgrades need HTTP/1.1; never let ALPN pick h2.
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def _load_pem_pair(self, ctx: ssl.SSLContext, cert: str, key: str) -> None:
        """``ssl`` reads key pairs only from files: a private directory, for a moment."""
        if self._key_dir is None:
            with tempfile.TemporaryDirectory(prefix="kubefwd-creds-") as directory:
                self._load_pem_pair_in(ctx, cert, key, directory)
        else:
            self._load_pem_pair_in(ctx, cert, key, self._key_dir())

    @staticmethod
    def _load_pem_pair_in(ctx: ssl.SSLContext, cert: str, key: str, directory: str) -> None:
        stem = os.path.join(directory, f"pair-{os.getpid()}-{threading.get_ident()}")
        paths = (stem + ".crt", stem + ".key")
        try:
            for path, data in zip(paths, (cert, key), strict=True):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(data)
            ctx.load_cert_chain(paths[0], paths[1])
        finally:
            for path in paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
