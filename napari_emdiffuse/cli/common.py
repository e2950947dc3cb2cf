"""What every ``emdiffuse`` subcommand shares: error reporting and the progress bar.

Every anticipated failure (bad input, bad model, bad option) ends as ONE line on stderr,
``emdiffuse: error: <what is wrong> — <what to do>``, and exit status 2; INPUT is only ever read.
"""
from __future__ import annotations

import contextlib
import functools
import sys
from typing import Callable, Iterator, NoReturn

from tqdm import tqdm

from ..tasks.base import positive_int

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130

__all__ = ["CliError", "fail", "one_line", "report_error", "handle_errors", "tqdm_progress", "positive_int",
           "EXIT_ERROR", "EXIT_INTERRUPTED"]


class CliError(Exception):
    """A problem the user can fix; its message is printed as one line."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def report_error(message: object) -> int:
    print(f"emdiffuse: error: {one_line(message)}", file=sys.stderr)
    return EXIT_ERROR


def handle_errors(run: Callable[..., int]) -> Callable[..., int]:
    """Turn user-fixable failures into one line on stderr and exit status 2 (no traceback).
    ValueError and OSError are how the core reports bad inputs, models and options."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs) -> int:
        try:
            return run(*args, **kwargs)
        except (CliError, ValueError) as e:
            return report_error(e)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            return report_error(f"{where}{e.strerror or e} — check the path and its permissions")
        except KeyboardInterrupt:
            print("emdiffuse: interrupted; nothing was written", file=sys.stderr)
            return EXIT_INTERRUPTED
    return wrapper


@contextlib.contextmanager
def tqdm_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr, only when it is a terminal."""
    bar = tqdm(total=None, desc=description, unit="eval", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()
