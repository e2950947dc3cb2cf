"""What the task training scripts (train_superres.py, train_isotropic.py) share: their command
line, a training run fitted into a wall-clock budget, and scoring a model against a baseline
into its card."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]


def command_line(doc: str, name: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("--steps", type=int, default=2500)
    t.add_argument("--minutes", type=float, default=0,
                   help="fit the steps into this many minutes, measured after 40 steps (0: no limit)")
    t.add_argument("--run", default=f"build/{name}-run")
    t.add_argument("--patch", type=int, default=64)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    t.add_argument("--jitter", type=float, default=0.0,
                   help="intensity jitter of the condition (0: none; a residual model must see the baseline as it is)")
    t.add_argument("--noise-draw", default="loguniform_max", help="noise levels drawn in training")
    t.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                   help="bf16: bf16 autocast on the CPU too (faster on CPUs with native bf16)")
    t.add_argument("--inner-channel", type=int, help="width of the network's first level (default: the card's)")
    t.add_argument("--resume", action="store_true")
    t.add_argument("--init", metavar="MODEL",
                   help="start from these weights (a preset name or a card/weights path): a fine-tune with a fresh optimiser")
    e = sub.add_parser("evaluate")
    e.add_argument("--model", default=name)
    e.add_argument("--also", nargs="*", default=["4x2:posterior_mean", "1x1"],
                   help="extra settings to score: STEPSxSAMPLES[:ESTIMATE[:ENSEMBLE]] (sample_mean or "
                        "posterior_mean; ENSEMBLE: rotations/flips averaged)")
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--update-card", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    return args


class TimeBudget:
    """Fits the run (and so its cosine learning-rate schedule) into ``minutes`` on a shared CPU:
    after ``measure_steps`` steps and every ``every`` steps after that, the total is set to what
    the remaining time allows at the recent rate, never above the steps asked for. ``clock`` is
    wall-clock time by default; ``time.process_time`` makes it a budget of the process's CPU time,
    which other jobs on a shared machine barely change (runs compared on it get the same budget)."""

    def __init__(self, minutes: float, measure_steps: int = 40, every: int = 200, start_step: int = 0,
                 clock: Callable[[], float] = time.perf_counter):
        self.seconds, self.every, self.clock = minutes * 60, every, clock
        self.first = start_step + measure_steps  # a resumed run measures from where it resumed
        self.t0 = clock()
        self.mark = (start_step, self.t0)
        self.asked: int | None = None

    def used(self) -> float:
        """Seconds of the budget's clock spent since it started."""
        return self.clock() - self.t0

    def __call__(self, trainer, step: int) -> None:
        if not self.seconds or step < self.first or (step - self.first) % self.every:
            return
        self.asked = self.asked or trainer.cfg.steps
        now = self.clock()
        rate = (step - self.mark[0]) / (now - self.mark[1])
        self.mark = (step, now)
        left = self.seconds * 0.95 - (now - self.t0)  # validations and checkpoints take the rest
        fitted = min(self.asked, max(step + 1, step + int(rate * left)))
        if fitted != trainer.cfg.steps:
            print(f"{rate:.2f} steps/s: {fitted} steps fit in the budget (asked {self.asked})", flush=True)
            trainer.cfg.steps = fitted


def train(args, card: dict, data, val) -> None:
    """Train ``card``'s network on ``data`` (validated on ``val``) into ``args.run``."""
    from napari_emdiffuse.training.trainer import Trainer, TrainConfig, TrainUpdate

    torch.manual_seed(args.seed)
    if args.inner_channel:
        card = {**card, "network": {**card["network"], "inner_channel": args.inner_channel}}
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch, lr=args.lr, warmup=100, ema_decay=0.998,
                      loss="l2", noise_draw=args.noise_draw, seed=args.seed, device=args.device,
                      precision=args.precision, val_every=250, val_batch=16, checkpoint_every=250)
    t0 = time.time()

    def report(u: TrainUpdate) -> None:
        budget(trainer, u.step)
        if u.val_loss is not None or u.step % 50 == 0:
            v = f" val_loss {u.val_loss:.4f} val_psnr1 {u.val_psnr:.2f}" if u.val_loss is not None else ""
            print(f"step {u.step}/{u.total} loss {u.loss:.4f} lr {u.lr:.2e} {u.seconds:.0f}s{v}", flush=True)

    trainer = Trainer(initial_model(card, args.init), data, cfg, args.run, val_data=val, callback=report,
                      should_stop=lambda: trainer.step >= trainer.cfg.steps)  # the budget may shorten it
    if args.resume:
        trainer.resume()
    budget = TimeBudget(args.minutes, start_step=trainer.step)
    trainer.run()
    print(f"done in {time.time() - t0:.0f}s at step {trainer.step}")


def initial_model(card: dict, init: str | None):
    """``card``'s network, with the weights of the model ``init`` when given (same architecture);
    the card records where they came from."""
    from napari_emdiffuse.loading import load_model
    from napari_emdiffuse.model import model_from_card

    if init is None:
        return model_from_card(card)
    base = load_model(init, task=card["task"])
    card = {**card, "training": {**card.get("training", {}), "fine_tuned_from": init}}
    model = model_from_card(card)
    model.network.load_state_dict(base.network.state_dict())  # copied into the new network's dtype
    return model


def parse_setting(text: str) -> dict:
    """``4x2`` (steps x samples), ``4x2:posterior_mean``, or ``4x2:posterior_mean:8`` (with a
    rotation/flip ensemble of 8)."""
    counts, _, rest = text.partition(":")
    estimate, _, ensemble = rest.partition(":")
    steps, samples = map(int, counts.split("x"))
    setting = {"steps": steps, "samples": samples, "estimate": estimate or None}
    return {**setting, "ensemble": int(ensemble)} if ensemble else setting


def evaluate(args, report: dict, baseline: str, run_model: Callable, score: Callable) -> dict:
    """Score the model at the card's settings and at each ``--also`` setting against the
    ``baseline`` entry already in ``report``; ``run_model(steps=, samples=, estimate=[, ensemble=])`` returns a
    RestoreResult, ``score(result)`` its scores. With --update-card the report goes into the card."""
    for setting in [{}] + [parse_setting(s) for s in args.also]:
        t0 = time.perf_counter()
        res = run_model(**setting)
        key = f"model_{res.info['steps']}steps_{res.info['samples']}samples_{res.info['estimate']}"
        if (res.info.get("ensemble") or 1) > 1:
            key += f"_ensemble{res.info['ensemble']}"
        report[key] = {**score(res), "seconds": round(time.perf_counter() - t0, 1), "sampler": res.info["sampler"]}
        report[key][f"margin_over_{baseline}_db"] = round(report[key]["psnr"] - report[baseline]["psnr"], 2)
        print(key, json.dumps(report[key]), flush=True)
    print(baseline, json.dumps(report[baseline]))
    if args.update_card:
        path = REPO / "models" / f"{args.model}.yaml"
        card = yaml.safe_load(path.read_text())
        card["evaluation"] = report
        path.write_text(yaml.safe_dump(card, sort_keys=False))
    return report
