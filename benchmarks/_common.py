"""Shared pieces of the speed and quality benchmarks: the validation region settings are
compared on, the demo model, image metrics (napari_emdiffuse.evaluation's), FLOP counting, the machine's measured peak and its load while we measure."""
from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.device import cpu_has_native_bf16
from napari_emdiffuse.engine import Settings
from napari_emdiffuse.engine.sampling import sample_unit
from napari_emdiffuse.normalize import Normalizer
from napari_emdiffuse.streaming import weights_fingerprint
from napari_emdiffuse.tasks import Unit

REPO = Path(__file__).resolve().parents[1]
# Settings are compared (samplers, steps, the EMDiffuse recipe) on the demo pair's validation rows;
# the test rows are only for the reported figures (napari_emdiffuse/evaluation.py).
HELD_OUT_ROWS = ev.rows_of("demo-denoise", "val")

# EMDiffuse-n as published: 15.7 M parameters.
PUBLISHED_UNET = dict(in_channel=2, inner_channel=32, channel_mults=(1, 2, 4, 8), res_blocks=2,
                      attn_res=(16,), num_head_channels=32, dropout=0.2)

# Dense bf16 tensor-core peaks (TFLOP/s) by card name, from the vendors' data sheets.
GPU_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0,
                        "H100 NVL": 835.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "RTX 4090": 165.0}


