"""The open-file limit: raised to the hard limit at start-up, and a clear sentence when the
forwards cannot fit."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap

from kubefwd.system.fdlimit import CONNECTION_ROOM, Limit, needed, shortfall


def test_raise_nofile_lifts_the_soft_limit_to_the_hard_one() -> None:
    # In a child process with a low soft limit, so this process keeps its own.
    code = textwrap.dedent("""
        import resource
        from kubefwd.system.fdlimit import raise_nofile
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        limit = raise_nofile()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(limit.raised_from, limit.soft, now, hard)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    raised_from, soft, now, hard = (int(x) for x in out)
    assert raised_from == 256
    assert soft == now
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert now == expected


def test_shortfall_names_the_figures_only_when_the_services_do_not_fit() -> None:
    roomy = Limit(soft=100_000, hard=100_000, raised_from=0)
    assert shortfall(roomy, 2000, 2000) is None
    tight = Limit(soft=1024, hard=1024, raised_from=0)
    assert shortfall(tight, 10, 10) is None
    message = shortfall(tight, 500, 600)
    assert message is not None
    assert "1024" in message and "500 forwards with 600 listeners" in message
    assert str(needed(500, 600)) in message and str(CONNECTION_ROOM) in message
    assert shortfall(Limit(-1, -1, 0), 10**6, 10**6) is None
