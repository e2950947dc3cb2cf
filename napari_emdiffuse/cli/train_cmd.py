"""``emdiffuse train {denoise,superres,isotropic} ... -o RUN_DIR``: train or fine-tune a model on
your own data. The run folder then works as ``--model RUN_DIR`` everywhere; ``--resume``
continues it exactly where it stopped (Ctrl-C stops after the current step and saves). Under
``torchrun`` several processes train one model data-parallel (see ``train_torchrun``)."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from tqdm import tqdm

from ..tasks import all_tasks, get_task
from ..training import session
from .common import EXIT_INTERRUPTED, handle_errors, positive_int

PRESET_NAMES = ("tiny", "small", "base")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction below 0.5, got {text}")
    return value


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", metavar="RUN_DIR", required=True,
                        help="run folder: model card, weights and training state (use it as --model RUN_DIR)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in RUN_DIR with its settings (give the same data)")
    parser.add_argument("--model", metavar="NAME|PATH",
                        help="fine-tune this model (preset name, model card, run folder or EMDiffuse "
                             "checkpoint) instead of training a new one")
    parser.add_argument("--preset", choices=PRESET_NAMES, default="tiny",
                        help="size of a new model: tiny (CPU), small (laptop GPU), base (published "
                             "EMDiffuse size, GPU) (default: tiny)")
    parser.add_argument("--name", help="model name in the card (default: my-TASK)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="total optimisation steps (default: the preset's)")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed (default: 0)")
    parser.add_argument("--patch", type=positive_int, metavar="P", help="training crop size in pixels (default: the preset's)")
    parser.add_argument("--batch-size", type=positive_int, metavar="B", help="crops per step (default: the preset's)")
    parser.add_argument("--grad-accum", type=positive_int, metavar="K", help="batches accumulated per step (default: 1)")
    parser.add_argument("--lr", type=_positive_float, metavar="LR", help="peak learning rate (default: the preset's)")
    parser.add_argument("--warmup", type=int, metavar="N", help="warm-up steps before the cosine decay")
    parser.add_argument("--ema-decay", type=_positive_float, metavar="D", help="EMA decay of the saved weights (default: 0.999)")
    parser.add_argument("--val-fraction", type=_fraction, default=0.2, metavar="F",
                        help="share of each image held out for validation, as a band at its end (default: 0.2)")
    parser.add_argument("--val-every", type=positive_int, metavar="N", help="validate every N steps (default: ~10 times a run)")
    parser.add_argument("--checkpoint-every", type=positive_int, metavar="N", help="save every N steps (default: at each validation)")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:1 or mps (default: auto)")
    parser.add_argument("--no-amp", dest="amp", action="store_const", const=False,
                        help="full precision on CUDA (mixed precision is the default there)")
    parser.add_argument("--precision", choices=["auto", "bf16", "fp32"],
                        help="bf16: bf16 autocast on the CPU too, 1.6-1.8x faster on CPUs with native bf16 "
                             "(default auto: mixed precision on CUDA, fp32 elsewhere)")
    parser.add_argument("--dist-timeout", type=_positive_float, default=600.0, metavar="S",
                        help="under torchrun: seconds without a finished step before every process stops with an "
                             "error naming the one that does not answer (default: 600)")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train or fine-tune a model on your own data",
        description="Train (or fine-tune with --model) a model on your own images. The run folder holds a "
                    "model card and weights that --model RUN_DIR takes everywhere, and the training state "
                    "that --resume continues exactly. Ctrl-C stops after the current step and saves.")
    tasks = parser.add_subparsers(dest="task", metavar="TASK", required=True)
    for task in all_tasks():
        if not task.training_inputs:
            continue
        p = tasks.add_parser(task.name, help=task.training_summary, description=task.training_description)
        task.add_training_arguments(p)
        _add_common(p)
        p.set_defaults(func=run)


def _inputs(args: argparse.Namespace) -> dict:
    return {"val_fraction": args.val_fraction, **get_task(args.task).training_arguments(args)}


def _settings(args: argparse.Namespace) -> dict:
    return {"steps": args.steps, "seed": args.seed, "patch": args.patch, "batch_size": args.batch_size,
            "grad_accum": args.grad_accum, "lr": args.lr, "warmup": args.warmup, "ema_decay": args.ema_decay,
            "val_every": args.val_every, "checkpoint_every": args.checkpoint_every, "device": args.device,
            "amp": args.amp, "precision": args.precision}


class StopOnInterrupt:
    """The first Ctrl-C asks the trainer to stop after the current step (and save); a second one
    interrupts at once."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def __enter__(self):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            print("\nemdiffuse: stopping after this step (Ctrl-C again to abort)...", file=sys.stderr)
        self.previous = signal.signal(signal.SIGINT, handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False


@handle_errors
def run(args: argparse.Namespace) -> int:
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:  # one of several processes torchrun started
        from .train_torchrun import run as run_data_parallel  # lazily: nothing distributed unless asked

        return run_data_parallel(args, _train)
    return _train(args)


def _train(args: argparse.Namespace, world=None) -> int:
    stop = StopOnInterrupt()
    trainer, data = session.prepare(args.task, args.output, _inputs(args), preset=args.preset, base=args.model,
                                    resume=args.resume, name=args.name, settings=_settings(args),
                                    should_stop=stop, world=world)
    cfg = trainer.cfg
    if trainer.resumed_world_size not in (None, trainer.world.size):
        print(f"note: this run trained on {trainer.resumed_world_size} process(es) and continues on "
              f"{trainer.world.size}: the global batch changes with it", file=sys.stderr)
    if data.aligned:
        worst = min(data.registration, key=lambda r: r.correlation)
        print(f"aligned {data.aligned} misregistered image(s) (global shift, then optical flow); "
              f"after alignment {worst.message}", file=sys.stderr)
    bar = tqdm(total=cfg.steps, initial=trainer.step, desc=f"train {args.task}", unit="step", file=sys.stderr,
               dynamic_ncols=True, disable=not sys.stderr.isatty())
    last_val = {}

    def show(update) -> None:
        bar.update(update.step - bar.n)
        postfix = {"loss": f"{update.loss:.4f}"}
        if update.val_loss is not None:
            last_val.update(val_loss=update.val_loss, val_psnr=update.val_psnr)
            if bar.disable:  # a log file, not a terminal: one line per validation
                print(f"step {update.step}/{update.total} loss {update.loss:.4f} val_loss {update.val_loss:.4f} "
                      f"val_psnr {update.val_psnr:.2f} dB", file=sys.stderr, flush=True)
        if last_val:
            postfix.update(val=f"{last_val['val_loss']:.4f}", psnr=f"{last_val['val_psnr']:.1f}dB")
        bar.set_postfix(postfix, refresh=False)

    trainer.callback = show
    t0 = time.perf_counter()
    start = trainer.step
    with stop:
        trainer.run()
    bar.close()
    seconds = time.perf_counter() - t0
    val = (f"; validation loss {last_val['val_loss']:.4f}, one-step PSNR {last_val['val_psnr']:.2f} dB"
           if last_val else "")
    how = "stopped" if trainer.step < cfg.steps else "trained"
    print(f"{how} {args.task} model {trainer.model.name!r}: steps {start}-{trainer.step} of {cfg.steps} "
          f"in {seconds:.1f} s on {trainer.world.where(trainer.device)}{val} -> {args.output} (use --model {args.output}"
          f"{'; continue with --resume' if trainer.step < cfg.steps else ''})")
    return EXIT_INTERRUPTED if stop.requested and trainer.step < cfg.steps else 0