def held_out(columns: slice = slice(None), rows: slice = HELD_OUT_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(noisy 4 us, clean 36 us) uint8 crops of the validation rows of the real SEM pair."""
    from napari_emdiffuse.sample_data import load_pair

    start, stop = rows.start or 0, rows.stop
    if start < HELD_OUT_ROWS.start or stop is None or stop > HELD_OUT_ROWS.stop:
        raise ValueError(f"rows {start}-{stop} leave the validation rows "
                         f"{HELD_OUT_ROWS.start}-{HELD_OUT_ROWS.stop}: compare settings there")
    noisy, clean = load_pair()
    return noisy[rows, columns], clean[rows, columns]


def split_region(part: str) -> tuple[np.ndarray, np.ndarray, slice]:
    """(noisy, clean, rows) of the demo pair's ``val`` or ``test`` rows, all 768 columns. Settings
    are chosen on val; test is for the one reported figure."""
    from napari_emdiffuse.sample_data import load_pair

    if part not in ("val", "test"):
        raise ValueError(f"unknown split {part!r}: use val (choosing settings) or test (the reported figure)")
    rows = ev.rows_of("demo-denoise", part)
    noisy, clean = load_pair()
    return noisy[rows], clean[rows], rows


def span(text: str) -> slice:
    """``"a:b"`` -> slice(a, b)."""
    a, b = (int(v) for v in text.split(":"))
    return slice(a, b)


def load_demo(source: str | None = None):
    """The demo denoiser: the bundled preset when it exists, else the training run's latest EMA
    checkpoint. Returns (model, description of what was loaded)."""
    from napari_emdiffuse.loading import load_model

    if source is None:
        source = "demo-denoise" if (REPO / "models" / "demo-denoise.yaml").exists() else str(REPO / "build/demo-denoise-run")
    model = load_model(source)
    step = model.card.get("training", {}).get("step")
    return model, f"{source}" + (f" (training step {step})" if step else "")


# The project's one PSNR / SSIM definition (affine intensity match, peak 255 for these 8-bit data).
affine_match, psnr, ssim = ev.affine_match, ev.psnr, ev.ssim


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


def evaluations_per_tile(info: dict) -> int:
    """Network evaluations per tile of a restore (its ``info``): every sample's steps, then one per extra view."""
    return int(info["evaluations"]) * int(info["samples"]) + int(info.get("ensemble") or 1) - 1


def header(title: str) -> None:
    print(f"# {title}\n# {time.strftime('%Y-%m-%d %H:%M')} | {machine()} | {load_note()}", flush=True)


# --- sampling the validation region -------------------------------------------------------------

def recipe_sigmas(sigma_min: float, sigma_max: float, skip_repeats: bool = False) -> torch.Tensor:
    """EMDiffuse's sampling grid: all 1000 timesteps of its linear 1e-4..0.09 test schedule,
    noisiest first, ending with 0, with each noise level clipped to the model's trained range.

    Only 437 of the 1000 levels lie below sigma 80; the other 563 clip to sigma_max, where an
    ancestral step from sigma_max to sigma_max leaves the state unchanged (no noise is added), so
    they cost an evaluation each and change nothing. ``skip_repeats`` drops them for quality runs
    (the result is the same up to float rounding); timing runs keep all 1000.
    """
    from napari_emdiffuse.diffusion.schedules import schedule_sigmas

    sig = np.clip(schedule_sigmas("emdiffuse_test")[::-1], sigma_min, sigma_max)
    if skip_repeats:
        sig = np.concatenate([sig[:1], sig[1:][sig[1:] < sig[0]]])
    return torch.tensor(np.append(sig, 0.0), dtype=torch.float64)


def grid_settings(settings, sigmas: torch.Tensor):
    """``settings`` whose sampler runs over the given noise levels instead of a named grid."""
    from dataclasses import asdict

    class FixedGrid(Settings):
        def sigmas(self) -> torch.Tensor:
            return sigmas

        @property
        def evaluations(self) -> int:
            return len(sigmas) - 1

    fields = asdict(settings)
    fields["steps"] = len(sigmas) - 1
    return FixedGrid(**fields)


def draw_samples(model, noisy: np.ndarray, settings, seed: int = 0, layout: str = "channels_last",
                 device: torch.device = torch.device("cpu")):
    """``settings.samples`` restorations of ``noisy`` (image units, float64, (S, H, W)) through the
    same sampler, tiling and seeded noise as :func:`napari_emdiffuse.restore`, the seconds
    taken, and the posterior-mean estimate (the denoiser at the noisiest level, averaged over the
    samples' starts: restore's ``estimate="posterior_mean"``)."""
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model.network.to(device, memory_format=fmt).eval()
    norm = model.normalization
    normalizer = Normalizer.for_card(noisy, norm)
    unit = Unit(0, normalizer(noisy)[None, None], [(0, k) for k in range(settings.samples)])
    sync()
    t0 = time.perf_counter()
    sampled = sample_unit(model, unit, settings, seed=seed, origin=(0, 0), device=device)
    sync()
    seconds = time.perf_counter() - t0
    posterior_mean = normalizer.inverse(sampled.first[0].mean(0)).astype(np.float64)
    return normalizer.inverse(sampled.samples[0]).astype(np.float64), seconds, posterior_mean


def sync() -> None:
    """Wait for the GPU's queued work (timings on CUDA), nothing on the CPU."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def recipe_settings(model, device: torch.device, precision: str = "fp32", skip_repeats: bool = False):
    """The EMDiffuse recipe as :class:`Settings`: ancestral DDPM over :func:`recipe_sigmas`, 2
    samples, 256-pixel tiles at stride 224; fp32 at batch 1 (as EMDiffuse runs) unless
    ``precision`` is bf16 (then in tile batches: the cheaper quality run on a CPU)."""
    d = model.diffusion
    base = Settings.for_model(model, device, sampler="ddpm", samples=2, overlap=32, precision=precision,
                              **({"batch_size": 1} if precision == "fp32" else {}))
    return grid_settings(base, recipe_sigmas(float(d["sigma_min"]), float(d["sigma_max"]), skip_repeats=skip_repeats))


def recipe_samples(model, noisy: np.ndarray, seed: int = 0, precision: str = "bf16",
                   device: torch.device = torch.device("cpu")) -> tuple[np.ndarray, float, bool]:
    """The EMDiffuse recipe's 2 samples of ``noisy`` (ancestral DDPM over :func:`recipe_sigmas`
    with repeats skipped), cached in build/bench/ by weights, crop, seed and precision because
    they take many minutes on a CPU. The recipe is fp32; on a shared 2-core CPU its quality run
    uses bf16 autocast with both samples in tile batches, which changes the PSNR by under 0.01 dB
    (see docs/benchmarks.md) and the wall time, which is measured separately in fp32 at batch 1.
    Returns (samples, seconds it took, whether it came from the cache)."""
    key = (f"{weights_fingerprint(model)}-{noisy.shape[0]}x{noisy.shape[1]}-{int(noisy.astype(np.int64).sum())}-{seed}"
           f"-{precision}")
    path = REPO / "build" / "bench" / f"recipe-{key}.npz"
    if path.exists():
        cached = np.load(path)
        return cached["samples"], float(cached["seconds"]), True
    settings = recipe_settings(model, device, precision, skip_repeats=True)
    samples, seconds, _ = draw_samples(model, noisy, settings, seed=seed,
                                       layout="contiguous" if precision == "fp32" else "channels_last", device=device)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, samples=samples, seconds=seconds)
    return samples, seconds, False


def quality(samples: np.ndarray, clean: np.ndarray) -> dict:
    """PSNR/SSIM of the mean of the samples and PSNR of the first alone, against the clean
    image; ``spread`` is the mean per-pixel std between samples (grey levels): real posterior
    samples differ, a sampler that only returns the blurred mean does not."""
    mean = samples.mean(axis=0)
    out = {"psnr": psnr(mean, clean), "ssim": ssim(mean, clean), "psnr_one": psnr(samples[0], clean)}
    out["spread"] = float(samples.std(axis=0, ddof=1).mean()) if len(samples) > 1 else float("nan")
    return out


def forward_seconds(network: torch.nn.Module, batch: int, channels_last: bool = True, dtype: torch.dtype | None = None,
                    repeats: int = 3, size: int = 256, compiled: bool | str = False,
                    graphed: bool = False) -> tuple[float, float]:
    """Seconds per forward pass of ``batch`` tiles of ``size``^2 (fastest of ``repeats``) in the
    given layout and autocast dtype, and the first call's seconds (compilation when compiled, a
    ``torch.compile`` mode when a string; capture when ``graphed``: one CUDA graph replayed)."""
    import contextlib

    device = next(network.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    network = network.to(memory_format=fmt).eval()
    fn = (torch.compile(network, mode=compiled) if isinstance(compiled, str) else torch.compile(network)) \
        if compiled else network
    x = torch.randn(batch, network.in_channel, size, size, device=device).contiguous(memory_format=fmt)
    level = torch.full((batch,), 0.5, device=device)

    def cast():
        # graphs replay kernels, not Python: autocast's weight cache must not outlive the capture
        return torch.autocast(device.type, dtype=dtype, cache_enabled=not graphed) if dtype else contextlib.nullcontext()

    def forward():
        with torch.inference_mode(), cast():
            return fn(x, level)

    sync = torch.cuda.synchronize if device.type == "cuda" else None
    t0 = time.perf_counter()
    if graphed:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.inference_mode(), torch.cuda.graph(graph), cast():
            fn(x, level)
        run = graph.replay
    else:
        forward()
        run = forward
    if sync:
        sync()
    first = time.perf_counter() - t0
    return timed(run, repeats, warmup=1 if compiled or graphed else 0, sync=sync), first


def device_peak(device: torch.device, dtype: torch.dtype | None, cache: dict = {}) -> float | None:
    """FLOP/s the rate is compared with: the card's bf16 data-sheet peak on a GPU, the measured
    matmul rate in the same dtype on the CPU."""
    if device.type == "cuda":
        return gpu_peak(torch.cuda.get_device_name())
    key = dtype or torch.float32
    if key not in cache:
        cache[key] = matmul_peak(key)
    return cache[key]


def precision_note(model) -> str:
    """The inference precision restore() uses for this model on the CPU."""
    precision = Settings.for_model(model, torch.device("cpu")).precision
    if precision == "auto":
        return f"precision auto ({'bf16' if cpu_has_native_bf16() else 'fp32'} on this CPU)"
    return f"precision {precision}"
