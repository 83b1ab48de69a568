"""``workbench``: run a subcommand; every way it can end is one line on stderr and an exit status, never a traceback.

Exit status: 0 on success; 2 on bad input, with one line naming the flag and what it accepts; 1 when the
command could not do its work (generation failed, a full disk, a bug: ``WORKBENCH_DEBUG=1`` prints its
traceback); 130 when interrupted.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback

from ..loading import ModelSourceError
from ..recipe import RecipeError
from ..store import StoreError, os_error
from . import export as export_cli
from . import output
from . import predict as predict_cli
from . import profile as profile_cli
from . import serve as serve_cli
from . import sweep as sweep_cli
from .parser import PROG, Failed, UsageError, build_parser

# Subcommands in modules of their own: each gives add_parser(commands) and run(args).
MODULES = {"export": export_cli, "predict": predict_cli, "profile": profile_cli, "serve": serve_cli,
           "sweep": sweep_cli}

MAX_MESSAGE = 400  # characters of an unforeseen error's message shown (a prompt can be quoted in one)
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def main(argv: list[str] | None = None) -> int:
    """Run the ``workbench`` command.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 the command failed, 2 bad input, 130 interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    with output.session():  # the library's warnings as our lines, for this command only
        return _run(argv)


def _run(argv: list[str]) -> int:
    command = None
    try:
        args = build_parser(extra=[m.add_parser for m in MODULES.values()]).parse_args(argv)
        check_text(args)
        args.argv = argv  # to repeat the command line in hints (resuming a student)
        command = args.command
        if command in MODULES:
            return MODULES[command].run(args)
        from .commands import COMMANDS  # the model libraries load only once the command line is good

        return COMMANDS[command](args)
    except Failed as exc:
        return fail(str(exc), exc.status)
    except UsageError as exc:
        return fail(str(exc).removeprefix("argument "))  # "argument --dtype: invalid choice: ..."
    except RecipeError as exc:
        return fail(f"--{exc.field}: {exc}")
    except ModelSourceError as exc:
        return fail(f"--{getattr(exc, 'field', 'model')}: {exc}")
    except StoreError as exc:
        return fail(str(exc), 1)
    except BrokenPipeError:
        return closed_output()
    except OSError as exc:
        debug()
        return fail(os_message(exc), 1)
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failure nobody foresaw still ends in one line
        return unexpected(exc, command)


def fail(message: str, status: int = 2) -> int:
    print(f"{PROG}: error: {shorten(message, 3 * MAX_MESSAGE)}", file=sys.stderr)
    return status


def shorten(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_text(args) -> None:
    """Refuse a flag whose bytes are not UTF-8 (the shell passes them through as surrogate escapes)."""
    for dest, value in vars(args).items():
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise UsageError(f"--{dest.replace('_', '-')} is not valid UTF-8; give it as UTF-8 text") from None


def os_message(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which file, and what to do when the disk is full."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno in _FULL:
        return (f"the disk is full{where}: free some space, or set WORKBENCH_HOME to a folder on another disk, "
                "and run the command again")
    return f"{exc.strerror or exc}{where}"


def unexpected(exc: Exception, command: str | None) -> int:
    """The one line of an error no handler names: a context overflow, a full disk deep in a library, or a bug."""
    overflow = _context_overflow()
    if overflow is not None and isinstance(exc, overflow):
        return fail(overflow_message(exc, command))
    failed = os_error(exc)
    if failed is not None and failed.errno in _FULL:
        debug()
        return fail(os_message(failed), 1)
    debug()
    hint = "" if output.debugging() else f" (set {output.DEBUG_ENV}=1 to print the traceback)"
    message = shorten(str(exc))
    return fail(f"{type(exc).__name__}: {message}{hint}" if message else f"{type(exc).__name__}{hint}", 1)


def overflow_message(exc, command: str | None) -> str:
    """A ContextOverflow in the flags' words, naming the larger of the two: ``--prompt`` (only generate's prompt
    is the user's) or ``--max-new-tokens``."""
    try:
        prompt, budget, context = exc.prompt_tokens, exc.max_new_tokens, exc.context_length
    except AttributeError:
        return f"--prompt: {exc}"
    sizes = (f"the prompt is {prompt:,} tokens and --max-new-tokens is {budget:,}: together more than the model's "
             f"context of {context:,} tokens")
    if command == "generate" and budget <= prompt and budget < context:
        return f"--prompt: {sizes}; shorten the prompt to {context - budget:,} tokens or fewer, or lower the other"
    if prompt < context:
        return f"--max-new-tokens: {sizes}; set --max-new-tokens to {context - prompt:,} or less"
    return f"--prompt: {sizes}; shorten the prompt and lower --max-new-tokens"


def _context_overflow():
    """``ContextOverflow`` if the serving layer is loaded (importing it here would load torch for nothing)."""
    engine = sys.modules.get(f"{__package__.rsplit('.', 1)[0]}.serving.engine")
    return getattr(engine, "ContextOverflow", None)


def closed_output() -> int:
    """stdout was closed early (``| head``): say so once, and keep Python's exit flush from failing again."""
    try:
        stdout = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout)
        os.close(devnull)
    except (OSError, ValueError):  # stdout replaced by an object without a file (tests)
        pass
    return fail("the output was closed before the command finished", 1)


def debug() -> None:
    """With ``WORKBENCH_DEBUG=1``, the traceback of the exception being handled, before its one line."""
    if output.debugging():
        traceback.print_exc(file=sys.stderr)
