from __future__ import annotations

import subprocess
import sys

from kubefwd import __version__
from kubefwd.errors import ExitCode


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kubefwd", *args], capture_output=True, text=True, timeout=60
    )


def test_version_flag_and_command() -> None:
    assert run("--version").stdout.strip() == f"kubefwd {__version__}"
    assert run("version").stdout.strip() == f"kubefwd {__version__}"


def test_unknown_option_is_one_line_and_usage_exit_code() -> None:
    result = run("version", "--no-such-flag")
    assert result.returncode == ExitCode.USAGE
    assert result.stderr.splitlines()[0].startswith("kubefwd: error: No such option")


def test_help_lists_subcommands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "sim" in result.stdout and "version" in result.stdout
