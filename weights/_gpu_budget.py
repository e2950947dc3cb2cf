"""``--gpu-budget MINUTES`` of the weights/train_*.py scripts: train a bundled preset at the size
a GPU affords in that time, up to the published EMDiffuse network, and write the run to a folder.

The size presets (napari_emdiffuse/training/presets.py: tiny, small, base = the published
EMDiffuse-n network) are probed smallest first: a few steps each (after warm-up steps that build
the kernels) give the rate, and a size is affordable when the budget left, at that rate, holds the
steps it needs (:data:`STEPS_WANTED`). The largest affordable size is trained: AMP (bf16 autocast)
on CUDA, the batch holding the pixels per step its preset suggests at the task's patch size, its
suggested learning rate, and the cosine schedule fitted into the minutes left
(``_script.TimeBudget``). A size whose step, scaled from the last probe by its FLOPs, could not
fit a twentieth of its steps is not probed (a CPU dry run stays quick). The run folder (card,
EMA weights, training state) is what weights/export_run.py exports and the scripts' evaluate
commands score; its card records the probes and the choice.
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from napari_emdiffuse.training.presets import PRESETS, SUGGESTED

SIZES = ("tiny", "small", "base")  # smallest first; base is the published EMDiffuse-n network
# Steps a size needs before it is worth more than the next smaller one: the CPU runs of the demo
# model (docs/benchmarks.md) passed the smaller network's quality at 12,000-20,000 steps.
STEPS_WANTED = {"tiny": 4000, "small": 15000, "base": 30000}
WARMUP_STEPS, PROBE_STEPS = 2, 5
HOPELESS = 20  # skip probing a size whose estimated steps in the budget fall short this many times


def sized_card(card: dict, preset: str) -> dict:
    """``card`` with its network at a size preset; what the task needs (kind, channels, aleatoric
    head, slice embedding) stays."""
    out = copy.deepcopy(card)
    out["network"] = {**out["network"], **copy.deepcopy(PRESETS[preset])}
    return out


def batch_for(preset: str, patch: int) -> int:
    """The preset's suggested pixels per step at this patch size."""
    s = SUGGESTED[preset]
    return max(1, round(s["batch_size"] * (s["patch"] / patch) ** 2))


