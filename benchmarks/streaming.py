"""Streaming restoration of zarr volumes: peak memory against volume size, throughput on one and
two dask.distributed workers, and the seam difference a finite halo leaves.

    PYTHONPATH=. python3 benchmarks/streaming.py memory  [--plane 2048] [--slices 4] [--chunk 512]
    PYTHONPATH=. python3 benchmarks/streaming.py workers [--plane 512] [--slices 4] [--chunk 256]
    PYTHONPATH=. python3 benchmarks/streaming.py seams   [--size 768] [--chunk 384] [--halos 0 32 64 128]

memory:  the same job on a volume and on one with 4x the slices, each in a fresh process; peak
         RSS (the process's maximum resident set) must not grow with the volume. The network is
         a pass-through (x0 = the condition) so the run measures the streaming pipeline itself
         (reading, normalising, positional noise, tiled sampling, writing), not UNet compute,
         whose activations are per tile batch and so constant anyway.
workers: a small random UNet on a volume: in this process, and on a loopback LocalCluster of 1
         and 2 worker processes (1 thread each); voxels per second and each process's peak RSS.
seams:   the demo denoiser on the real 4 us SEM image: the whole plane against 2 x 2 chunks with
         each halo; the difference, next to the sample spread (per-pixel std) for scale.
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, header  # noqa: E402

TINY_UNET = {"kind": "unet", "in_channel": 2, "inner_channel": 16, "channel_mults": [1, 2], "res_blocks": 1,
             "attn_res": [], "norm_groups": 8, "aleatoric": True}


class PassThrough(nn.Module):
    """x0 = the condition: the sampler, tiling and I/O run for real, the network costs nothing."""

    dims, aleatoric, downsample_factor = 2, False, 8

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise_level):
        return x[:, :1]


def make_model(kind: str):
    from napari_emdiffuse.model import RestorationModel, model_from_card

    diffusion = {"parameterization": "x0", "clip": [-1.5, 1.5], "sampler": "dpmpp_2m", "steps": 4, "samples": 2}
    if kind == "passthrough":
        card = {"name": "pass-through", "task": "denoise", "diffusion": {**diffusion, "samples": 1},
                "tile": {"size": 256, "overlap": 24}}
        return RestorationModel(card=card, network=PassThrough())
    card = {"name": "tiny-unet", "task": "denoise", "network": TINY_UNET, "diffusion": {**diffusion, "steps": 2},
            "tile": {"size": 128, "overlap": 16}, "uncertainty": {"threshold": 0.2}}
    torch.manual_seed(0)
    model = model_from_card(card)
    with torch.no_grad():
        for p in model.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def make_volume(path: Path, slices: int, plane: int, chunk: int) -> None:
    """A uint8 zarr volume of smooth structure plus noise, written slice by slice."""
    import zarr

    array = zarr.create_array(str(path), shape=(slices, plane, plane), chunks=(1, chunk, chunk), dtype="uint8")
    rng = np.random.default_rng(0)
    axis = np.arange(plane, dtype=np.float32) / plane
    for z in range(slices):
        clean = 128 + 60 * np.sin(12 * axis[None, :] + 3 * z / slices) * np.cos(9 * axis[:, None])
        noise = rng.standard_normal(clean.shape, dtype=np.float32) * 25
        array[z] = np.clip(clean + noise, 0, 255).astype(np.uint8)


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not getrusage's ru_maxrss: Linux carries that
    over fork and exec, so a child would report its parent's peak if that was higher."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec: dict) -> None:
    """One streaming run in this (fresh) process; prints its figures as JSON."""
    from napari_emdiffuse.streaming import stream_restore

    torch.set_num_threads(spec.get("threads", 1))
    model = make_model(spec["model"])
    t0 = time.perf_counter()
    report = stream_restore(spec["source"], spec["output"], model, chunk=(1, spec["chunk"], spec["chunk"]),
                            halo=spec.get("halo"), device="cpu", batch_size=spec.get("batch_size"),
                            cluster=spec.get("cluster"))
    print(json.dumps({"seconds": time.perf_counter() - t0, "chunks": report.chunks, "peak_rss_mb": peak_rss_mb()}))


def run_child(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "_child", json.dumps(spec)], capture_output=True, text=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory(args) -> None:
    header("Streaming: peak memory against volume size (pass-through network, fresh process per run)")
    work = Path(tempfile.mkdtemp(prefix="emd-stream-"))
    try:
        rows = []
        for slices in (args.slices, 4 * args.slices):
            source = work / f"in{slices}.zarr"
            make_volume(source, slices, args.plane, args.chunk)
            spec = {"source": str(source), "output": str(work / f"out{slices}.zarr"), "chunk": args.chunk,
                    "model": "passthrough", "threads": 1}
            r = run_child(spec)
            voxels = slices * args.plane ** 2
            rows.append((slices, voxels, r))
            print(f"{slices:3d} x {args.plane} x {args.plane} uint8 ({voxels / 2**20:.0f} MiB, {r['chunks']} chunks of "
                  f"{args.chunk}^2): {r['seconds']:.1f} s, {voxels / r['seconds'] / 1e6:.2f} Mvoxel/s, "
                  f"peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
        ratio = rows[1][2]["peak_rss_mb"] / rows[0][2]["peak_rss_mb"]
        print(f"4x the data: peak RSS x{ratio:.3f} ({'within' if ratio <= 1.25 else 'ABOVE'} the 1.25x budget)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cluster_run(source, output, chunk, workers: int) -> dict:
    from distributed import Client, LocalCluster

    from napari_emdiffuse.streaming import stream_restore

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("napari_emdiffuse.streaming.cluster"))  # warm: imports are not throughput
        t0 = time.perf_counter()
        report = stream_restore(str(source), output, make_model("unet"), chunk=(1, chunk, chunk), device="cpu",
                                cluster=cluster.scheduler_address)
        seconds = time.perf_counter() - t0
        rss = client.run(peak_rss_mb)
    return {"seconds": seconds, "chunks": report.chunks, "worker_rss_mb": max(rss.values())}


def workers(args) -> None:
    header("Streaming: throughput here and on 1 / 2 dask.distributed workers (random tiny UNet, 2 steps, 2 samples)")
    work = Path(tempfile.mkdtemp(prefix="emd-stream-"))
    try:
        source = work / "in.zarr"
        make_volume(source, args.slices, args.plane, args.chunk)
        voxels = args.slices * args.plane ** 2
        r = run_child({"source": str(source), "output": str(work / "local.zarr"), "chunk": args.chunk,
                       "model": "unet", "threads": 1})
        print(f"in one process (1 thread): {r['seconds']:.1f} s, {voxels / r['seconds'] / 1e3:.1f} kvoxel/s, "
              f"peak RSS {r['peak_rss_mb']:.0f} MiB", flush=True)
        for n in (1, 2):
            c = cluster_run(source, work / f"c{n}.zarr", args.chunk, n)
            print(f"{n} worker{'s' if n > 1 else ''} (1 thread each): {c['seconds']:.1f} s, "
                  f"{voxels / c['seconds'] / 1e3:.1f} kvoxel/s, peak worker RSS {c['worker_rss_mb']:.0f} MiB", flush=True)
        import zarr

        same = all(np.array_equal(zarr.open_array(str(work / f"{name}.zarr"), path="0")[...],
                                  zarr.open_array(str(work / "local.zarr"), path="0")[...]) for name in ("c1", "c2"))
        print(f"{args.slices} x {args.plane} x {args.plane} voxels, {args.chunk}^2 chunks; cluster results identical "
              f"to the local one: {same}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seams(args) -> None:
    from _common import load_demo

    from napari_emdiffuse.api import restore
    from napari_emdiffuse.sample_data import load_pair
    from napari_emdiffuse.streaming import open_result, stream_restore

    torch.set_num_threads(1)  # the cores are shared: one thread does not wait on the others
    model, what = load_demo(args.model)
    d = model.diffusion
    header(f"Streaming: seam difference with a finite halo ({what}, {d['sampler']} {d['steps']} steps, "
           f"{d['samples']} samples, tile {model.tile['size']})")
    image = load_pair()[0][: args.size, : args.size]  # the real 4 us SEM image (a consistency check, not quality)
    t0 = time.perf_counter()
    whole = restore(image, model, device="cpu")
    seconds = time.perf_counter() - t0
    other_seed = restore(image, model, device="cpu", seed=1).mean.astype(np.float64)
    print(f"{image.shape[0]}x{image.shape[1]} uint8, whole plane in {seconds:.0f} s: mean per-pixel sample std "
          f"{float(whole.std.mean()):.2f} grey levels; another seed differs by mean |diff| "
          f"{np.abs(other_seed - whole.mean).mean():.3f}; seam contrast {seam_contrast(whole.mean, args.chunk):.3f}",
          flush=True)
    work = Path(tempfile.mkdtemp(prefix="emd-stream-"))
    try:
        for halo in args.halos:
            out = work / f"h{halo}.zarr"
            t0 = time.perf_counter()
            stream_restore(image, out, model, chunk=(args.chunk, args.chunk), halo=halo, device="cpu")
            seconds = time.perf_counter() - t0
            mean = open_result(out)[...]
            diff = np.abs(mean.astype(np.float64) - whole.mean)
            print(f"chunks {args.chunk}^2, halo {halo:3d}: mean |diff| to the whole plane {diff.mean():.3f} "
                  f"(max {diff.max():.0f}); seam contrast {seam_contrast(mean, args.chunk):.3f} ({seconds:.0f} s)",
                  flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seam_contrast(image: np.ndarray, chunk: int) -> float:
    """Mean |difference| between neighbouring pixels across chunk seams over that elsewhere
    (1.0: the seams do not show)."""
    image = image.astype(np.float64)
    ratios = []
    for axis in (0, 1):
        steps = np.abs(np.diff(image, axis=axis)).mean(axis=1 - axis)
        seams = np.arange(chunk - 1, image.shape[axis] - 1, chunk)
        ratios.append(steps[seams].mean() / np.delete(steps, seams).mean())
    return float(np.mean(ratios))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_child":
        return child(json.loads(sys.argv[2]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    m = sub.add_parser("memory")
    m.add_argument("--plane", type=int, default=2048)
    m.add_argument("--slices", type=int, default=4)
    m.add_argument("--chunk", type=int, default=512)
    w = sub.add_parser("workers")
    w.add_argument("--plane", type=int, default=512)
    w.add_argument("--slices", type=int, default=4)
    w.add_argument("--chunk", type=int, default=256)
    s = sub.add_parser("seams")
    s.add_argument("--size", type=int, default=768)
    s.add_argument("--chunk", type=int, default=384)
    s.add_argument("--halos", type=int, nargs="+", default=[0, 32, 64, 128])
    s.add_argument("--model", default=None, help="model to use (default: the demo denoiser)")
    args = parser.parse_args()
    {"memory": memory, "workers": workers, "seams": seams}[args.mode](args)


if __name__ == "__main__":
    main()
