"""``workbench export --to DIR``: a recipe in the formats the usual servers load, with the command that serves each.

``add_parser(commands)`` adds the subcommand (the recipe flags, ``--to``, ``--format``, ``--force``, ``--name``,
``--host``, ``--json``); ``run(args)`` checks the flags and the folder before anything loads, builds what is
missing (the recipe's float model, its GGUF file), writes the folder and prints what is in it and the commands or,
with ``--json``, ``dir``, ``files`` (name -> bytes), ``format``, ``commands`` (name -> command line) and ``notes``.
Building the parser imports no model library.
"""

from __future__ import annotations

import argparse
import json

from .. import export  # no model library at import: those load when an export runs
from ..formats import human_bytes
from . import output
from .parser import _recipe_flags

NAME = "export"


def add_parser(commands) -> argparse.ArgumentParser:
    """Add ``export`` to the ``workbench`` subcommands (``commands`` is argparse's subparsers object)."""
    parser = commands.add_parser(
        NAME, parents=[_recipe_flags()], allow_abbrev=False,
        help="write the recipe as vLLM / TGI (transformers directory) and llama.cpp / Ollama (GGUF + Modelfile) "
             "load it, with the command that serves each and the bench line that measures it",
    )
    parser.add_argument("--to", required=True, metavar="DIR",
                        help="folder to write: new or empty (written under a temp name, then renamed into place)")
    parser.add_argument("--format", choices=export.FORMAT_CHOICES, default=None,
                        help="transformers (vLLM, TGI), gguf (llama.cpp, Ollama) or all (default: the format of "
                             "--runtime: transformers, or gguf under llama.cpp)")
    parser.add_argument("--force", action="store_true",
                        help="replace an earlier export in DIR (never a folder holding other files)")
    parser.add_argument("--name", default=None,
                        help="the model's name on the servers (default: from the recipe, e.g. "
                             "smollm2-135m-instruct-q4_0)")
    parser.add_argument("--host", default="127.0.0.1",
                        help=f"address the printed server commands listen on (default 127.0.0.1, this machine "
                             f"only; 0.0.0.0 to serve other machines); ports: "
                             f"{', '.join(f'{server} {port}' for server, port in export.PORTS.items())}")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser


def run(args: argparse.Namespace) -> int:
    """``workbench export``: check the flags and DIR, write the export, print it; 0 when written."""
    from .commands import check_buildable, recipe_from_args  # the model libraries load once the flags are good

    recipe = check_buildable(recipe_from_args(args))
    export.formats_for(recipe, args.format)
    export.check_name(args.name or export.default_name(recipe))
    export.check_host(args.host)
    export.check_target(args.to, args.force)
    result = export.export_recipe(recipe, args.to, args.format, force=args.force, name=args.name, host=args.host,
                                  trust_remote_code=args.trust_remote_code, on_stage=output.print_build_stage)
    data = result.to_dict()
    print(json.dumps(data, indent=2) if args.json else text(data))
    return 0


def text(data: dict) -> str:
    """The export as plain text: the folder and its files, the commands, the notes."""
    lines = [f"exported {data['recipe_key']} as {', '.join(data['formats'])} to {data['dir']}"]
    width = max(len(name) for name in data["files"])
    lines += [f"  {name:<{width}}  {human_bytes(size):>10}" for name, size in sorted(data["files"].items())]
    lines.append("serve it:")
    width = max(len(name) for name in data["commands"])
    lines += [f"  {name:<{width}}  {command}" for name, command in data["commands"].items()]
    lines += [f"note: {note}" for note in data["notes"]]
    lines.append(f"(the same, with every file explained: {data['dir']}/SERVE.md)")
    return "\n".join(lines)
