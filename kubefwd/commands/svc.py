"""``kubefwd svc`` (aliases ``services``, ``svcs``): flags, validation, then the orchestrator.

Every value is checked here, before anything is touched (no hosts file read, no socket, no API
call): a bad value is one line and exit code 2.
"""

from __future__ import annotations

import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from kubefwd.errors import UsageError
from kubefwd.registry.reservations import build_reservations
from kubefwd.registry.svcpick import parse_patterns
from kubefwd.support.dnsnames import is_dns_label
from kubefwd.support.selectorsyntax import split_requirements
from kubefwd.support.startuptrace import mark
from kubefwd.support.transports import TRANSPORTS

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# RFC 1123 label (namespaces, and each dot-separated part of a domain).
# Label keys ([prefix/]name) and values, as Kubernetes validates them.
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# One label requirement: `key op value`, `key in (...)`, `key notin (...)`, `key`, `!key`.
_KEY = r"(?P<key>[^\s=!<>(),]+)"
_LABEL_OP = re.compile(rf"^{_KEY}\s*(?P<op>==|!=|=|>|<)\s*(?P<value>[^\s=!<>(),]*)$")
_LABEL_SET = re.compile(rf"^{_KEY}\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")
_LABEL_EXISTS = re.compile(rf"^!?\s*{_KEY}$")
# Fields of a Service that API servers accept in a field selector.
SERVICE_FIELDS = ("metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type")

HELP = (
    "Forward the services of the chosen namespaces; their names go to the hosts file.\n\n"
    "Each service gets its own loopback IP (127.1.27.1, ...) and listens there on its own "
    "ports; each connection tunnels through the Kubernetes API to a ready pod, following "
    "pods as they restart."
)

EPILOG = """\
\b
Examples:
  sudo kubefwd svc -n shop,payments        # two namespaces
  sudo kubefwd svc -n shop -l app=web      # only services labelled app=web
  sudo kubefwd svc -n shop,payments --service web,payments/api --exclude 'web-canary*'
  sudo kubefwd svc -x dev,qa -n shop       # two clusters: web.shop.dev, ...
  sudo kubefwd svc -A -d dev.local         # all namespaces, + web.dev.local
  sudo kubefwd svc -n shop -m 80:8080      # service port 80 listens on 8080
  sudo kubefwd svc -n shop -r web:127.1.27.99
  kubefwd svc -n shop --hosts-path ./hosts # no root for a file you own
  sudo kubefwd svc -n shop -- make integration-test   # run it, exit with its code

\b
Then:  curl http://web:80/   or   curl http://web.shop:80/
Ctrl-C stops and removes the lines kubefwd added to the hosts file.
"""


# -- parsing helpers (pure, unit-tested) ---------------------------------------------------


def split_list(values: list[str] | None) -> list[str]:
    """``-n a,b -n c`` → ``[a, b, c]``: repeatable and comma-separated, order kept, no dupes."""
    out: list[str] = []
    for value in values or []:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


# How long start-up retries its first hosts-file write (a full disk, a lock held) before it
# gives up with exit code 6; default 30 s.
HOSTS_WRITE_TIMEOUT_ENV = "KUBEFWD_HOSTS_WRITE_TIMEOUT"

# The range each duration flag accepts, in seconds: anything outside is a typo, never a wish
# (a connection held "for up to nan s", a resync that hammers the API server every 1 ms).
_WEEK = 7 * 24 * 3600.0
DURATION_RANGES = {
    "-t/--timeout": (0.1, _WEEK),
    "--resync-interval": (1.0, _WEEK),
    "--retry-interval": (0.1, 24 * 3600.0),
    HOSTS_WRITE_TIMEOUT_ENV: (1.0, 3600.0),
}


