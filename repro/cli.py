"""`repro` command line: one subcommand per module in repro/commands/.

Every failure the user can cause ends as one line on stderr and exit code 2 (bad input) or 1
(a failed check); never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from repro import __version__
from repro.base.errors import EXIT_FAILED, ReproError
from repro.inputs import os_error

#: Set to 1 to see the traceback of an internal error instead of its one-line summary.
DEBUG_ENV = "REPRO_DEBUG"

#: Subcommands, in the order `repro --help` lists them. Each module defines
#: HELP, add_arguments(parser) and run(args) -> int.
COMMANDS = ("list", "show", "plan", "lint", "run", "submit", "golden", "equivalence", "mutate", "parse", "verify", "gpu-ci")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + exits 2; keep it to one line
        raise ReproError(f"{self.prog}: {message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="repro", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"repro {__version__}")
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
        code = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows up here, while we can still handle it
        return code
    except ReproError as exc:
        return _error(exc.message, exc.exit_code)
    except KeyboardInterrupt:
        print("repro: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _closed_stdout()
    except OSError as exc:  # a path the file system refuses (too long, no permission, a loop): bad input
        return _error(os_error(exc).message, 2)
    except Exception as exc:  # noqa: BLE001 - the contract is one line, never a traceback
        if os.environ.get(DEBUG_ENV):
            raise
        where = exc.__traceback__
        while where is not None and where.tb_next is not None:
            where = where.tb_next
        loc = f" at {os.path.basename(where.tb_frame.f_code.co_filename)}:{where.tb_lineno}" if where else ""
        return _error(f"internal error {type(exc).__name__}: {exc}{loc} (a bug in repro; rerun with "
                      f"{DEBUG_ENV}=1 for the traceback and report it)", EXIT_FAILED)


def _error(message: str, code: int) -> int:
    try:
        print(f"repro: error: {' '.join(str(message).split())}", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return code


def _closed_stdout() -> int:
    """`repro list | head -1`: the reader left; stop quietly (no 'Exception ignored' at exit)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
