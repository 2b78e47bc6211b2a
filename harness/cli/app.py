"""What every command shares: the consoles, ``say`` / ``fail``, and the one error boundary (``BoundedTyper``):
a ``UserError`` prints one plain line and exits 2, Ctrl-C says how to resume and exits 130."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from zoo.errors import UserError

console = Console()
if not console.is_terminal:  # logs and CI: wide enough that the result table is not folded
    console = Console(width=200)
err_console = Console(stderr=True)


def fail(message: str, code: int = 2) -> None:
    err_console.print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """The one error boundary: user mistakes become one line (exit 2); an interrupt keeps what was saved."""

    @functools.wraps(command)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print(Text("interrupted: finished samples are saved; rerun the same command to resume",
                                   style="yellow"))
            raise typer.Exit(130) from None

    return bounded


class BoundedTyper(typer.Typer):
    """A ``Typer`` whose every command, whoever registers it, runs inside ``user_errors``."""

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        register = super().command(*args, **kwargs)
        return lambda fn: register(user_errors(fn))


def say(message: str, style: str = "dim") -> None:
    """A status line whose text (paths included) is printed as is, never parsed as markup."""
    console.print(Text(message, style=style), highlight=False)
