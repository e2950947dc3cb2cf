"""``emdiffuse train`` as one of several processes started by torchrun: join them, train
data-parallel (:mod:`napari_emdiffuse.training.distributed`), and keep the output to what one
process would print. Rank 0 prints progress and the summary; the others print nothing unless
something goes wrong on their side. An error every process meets (bad input, divergence) is
printed once; one that only some meet is printed by them, prefixed with their rank; a process
that dies or hangs is named by the others, which stop instead of waiting (``--dist-timeout``)."""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

from ..loading import read_card
from ..run_folder import CARD_NAME
from ..training import distributed
from ..training.distributed import SetupFailed
from .common import EXIT_ERROR, EXIT_INTERRUPTED, handle_errors, report_error


def run(args: argparse.Namespace, train: Callable[..., int]) -> int:
    """``train(args, world)`` on this process's part of the run; the exit status."""
    try:
        world = distributed.join(args.device, args.dist_timeout)
    except distributed.ProcessError:  # this process's own: it says so
        raise
    except ValueError:
        if os.environ.get("RANK", "0") == "0":  # the same for every process: said once
            raise
        return EXIT_ERROR
    world.advice = lambda: _advice(Path(args.output))
    try:
        with _quiet(not world.is_main):
            code = train(args, world)
    except BaseException as error:  # noqa: BLE001 - every way out must leave the others told
        code = _stop(world, error)
        world.abandon(code)
        return code
    world.close(code)
    return code


def _stop(world, error: BaseException) -> int:
    """Say why this process stops (or leave it to the process that says it) and give its exit status."""
    if not world.agreed and not isinstance(error, KeyboardInterrupt):
        # Set-up failed here: the others wait to hear whether every process is ready.
        try:
            world.ready(error=_line(error) or f"{type(error).__name__}: {error}")
        except SetupFailed as agreed:
            error = agreed
        except Exception:  # noqa: BLE001 - the group itself is broken: report our own error
            pass
    if isinstance(error, KeyboardInterrupt):
        if world.is_main:
            print("emdiffuse: interrupted; the run folder keeps its last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    if isinstance(error, (SetupFailed, FloatingPointError)):  # every process stops with the same reason
        return report_error(error) if world.is_main else EXIT_ERROR
    if not isinstance(error, (ValueError, OSError)):
        # A failed exchange is most often another process's death or hang: the watcher names it.
        world.await_verdict()
    line = _line(error)
    if line is None:
        print(f"emdiffuse: rank {world.rank} of {world.size} failed:", file=sys.stderr)
        traceback.print_exception(error, file=sys.stderr)
        return EXIT_ERROR
    return report_error(f"rank {world.rank} of {world.size}: {line}")


def _line(error: BaseException) -> str | None:
    """``error`` as the one line every emdiffuse command prints for it; None if it is not one
    of the errors a user can fix."""
    def again():
        raise error

    printed = io.StringIO()
    try:
        with contextlib.redirect_stderr(printed):
            handle_errors(again)()
    except BaseException:  # noqa: BLE001 - not a user-facing error
        return None
    text = printed.getvalue().strip()
    prefix = "emdiffuse: error: "
    return text[len(prefix):] if text.startswith(prefix) else None


def _advice(run_dir: Path) -> str:
    try:
        step = read_card(run_dir / CARD_NAME)["training"]["step"]
    except Exception:  # noqa: BLE001 - no checkpoint yet, or not readable here
        return f"no checkpoint was written to {run_dir}: start the run again"
    return f"{run_dir} keeps the checkpoint of step {step}: run the same command with --resume to continue exactly"


@contextlib.contextmanager
def _quiet(silent: bool):
    """Progress and the summary come from rank 0 only."""
    if not silent:
        yield
        return
    saved = sys.stdout, sys.stderr
    with open(os.devnull, "w") as null:
        sys.stdout = sys.stderr = null
        try:
            yield
        finally:
            sys.stdout, sys.stderr = saved
