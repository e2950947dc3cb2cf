"""Peers side by side on the demo SEM pair: what a napari user would pick instead of demo-denoise.

CAREamics (the napari ecosystem's restoration library): CARE trained on the same training rows
(4 us input, 36 us target) and Noise2Void trained on the noisy training rows alone, each within
the CPU-time budget of the bundled model (90 minutes of process CPU time, one thread); both
stop early and pick their checkpoint on the validation rows only. BM3D and a Gaussian filter with
their sigma tuned on the validation rows. One table on the test rows, scored once: PSNR / SSIM
(``napari_emdiffuse.evaluation``), the margin of demo-denoise over each with a 95% interval,
the agreement of CARE's output with ours, training CPU time, CPU seconds per megapixel of
inference (one thread) and parameter counts; as acquired and on a noisier copy of the test input
(Gaussian noise as strong as the 4 us image's own, as in benchmarks/denoise_quality.py), every
method as trained (the filters re-tuned on an equally noisier copy of the validation rows).

careamics is a benchmark extra (``pip install .[benchmarks]``), never a runtime dependency; run
this in its own environment (docs/benchmarks.md, "Peers side by side", has the set-up):

    PYTHONPATH=. /work/venvs/peers/bin/python benchmarks/peers.py             # the table
    PYTHONPATH=. /work/venvs/peers/bin/python benchmarks/peers.py train care  # one training
    PYTHONPATH=. /work/venvs/peers/bin/python benchmarks/peers.py pilot-n2v   # the structN2V choice

Trainings are cached in build/peers/<name>/ (best.ckpt + train.json); the table trains whatever
is missing (about 90 CPU-minutes each), then takes a few minutes.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread for every method, before torch loads

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

from napari_emdiffuse import evaluation as ev
from napari_emdiffuse import load_model, restore
from napari_emdiffuse.sample_data import load_pair

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / "build" / "peers"
PRESET = "demo-denoise"
BUDGET_CPU_MIN = 90.0  # the bundled model's training budget: process CPU time on one thread
PATCH, BATCH = 64, 16
STEPS_PER_EPOCH = 200  # about: training steps between validations (and LR-plateau checks)
PATIENCE = 15  # validations without a better val PSNR before stopping early
N2V_STRUCT = "none"  # chosen by `pilot-n2v` on the val rows (docs/benchmarks.md)
N2V_CANDIDATES = ("none", "horizontal:3")  # SEM scan noise is correlated along the scan line (x)
PILOT_CPU_MIN = 10.0
GAUSSIAN_SIGMAS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.15, 1.3, 1.5, 1.75, 2.0)
BM3D_SIGMAS = (3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 20)


# ---- data ----------------------------------------------------------------------------------------
def bands() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """(noisy 4 us, clean 36 us) uint8 row bands of the pair: train, val, test."""
    noisy, clean = load_pair()
    return {part: (noisy[ev.rows_of(PRESET, part)], clean[ev.rows_of(PRESET, part)])
            for part in ("train", "val", "test")}


# ---- careamics -----------------------------------------------------------------------------------
@functools.cache
def careamics():
    """Import careamics with the CPU build of torch. PyPI's torchvision wheel is linked against
    CUDA torch, so its C++ ops cannot load; careamics needs only torchvision's Python part (LVAE
    transforms), which imports once the two ops it registers fake kernels for exist."""
    spec = importlib.util.find_spec("torchvision")
    library = next(Path(spec.origin).parent.glob("_C*.so"), None) if spec else None
    try:
        if library is not None:
            torch.ops.load_library(str(library))
    except OSError:
        for op in ("nms", "qnms"):
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import careamics as package

    return package


def parse_struct(text: str) -> tuple[str, int]:
    """``"none"`` or ``"AXES:SPAN"`` (AXES horizontal, vertical, cross or square)."""
    if text == "none":
        return "none", 5
    axes, span = text.split(":")
    return axes, int(span)


def configuration(kind: str, struct: str, seed: int):
    careamics()
    from careamics.config import create_advanced_care_config, create_advanced_n2v_config

    common = dict(experiment_name=kind, data_type="array", axes="YX", patch_size=[PATCH, PATCH],
                  batch_size=BATCH, num_epochs=100_000, num_workers=0,
                  seed=seed, logger="none",
                  checkpoint_params={"monitor": "val_psnr", "mode": "max", "save_top_k": 1,
                                     "save_last": True, "auto_insert_metric_name": False},
                  trainer_params={"accelerator": "cpu", "devices": 1, "num_sanity_val_steps": 0})
    if kind == "care":
        config = create_advanced_care_config(**common)
    else:
        axes, span = parse_struct(struct)
        # flips keep the scan axis where it is; a 90 degree turn would move the correlation
        config = create_advanced_n2v_config(**common, augmentations=["x_flip", "y_flip"],
                                            struct_n2v_axes=axes, struct_n2v_span=span)
    config.training_config.early_stopping_params = None  # ours below: val PSNR, patience
    data = config.data_config
    for params in (data.train_dataloader_params, data.val_dataloader_params, data.pred_dataloader_params):
        params.update(num_workers=0, persistent_workers=False)  # all CPU time in this process
    return config


def input_normalization(datamodule) -> tuple[float, float]:
    norm = datamodule.train_dataset.config.normalization
    return float(norm.input_means[0]), float(norm.input_stds[0])


def forward(network: torch.nn.Module, image: np.ndarray, mean: float, std: float) -> np.ndarray:
    """The UNet on a whole band (sides divisible by 2**depth), in normalised units."""
    x = torch.from_numpy(((image.astype(np.float32) - mean) / std)[None, None])
    with torch.no_grad():
        return network(x)[0, 0].numpy()


def make_callback(val_noisy, val_clean, budget_s: float, patience: int, record: dict):
    careamics()
    from lightning.pytorch import Callback

    class ValidationAndBudget(Callback):
        """Logs the project's PSNR on the val rows (the checkpoint is chosen by it), stops when
        it has not improved for ``patience`` validations or the next epoch would overrun the
        CPU budget (and, as a guard, at any step past it)."""

        def __init__(self):
            self.best, self.since_best, self.last_cpu, self.epoch_cpu = -np.inf, 0, 0.0, 0.0

        def cpu(self) -> float:
            return time.process_time() - record["cpu_start"]

        def on_train_batch_end(self, trainer, pl_module, *args):
            if self.cpu() > budget_s:
                trainer.should_stop, record["stopped"] = True, "budget"

        def on_validation_epoch_end(self, trainer, pl_module):
            mean, std = input_normalization(trainer.datamodule)
            value = ev.psnr(forward(pl_module.model, val_noisy, mean, std), val_clean)
            pl_module.log("val_psnr", value)
            cpu = self.cpu()
            self.epoch_cpu, self.last_cpu = max(self.epoch_cpu, cpu - self.last_cpu), cpu
            if value > self.best:
                self.best, self.since_best = value, 0
                record.update(best_val_psnr=round(value, 3), best_step=trainer.global_step)
            else:
                self.since_best += 1
            record["history"].append([trainer.global_step, round(cpu, 1), round(value, 3)])
            print(f"step {trainer.global_step} cpu {cpu / 60:.1f} min val_psnr {value:.3f} "
                  f"(best {self.best:.3f})", flush=True)
            if self.since_best >= patience:
                trainer.should_stop, record["stopped"] = True, f"no better val PSNR in {patience} validations"
            elif cpu + self.epoch_cpu > budget_s:
                trainer.should_stop, record["stopped"] = True, "budget (the next epoch would overrun it)"

    return ValidationAndBudget()


def batches_per_pass(shape) -> int:
    """Batches in one pass over a band's patch positions (careamics' random patching)."""
    return int(np.ceil(np.prod([np.ceil(side / PATCH) for side in shape]) / BATCH))


def train(kind: str, out: Path, budget_min: float = BUDGET_CPU_MIN, struct: str = N2V_STRUCT,
          patience: int = PATIENCE, seed: int = 1,
          steps_per_epoch: int = STEPS_PER_EPOCH) -> dict:
    """Train CARE or N2V within ``budget_min`` CPU-minutes of one thread; cache the checkpoint
    with the best val PSNR as ``out/best.ckpt`` and the record as ``out/train.json``."""
    careamics()
    from careamics import CAREamist

    torch.set_num_threads(1)
    data = bands()
    (tr_n, tr_c), (va_n, va_c) = data["train"], data["val"]
    struct = "none" if kind == "care" else struct
    record = {"kind": kind, "struct": struct, "budget_cpu_min": budget_min, "patch": PATCH, "batch": BATCH,
              "steps_per_epoch": steps_per_epoch, "patience": patience, "seed": seed, "history": [],
              "stopped": "max epochs"}
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    config = configuration(kind, struct, seed)
    callback = make_callback(va_n, va_c, budget_min * 60, patience, record)
    record["cpu_start"] = time.process_time()
    wall = time.perf_counter()
    careamist = CAREamist(config, work_dir=work, callbacks=[callback], enable_progress_bar=False)
    # careamics' epoch is one pass over the band's 96 patch positions (6 steps), and it validates
    # and steps its LR plateau schedule once an epoch: list the band several times per epoch
    copies = max(1, round(steps_per_epoch / batches_per_pass(tr_n.shape)))
    inputs = {"train_data": [tr_n.astype(np.float32)] * copies, "val_data": va_n.astype(np.float32)}
    if kind == "care":  # N2V sees the noisy rows only; the clean val rows only judge checkpoints
        inputs.update(train_data_target=[tr_c.astype(np.float32)] * copies, val_data_target=va_c.astype(np.float32))
    careamist.train(**inputs)
    record["cpu_s"] = round(time.process_time() - record.pop("cpu_start"), 1)
    record["wall_s"] = round(time.perf_counter() - wall, 1)
    record["steps"] = careamist.trainer.global_step
    record["parameters"] = sum(p.numel() for p in careamist.model.model.parameters())
    record["careamics"], record["torch"] = careamics().__version__, torch.__version__
    record["machine"] = machine()
    best = next(c for c in careamist.trainer.callbacks if type(c).__name__ == "ModelCheckpoint").best_model_path
    shutil.copy(best, out / "best.ckpt")
    (out / "train.json").write_text(json.dumps(record, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({k: v for k, v in record.items() if k != "history"}), flush=True)
    return record


def cached(name: str, kind: str, struct: str = N2V_STRUCT) -> tuple[Path, dict]:
    out = CACHE / name
    if not (out / "train.json").exists():
        out.mkdir(parents=True, exist_ok=True)
        train(kind, out, struct=struct)
    record = json.loads((out / "train.json").read_text())
    if kind == "n2v" and record["struct"] != struct:
        sys.exit(f"peers: error: {out} holds N2V with struct {record['struct']}, not {struct} — delete it to retrain")
    return out / "best.ckpt", record


def run_folder(path: str) -> tuple[Path, dict]:
    return Path(path) / "best.ckpt", json.loads((Path(path) / "train.json").read_text())


class Peer:
    """A trained CAREamics model, predicting whole images the way a user would (CAREamist.predict)."""

    def __init__(self, checkpoint: Path):
        careamics()
        from careamics import CAREamist

        self.checkpoint = str(checkpoint)
        self.careamist = CAREamist(checkpoint_path=checkpoint, work_dir=tempfile.mkdtemp(prefix="peers-"),
                                   enable_progress_bar=False)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out, _ = self.careamist.predict(image.astype(np.float32), axes="YX", data_type="array", num_workers=0,
                                        checkpoint=self.checkpoint)
        return np.squeeze(out[0]).astype(np.float64)


# ---- the filters -----------------------------------------------------------------------------------
def gaussian(image, sigma):
    return gaussian_filter(image.astype(np.float64), sigma)


def bm3d_filter(image, sigma):
    import bm3d

    return bm3d.bm3d(image.astype(np.float64), sigma_psd=sigma)


def tune(fn, sigmas, noisy, clean) -> tuple[float, float]:
    """(best sigma, its val PSNR)."""
    return max(((s, ev.psnr(fn(noisy, s), clean)) for s in sigmas), key=lambda r: r[1])


# ---- measuring -------------------------------------------------------------------------------------
def cpu_seconds_per_megapixel(fn, image) -> float:
    start = time.process_time()
    fn(image)
    return (time.process_time() - start) / (image.size / 1e6)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, 1 thread used; torch {torch.__version__}"


def held_out_status(card: dict) -> str:
    """'held out' when the card's training rows miss the test rows, else a warning."""
    text = str(card.get("training", {}).get("data", ""))
    spans = [(int(a), int(b)) for a, b in re.findall(r"rows (\d+)\s*-\s*(\d+)", text)]
    test = ev.rows_of(PRESET, "test")
    if not spans:
        return f"UNKNOWN training rows ({text!r}): check they miss the test rows {test.start}-{test.stop - 1}"
    if any(a < test.stop and b >= test.start for a, b in spans):
        trained = ", ".join(f"{a}-{b}" for a, b in spans)
        return (f"PLACEHOLDER: {PRESET} was trained on rows {trained}, which hold the test rows "
                f"{test.start}-{test.stop - 1}: its figures are not held out")
    return "held out"


