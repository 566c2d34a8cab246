"""``--service`` and ``--exclude``: which services of the chosen namespaces to forward, by name.

A pattern is a service name or a shell glob (``web``, ``api-*``), optionally qualified by a
namespace (``shop/web``, ``*/cache``); an unqualified one applies in every chosen namespace.
A service is forwarded when it matches some ``--service`` pattern (or none was given) and no
``--exclude`` pattern; label and field selectors still apply on top (AND).

The picker remembers which patterns ever matched a service, so that patterns matching nothing
can be named once at start-up; services that appear later are matched as they come.
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from kubefwd.errors import UsageError

# What a pattern part may hold: a DNS name's characters and the glob characters.
_PART = re.compile(r"^[a-z0-9.\-*?\[\]!]+$")


@dataclass(frozen=True)
class NamePattern:
    """One ``[namespace/]name`` pattern; ``namespace`` "" applies in every namespace."""

    namespace: str
    name: str

    def matches(self, namespace: str, name: str) -> bool:
        if self.namespace and not fnmatch.fnmatchcase(namespace, self.namespace):
            return False
        return fnmatch.fnmatchcase(name, self.name)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


def parse_patterns(values: Iterable[str], flag: str) -> list[NamePattern]:
    """``web``, ``shop/web``, ``api-*`` (already split on commas) → patterns; a malformed one
    raises ``UsageError`` (exit 2) naming the flag."""
    out: list[NamePattern] = []
    for raw in values:
        namespace, slash, name = raw.rpartition("/")
        parts = [namespace, name] if slash else [name]
        for part in parts:
            if not _PART.match(part):
                what = "empty" if not part else f"'{part}' is not a name or a glob"
                raise UsageError(
                    f"{flag} '{raw}': {what} (use NAME or NAMESPACE/NAME, lowercase letters, "
                    "digits, '-', '.', and the globs * ? [...]; e.g. web, shop/api-*)"
                )
        pattern = NamePattern(namespace, name)
        if pattern not in out:
            out.append(pattern)
    return out


class ServicePicker:
    """Answers ``wanted(namespace, name)`` and remembers which patterns matched; safe to call
    from any thread (the registry calls it under its own lock; it calls nothing out)."""

    def __init__(self, include: Iterable[NamePattern] = (),
                 exclude: Iterable[NamePattern] = ()) -> None:
        self.include = list(include)
        self.exclude = list(exclude)
        self._lock = threading.Lock()
        self._matched: set[NamePattern] = set()

    @property
    def active(self) -> bool:
        return bool(self.include or self.exclude)

    def wanted(self, namespace: str, name: str) -> bool:
        hits = [p for p in self.include if p.matches(namespace, name)]
        misses = [p for p in self.exclude if p.matches(namespace, name)]
        if hits or misses:
            with self._lock:
                self._matched.update(hits)
                self._matched.update(misses)
        return (not self.include or bool(hits)) and not misses

    def unmatched(self) -> tuple[list[NamePattern], list[NamePattern]]:
        """(``--service``, ``--exclude``) patterns that have matched no service so far."""
        with self._lock:
            return ([p for p in self.include if p not in self._matched],
                    [p for p in self.exclude if p not in self._matched])
