"""What the office tools' entry points share: one ``main`` shape mapping errors to exit
codes and messages, with a traceback only under ``--debug``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from sekisho.errors import SekishoError

EXIT_REFUSED = 1
EXIT_UNUSABLE = 2


class Fail(Exception):
    """A command's own refusal: the message and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _exit(prog: str, message: str, code: int) -> NoReturn:
    click.echo(f"{prog}: {message}", err=True)
    sys.exit(code)


def run(cli: click.Group, prog: str, argv: Sequence[str] | None,
        codes: Sequence[tuple[type[SekishoError], int]] = ()) -> Any:
    """Run ``cli``; Sekisho errors exit with the code ``codes`` gives their class (else 1)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return cli.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_UNUSABLE)
    except click.exceptions.Abort:
        _exit(prog, "cancelled; nothing changed.", EXIT_UNUSABLE)
    except Fail as exc:
        _exit(prog, str(exc), exc.code)
    except SekishoError as exc:
        code = next((c for kind, c in codes if isinstance(exc, kind)), EXIT_REFUSED)
        _exit(prog, exc.diagnostics(), code)
    except BrokenPipeError:
        sys.exit(0)
    except Exception:
        if "--debug" in args:
            raise
        _exit(prog, "unexpected error (run again with --debug for details).", EXIT_UNUSABLE)