def table(args) -> dict:
    careamics()

    torch.set_num_threads(1)
    data = bands()
    (va_n, va_c), (te_n, te_c) = data["val"], data["test"]
    conditions = {"as_acquired": (va_n, te_n)}
    noise_std = ev.noise_model(*data["train"])["std"]  # the acquisition's own, on the train rows
    va_noisier = ev.noisier_copy(va_n, noise_std, seed=1)  # the very copies denoise_quality.py scores
    te_noisier = ev.noisier_copy(te_n, noise_std, seed=0)
    conditions["noisier"] = (va_noisier, te_noisier)
    full = load_pair()[0]  # timing only

    care_ckpt, care_rec = run_folder(args.care) if args.care else cached("care", "care")
    n2v_ckpt, n2v_rec = run_folder(args.n2v) if args.n2v else cached(f"n2v-{N2V_STRUCT.replace(':', '')}", "n2v", N2V_STRUCT)
    peers = {"CARE (careamics)": (Peer(care_ckpt), care_rec),
             f"N2V (careamics, struct {n2v_rec['struct']})": (Peer(n2v_ckpt), n2v_rec)}
    model = load_model(args.model)
    status = held_out_status(model.card)

    def ours(image):
        return restore(image, model, device="cpu").mean.astype(np.float64)

    order = ["input (4 us)", "Gaussian", "BM3D", *reversed(list(peers)), args.model]
    report = {"model": args.model, "held_out": status, "machine": machine(),
              "test_rows": "rows 0-159 of pair53 (160 x 768)", "noise_std_4us_train": round(noise_std, 2),
              "methods": {name: {} for name in order}, "conditions": {}}
    speed = {"input (4 us)": None,
             "Gaussian": cpu_seconds_per_megapixel(lambda x: gaussian(x, 1.0), full),
             "BM3D": cpu_seconds_per_megapixel(lambda x: bm3d_filter(x, 6.0), full)}
    for name, (peer, rec) in peers.items():
        speed[name] = cpu_seconds_per_megapixel(peer, full)
        report["methods"][name].update({"parameters": rec["parameters"], "train_cpu_min": round(rec["cpu_s"] / 60, 1),
                                   "steps": rec["steps"], "stopped": rec["stopped"],
                                   "best_val_psnr": rec["best_val_psnr"], "best_step": rec["best_step"]})
    speed[args.model] = cpu_seconds_per_megapixel(ours, full)
    report["methods"][args.model].update({"parameters": sum(p.numel() for p in model.network.parameters()),
                                     "train_cpu_min": args.ours_train_cpu_min or model.card.get("training", {}).get("cpu_minutes"),
                                     "settings": {k: model.card["diffusion"].get(k) for k in ("sampler", "steps", "samples", "ensemble", "estimate")}})
    for name, value in speed.items():
        report["methods"][name]["cpu_s_per_mp"] = None if value is None else round(value, 3)

    for cond, (val_in, test_in) in conditions.items():
        g_sigma, g_val = tune(gaussian, GAUSSIAN_SIGMAS, val_in, va_c)
        b_sigma, b_val = tune(bm3d_filter, BM3D_SIGMAS, val_in, va_c)
        outputs = {"input (4 us)": test_in.astype(np.float64), "Gaussian": gaussian(test_in, g_sigma),
                   "BM3D": bm3d_filter(test_in, b_sigma)}
        outputs.update({name: peer(test_in) for name, (peer, _) in peers.items()})
        outputs[args.model] = ours(test_in)
        rows = {}
        for name, image in outputs.items():
            rows[name] = ev.scores(image, te_c)
            if name != args.model:
                rows[name]["margin_of_ours"] = ev.psnr_margin(outputs[args.model], image, te_c)
        rows["Gaussian"]["sigma_from_val"] = g_sigma
        rows["BM3D"]["sigma_from_val"] = b_sigma
        care_name = next(iter(peers))
        report["conditions"][cond] = {"rows": rows, "agreement_care_vs_ours_db":
                                      round(ev.psnr(outputs[care_name], outputs[args.model], peak=255.0), 2)}
        print(cond, json.dumps(report["conditions"][cond]), flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / "table.json").write_text(json.dumps(report, indent=1))
    markdown = render(report)
    (CACHE / "table.md").write_text(markdown)
    print(markdown)
    return report