def _seconds_text(seconds: float) -> str:
    for unit, size in (("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms"


def parse_duration(text: str, flag: str) -> float:
    """Seconds from ``300``, ``300s``, ``5m``, ``1h``, ``1m30s`` or ``500ms``: finite, and
    within the flag's range of ``DURATION_RANGES`` (any flag: more than zero)."""
    value = text.strip().lower()
    seconds: float
    try:
        seconds = float(value)
    except ValueError:
        pos = 0
        seconds = 0.0
        for match in _DURATION_PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(value) or not value:
            raise UsageError(
                f"{flag}: '{text}' is not a duration (use seconds or e.g. 300s, 5m, 1h)"
            ) from None
    if not math.isfinite(seconds):
        raise UsageError(f"{flag}: '{text}' is not a finite duration")
    if seconds <= 0:
        raise UsageError(f"{flag}: '{text}' must be longer than zero")
    low, high = DURATION_RANGES.get(flag, (0.0, math.inf))
    if not low <= seconds <= high:
        raise UsageError(
            f"{flag}: '{text}' is outside {_seconds_text(low)} to {_seconds_text(high)}"
        )
    return seconds


def _port(text: str, what: str, flag: str, raw: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise UsageError(f"{flag} '{raw}': {what} '{text}' is not a number") from None
    if not 1 <= port <= 65535:
        raise UsageError(f"{flag} '{raw}': {what} {port} is outside 1-65535")
    return port


def parse_mappings(values: list[str] | None) -> dict[int, int]:
    """``-m 80:8080`` → ``{80: 8080}``: service port 80 listens on local port 8080."""
    out: dict[int, int] = {}
    for raw in split_list(values):
        service, sep, local = raw.partition(":")
        if not sep:
            raise UsageError(f"-m/--mapping '{raw}': expected servicePort:localPort, e.g. 80:8080")
        sport = _port(service, "service port", "-m/--mapping", raw)
        lport = _port(local, "local port", "-m/--mapping", raw)
        if sport in out and out[sport] != lport:
            raise UsageError(f"-m/--mapping: service port {sport} is mapped twice")
        out[sport] = lport
    return out


def check_namespace(name: str) -> str:
    if not is_dns_label(name):
        raise UsageError(
            f"-n/--namespace: '{name}' is not a valid namespace name "
            "(lowercase letters, digits and '-', at most 63)"
        )
    return name


def _label_key_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        return f"'{prefix}' is not a valid label key prefix (a lowercase DNS subdomain)"
    if not _LABEL_NAME.match(name):
        return (f"'{key}' is not a valid label key (at most 63 letters, digits, '-', '_' "
                "or '.', starting and ending with a letter or digit)")
    return None


def _label_value_problem(value: str) -> str | None:
    if value and not _LABEL_NAME.match(value):
        return (f"'{value}' is not a valid label value (at most 63 letters, digits, '-', '_' "
                "or '.', starting and ending with a letter or digit)")
    return None


def check_label_selector(text: str) -> str:
    """A Kubernetes label selector: ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
    ``k notin (a,b)``, ``k``, ``!k`` (and ``k>N``, ``k<N``), comma-separated."""
    text = text.strip()
    if not text:
        return ""
    flag = "-l/--selector"
    for term in split_requirements(text):
        problem: str | None
        if not term:
            problem = "empty requirement (stray comma?)"
        elif m := _LABEL_SET.match(term):
            values = [v.strip() for v in m["values"].split(",")]
            if not any(values):
                problem = f"a set needs values, e.g. {m['key']} {m['op']} (a,b)"
            else:
                problem = _label_key_problem(m["key"]) or next(
                    filter(None, map(_label_value_problem, values)), None
                )
        elif m := _LABEL_OP.match(term):
            problem = _label_key_problem(m["key"]) or _label_value_problem(m["value"])
            if problem is None and m["op"] in "<>" and not re.fullmatch(r"-?\d+", m["value"]):
                problem = f"'{term}': {m['op']} needs a whole number"
        elif m := _LABEL_EXISTS.match(term):
            problem = _label_key_problem(m["key"])
        else:
            problem = (f"cannot parse '{term}' (use key=value, key!=value, key in (a,b), "
                       "key notin (a,b), key or !key)")
        if problem:
            raise UsageError(f"{flag} '{text}': {problem}")
    return text


def check_field_selector(text: str) -> str:
    """A field selector on services: ``field=value``, ``field==value`` or ``field!=value``,
    comma-separated, over the fields API servers index for services."""
    text = text.strip()
    if not text:
        return ""
    flag = "-f/--field-selector"
    for term in _split_escaped(text):
        if not term.strip():
            raise UsageError(f"{flag} '{text}': empty requirement (stray comma?)")
        m = re.fullmatch(r"\s*([^=!\s]+)\s*(==|!=|=)(.*)", term, re.DOTALL)
        if not m:
            raise UsageError(
                f"{flag} '{text}': cannot parse '{term}' (use field=value or field!=value)"
            )
        if m[1] not in SERVICE_FIELDS:
            raise UsageError(
                f"{flag} '{text}': services cannot be selected by '{m[1]}' "
                f"(use {', '.join(SERVICE_FIELDS)})"
            )
    return text


def _split_escaped(text: str) -> list[str]:
    """Split on commas not escaped with a backslash (as Kubernetes field selectors do)."""
    terms: list[str] = []
    current: list[str] = []
    escaped = False
    for ch in text:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            current.append(ch)
            escaped = True
        elif ch == ",":
            terms.append("".join(current))
            current = []
        else:
            current.append(ch)
    terms.append("".join(current))
    return terms


def check_domain(domain: str | None) -> str:
    """The ``-d`` domain, lowercase without a final dot; None (not given) is no domain, but
    a value given empty, or one that is only dots, is a mistake."""
    if domain is None:
        return ""
    clean = domain.strip().strip(".").lower()
    if not clean:
        raise UsageError(f"-d/--domain: '{domain}' is empty (leave the flag out for no domain)")
    if len(clean) > 253 or not all(is_dns_label(part) for part in clean.split(".")):
        raise UsageError(f"-d/--domain: '{clean}' is not a valid DNS domain")
    return clean


def check_hosts_path(path: Path) -> Path:
    """A hosts file is a regular file (or a symlink to one), or a new file in an existing
    directory. A device, a FIFO, a socket or anything under /proc, /sys or /dev is refused
    before anything is touched: replacing ``/dev/null`` by a regular file, or blocking
    start-up on a FIFO, must never happen."""
    problem = hosts_path_problem(path)
    if problem is not None:
        raise UsageError(f"--hosts-path: {path} {problem}")
    return path


def hosts_path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be a hosts file, or None when it can."""
    try:
        resolved = Path(os.path.realpath(path))
    except (OSError, ValueError) as e:
        return f"cannot be resolved: {e}"
    for root in _SPECIAL_TREES:
        if resolved == root or root in resolved.parents:
            return f"is under {root}, which holds no hosts file"
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not path.parent.is_dir():
            return f"cannot be created: directory {path.parent} does not exist"
        return None
    except OSError as e:
        return f"cannot be read: {e.strerror}"
    if stat.S_ISREG(st.st_mode):
        return None
    return f"is {_file_kind(st.st_mode)}, not a regular file"


_SPECIAL_TREES = (Path("/proc"), Path("/sys"), Path("/dev"))


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


# -- the command ---------------------------------------------------------------------------

_ETC_HOSTS = Path("/etc/hosts")
OUTPUTS = ("text", "json")
_H_OUTPUT = (
    "text: the log lines; json: one JSON object per event and line (type, time, fields), "
    "for scripts."
)
_H_KUBECONFIG = "Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)."
_H_CONTEXT = "Context(s) to forward; repeatable and comma-separated (default: the current one)."
_H_NS = "Namespace(s); repeatable and comma-separated (default: the context's namespace)."
_H_ALL = "Forward the services of every namespace."
_H_WAIT_NS = ("With -n: a namespace that does not exist yet is waited for (one warning) and "
              "forwarded when it appears, instead of exit 3.")
_H_SELECTOR = "Label selector for services, e.g. app=web,tier!=db."
_H_FIELD = "Field selector for services, e.g. metadata.name=web."
_H_SERVICE = (
    "Forward only these services: NAME, NAMESPACE/NAME or a glob (web, shop/api, 'api-*'); "
    "repeatable and comma-separated; ANDed with -l/-f."
)
_H_EXCLUDE = "Do not forward these services (same forms as --service, e.g. 'db-*')."
_H_DOMAIN = "Also write name.DOMAIN for the services of the first namespace."
_H_MAP = "Listen on LOCAL for service port SVC (e.g. 80:8080); repeatable."
_H_RESERVE = "Give service NAME this loopback IP (e.g. web:127.1.27.99); repeatable."
_H_FWDCONF = "YAML with baseUnreservedIP and serviceConfigurations: [{name, ip}]."
_H_TIMEOUT = (
    "How long a connection to a service with no ready pod waits for one before it is closed; "
    "a service still without a ready pod after this long gets a warning."
)
_H_HOSTS = "Hosts file to write (every code path, cleanup included, uses it)."
_H_BACKUP = "Replace ~/hosts.original with the current hosts file before changing it."
_H_PURGE = "Remove hosts lines left by earlier kubefwd runs (those of dead runs go anyway)."
_H_RESYNC = "Re-list everything this often, as a safety net under the watches (e.g. 5m)."
_H_RETRY = (
    "Longest wait between retries of a failed list or watch (retries start after 1s and "
    "double up to this)."
)
_H_AUTO = (
    "Keep a tunnel open to every forwarded pod and re-open it as soon as it dies (backing "
    "off 1s to 5m), instead of opening it on the next connection. Default: on with --tui "
    "(and in idle mode), off otherwise."
)
_H_SHADOW = (
    "Write a service's name even when a line kubefwd does not own already defines it (names "
    "of this machine, such as localhost, are never written)."
)
_H_TRANSPORT = "Tunnel protocol: SPDY in a WebSocket, plain SPDY, WebSocket v4, or auto."
_H_READY_FILE = (
    "Write this file (atomically) once every service answers; removed when kubefwd stops."
)
_H_WAIT_FOR = (
    "With -- CMD or --ready-file: wait only for these services (NAME, NAMESPACE/NAME or a "
    "glob); repeatable and comma-separated (default: every forwarded service)."
)
_H_POD_POLICY = (
    "Which ready pod of a service takes each new connection: spread (the one with the fewest "
    "open connections, ties in turn) or first (the oldest)."
)
_H_TUI = ("A live full-screen view of every forward (keys: ? in the view); turns -a on. "
          "Needs a terminal.")
_H_THEME = "Colours of --tui: auto (reads on any background), dark or light; or $KUBEFWD_THEME."
_H_API = ("Serve the local REST API (127.2.27.1:80, named kubefwd.internal, as root; "
          "otherwise 127.0.0.1 on a free port); on by itself in idle mode (no -n, no -A).")
_H_API_ADDR = "Where the API listens instead: HOST:PORT on a loopback address (implies --api)."
_H_NO_WAIT = ("With -- CMD or --ready-file: do not wait for pods to answer, only for "
              "kubefwd's own start-up.")
_H_COMMAND_AS_ROOT = ("Under sudo, run -- CMD as root; by default it runs as the user who "
                      "ran sudo (SUDO_USER), with their HOME.")


def _opt(short: str, long: str, metavar: str, help: str, **more: Any) -> Any:
    names = [long, short] if short else [long]
    return typer.Option(*names, metavar=metavar, help=help, **more)


def _complete_context(ctx: Any, incomplete: str) -> list[str]:
    from kubefwd.cluster.completion import complete_context

    return complete_context(ctx, incomplete)


def _complete_namespace(ctx: Any, incomplete: str) -> list[str]:
    from kubefwd.cluster.completion import complete_namespace

    return complete_namespace(ctx, incomplete)


def _flag(short: str, long: str, help: str) -> Any:
    # An empty metavar: a flag takes no value, so the help shows none (not "<bool>").
    names = [long, short] if short else [long]
    return typer.Option(*names, metavar="", help=help)


class NoHelpMetavar:
    """Mixin for a command or group whose ``-h/--help`` line shows no value type (typer would
    print ``<bool>``)."""

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)  # type: ignore[misc]
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option


class HelpCommand(NoHelpMetavar, TyperCommand):
    """A command whose ``-h/--help`` line shows no value type."""


class SvcCommand(HelpCommand):
    """``svc``: everything after the first ``--`` is the command to run with the forwards
    up (``ctx.meta[COMMAND_META]``), never parsed as kubefwd's own arguments."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if "--" in args:
            at = args.index("--")
            ctx.meta[COMMAND_META] = args[at + 1:]
            if not args[at + 1:]:
                raise UsageError("--: no command after it (e.g. kubefwd svc -n NS -- make test)")
            args = args[:at]
        return super().parse_args(ctx, args)


COMMAND_META = "kubefwd.command"


def svc(
    ctx: typer.Context,
    kubeconfig: Annotated[str | None, _opt("-c", "--kubeconfig", "FILE", _H_KUBECONFIG)] = None,
    context: Annotated[list[str] | None, _opt("-x", "--context", "CTX", _H_CONTEXT,
                                              autocompletion=_complete_context)] = None,
    namespace: Annotated[list[str] | None, _opt("-n", "--namespace", "NS", _H_NS,
                                                autocompletion=_complete_namespace)] = None,
    all_namespaces: Annotated[bool, _flag("-A", "--all-namespaces", _H_ALL)] = False,
    wait_namespaces: Annotated[bool, _flag("", "--wait-namespaces", _H_WAIT_NS)] = False,
    selector: Annotated[str, _opt("-l", "--selector", "SELECTOR", _H_SELECTOR)] = "",
    field_selector: Annotated[str, _opt("-f", "--field-selector", "SELECTOR", _H_FIELD)] = "",
    service: Annotated[list[str] | None, _opt("", "--service", "NAME", _H_SERVICE)] = None,
    exclude: Annotated[list[str] | None, _opt("", "--exclude", "NAME", _H_EXCLUDE)] = None,
    domain: Annotated[str | None, _opt("-d", "--domain", "DOMAIN", _H_DOMAIN)] = None,
    mapping: Annotated[list[str] | None, _opt("-m", "--mapping", "SVC:LOCAL", _H_MAP)] = None,
    reserve: Annotated[list[str] | None, _opt("-r", "--reserve", "NAME:IP", _H_RESERVE)] = None,
    fwd_conf: Annotated[Path | None, _opt("-z", "--fwd-conf", "FILE", _H_FWDCONF)] = None,
    timeout: Annotated[str, _opt("-t", "--timeout", "SECONDS", _H_TIMEOUT)] = "300",
    hosts_path: Annotated[Path, _opt("", "--hosts-path", "FILE", _H_HOSTS)] = _ETC_HOSTS,
    refresh_backup: Annotated[bool, _flag("-b", "--refresh-backup", _H_BACKUP)] = False,
    purge_stale_ips: Annotated[bool, _flag("-p", "--purge-stale-ips", _H_PURGE)] = False,
    resync_interval: Annotated[str, _opt("", "--resync-interval", "DURATION", _H_RESYNC)] = "5m",
    retry_interval: Annotated[str, _opt("", "--retry-interval", "DURATION", _H_RETRY)] = "10s",
    auto_reconnect: Annotated[bool | None, typer.Option(
        "--auto-reconnect/--no-auto-reconnect", "-a", metavar="", help=_H_AUTO)] = None,
    verbose: Annotated[bool, _flag("-v", "--verbose", "Log every event in detail.")] = False,
    transport: Annotated[str, _opt("", "--transport", "|".join(TRANSPORTS), _H_TRANSPORT)] = "auto",
    allow_shadowing: Annotated[bool, _flag("", "--allow-shadowing", _H_SHADOW)] = False,
    output: Annotated[str, _opt("-o", "--output", "|".join(OUTPUTS), _H_OUTPUT)] = "text",
    ready_file: Annotated[Path | None, _opt("", "--ready-file", "FILE", _H_READY_FILE)] = None,
    wait_for: Annotated[list[str] | None, _opt("", "--wait-for", "NAME", _H_WAIT_FOR)] = None,
    no_wait: Annotated[bool, _flag("", "--no-wait", _H_NO_WAIT)] = False,
    command_as_root: Annotated[bool, _flag("", "--command-as-root", _H_COMMAND_AS_ROOT)] = False,
    pod_policy: Annotated[str, _opt("", "--pod-policy", "spread|first", _H_POD_POLICY)] = "spread",
    tui: Annotated[bool, _flag("", "--tui", _H_TUI)] = False,
    theme: Annotated[str | None, _opt("", "--theme", "auto|dark|light", _H_THEME)] = None,
    api: Annotated[bool, _flag("", "--api", _H_API)] = False,
    api_addr: Annotated[str | None, _opt("", "--api-addr", "HOST:PORT", _H_API_ADDR)] = None,
) -> int:
    """Forward the services of the chosen namespaces; names go to the hosts file."""
    if output not in OUTPUTS:
        raise UsageError(f"-o/--output '{output}': choose one of {', '.join(OUTPUTS)}")
    theme_name = check_tui(tui, theme, output=output,
                           command=bool(ctx.meta.get(COMMAND_META)))
    options = build_options(
        kubeconfig=kubeconfig, context=context, namespace=namespace,
        all_namespaces=all_namespaces, selector=selector, field_selector=field_selector,
        service=service, exclude=exclude, domain=domain, mapping=mapping, reserve=reserve,
        fwd_conf=fwd_conf, timeout=timeout,
        hosts_path=hosts_path, refresh_backup=refresh_backup, purge_stale_ips=purge_stale_ips,
        resync_interval=resync_interval, retry_interval=retry_interval,
        auto_reconnect=auto_reconnect_default(auto_reconnect, tui), verbose=verbose,
        transport=transport,
        wait_namespaces=wait_namespaces, allow_shadowing=allow_shadowing,
        command=list(ctx.meta.get(COMMAND_META) or []),
        ready_file=ready_file, wait_for=wait_for, no_wait=no_wait, pod_policy=pod_policy,
        command_as_root=command_as_root, api=api, api_addr=api_addr,
    )
    # Look for HTTP requests only when something shows them.
    options.detect_http = bool(options.api or tui or output == "json")
    if theme_name is not None:
        return run_with_tui(options, theme_name)
    # Imported once every value is checked: a bad flag is reported without this cost.
    from kubefwd.app.program import Kubefwd
    from kubefwd.events.bus import EventBus
    from kubefwd.ui.jsonlines import JsonLines
    from kubefwd.ui.text import TextLog

    mark("options checked, app imported")

    bus = EventBus()
    app = Kubefwd(options, bus=bus)
    log: JsonLines | TextLog
    if output == "json":
        log = JsonLines(bus, sys.stdout)
    else:
        log = TextLog(bus, sys.stdout, verbose=verbose, metrics=app.metrics.snapshot)
    log.start()
    server = None
    try:
        if options.api:
            from kubefwd.commands.apiserve import start_api

            server = start_api(app, sys.stderr if output == "json" else sys.stdout)
        return app.run()
    finally:
        if server is not None:
            server.stop()
        log.finish()
        bus.close()


TUI_ENV_CI = "CI"


def auto_reconnect_default(flag: bool | None, tui: bool) -> bool:
    """-a/--auto-reconnect or --no-auto-reconnect as given; unsaid: on with --tui (the view
    shows forwards coming back), off otherwise."""
    return tui if flag is None else flag


def has_terminal() -> bool:
    """Whether stdin and stdout are a terminal and this is not a CI job."""
    if os.environ.get(TUI_ENV_CI, "").strip().lower() in ("true", "1", "yes"):
        return False
    return sys.stdin.isatty() and sys.stdout.isatty()


def check_tui(tui: bool, theme: str | None, *, output: str, command: bool) -> str | None:
    """The theme of the TUI when ``--tui`` was given (None without it); UsageError for a
    combination that cannot work."""
    if not tui:
        if theme is not None:
            raise UsageError("--theme needs --tui")
        return None
    if output != "text":
        raise UsageError("--tui and -o/--output cannot be used together")
    if command:
        raise UsageError("--tui and -- CMD cannot be used together")
    from kubefwd.ui.themes import theme_name

    try:
        name = theme_name(theme)
    except ValueError as exc:
        raise UsageError(f"--theme: {exc}") from None
    if not has_terminal():
        raise UsageError("--tui needs a terminal (stdin and stdout are not one, or CI is set); "
                         "run without --tui for the plain log")
    return name


def run_with_tui(options: Any, theme: str) -> int:
    """``kubefwd svc --tui``: the plain log during start-up, the view once ready, the plain
    log again for the shutdown."""
    from kubefwd.app.program import Kubefwd
    from kubefwd.events.bus import EventBus
    from kubefwd.ui.text import TextLog
    from kubefwd.ui.tui.app import Tui

    bus = EventBus()
    app = Kubefwd(options, bus=bus)
    logs = [TextLog(bus, sys.stdout, verbose=options.verbose)]
    # Subscribes now: the log pane has the start-up lines too.
    view = Tui(app, theme=theme, freeze_gc=True)

    def front() -> None:
        logs[0].finish()
        try:
            view.run()
        finally:
            after = TextLog(bus, sys.stdout, verbose=options.verbose)
            after.start()
            logs.append(after)

    logs[0].start()
    server = None
    try:
        if options.api:  # idle mode, or --api: the browser and the API both add forwards
            from kubefwd.commands.apiserve import start_api

            server = start_api(app, sys.stdout)
        return app.run(front)
    finally:
        if server is not None:
            server.stop()
        view.view.close()
        for log in logs:
            log.finish()
        bus.close()


def build_options(
    *,
    kubeconfig: str | None = None,
    context: list[str] | None = None,
    namespace: list[str] | None = None,
    all_namespaces: bool = False,
    selector: str = "",
    field_selector: str = "",
    service: list[str] | None = None,
    exclude: list[str] | None = None,
    domain: str | None = None,
    mapping: list[str] | None = None,
    reserve: list[str] | None = None,
    fwd_conf: Path | None = None,
    timeout: str = "300",
    hosts_path: Path = Path("/etc/hosts"),
    refresh_backup: bool = False,
    purge_stale_ips: bool = False,
    resync_interval: str = "5m",
    retry_interval: str = "10s",
    auto_reconnect: bool = False,
    verbose: bool = False,
    transport: str = "auto",
    wait_namespaces: bool = False,
    allow_shadowing: bool = False,
    command: list[str] | None = None,
    ready_file: Path | None = None,
    wait_for: list[str] | None = None,
    no_wait: bool = False,
    pod_policy: str = "spread",
    command_as_root: bool = False,
    api: bool = False,
    api_addr: str | None = None,
) -> Any:
    """Validate the command line into ``SvcOptions``; raises ``UsageError`` (exit 2).

    Every value is checked before the rest of kubefwd is imported, so a bad one is reported
    in the time it takes to start Python and parse the flags."""
    namespaces = [check_namespace(ns) for ns in split_list(namespace)]
    if all_namespaces and namespaces:
        raise UsageError("-A/--all-namespaces and -n/--namespace cannot be used together")
    if wait_namespaces and not namespaces:
        raise UsageError("--wait-namespaces needs -n/--namespace (-A already follows "
                         "namespaces as they come and go)")
    from kubefwd.serve.routing import POD_POLICIES

    if pod_policy not in POD_POLICIES:
        raise UsageError(f"--pod-policy: '{pod_policy}' is not one of {', '.join(POD_POLICIES)}")
    if transport not in TRANSPORTS:
        raise UsageError(f"--transport: '{transport}' is not one of {', '.join(TRANSPORTS)}")
    command = list(command or [])
    waits = split_list(wait_for)
    if waits and no_wait:
        raise UsageError("--wait-for and --no-wait cannot be used together")
    if (waits or no_wait) and not command and ready_file is None:
        raise UsageError("--wait-for and --no-wait need -- CMD or --ready-file")
    if command_as_root and not command:
        raise UsageError("--command-as-root needs -- CMD")
    for name in waits:
        if name.count("/") > 1 or not name.strip("/"):
            raise UsageError(f"--wait-for: '{name}' is not NAME or NAMESPACE/NAME")
    if command:
        from kubefwd.app.runcmd import command_not_found

        problem = command_not_found(command)
        if problem is not None:
            raise UsageError(f"-- CMD: {problem}")
    if ready_file is not None:
        ready_file = check_ready_file(ready_file)
    idle = not namespaces and not all_namespaces
    parsed_api_addr = None
    if api_addr is not None:
        from kubefwd.api.server import parse_api_addr

        parsed_api_addr = parse_api_addr(api_addr)
    if idle:  # nothing forwarded at start: the API adds what is asked for, and keeps it up
        api = True
        auto_reconnect = True
    reservations, base_ip = build_reservations(split_list(reserve), fwd_conf)
    if kubeconfig is not None and not kubeconfig.strip():
        raise UsageError("-c/--kubeconfig: empty file name")
    checked: dict[str, Any] = dict(
        kubeconfig=kubeconfig,
        contexts=split_list(context),
        namespaces=namespaces,
        all_namespaces=all_namespaces,
        label_selector=check_label_selector(selector),
        field_selector=check_field_selector(field_selector),
        services=parse_patterns(split_list(service), "--service"),
        exclude=parse_patterns(split_list(exclude), "--exclude"),
        domain=check_domain(domain),
        mappings=parse_mappings(mapping),
        reservations=reservations,
        base_ip=base_ip,
        timeout=parse_duration(timeout, "-t/--timeout"),
        hosts_path=check_hosts_path(hosts_path),
        refresh_backup=refresh_backup,
        purge_stale=purge_stale_ips,
        resync_interval=parse_duration(resync_interval, "--resync-interval"),
        retry_interval=parse_duration(retry_interval, "--retry-interval"),
        auto_reconnect=auto_reconnect,
        verbose=verbose,
        transport=transport,
        wait_namespaces=wait_namespaces,
        allow_shadowing=allow_shadowing,
        hosts_write_timeout=parse_duration(
            os.environ.get(HOSTS_WRITE_TIMEOUT_ENV, "30"), HOSTS_WRITE_TIMEOUT_ENV
        ),
        command=command,
        ready_file=ready_file,
        wait_for=waits,
        no_wait=no_wait,
        command_as_root=command_as_root,
        pod_policy=pod_policy,
        idle=idle,
        api=api or parsed_api_addr is not None,
        api_addr=parsed_api_addr,
    )
    from kubefwd.app.program import SvcOptions

    return SvcOptions(**checked)


def check_ready_file(path: Path) -> Path:
    """A ready file goes into an existing directory and replaces nothing but a regular file
    (it is removed at exit)."""
    if not path.parent.is_dir():
        raise UsageError(f"--ready-file: directory {path.parent} does not exist")
    if path.exists() and not path.is_file():
        raise UsageError(f"--ready-file: {path} exists and is not a regular file")
    return path


def register(app: typer.Typer) -> None:
    """Add ``svc`` and its hidden aliases ``services`` and ``svcs`` to the ``kubefwd`` app."""
    settings = {"help_option_names": ["-h", "--help"]}
    for name in ("svc", "services", "svcs"):
        app.command(
            name, cls=SvcCommand, help=HELP, epilog=EPILOG, context_settings=settings,
            hidden=name != "svc",
        )(svc)
