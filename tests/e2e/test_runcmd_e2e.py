"""``kubefwd svc ... -- CMD`` and ``--ready-file``: the command runs once every service
answers, with the forwards up, and kubefwd ends with its exit status; the ready file exists
exactly while everything answers."""

from __future__ import annotations

import os
import pty
import select
import signal
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import try_http, wait_for
from test_svc_e2e import (
    ORIGINAL_HOSTS,
    Kubefwd,
    hosts_entries,
)

from kubefwd.sim.cluster import SimCluster

pytestmark = pytest.mark.e2e


# The command under test: checks its environment, reaches web by the name kubefwd wrote,
# prints the answer and exits with the code it is given.
CLIENT = textwrap.dedent("""\
    import os, socket, sys
    assert os.environ["KUBEFWD_READY"] == "1"
    hosts = os.environ["KUBEFWD_HOSTS"]
    ip = next(line.split()[0] for line in open(hosts)
              if "kubefwd" in line and "web" in line.split("#")[0].split())
    with socket.create_connection((ip, 80), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\\r\\nHost: web\\r\\n\\r\\n")
        body = b""
        while chunk := s.recv(65536):
            body += chunk
    print("answer:", body.split(b"\\r\\n\\r\\n", 1)[1].decode().strip(), "hosts:", hosts)
    sys.exit(int(sys.argv[1]))
""")


def _end(fwd: Kubefwd, timeout: float = 30.0) -> int:
    code = fwd.proc.wait(timeout)
    fwd._reader.join(5)
    return code


