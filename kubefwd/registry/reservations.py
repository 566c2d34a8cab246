"""IP reservations from ``-r/--reserve name:ip`` and the ``-z/--fwd-conf`` YAML file.

The file (kubefwd's format)::

    baseUnreservedIP: 127.1.27.1
    serviceConfigurations:
      - name: db
        ip: 127.1.28.1

Everything is validated before anything is touched; a problem is one UsageError line naming
the value, or the file and line.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kubefwd.errors import UsageError
from kubefwd.registry.ipalloc import (
    DEFAULT_BASE,
    parse_loopback_ip,
    parse_reserved_ip,
    validate_reservations,
)

_TOP_KEYS = {"baseUnreservedIP", "serviceConfigurations"}
_ENTRY_KEYS = {"name", "ip"}
# A reservation names a service by any of its host names: DNS labels joined by dots.
_HOST_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def check_reservation_name(name: str, *, what: str) -> str:
    """A reserved name, lowercase: a DNS name (``web``, ``web.shop``), nothing else."""
    clean = name.strip().lower()
    if len(clean) > 253 or not all(_HOST_LABEL.match(p) for p in clean.split(".")):
        raise UsageError(
            f"{what}: {name!r} is not a service or host name (DNS labels of lowercase letters, "
            "digits and '-', joined by dots)"
        )
    return clean


@dataclass(frozen=True)
class FwdConfig:
    base: str = DEFAULT_BASE
    reservations: dict[str, str] = field(default_factory=dict)


def parse_reserve(values: Sequence[str]) -> dict[str, str]:
    """``name:ip`` flags → {name: ip}; each value checked on its own."""
    result: dict[str, str] = {}
    for value in values:
        name, sep, ip = value.strip().partition(":")
        name, ip = name.strip(), ip.strip()
        if not sep or not name or not ip:
            raise UsageError(f"--reserve {value!r}: expected name:ip, e.g. db:127.1.28.1")
        name = check_reservation_name(name, what=f"--reserve {value!r}")
        clean = str(parse_reserved_ip(ip, what=f"--reserve {value!r}"))
        if result.get(name, clean) != clean:
            raise UsageError(f"--reserve {value!r}: {name} is already reserved as {result[name]}")
        result[name] = clean
    validate_reservations(result)
    return result


def _scalar(node: yaml.Node, where: str, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode) or not str(node.value).strip():
        raise UsageError(f"{where}: {what} must be a non-empty string")
    return str(node.value).strip()


# A -z file holds a few lines per service: 1 MiB is tens of thousands of reservations.
MAX_FWD_CONF_BYTES = 1 << 20


def _read_text(path: Path) -> str:
    """The file's text: a regular file (a FIFO must not block start-up, a device must not be
    read forever) of at most MAX_FWD_CONF_BYTES, in UTF-8."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UsageError(f"--fwd-conf {path}: cannot read it ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"--fwd-conf {path}: not a regular file")
        if st.st_size > MAX_FWD_CONF_BYTES:
            raise UsageError(
                f"--fwd-conf {path}: {st.st_size} bytes is too big (at most {MAX_FWD_CONF_BYTES})"
            )
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_FWD_CONF_BYTES:
            chunk = os.read(fd, MAX_FWD_CONF_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise UsageError(f"--fwd-conf {path}: cannot read it ({e.strerror})") from None
    finally:
        os.close(fd)
    if size > MAX_FWD_CONF_BYTES:  # it grew while we read it
        raise UsageError(f"--fwd-conf {path}: too big (at most {MAX_FWD_CONF_BYTES} bytes)")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"--fwd-conf {path}: not a UTF-8 text file") from None


def load_fwd_conf(path: Path) -> FwdConfig:
    """Read and validate a ``-z`` file."""
    text = _read_text(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise UsageError(f"--fwd-conf {path}: nested too deeply to be a kubefwd file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise UsageError(f"{path}{line}: {problem}") from None
    if root is None:
        return FwdConfig()
    if not isinstance(root, yaml.MappingNode):
        raise UsageError(f"{path}:{root.start_mark.line + 1}: expected a mapping at the top")
    base = DEFAULT_BASE
    reservations: dict[str, str] = {}
    for key_node, value_node in root.value:
        key = str(key_node.value)
        where = f"{path}:{key_node.start_mark.line + 1}"
        if key not in _TOP_KEYS:
            expected = ", ".join(sorted(_TOP_KEYS))
            raise UsageError(f"{where}: unknown key {key!r} (expected {expected})")
        if key == "baseUnreservedIP":
            raw = _scalar(value_node, where, "baseUnreservedIP")
            parsed = parse_loopback_ip(raw, what=f"{where}: baseUnreservedIP")
            if parsed.packed[3] == 255:
                raise UsageError(f"{where}: baseUnreservedIP {parsed} leaves no address in its /24")
            base = str(parsed)
        else:
            reservations = _service_configurations(path, where, value_node)
    return FwdConfig(base=base, reservations=reservations)


def _service_configurations(path: Path, where: str, node: yaml.Node) -> dict[str, str]:
    if isinstance(node, yaml.ScalarNode) and node.value in ("", "~", "null"):
        return {}
    if not isinstance(node, yaml.SequenceNode):
        raise UsageError(f"{where}: serviceConfigurations must be a list of {{name, ip}}")
    reservations: dict[str, str] = {}
    lines: dict[str, int] = {}
    by_ip: dict[str, str] = {}
    for item in node.value:
        line = item.start_mark.line + 1
        at = f"{path}:{line}"
        if not isinstance(item, yaml.MappingNode):
            raise UsageError(f"{at}: each service configuration needs name and ip")
        fields: dict[str, str] = {}
        for k, v in item.value:
            name = str(k.value)
            if name not in _ENTRY_KEYS:
                raise UsageError(
                    f"{path}:{k.start_mark.line + 1}: unknown key {name!r} (expected name, ip)"
                )
            fields[name] = _scalar(v, f"{path}:{v.start_mark.line + 1}", name)
        missing = ", ".join(sorted(_ENTRY_KEYS - fields.keys()))
        if missing:
            raise UsageError(f"{at}: service configuration without {missing}")
        svc = check_reservation_name(fields["name"], what=f"{at}: name")
        ip = str(parse_reserved_ip(fields["ip"], what=f"{at}: ip"))
        if reservations.get(svc, ip) != ip:
            raise UsageError(
                f"{at}: {svc} is already reserved as {reservations[svc]} on line {lines[svc]}"
            )
        other = by_ip.get(ip)
        if other is not None and other != svc:
            raise UsageError(
                f"{at}: {svc}:{ip} duplicates {other}:{ip} from line {lines[other]}; "
                "one IP per service"
            )
        reservations[svc], lines[svc], by_ip[ip] = ip, line, svc
    return reservations


def build_reservations(
    reserve: Sequence[str], fwd_conf: Path | None
) -> tuple[dict[str, str], str]:
    """Merge ``-z`` and ``-r`` (a ``-r`` for the same name wins) → (reservations, base IP)."""
    conf = load_fwd_conf(fwd_conf) if fwd_conf is not None else FwdConfig()
    merged = dict(conf.reservations)
    merged.update(parse_reserve(reserve))
    try:
        return validate_reservations(merged), conf.base
    except UsageError as e:
        raise UsageError(f"--reserve/--fwd-conf: {e}") from None
