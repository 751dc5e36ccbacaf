"""The CLI's one error path: every failure a user can cause becomes exactly one ``error: ...`` line on stderr and exit
code 2, with no traceback (``--debug`` or ``DELTAMERGE_DEBUG=1`` prints it before the line).

Mapped here: DeltaMergeError (raised for bad input everywhere in the library), pydantic ValidationError (named by the
flag it came from), OSError (named by its file), click's usage errors (bad or missing flags), and — as a last
resort — anything else, reported as an internal error with the hint to re-run with --debug.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
import traceback
from typing import Any, Iterable, Sequence

import typer
from pydantic import ValidationError
from typer.core import TyperGroup

from deltamerge.errors import DeltaMergeError, one_line, validation_message

EXIT_CODE = 2
DEBUG_ENV = "DELTAMERGE_DEBUG"
# click itself, or the copy typer ≥ 0.2x vendors as typer._click (same submodules and classes)
_click_root = typer.BadParameter.__module__.rsplit(".", 1)[0]
_exceptions = importlib.import_module(f"{_click_root}.exceptions")
_globals = importlib.import_module(f"{_click_root}.globals")
_state = {"debug": False}


def debug_enabled() -> bool:
    """``--debug`` was given, or ``DELTAMERGE_DEBUG`` is set to something other than 0/false/no."""
    env = os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return env or _state["debug"]


def set_debug(value: bool) -> None:
    _state["debug"] = value


def _flags_of_context() -> dict[str, str]:
    """Field name -> ``--flag`` for the options of the command being run (typer derives flags from names)."""
    ctx = _globals.get_current_context(silent=True)
    if ctx is None:
        return {}
    return {p.name: max(p.opts, key=len) for p in ctx.command.params
            if getattr(p, "param_type_name", "") == "option" and p.name and p.opts}


def describe(exc: BaseException) -> str:
    """The one-line message for an exception raised by a command."""
    if isinstance(exc, DeltaMergeError):
        return one_line(str(exc))
    if isinstance(exc, ValidationError):
        return "invalid value for " + validation_message(exc, _flags_of_context())
    if isinstance(exc, OSError):
        from deltamerge.safeio import io_error

        target = exc.filename or "a file"
        return one_line(str(io_error(exc, target, "use")))
    if isinstance(exc, _exceptions.ClickException):
        return one_line(exc.format_message()) + _usage_hint(exc)
    if isinstance(exc, RecursionError):
        return "input nested too deeply to read (a crafted or corrupt file?)"
    return (f"internal error ({type(exc).__name__}: {one_line(str(exc))[:300]}); re-run with --debug for the "
            "traceback and report it")


def _usage_hint(exc: Exception) -> str:
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        return f" (see `{ctx.command_path} --help`)"
    return ""


def report(exc: BaseException) -> None:
    """Print the traceback (debug only) and the one ``error:`` line to stderr."""
    if debug_enabled():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    typer.secho(f"error: {describe(exc)}", fg=typer.colors.RED, err=True)


def finite(flag: str, value: float | None, low: float | None = None, high: float | None = None,
           low_open: bool = False) -> None:
    """Refuse a NaN/inf or out-of-range numeric flag: ``--alpha nan`` is an error, not a NaN result."""
    if value is None:
        return
    if not math.isfinite(value):
        raise DeltaMergeError(f"{flag} must be a finite number, not {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise DeltaMergeError(f"{flag} must be {'>' if low_open else '≥'} {low}, not {value}")
    if high is not None and value > high:
        raise DeltaMergeError(f"{flag} must be ≤ {high}, not {value}")


def choice(flag: str, value: str | None, allowed: Iterable[str]) -> None:
    allowed = list(allowed)
    if value is not None and value not in allowed:
        raise DeltaMergeError(f"{flag} must be one of {', '.join(allowed)}, not '{value}'")


def named_flags(exc: ValidationError) -> DeltaMergeError:
    """A ValidationError raised inside a command, as a DeltaMergeError naming the command's flags."""
    return DeltaMergeError("invalid value for " + validation_message(exc, _flags_of_context()))


class Interrupted(Exception):
    """Ctrl-C inside a command, carried past typer: its ``_main`` turns a KeyboardInterrupt into a silent
    ``Exit(130)`` (typer ≥ 0.2x) before :class:`ErrorGroup` could print what is kept."""


INTERRUPTED = "interrupted: finished artifacts are kept; re-run (finetune: --resume) to continue"


class ErrorGroup(TyperGroup):
    """The app's command group: runs a command with click's standalone handling switched off and reports whatever
    escapes (usage errors included) as one ``error:`` line with exit code 2; Ctrl-C prints what is kept and exits
    with 130."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as exc:  # re-raised as an Exception typer lets through (see Interrupted)
            raise Interrupted() from exc

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        set_debug(False)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var, standalone_mode=False,
                              **extra)
        except _exceptions.NoArgsIsHelpError as exc:  # bare `deltamerge` / `deltamerge assets`: the help text
            exc.show()
            rv = exc.exit_code
        except (typer.Abort, EOFError):
            typer.echo("aborted", err=True)
            rv = 1
        except (KeyboardInterrupt, Interrupted):
            typer.echo(INTERRUPTED, err=True)
            rv = 130
        except Exception as exc:  # noqa: BLE001 - the one place every failure is turned into one line
            if not standalone_mode:
                raise
            report(exc)
            rv = EXIT_CODE
        if not standalone_mode:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


def hold(manager: Any) -> Any:
    """Enter a context manager (e.g. an output lock) for the rest of the running command: it is exited when the
    command ends, however it ends — without re-indenting the command's body under a ``with``."""
    ctx = _globals.get_current_context(silent=True)
    if ctx is None:  # called outside a CLI command: the caller's process ends the lock's life
        return manager.__enter__()
    return ctx.with_resource(manager)
