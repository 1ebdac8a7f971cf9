"""`repro` command line: one subcommand per module in repro/commands/.

Every failure the user can cause ends as one line on stderr and exit code 2 (bad input) or 1
(a failed check); never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from repro.errors import ReproError

#: Subcommands, in the order `repro --help` lists them. Each module defines
#: HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = ("list", "show", "plan", "lint", "run", "submit", "golden", "equivalence", "parse", "verify")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + exits 2; keep it to one line
        raise ReproError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="repro", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        module = importlib.import_module(f"repro.commands.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args._run(args) or 0)
    except ReproError as exc:
        print(f"repro: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("repro: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
