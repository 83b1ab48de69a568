"""``workbench``: run a subcommand; a user's mistake ends in one line on stderr and status 2, never a traceback.

Exit status: 0 on success; 2 on bad input, with one line naming the flag and what it accepts; 1 when the
command could not do its work (generation failed); 130 when interrupted.
"""

from __future__ import annotations

import sys

from ..loading import ModelSourceError
from ..recipe import RecipeError
from .parser import PROG, Failed, UsageError, build_parser


def main(argv: list[str] | None = None) -> int:
    """Run the ``workbench`` command.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 success, 1 the command failed, 2 bad input, 130 interrupted.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv  # to repeat the command line in hints (resuming a student)
        from .commands import COMMANDS  # the model libraries load only once the command line is good

        return COMMANDS[args.command](args)
    except Failed as exc:
        return fail(str(exc), exc.status)
    except UsageError as exc:
        return fail(str(exc).removeprefix("argument "))  # "argument --dtype: invalid choice: ..."
    except RecipeError as exc:
        return fail(f"--{exc.field}: {exc}")
    except ModelSourceError as exc:
        return fail(f"--model: {exc}")
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


def fail(message: str, status: int = 2) -> int:
    print(f"{PROG}: error: {' '.join(message.split())}", file=sys.stderr)
    return status
