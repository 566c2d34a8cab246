"""Theme names of ``--tui`` (kept apart from the view so the command line checks a name
without loading prompt_toolkit)."""

from __future__ import annotations

import os

THEMES = ("auto", "dark", "light")
THEME_ENV = "KUBEFWD_THEME"


def theme_name(value: str | None) -> str:
    """The theme named by the flag, else ``$KUBEFWD_THEME``, else ``auto``; ValueError for
    an unknown one."""
    name = (value or os.environ.get(THEME_ENV) or "auto").strip().lower()
    if name not in THEMES:
        raise ValueError(f"'{name}' is not one of {', '.join(THEMES)}")
    return name
