"""Shared pieces of the speed and quality benchmarks: the held-out region, the demo model,
image metrics, FLOP counting, the machine's measured peak and its load while we measure."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
HELD_OUT_ROWS = slice(576, 768)  # never seen in training (weights/train_demo_denoise.py)

# EMDiffuse-n as published: 15.7 M parameters.
PUBLISHED_UNET = dict(in_channel=2, inner_channel=32, channel_mults=(1, 2, 4, 8), res_blocks=2,
                      attn_res=(16,), num_head_channels=32, dropout=0.2)

# Dense bf16 tensor-core peaks (TFLOP/s) by card name, from the vendors' data sheets.
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                        "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}


def held_out(columns: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
    """(noisy 4 us, clean 36 us) uint8 crops of the held-out rows 576-767 of the real SEM pair."""
    from napari_emdiffuse.sample_data import load_pair

    noisy, clean = load_pair()
    return noisy[HELD_OUT_ROWS, columns], clean[HELD_OUT_ROWS, columns]


def load_demo(source: str | None = None):
    """The demo denoiser: the bundled preset when it exists, else the training run's latest EMA
    checkpoint. Returns (model, description of what was loaded)."""
    from napari_emdiffuse.loading import load_model

    if source is None:
        source = "demo-denoise" if (REPO / "models" / "demo-denoise.yaml").exists() else str(REPO / "build/demo-denoise-run")
    model = load_model(source)
    step = model.card.get("training", {}).get("step")
    return model, f"{source}" + (f" (training step {step})" if step else "")


def affine_match(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``a * image + b`` with a, b the least-squares fit to ``reference`` (removes the
    brightness/contrast difference between dwell times before comparing)."""
    x = image.astype(np.float64).ravel()
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, reference.astype(np.float64).ravel(), rcond=None)
    return (a * image.astype(np.float64) + b)


def psnr(image: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR after the affine intensity match, in dB."""
    err = affine_match(image, reference) - reference.astype(np.float64)
    return float(10 * np.log10(data_range ** 2 / np.mean(err ** 2)))


def ssim(image: np.ndarray, reference: np.ndarray, data_range: float = 255.0) -> float:
    from skimage.metrics import structural_similarity

    return float(structural_similarity(affine_match(image, reference), reference.astype(np.float64),
                                       data_range=data_range))


def count_flops(network: torch.nn.Module, x: torch.Tensor, level: torch.Tensor) -> int:
    """FLOPs of one forward pass (2 per multiply-add; convolutions, matmuls and attention)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        network(x, level)
    return int(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 2048, seconds: float = 2.0) -> float:
    """Measured throughput of a large matrix product on the CPU (FLOP/s): the practical peak the
    network's rate is compared with."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t = time.perf_counter()
        a @ b
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t))
    return best


def gpu_peak(name: str) -> float | None:
    """Dense bf16 peak of a known card in FLOP/s, or None."""
    for key, tflops in GPU_BF16_PEAK_TFLOPS.items():
        if all(part in name for part in key.split()):
            return tflops * 1e12
    return None


def timed(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    """Fastest of ``repeats`` calls in seconds (the least disturbed by other processes)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        if sync:
            sync()
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        best = min(best, time.perf_counter() - t)
    return best


def machine() -> str:
    cpu = platform.processor() or "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}"


def load_note() -> str:
    """The 1/5/15-minute load averages: other processes share the cores while we measure."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} on {os.cpu_count()} cores"


def header(title: str) -> None:
    print(f"# {title}\n# {time.strftime('%Y-%m-%d %H:%M')} | {machine()} | {load_note()}", flush=True)
