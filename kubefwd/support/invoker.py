"""Who ran kubefwd: under ``sudo``, the user named by ``SUDO_USER`` rather than root.

Files kubefwd leaves in a home (the hosts backup, the API key file) and the command run with
``svc ... -- CMD`` belong to that user, not to root.
"""

from __future__ import annotations

import contextlib
import os
import pwd


def sudo_user() -> pwd.struct_passwd | None:
    """The account that ran ``sudo kubefwd``: only when we are root, ``SUDO_USER`` is set,
    is not root and names a user of this machine; None otherwise."""
    name = os.environ.get("SUDO_USER")
    if os.geteuid() != 0 or not name or name == "root":
        return None
    with contextlib.suppress(KeyError):
        user = pwd.getpwnam(name)
        if user.pw_uid != 0:
            return user
    return None