def step_flops(card: dict, batch: int, patch: int) -> float:
    """FLOPs of one forward pass of a batch (counted on the meta device: nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    from napari_emdiffuse.model import build_network

    net_card = card["network"]
    with torch.device("meta"):
        net = build_network(net_card)
        x = torch.zeros(batch, int(net_card.get("in_channel", 2)), patch, patch)
        args = [x, torch.zeros(batch)] + ([torch.zeros(batch)] if net_card.get("slice_embedding") else [])
        with FlopCounterMode(display=False) as counter:
            net(*args)
    return float(counter.get_total_flops())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(card: dict, data, val, cfg, limit_s: float) -> tuple[float, float]:
    """(steps per second, seconds spent) of ``card``'s network training on ``data`` with ``cfg``:
    warm-up steps, then up to :data:`PROBE_STEPS` timed ones within ``limit_s``."""
    from napari_emdiffuse.model import model_from_card
    from napari_emdiffuse.training.trainer import Trainer

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = Trainer(model_from_card(card), data, replace(cfg, steps=10 ** 9), scratch, val_data=val)
        for _ in range(WARMUP_STEPS):
            trainer.train_step()
        sync(trainer.device)
        t0, done = time.perf_counter(), 0
        while done < PROBE_STEPS and (done == 0 or time.perf_counter() - t0 < limit_s):
            trainer.train_step()
            sync(trainer.device)
            done += 1
        rate = done / (time.perf_counter() - t0)
        del trainer
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return rate, time.perf_counter() - t_start


def choose_size(card: dict, data, val, cfg, patch: int, budget_s: float, log=print) -> tuple[str, list[dict]]:
    """The largest size preset the budget affords, and what was measured on the way."""
    t0 = time.perf_counter()
    table, chosen, last = [], SIZES[0], None
    for preset in SIZES:
        sized, batch = sized_card(card, preset), batch_for(preset, patch)
        flops = step_flops(sized, batch, patch)
        left = budget_s - (time.perf_counter() - t0)
        row = {"size": preset, "batch": batch, "gflop_per_forward": round(flops / 1e9, 2)}
        if last is not None:
            estimate = last["steps_per_s"] * last["flops"] / flops
            if estimate * left * HOPELESS < STEPS_WANTED[preset]:
                row["skipped"] = f"estimated {estimate:.3g} steps/s from the last probe's FLOPs: hopeless"
                table.append(row)
                log(f"gpu budget: {preset} not probed ({row['skipped']})")
                break
        rate, spent = probe(sized, data, val, replace(cfg, batch_size=batch, lr=SUGGESTED[preset]["lr"]),
                            limit_s=max(2.0, 0.05 * budget_s))
        left -= spent
        row.update(steps_per_s=round(rate, 3), affordable_steps=max(0, int(rate * left * 0.9)), wanted=STEPS_WANTED[preset])
        table.append(row)
        log(f"gpu budget: {preset} at batch {batch}: {rate:.3g} steps/s, {row['affordable_steps']} steps fit "
            f"(wanted {STEPS_WANTED[preset]})")
        last = {"steps_per_s": rate, "flops": flops}
        if row["affordable_steps"] < STEPS_WANTED[preset]:
            break  # a larger size is slower still (the smallest is trained even so)
        chosen = preset
    return chosen, table


def train_within(card: dict, data, val, minutes: float, run: str | Path, *, patch: int, device: str = "auto",
                 noise_draw: str = "loguniform_max", seed: int = 0, log=print) -> Path:
    """Train ``card``'s task on ``data`` (validated on ``val``: PatchPairs-like) at the size
    ``minutes`` afford on ``device`` (auto: CUDA when there is one), into the folder ``run``.
    Returns the folder."""
    from _script import TimeBudget
    from napari_emdiffuse.device import resolve_device
    from napari_emdiffuse.model import model_from_card
    from napari_emdiffuse.training import runs
    from napari_emdiffuse.training.trainer import Trainer, TrainConfig

    t0 = time.perf_counter()
    where = resolve_device(device)
    torch.manual_seed(seed)
    base_cfg = TrainConfig(steps=1, batch_size=8, lr=2e-4, warmup=200, ema_decay=0.999, loss="l2",
                           noise_draw=noise_draw, seed=seed, device=str(where), amp=True, precision="auto",
                           val_every=250, val_batch=16, checkpoint_every=500)
    budget_s = minutes * 60
    preset, table = choose_size(card, data, val, base_cfg, patch, budget_s, log)
    left_min = (budget_s - (time.perf_counter() - t0)) / 60
    rate = next(r["steps_per_s"] for r in table if r["size"] == preset)
    steps = max(1, int(rate * left_min * 60 * 0.85))  # validations and checkpoints take the rest
    cfg = replace(base_cfg, steps=steps, batch_size=batch_for(preset, patch), lr=SUGGESTED[preset]["lr"],
                  warmup=min(200, max(1, steps // 10)), val_every=max(1, min(250, steps // 5)),
                  checkpoint_every=max(1, min(1000, steps // 2)))
    sized = sized_card(card, preset)
    sized["training"] = {**sized.get("training", {}), "patch": patch, "gpu_budget": {
        "minutes": minutes, "device": str(where),
        "device_name": torch.cuda.get_device_name(where) if where.type == "cuda" else "cpu",
        "size": preset, "probes": table}}
    log(f"gpu budget: training {preset} on {where} for about {steps} steps ({left_min:.1f} min left), batch "
        f"{cfg.batch_size} of {patch}x{patch}, lr {cfg.lr:g}, AMP {'bf16' if where.type == 'cuda' else 'off'}")
    budget = TimeBudget(left_min, measure_steps=min(40, max(1, steps // 4)), every=max(1, min(200, steps // 5)))

    def report(u) -> None:
        budget(trainer, u.step)
        if u.val_loss is not None:
            log(f"step {u.step}/{u.total} loss {u.loss:.4f} val_loss {u.val_loss:.4f} val_psnr1 {u.val_psnr:.2f} "
                f"{u.seconds:.0f}s")

    trainer = Trainer(model_from_card(sized), data, cfg, run, val_data=val, callback=report,
                      should_stop=lambda: trainer.step >= trainer.cfg.steps)  # the budget may shorten it
    trainer.run()
    out = trainer.card()
    out["training"]["gpu_budget"]["seconds"] = round(time.perf_counter() - t0, 1)
    out["training"]["gpu_budget"]["steps"] = trainer.step
    runs.save_model(out, trainer.ema.network.state_dict(), Path(run))
    log(f"gpu budget: {preset} trained {trainer.step} steps in {time.perf_counter() - t0:.0f} s -> {run}")
    return Path(run)
