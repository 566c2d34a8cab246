"""The API key: from ``KUBEFWD_API_KEY`` or generated at start, and the 0600 file that tells
``kubefwd status`` and ``kubefwd mcp`` where a running instance's API is.

One file per instance, ``api-<pid>.json`` (``{"pid", "url", "key"}``), in the invoking
user's runtime directory (``$XDG_RUNTIME_DIR/kubefwd``, else ``~/.config/kubefwd``; under
``sudo`` the one of ``SUDO_USER``, owned by that user), removed at exit.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from kubefwd.support.invoker import sudo_user

KEY_ENV = "KUBEFWD_API_KEY"
URL_ENV = "KUBEFWD_API_URL"


@dataclass(frozen=True)
class ApiEndpoint:
    """Where a running instance's API listens, and its key."""

    pid: int
    url: str
    key: str


def new_key() -> str:
    return secrets.token_urlsafe(32)


def api_key() -> tuple[str, bool]:
    """The key and whether it was generated (False: from ``KUBEFWD_API_KEY``)."""
    given = os.environ.get(KEY_ENV, "").strip()
    return (given, False) if given else (new_key(), True)


def same_key(given: str, expected: str) -> bool:
    """Constant-time comparison."""
    return hmac.compare_digest(given.encode("utf-8", "replace"),
                               expected.encode("utf-8", "replace"))


def key_dir() -> Path:
    """The directory of the key files (see the module docstring)."""
    user = sudo_user()
    if user is not None:
        runtime = Path(f"/run/user/{user.pw_uid}")
        if runtime.is_dir():
            return runtime / "kubefwd"
        return Path(user.pw_dir) / ".config" / "kubefwd"
    runtime_env = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_env and Path(runtime_env).is_dir():
        return Path(runtime_env) / "kubefwd"
    return Path.home() / ".config" / "kubefwd"


def key_file(pid: int) -> Path:
    return key_dir() / f"api-{pid}.json"


def write_key_file(endpoint: ApiEndpoint) -> Path:
    """Write the endpoint to its 0600 file (owned by the invoking user under sudo)."""
    path = key_file(endpoint.pid)
    user = sudo_user()
    # Every folder made here is the user's under sudo, ``~/.config`` too when it was missing.
    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    if user is not None:
        for folder in missing:
            with contextlib.suppress(OSError):
                os.chown(folder, user.pw_uid, user.pw_gid)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump({"pid": endpoint.pid, "url": endpoint.url, "key": endpoint.key}, out)
    os.chmod(tmp, 0o600)
    if user is not None:
        with contextlib.suppress(OSError):
            os.chown(path.parent, user.pw_uid, user.pw_gid)
            os.chown(tmp, user.pw_uid, user.pw_gid)
    os.replace(tmp, path)
    return path


def remove_key_file(pid: int) -> None:
    with contextlib.suppress(OSError):
        key_file(pid).unlink()


def read_endpoints(directory: Path | None = None) -> list[ApiEndpoint]:
    """Every key file's endpoint whose process still runs, newest file first."""
    folder = directory or key_dir()
    found: list[tuple[float, ApiEndpoint]] = []
    try:
        files = list(folder.glob("api-*.json"))
    except OSError:
        return []
    for path in files:
        try:
            data = json.loads(path.read_text())
            endpoint = ApiEndpoint(int(data["pid"]), str(data["url"]), str(data["key"]))
            mtime = path.stat().st_mtime
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _alive(endpoint.pid):
            found.append((mtime, endpoint))
    return [e for _, e in sorted(found, key=lambda item: -item[0])]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
