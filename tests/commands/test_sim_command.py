"""``kubefwd sim -o FILE``: a kubeconfig path that cannot be written is one line naming the
path and why, exit 2, and the server never starts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import needs_root

from kubefwd.errors import ExitCode


def sim(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kubefwd", "sim", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_kubeconfig_in_a_directory_that_does_not_exist(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "kc"
    done = sim("-o", str(path))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert done.stderr.splitlines() == [
        f"kubefwd: error: --kubeconfig-out {path}: directory {path.parent} does not exist"]
    assert done.stdout == "" and not path.parent.exists()


def test_kubeconfig_path_that_is_a_directory(tmp_path: Path) -> None:
    done = sim("-o", str(tmp_path))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert done.stderr.splitlines() == [
        f"kubefwd: error: --kubeconfig-out {tmp_path}: is a directory, not a file"]
    assert list(tmp_path.iterdir()) == []


def test_kubeconfig_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    done = sim("-o", str(tmp_path / "plain" / "kc"))
    assert done.returncode == ExitCode.USAGE, done.stderr
    assert done.stderr.splitlines() == [
        f"kubefwd: error: --kubeconfig-out {tmp_path}/plain/kc: {tmp_path}/plain is not a "
        "directory"]


@pytest.mark.root
@needs_root("unshare", "mount")
def test_kubeconfig_on_a_read_only_filesystem_names_the_path_and_the_cause(
    tmp_path: Path,
) -> None:
    """A directory where no file can be created (as under /proc): the server starts, the
    write fails, and the one line says which file and why, not 'cannot serve on port 0'."""
    folder = tmp_path / "ro"
    folder.mkdir()
    script = (f"mount -t tmpfs -o ro tmpfs {folder} && "
              f"{sys.executable} -m kubefwd sim -o {folder}/kc; echo code=$?")
    done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, text=True, timeout=60)
    if "unshare failed" in done.stderr:
        pytest.skip("unshare not permitted here")
    assert "code=2" in done.stdout, done.stdout + done.stderr
    assert done.stderr.splitlines() == [
        f"kubefwd: error: --kubeconfig-out {folder}/kc: cannot write it in {folder} "
        "(Read-only file system)"]
