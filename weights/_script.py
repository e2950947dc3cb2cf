"""What the task training scripts (train_superres.py, train_isotropic.py) share: their command
line, a training run fitted into a time budget, and the evaluation protocol (val for choices and
calibration, test once) writing a model's figures into its card."""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
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
    t.add_argument("--gpu-budget", type=float, metavar="MINUTES",
                   help="train at the size these minutes afford on the GPU (up to the published EMDiffuse size), "
                        "with AMP, into --run (weights/_gpu_budget.py); on a machine without one, on the CPU")
    t.add_argument("--init", metavar="MODEL",
                   help="start from these weights (a preset name or a card/weights path): a fine-tune with a fresh optimiser")
    e = sub.add_parser("evaluate")
    e.add_argument("--model", default=name)
    e.add_argument("--also", nargs="*", default=["4x2:posterior_mean", "1x1"],
                   help="extra settings to score on val (to choose the card's): STEPSxSAMPLES[:ESTIMATE[:ENSEMBLE]] (sample_mean or "
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
    if args.gpu_budget:
        from _gpu_budget import train_within

        return train_within(card, data, val, args.gpu_budget, args.run, patch=args.patch, noise_draw=args.noise_draw,
                            seed=args.seed, device="auto" if args.device == "cpu" else args.device)
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


@dataclass
class Region:
    """One region a task is scored on: the model's input, the reference its output is compared
    with, the baseline's output, and which part of the output is scored (e.g. only the generated
    slices of an isotropic volume; None: all of it)."""

    input: np.ndarray
    reference: np.ndarray
    baseline: np.ndarray
    scored: np.ndarray | None = None

    def part(self, values):
        return None if values is None else (values if self.scored is None else values[self.scored])


def evaluate(args, name: str, val: Region, test: Region, baseline: str, run_model: Callable, notes: dict) -> dict:
    """The protocol (napari_emdiffuse/evaluation.py) for a task model. On val: the model at the
    card's settings and at each ``--also`` setting (to choose settings), and the predicted-error
    calibration and mask threshold. On test, once, at the card's settings: PSNR / SSIM of model and
    baseline, the margin with its 95% interval, and the predicted-error map against the gradient
    proxies (of the baseline, i.e. the input on the output grid, and of the output).
    ``run_model(image, **setting)`` returns a RestoreResult. With --update-card the card's
    ``evaluation`` and ``uncertainty`` sections are rewritten."""
    from napari_emdiffuse import evaluation as ev
    from napari_emdiffuse.uncertainty import predicted_error, relative_error

    report = {"model": args.model, "protocol": "napari_emdiffuse/evaluation.py", **notes, "val": {}}
    val_res = None
    for setting in [{}] + [parse_setting(s) for s in args.also]:
        t0 = time.perf_counter()
        res = run_model(val.input, **setting)
        key = setting_key(res.info)
        report["val"][key] = {**ev.scores(val.part(res.mean), val.part(val.reference)),
                              "seconds": round(time.perf_counter() - t0, 1)}
        print("val", key, json.dumps(report["val"][key]), flush=True)
        val_res = val_res or res
    report["val"][baseline] = ev.scores(val.part(val.baseline), val.part(val.reference))
    lo, hi = val_res.info["normalizer"]
    errors = ev.block_rmse(val.part(val_res.mean), val.part(val.reference))
    unc = ev.calibrate_uncertainty(val.part(val_res.std), val.part(val_res.aleatoric), errors, hi - lo)
    pe = predicted_error(val.part(val_res.std), val.part(val_res.aleatoric), unc["predicted_error"])
    rel = relative_error(pe, hi - lo)
    unc["validated"] = {"relative_error": {"val": round(rel, 4)}, "limit": round(rel * 1.25, 4)}
    print("val uncertainty", json.dumps({k: v for k, v in unc.items() if k != "candidates"}), flush=True)

    t0 = time.perf_counter()
    res = run_model(test.input)
    seconds = round(time.perf_counter() - t0, 1)
    lo, hi = res.info["normalizer"]
    mean, reference, base = test.part(res.mean), test.part(test.reference), test.part(test.baseline)
    pe = predicted_error(test.part(res.std), test.part(res.aleatoric), unc["predicted_error"])
    predicted = ev.block_rms(pe)
    proxies = {f"gradient of the {baseline} input": ev.gradient_proxy(base),
               "gradient of the output": ev.gradient_proxy(mean)}
    report["test"] = {"model": {**ev.scores(mean, reference), "seconds": seconds,
                                **{k: res.info[k] for k in ("samples", "steps", "sampler", "estimate", "ensemble")}},
                      baseline: ev.scores(base, reference),
                      "margin": ev.psnr_margin(mean, base, reference),
                      "uncertainty": ev.judge_predicted_error(predicted, ev.block_rmse(mean, reference), proxies,
                                                              predicted * 2 / (hi - lo) > unc["threshold"],
                                                              images=len(mean) if mean.ndim == 3 else 1)}
    report["test"]["uncertainty"]["relative_error"] = round(relative_error(pe, hi - lo), 4)
    report["uncertainty"] = unc
    print("test", json.dumps(report["test"]), flush=True)
    out = REPO / "build" / f"{name}_quality.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    np.savez(out.with_suffix(".blocks.npz"), predicted=predicted, error=ev.block_rmse(mean, reference),
             **{f"proxy_{i}": v for i, v in enumerate(proxies.values())})  # for re-analysis without re-running
    if args.update_card:
        path = REPO / "models" / f"{args.model}.yaml"
        card = yaml.safe_load(path.read_text())
        margin = report["test"]["margin"]
        card["uncertainty"] = {**{k: v for k, v in unc.items() if k != "candidates"},
                               "calibrated_on": f"{notes['val']}, 16 x 16 blocks",
                               "test": {k: report["test"]["uncertainty"][k]
                                        for k in ("spearman", "spearman_within_images", "ause", "proxies", "ranks",
                                                  "calibrated", "mask") if k in report["test"]["uncertainty"]}}
        card["evaluation"] = {"protocol": report["protocol"], "val": notes["val"], "test": notes["test"],
                              # wall seconds on a shared CPU say little: the speed benchmarks time it
                              "model": {k: v for k, v in report["test"]["model"].items() if k != "seconds"},
                              baseline: report["test"][baseline],
                              f"margin_over_{baseline}": {"db": margin["margin_db"], "ci95": margin["ci95"],
                                                          "verdict": "beats" if margin["beats"] else
                                                          ("tie" if margin["tie"] else "loses")},
                              "settings_on_val": {k: {m: v[m] for m in ("psnr", "ssim")} for k, v in report["val"].items()},
                              "command": f"python weights/train_{name.split('-')[0]}.py evaluate --update-card"}
        path.write_text(yaml.safe_dump(card, sort_keys=False))
        print("updated", path)
    return report


def setting_key(info: dict) -> str:
    key = f"model_{info['steps']}steps_{info['samples']}samples_{info['estimate']}"
    return key + (f"_ensemble{info['ensemble']}" if (info.get("ensemble") or 1) > 1 else "")