def render(report: dict) -> str:
    lines = [f"Test rows: {report['test_rows']}; {PRESET}: {report['held_out']}.", "",
             "| method | parameters | training CPU (min, 1 thread) | CPU s / MP (1 thread) | PSNR / SSIM as acquired "
             "| ours minus it (95% CI) | PSNR / SSIM noisier | ours minus it (95% CI) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, meta in report["methods"].items():
        cells = [name, f"{meta['parameters'] / 1e6:.2f} M" if meta.get("parameters") else "-",
                 f"{meta['train_cpu_min']}" if meta.get("train_cpu_min") is not None else "-",
                 f"{meta['cpu_s_per_mp']:.3g}" if meta.get("cpu_s_per_mp") is not None else "-"]
        for cond in ("as_acquired", "noisier"):
            row = report["conditions"][cond]["rows"][name]
            sigma = f" (sigma {row['sigma_from_val']})" if "sigma_from_val" in row else ""
            cells.append(f"{row['psnr']:.2f} / {row['ssim']:.3f}{sigma}")
            m = row.get("margin_of_ours")
            cells.append("-" if m is None else f"{m['margin_db']:+.2f} [{m['ci95'][0]:+.2f}, {m['ci95'][1]:+.2f}]"
                         + (" beats" if m["beats"] else " tie" if m["tie"] else " loses"))
        lines.append("| " + " | ".join(cells) + " |")
    agree = [report["conditions"][c]["agreement_care_vs_ours_db"] for c in ("as_acquired", "noisier")]
    lines += ["", f"CARE's output against ours (PSNR, peak 255): {agree[0]} dB as acquired, {agree[1]} dB noisier.",
              f"Machine: {report['machine']}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    t = sub.add_parser("table", help="the table (default); trains what build/peers/ lacks")
    t.add_argument("--model", default=PRESET)
    t.add_argument("--ours-train-cpu-min", type=float,
                   help="the model's training CPU-minutes, when its card has no training.cpu_minutes")
    t.add_argument("--care", help="a training folder (best.ckpt + train.json) instead of build/peers/care")
    t.add_argument("--n2v", help=f"a training folder instead of build/peers/n2v-{N2V_STRUCT.replace(':', '')}")
    tr = sub.add_parser("train", help="one training into build/peers/NAME (replaces it)")
    tr.add_argument("kind", choices=["care", "n2v"])
    tr.add_argument("--struct", default=N2V_STRUCT, help="N2V: none or AXES:SPAN, e.g. horizontal:3")
    tr.add_argument("--budget-min", type=float, default=BUDGET_CPU_MIN)
    tr.add_argument("--patience", type=int, default=PATIENCE)
    tr.add_argument("--steps-per-epoch", type=int, default=STEPS_PER_EPOCH, help="steps between validations")
    tr.add_argument("--out", help="default build/peers/care or build/peers/n2v-STRUCT")
    sub.add_parser("pilot-n2v", help=f"N2V with each struct mask for {PILOT_CPU_MIN:g} CPU-minutes; ranks them on val")
    args = ap.parse_args(sys.argv[1:] or ["table"])
    if args.command == "train":
        name = "care" if args.kind == "care" else f"n2v-{args.struct.replace(':', '')}"
        out = Path(args.out) if args.out else CACHE / name
        out.mkdir(parents=True, exist_ok=True)
        train(args.kind, out, args.budget_min, args.struct, args.patience, steps_per_epoch=args.steps_per_epoch)
    elif args.command == "pilot-n2v":
        results = {}
        for struct in N2V_CANDIDATES:
            out = CACHE / "pilot" / f"n2v-{struct.replace(':', '')}"
            if not (out / "train.json").exists():
                out.mkdir(parents=True, exist_ok=True)
                train("n2v", out, PILOT_CPU_MIN, struct)
            results[struct] = json.loads((out / "train.json").read_text())["best_val_psnr"]
        print(json.dumps(dict(sorted(results.items(), key=lambda r: -r[1])), indent=1))
    else:
        table(args if args.command == "table" else ap.parse_args(["table"]))


if __name__ == "__main__":
    main()
