"""Terminal output. Plain lines go straight to stderr; rich (spinners, build progress) is imported only when used,
so a warm run pays nothing for it."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.status import Status

_ANSI = {"green": "32", "red": "31", "dim": "2", "yellow": "33"}


_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def strip_escapes(line: str) -> str:
    """A line without terminal escape sequences (colours, cursor moves) that a program printed."""
    return _ESCAPE.sub("", line) if "\x1b" in line else line


def plain() -> bool:
    """No escape codes: stderr is not a terminal, or NO_COLOR is set (https://no-color.org)."""
    return not sys.stderr.isatty() or bool(os.environ.get("NO_COLOR"))


def say(text: str, style: str | None = None, prefix: str = "") -> None:
    """One line on stderr; `style` colours `prefix` (or the whole line) on a terminal."""
    head = prefix or text
    if style and not plain():
        head = f"\033[{_ANSI[style]}m{head}\033[0m"
    sys.stderr.write((head + text if prefix else head) + "\n")
    sys.stderr.flush()


def error(message: str) -> None:
    """`error: MESSAGE`, the one shape of every error itwin-run reports; a file under the current directory that
    the message starts with is named relative to it."""
    here = os.getcwd() + os.sep
    say(f" {message[len(here):] if message.startswith(here) else message}", "red", prefix="error:")


@functools.cache
def console() -> Console:
    from rich.console import Console

    # no live display (spinners, cursor moves) where plain() says no escape codes
    return Console(stderr=True, soft_wrap=True, force_terminal=False if plain() else None,
                   no_color=bool(os.environ.get("NO_COLOR")))


_SHOWN: list[Status] = []  # the spinner on screen, if any


@contextlib.contextmanager
def status(text: str) -> Iterator[Status]:
    """A spinner saying `text` while the block runs. Inside another one (pulling wheels while making an overlay), the
    outer spinner says `text` and then its own again: rich before 14 allows one live display at a time."""
    if _SHOWN:
        outer = _SHOWN[-1]
        before = outer.status
        outer.update(text)
        try:
            yield outer
        finally:
            outer.update(before)
        return
    with console().status(text) as shown:
        _SHOWN.append(shown)
        try:
            yield shown
        finally:
            _SHOWN.pop()


def hung_up() -> None:
    """The terminal hung up (SIGHUP: the ssh session dropped): writes to it would fail, so stdout and stderr that
    went to it go to /dev/null from now on. Pipes and files stay as they are."""
    null = None
    for fd in (1, 2):
        try:
            if not os.isatty(fd):
                continue
            null = os.open(os.devnull, os.O_WRONLY) if null is None else null
            os.dup2(null, fd)
        except OSError:
            continue
    if null is not None:
        os.close(null)