@pytest.mark.parametrize("code", [0, 3])
def test_the_command_runs_with_the_forwards_up_and_its_exit_code_is_kubefwds(
    run: Callable[..., Kubefwd], hosts: Path, code: int
) -> None:
    fwd = run("-n", "shop", "--", sys.executable, "-c", CLIENT, str(code), ready=False)
    assert _end(fwd) == code, fwd.output
    [answer] = [line for line in fwd.lines if line.startswith("answer:")]
    assert answer.startswith("answer: web-") and answer.endswith(f"hosts: {hosts}")
    assert hosts.read_bytes() == ORIGINAL_HOSTS


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_kubefwd_reaches_the_command_and_ends_it_with_128_plus_n(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path, sig: int
) -> None:
    started = tmp_path / "started"
    script = (f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); "
              "time.sleep(60)")
    fwd = run("-n", "shop", "--", sys.executable, "-c", script, ready=False)
    wait_for(started.exists, 30, "the command to start")
    assert hosts_entries(hosts)  # the forwards are up while it runs
    fwd.proc.send_signal(sig)
    assert _end(fwd) == 128 + sig, fwd.output
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_ctrl_c_on_the_terminal_reaches_the_command_first_and_kubefwd_waits_for_it(
    cluster: SimCluster, hosts: Path, tmp_path: Path, block: int
) -> None:
    """Under a terminal the command is the foreground job: Ctrl-C goes to it alone; it
    traps the signal, takes its time, exits 7, and kubefwd then stops with 7."""
    conf = tmp_path / "base.yaml"
    conf.write_text(f"baseUnreservedIP: 127.1.{block}.1\n")
    script = textwrap.dedent("""\
        import signal, sys, time
        def bye(*_):
            time.sleep(0.5)
            print("command: got", "SIGINT", flush=True)
            sys.exit(7)
        signal.signal(signal.SIGINT, bye)
        print("command:", "waiting", flush=True)
        time.sleep(60)
    """)
    argv = [sys.executable, "-m", "kubefwd", "svc", "-c", str(cluster.kubeconfig_path),
            "--hosts-path", str(hosts), "-n", "shop", "-z", str(conf),
            "--", sys.executable, "-c", script]
    env = dict(os.environ, HOME=str(tmp_path), PYTHONUNBUFFERED="1")
    pid, master = pty.fork()
    if pid == 0:  # the child: a session leader with the pty as its terminal
        os.execve(sys.executable, argv, env)
    output = b""

    def read_until(marker: bytes, timeout: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        while marker not in output:
            left = deadline - time.monotonic()
            assert left > 0, output.decode(errors="replace")
            ready, _, _ = select.select([master], [], [], left)
            if ready:
                try:
                    output += os.read(master, 65536)
                except OSError:
                    break

    try:
        read_until(b"command: waiting", 30)
        os.write(master, b"\x03")  # Ctrl-C, as the terminal driver delivers it
        read_until(b"exited with 7", 20)
        _, status = os.waitpid(pid, 0)
        pid = 0
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(master)
    text = output.decode(errors="replace")
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7, text
    assert "command: got SIGINT" in text
    assert "interrupted" not in text  # kubefwd itself never saw the Ctrl-C
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_services_that_never_answer_are_named_and_the_command_is_not_run(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path, tmp_path: Path
) -> None:
    (pod,) = [p["metadata"]["name"] for p in cluster.pods("shop", "app=web")]
    cluster.set_pod_ready("shop", pod, False)
    wait_for(lambda: not _ready(cluster, pod), 10, "web not ready")
    marker = tmp_path / "ran"
    fwd = run("-n", "shop", "-t", "2", "--", "touch", str(marker), ready=False)
    assert _end(fwd) == 8, fwd.output
    [error] = [line for line in fwd.lines if line.startswith("kubefwd: error:")]
    assert "not answering after 2s" in error and "shop/web (no ready pod)" in error
    assert "cart" not in error and "touch was not run" in error
    assert not marker.exists()
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_wait_for_and_no_wait_narrow_what_is_waited_for(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path
) -> None:
    (pod,) = [p["metadata"]["name"] for p in cluster.pods("shop", "app=web")]
    cluster.set_pod_ready("shop", pod, False)
    wait_for(lambda: not _ready(cluster, pod), 10, "web not ready")
    fwd = run("-n", "shop", "-t", "20", "--wait-for", "cart,shop/db", "--", "true",
              ready=False)
    assert _end(fwd) == 0, fwd.output
    fwd = run("-n", "shop", "-t", "20", "--no-wait", "--", "false", ready=False)
    assert _end(fwd) == 1, fwd.output
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def test_the_ready_file_appears_once_every_service_answers_and_goes_at_exit(
    run: Callable[..., Kubefwd], cluster: SimCluster, hosts: Path, tmp_path: Path
) -> None:
    (pod,) = [p["metadata"]["name"] for p in cluster.pods("shop", "app=web")]
    cluster.set_pod_ready("shop", pod, False)
    wait_for(lambda: not _ready(cluster, pod), 10, "web not ready")
    ready_file = tmp_path / "kubefwd.ready"
    fwd = run("-n", "shop", "--ready-file", str(ready_file))
    ip = hosts_entries(hosts)["web"]
    # Up, but web has no ready pod: several readiness rounds go by without the file.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert not ready_file.exists()
        time.sleep(0.1)
    cluster.set_pod_ready("shop", pod, True)
    wait_for(ready_file.exists, 15, "the ready file")
    # The moment it is there, every service answers.
    assert (try_http(ip, 80) or "").startswith("web-")
    assert ready_file.read_text() == f"pid={fwd.proc.pid}\nhosts={hosts}\n"
    fwd.stop_cleanly()
    assert not ready_file.exists()


def test_bad_command_lines_for_a_command_are_one_line_and_exit_2(
    run: Callable[..., Kubefwd], hosts: Path, tmp_path: Path
) -> None:
    for args, message in [
        (("--",), "no command after it"),
        (("--", "no-such-command-xyz"), "no-such-command-xyz: command not found"),
        (("--no-wait",), "need -- CMD or --ready-file"),
        (("--command-as-root",), "--command-as-root needs -- CMD"),
        (("--ready-file", str(tmp_path / "missing" / "f")), "does not exist"),
    ]:
        fwd = run("-n", "shop", *args, ready=False)
        assert _end(fwd) == 2, fwd.output
        assert message in fwd.lines[0] and len(fwd.lines) <= 2, fwd.output
    assert hosts.read_bytes() == ORIGINAL_HOSTS


def _ready(cluster: SimCluster, pod: str) -> bool:
    obj = cluster.store.get("Pod", "shop", pod) or {}
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (obj.get("status") or {}).get("conditions") or [])
