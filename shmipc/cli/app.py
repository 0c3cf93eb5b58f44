"""The ``shmipc`` command group, its exit codes, and the console every command prints to.

Exit codes (every command): 0 ok; 1 failure (a failed demo or benchmark row, a corrupt or
foreign segment, a removal that failed); 2 usage (a bad option or name); 3 not found or
permission denied. Ctrl-C ends ``top`` with 0 and anything else with 130.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click
from rich.console import Console

from .._version import __version__

__all__ = [
    "EXIT_FAILURE",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "Failure",
    "NotFound",
    "app",
    "console",
    "err_console",
    "main",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3

EXIT_CODES_HELP = "Exit codes: 0 ok, 1 failure, 2 usage error, 3 not found or permission denied."


class Failure(click.ClickException):
    """A command failed (exit 1) with a message for stderr."""

    exit_code = EXIT_FAILURE


class NotFound(click.ClickException):
    """What was asked for does not exist or may not be read (exit 3)."""

    exit_code = EXIT_NOT_FOUND


def console() -> Console:
    """The console for results (stdout). Not a terminal: no colour, and wide enough that a
    segment's name is never cut or folded (scripts grep for it)."""
    if sys.stdout.isatty():
        return Console(highlight=False, emoji=False)
    # Tables take the width they need, not the console's: a wide console costs nothing.
    return Console(highlight=False, emoji=False, width=1000, color_system=None, soft_wrap=False)


def err_console() -> Console:
    """The console for progress bars and warnings (stderr)."""
    return Console(stderr=True, highlight=False, emoji=False)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(
    context_settings=CONTEXT,
    epilog="\b\nExamples:\n  shmipc ls\n  shmipc inspect shmipc_q_1a2b\n  shmipc top\n"
    "  shmipc gc --yes\n  shmipc demo\n  shmipc bench --quick\n\n" + EXIT_CODES_HELP,
)
@click.version_option(__version__, "-V", "--version", prog_name="shmipc")
def app() -> None:
    """See, inspect and clean what shmipc keeps in /dev/shm, and measure this machine.

    /dev/shm is shared with every user and container, so nothing in it is trusted: entries
    are never followed (symlinks) or blocked on (FIFOs), names are escaped, and looking
    never writes to a segment.
    """


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return its exit code."""
    from . import commands, jobs, live  # noqa: F401 - they register their commands

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app.main(args=args, prog_name="shmipc", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        exc.show()
        return EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("interrupted", err=True)
        return 130
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except BrokenPipeError:  # `shmipc ls | head`
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return EXIT_OK
    return result if isinstance(result, int) else EXIT_OK
