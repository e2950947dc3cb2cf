"""The parts of benchmarks/gpu_check.sh that no other benchmark measures, each writing a JSON file:

    python3 benchmarks/gpu_parts.py env OUT.json                 # the machine, torch, the GPU
    python3 benchmarks/gpu_parts.py tiny-model DIR               # a small random model (dry runs)
    python3 benchmarks/gpu_parts.py batch OUT.json [--dry-run]   # the largest tile batch that fits; OOM fallback
    python3 benchmarks/gpu_parts.py amp OUT.json [--dry-run]     # a short training run, fp32 against AMP
    python3 benchmarks/gpu_parts.py slim RUN                     # a trained run folder made small to carry back

``batch``: for the demo network and the published-size EMDiffuse network, 256 x 256 tiles in
bf16 autocast, the batch doubled until the device runs out of memory (then bisected), with the
peak memory of the largest that fits; then the out-of-memory fallback of the engine exercised for
real: ``restore`` asked for a tile batch larger than the memory left to it
(``torch.cuda.set_per_process_memory_fraction``) must halve it until it fits and give the result
of a small batch. On the CPU (``--dry-run``) the batch is capped and the fallback is simulated.

``amp``: the trainer on the published-size network (dry run: a tiny one), 256 x 256 crops of the
demo pair's training rows, steps per second in fp32 and with AMP (bf16 autocast; GradScaler on
CUDA), and that the loss stays finite.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import PUBLISHED_UNET, load_demo, machine, sync

TINY_CARD = {
    "name": "tiny-gpu-check", "task": "denoise", "description": "random tiny network for dry runs",
    "network": {"kind": "unet", "dims": 2, "in_channel": 2, "out_channel": 1, "inner_channel": 8,
                "channel_mults": [1, 2, 2, 2], "res_blocks": 1, "attn_res": [], "num_head_channels": 8,
                "norm_groups": 4, "dropout": 0.0, "aleatoric": True},
    "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sampler": "dpmpp_2m", "grid": "karras",
                  "steps": 4, "samples": 1, "estimate": "posterior_mean", "ensemble": 4},
    "normalization": {"low": 0.1, "high": 99.9},
    "tile": {"size": 256, "overlap": 24},
}


def write(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))


def env(args) -> None:
    report = {"machine": machine(), "python": sys.version.split()[0], "platform": platform.platform(),
              "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
              "cpu_count": os.cpu_count(), "numpy": np.__version__}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        report.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2 ** 30, 1),
                      multiprocessors=p.multi_processor_count, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version(), bf16=torch.cuda.is_bf16_supported())
    missing = []
    for name in ("napari_emdiffuse.restore", "napari_emdiffuse.training.trainer", "zarr", "dask", "pooch", "pydantic",
                 "skimage", "scipy", "tifffile", "yaml", "bm3d", "napari"):
        try:
            __import__(name)
        except Exception as exc:  # what is missing there decides which steps can run
            missing.append(f"{name}: {type(exc).__name__}: {exc}")
    report["imports_missing"] = missing
    write(args.out, report)


def tiny_model(args) -> None:
    from napari_emdiffuse.model import build_network
    from napari_emdiffuse.training.runs import save_model

    torch.manual_seed(0)
    network = build_network(TINY_CARD["network"])
    with torch.no_grad():
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(TINY_CARD, network.state_dict(), Path(args.out))
    print(args.out)


def fits(net, batch: int, device, size: int = 256) -> float | None:
    """Peak memory (GiB) of a bf16 forward of ``batch`` tiles, or None when it does not fit."""
    x = torch.randn(batch, net.in_channel, size, size, device=device).contiguous(memory_format=torch.channels_last)
    level = torch.full((batch,), 0.5, device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            net(x, level)
        sync()
    except torch.OutOfMemoryError:
        return None
    finally:
        del x
    return torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else 0.0


def largest_batch(net, device, cap: int) -> dict:
    """Double the batch until it does not fit (or reaches ``cap``), then bisect."""
    net = net.to(device, memory_format=torch.channels_last).eval()
    good, bad, peak, b = 0, None, 0.0, 1
    while b <= cap:
        got = fits(net, b, device)
        if got is None:
            bad = b
            break
        good, peak, b = b, got, b * 2
    if bad is not None:
        while bad - good > max(1, good // 16):  # to within 1/16
            mid = (good + bad) // 2
            got = fits(net, mid, device)
            good, peak, bad = (mid, got, bad) if got is not None else (good, peak, mid)
    return {"largest_batch": good, "peak_gib": round(peak, 2), "first_that_failed": bad, "cap": cap,
            "gib_per_tile": round(peak / good, 3) if good else None}


def oom_fallback(model, device, dry_run: bool, gib_per_tile: float | None = None) -> dict:
    """restore() asked for a tile batch larger than the memory it may use: the engine's fallback
    halves it until it fits, and the result is that of a small batch."""
    from napari_emdiffuse.api import restore

    image = load_demo_image()
    image = image[:192, :192] if dry_run else np.pad(image, ((0, 1280), (0, 1280)), mode="symmetric")  # 2048^2
    kwargs = dict(device=str(device), seed=0, samples=2, steps=2, ensemble=1, precision="bf16")
    forward = model.network.forward
    asked = 256  # more tiles than a step has: every tile of both samples in one batch
    report = {"image": list(image.shape), "asked_batch": asked}
    if dry_run:  # no memory limit on the CPU: a batch of more than one tile raises what CUDA would
        def limited(x, *a):
            if len(x) > 1:
                raise torch.OutOfMemoryError("simulated")
            return forward(x, *a)
        model.network.forward = limited
        report["memory_limit"] = "simulated: more than one tile does not fit"
    else:  # room for about 40 tiles: the 2 x 81 tiles of a step do not fit
        total = torch.cuda.get_device_properties(device).total_memory / 2 ** 30
        fraction = min(0.9, (40 * (gib_per_tile or 0.05) + 1.0) / total)
        report["memory_limit"] = f"{fraction:.4f} of {total:.0f} GiB"
        torch.cuda.set_per_process_memory_fraction(fraction, device)
    try:
        t0 = time.perf_counter()
        big = restore(image, model, batch_size=asked, **kwargs)
        report.update(batch_after_fallback=big.info["batch_size"], seconds=round(time.perf_counter() - t0, 2))
    finally:
        model.network.forward = forward
        if not dry_run:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
            torch.cuda.empty_cache()
    small = restore(image, model, batch_size=max(1, big.info["batch_size"] // 4), **kwargs)
    diff = np.abs(big.mean.astype(float) - small.mean.astype(float))
    report.update(small_batch=small.info["batch_size"], max_abs_difference_to_small_batch=float(diff.max()),
                  mean_abs_difference=float(diff.mean()), fell_back=big.info["batch_size"] < asked)
    return report


def load_demo_image() -> np.ndarray:
    from napari_emdiffuse.sample_data import load_pair

    return load_pair()[0]


def batch(args) -> None:
    from napari_emdiffuse.nn.unet import UNet

    device = torch.device("cpu" if args.dry_run else "cuda")
    cap = 8 if args.dry_run else 1 << 16
    model, source = load_demo(args.model)
    report = {"device": str(device), "tile": 256, "precision": "bf16 autocast, channels_last"}
    report["demo"] = {"model": source, **largest_batch(model.network, device, cap)}
    if not args.dry_run:
        torch.manual_seed(0)
        report["published"] = largest_batch(UNet(**PUBLISHED_UNET), device, cap)
    report["oom_fallback"] = oom_fallback(model, device, args.dry_run, report["demo"]["gib_per_tile"])
    write(args.out, report)


def amp(args) -> None:
    from napari_emdiffuse.model import model_from_card
    from napari_emdiffuse.training.datasets import denoise_data
    from napari_emdiffuse.training.presets import new_card
    from napari_emdiffuse.training.trainer import TrainConfig, Trainer
    import tempfile

    device = torch.device("cpu" if args.dry_run else "cuda")
    from napari_emdiffuse.evaluation import rows_of
    from napari_emdiffuse.sample_data import load_pair

    noisy, clean = load_pair()
    rows = rows_of("demo-denoise", "train")
    patch, steps, batch_size = (32, 3, 2) if args.dry_run else (256, 30, 4)
    data = denoise_data(noisy[rows], clean[rows], patch=patch, check=False)
    card = new_card("denoise", "tiny" if args.dry_run else "base", name="amp-check")
    if args.dry_run:
        card["network"].update(inner_channel=8, channel_mults=[1, 2], norm_groups=4)
    report = {"device": str(device), "network": card["network"], "patch": patch, "batch": batch_size, "runs": {}}
    for label, amp_on, precision in (("fp32", False, "fp32"), ("amp", True, "auto" if device.type == "cuda" else "bf16")):
        torch.manual_seed(0)
        cfg = TrainConfig(steps=steps, batch_size=batch_size, lr=5e-5, warmup=1, val_every=10 ** 6,
                          checkpoint_every=10 ** 6, device=str(device), amp=amp_on, precision=precision, seed=0)
        with tempfile.TemporaryDirectory() as run:
            trainer = Trainer(model_from_card(card), data.train, cfg, run, val_data=data.val)
            losses = [trainer.train_step() for _ in range(2)]  # warm-up: kernels, cuDNN's choices
            sync()
            t0 = time.perf_counter()
            losses += [trainer.train_step() for _ in range(steps)]
            sync()
            seconds = time.perf_counter() - t0
            report["runs"][label] = {"steps_per_s": round(steps / seconds, 3), "loss_first": losses[0],
                                     "loss_last": losses[-1], "finite": bool(np.all(np.isfinite(losses))),
                                     "grad_scaler": trainer.scaler.is_enabled(),
                                     "peak_gib": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
                                     if device.type == "cuda" else None}
            del trainer
    fp32, amp_run = report["runs"]["fp32"]["steps_per_s"], report["runs"]["amp"]["steps_per_s"]
    report["amp_speed_up"] = round(amp_run / fp32, 2)
    write(args.out, report)


def slim(args) -> None:
    """A run folder as a preset ships it: the card and fp16 EMA weights; the training state
    (optimiser, RNG streams: several times the weights) is dropped."""
    import yaml

    from napari_emdiffuse.run_folder import CARD_NAME, STATE_NAME, WEIGHTS_NAME
    from napari_emdiffuse.training.runs import save_model

    run = Path(args.out)
    card = yaml.safe_load((run / CARD_NAME).read_text())
    state = torch.load(run / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    save_model(card, {k: v.half() if v.is_floating_point() else v for k, v in state.items()}, run)
    (run / STATE_NAME).unlink(missing_ok=True)
    print(run, sorted(p.name for p in run.iterdir()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["env", "tiny-model", "batch", "amp", "slim"])
    ap.add_argument("out")
    ap.add_argument("--dry-run", action="store_true", help="on the CPU with tiny sizes")
    ap.add_argument("--model", default=None, help="the demo model (name or run folder)")
    args = ap.parse_args()
    {"env": env, "tiny-model": tiny_model, "batch": batch, "amp": amp, "slim": slim}[args.part](args)


if __name__ == "__main__":
    main()
