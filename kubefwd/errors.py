"""Error classes and exit codes.

Every failure the user can cause or meet is a ``KubefwdError`` subclass carrying the
exit code it maps to; the CLI edge (``kubefwd.commands.cli``) turns it into one line on stderr.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes; documented in README.md ("Exit codes")."""

    OK = 0
    ERROR = 1  # unexpected failure, or a second Ctrl-C that cut shutdown short
    USAGE = 2  # bad flag or value; nothing was touched
    CONFIG = 3  # kubeconfig missing/invalid, unknown context or namespace
    API = 4  # API server unreachable, or refused us (401/403)
    PRIVILEGE = 5  # needs root for a named reason (hosts file not writable, port < 1024)
    HOSTS = 6  # hosts file could not be read, locked or written
    NETWORK = 7  # a listener could not be bound, loopback alias failed
    NOT_READY = 8  # -- CMD: services still not answering after --timeout; CMD not run
    INTERRUPTED = 130  # stopped by a signal before it was ready


class KubefwdError(Exception):
    """Base of the errors kubefwd reports as one line and an exit code."""

    exit_code: ExitCode = ExitCode.ERROR

    def __init__(self, message: str, *, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code

    @property
    def message(self) -> str:
        return str(self)


class UsageError(KubefwdError):
    exit_code = ExitCode.USAGE


class NotReadyError(KubefwdError):
    """``-- CMD``: some services did not answer within ``--timeout``; CMD was not run."""

    exit_code = ExitCode.NOT_READY


class ConfigError(KubefwdError):
    exit_code = ExitCode.CONFIG


class ApiError(KubefwdError):
    """An API server answered with an error Status, or could not be reached."""

    exit_code = ExitCode.API

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        reason: str = "",
        exit_code: ExitCode | None = None,
    ) -> None:
        super().__init__(message, exit_code=exit_code)
        self.status = status
        self.reason = reason


class PrivilegeError(KubefwdError):
    exit_code = ExitCode.PRIVILEGE


class HostsFileError(KubefwdError):
    exit_code = ExitCode.HOSTS


class NetworkError(KubefwdError):
    exit_code = ExitCode.NETWORK


class TunnelError(KubefwdError):
    """A port-forward tunnel could not be opened or broke."""

    exit_code = ExitCode.API
