"""Label and field selector text: the one piece of grammar the CLI and the simulated API
server share. Kept free of imports so that the command line can use it cheaply."""

from __future__ import annotations


def split_requirements(selector: str) -> list[str]:
    """The comma-separated requirements of a selector, stripped; commas inside ``( )``
    belong to a set (``env in (dev,qa)``)."""
    terms: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(selector):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "," and depth == 0:
            terms.append(selector[start:i].strip())
            start = i + 1
    terms.append(selector[start:].strip())
    return terms
