"""The ``kubefwd`` command line: one place that turns errors into a line and an exit code.

Subcommands live in their own modules and are registered here. A bare ``kubefwd`` (or one
that starts with an option) means ``kubefwd svc``, as in the original tool.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Sequence

import typer
from typer.core import TyperGroup

from kubefwd import __version__
from kubefwd.commands.svc import NoHelpMetavar
from kubefwd.errors import ExitCode, KubefwdError


class _Group(NoHelpMetavar, TyperGroup):
    """The top-level group; its ``-h/--help`` line shows no value type."""


app = typer.Typer(
    name="kubefwd",
    help=(
        "Forward every Kubernetes Service of the chosen namespaces to this machine: each "
        "service gets its own loopback IP, its names go into the hosts file, and "
        "name:port reaches a pod through the Kubernetes API.\n\n"
        "Run 'kubefwd svc --help' for the main command; 'kubefwd' alone means 'kubefwd svc'."
    ),
    no_args_is_help=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    cls=_Group,
)

# Options that belong to the program, not to a subcommand.
_GLOBAL_FLAGS = {"--traceback"}
_TOP_LEVEL_OPTIONS = {"-h", "--help", "--version", "--install-completion",
                      "--show-completion"}


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", metavar="", help="Print the version and exit."
    ),
    show_traceback: bool = typer.Option(
        False, "--traceback", metavar="",
        help="On an error, print the full traceback, not just one line.",
    ),
) -> None:
    # Both are handled in main() before the command line is parsed; they are declared here
    # so that 'kubefwd --help' lists them.
    del version, show_traceback


@app.command("version")
def version_command() -> None:
    """Print the kubefwd version."""
    typer.echo(f"kubefwd {__version__}")


def _register_subcommands() -> None:
    from kubefwd.commands.sim import sim_command
    from kubefwd.commands.svc import HelpCommand

    app.command(
        "sim",
        cls=HelpCommand,
        help=sim_command.__doc__,
        context_settings={"help_option_names": ["-h", "--help"]},
    )(sim_command)

    from kubefwd.commands.clean import clean_command
    from kubefwd.commands.demo import demo_command
    from kubefwd.commands.status import status_command

    for name, fn in (("status", status_command), ("clean", clean_command),
                     ("demo", demo_command)):
        app.command(name, cls=HelpCommand, help=fn.__doc__,
                    context_settings={"help_option_names": ["-h", "--help"]})(fn)

    from kubefwd.commands.mcp import mcp_command

    app.command("mcp", cls=HelpCommand, help=mcp_command.__doc__,
                context_settings={"help_option_names": ["-h", "--help"]})(mcp_command)

    from kubefwd.commands.svc import register

    register(app)


def _split_global(argv: list[str]) -> tuple[list[str], bool]:
    # Only before ``--``: what follows is a command kubefwd runs, with its own flags.
    own, tail = (argv[:argv.index("--")], argv[argv.index("--"):]) if "--" in argv \
        else (argv, [])
    show_traceback = "--traceback" in own
    return [a for a in own if a not in _GLOBAL_FLAGS] + tail, show_traceback


def _default_to_svc(argv: list[str], command_names: set[str]) -> list[str]:
    if not argv:
        return ["svc"] if "svc" in command_names else argv
    first = argv[0]
    if first in command_names or first in _TOP_LEVEL_OPTIONS:
        return argv
    if first.startswith("-") and "svc" in command_names:
        return ["svc", *argv]
    return argv


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``kubefwd`` console script."""
    raw = list(sys.argv[1:] if argv is None else argv)
    if raw[:1] == ["--version"]:
        typer.echo(f"kubefwd {__version__}")
        sys.exit(ExitCode.OK)
    args, show_traceback = _split_global(raw)
    _register_subcommands()
    command = typer.main.get_command(app)
    names = set(getattr(command, "commands", {}))
    names |= {"services", "svcs"} if "svc" in names else set()
    args = _default_to_svc(args, names)
    try:
        result = command.main(args=args, prog_name="kubefwd", standalone_mode=False)
    except KubefwdError as exc:
        if show_traceback:
            traceback.print_exc()
        typer.echo(f"kubefwd: error: {exc.message}", err=True)
        sys.exit(int(exc.exit_code))
    except typer.Abort:
        typer.echo("kubefwd: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:
        # Usage errors: one line, plus a hint where to read more.
        message = exc.format_message()
        typer.echo(f"kubefwd: error: {message}", err=True)
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            typer.echo(f"Try '{ctx.command_path} --help' for help.", err=True)
        sys.exit(ExitCode.USAGE)
    except KeyboardInterrupt:
        typer.echo("kubefwd: interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except Exception as exc:  # the last resort: one line unless --traceback
        if show_traceback:
            traceback.print_exc()
        else:
            logging.getLogger("kubefwd").debug("unexpected error", exc_info=True)
        typer.echo(
            f"kubefwd: unexpected error: {type(exc).__name__}: {exc} "
            "(run with --traceback for details)",
            err=True,
        )
        sys.exit(ExitCode.ERROR)
    sys.exit(int(result) if isinstance(result, int) else ExitCode.OK)
