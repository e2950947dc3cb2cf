"""Training steps per second on one process and data-parallel on several (torchrun: gloo on the
CPU, NCCL on GPUs), through the trainer the CLI uses, on training rows of the real SEM pair.

    PYTHONPATH=. python3 benchmarks/train_ddp.py                       # CPU: 1 and 2 processes
    PYTHONPATH=. python3 benchmarks/train_ddp.py --device cuda --preset base --patch 256 --batch 4 --processes 1 2 4 8

Each configuration runs in fresh processes (torchrun for more than one): a few warm-up steps,
then the fastest of several timed blocks of steps (the least disturbed by other work on a shared
machine). Every process of a data-parallel run draws the whole global batch's crop positions
and noise (so that N processes take one process's steps on N x the batch) and crops and trains
on its own rows; ``draw ms`` is what that drawing costs per step, out of the step time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One process of a configuration: time train_step() and print the figures (rank 0)."""
    import numpy as np
    import torch

    from napari_emdiffuse.evaluation import rows_of
    from napari_emdiffuse.sample_data import load_pair
    from napari_emdiffuse.training import session

    torch.set_num_threads(args.threads)
    world = None
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:
        from napari_emdiffuse.training.distributed import join

        world = join(args.device)
    noisy, clean = (image[rows_of("demo-denoise", "train")] for image in load_pair())  # only speed is measured
    settings = {"steps": 10 ** 6, "batch_size": args.batch, "patch": args.patch, "device": args.device,
                "precision": args.precision, "val_every": 10 ** 6, "checkpoint_every": 10 ** 6}
    with tempfile.TemporaryDirectory() as scratch:  # nothing is saved: train_step only
        trainer, _ = session.prepare("denoise", Path(scratch) / "run", {"noisy": noisy, "clean": clean, "check": False},
                                     preset=args.preset, settings=settings, world=world)
        sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
        for _ in range(args.warmup):
            trainer.train_step()
        best = 0.0
        for _ in range(args.blocks):
            sync()
            t0 = time.perf_counter()
            for _ in range(args.steps):
                trainer.train_step()
            sync()
            best = max(best, args.steps / (time.perf_counter() - t0))
        size = trainer.world.size
        rng, generator = np.random.default_rng(0), torch.Generator().manual_seed(0)
        draw_ms = float("inf")
        for _ in range(args.blocks):  # what every process draws per step: its crops, the global noise
            t0 = time.perf_counter()
            for _ in range(args.steps):
                batch = trainer.world.draw(trainer.data, size * args.batch, rng)
                torch.randn((size * args.batch, *batch["target"].shape[1:]), generator=generator)
            draw_ms = min(draw_ms, 1000 * (time.perf_counter() - t0) / args.steps)
        parameters = sum(p.numel() for p in trainer.network.parameters())
    if trainer.world.is_main:
        print(json.dumps({"processes": size, "threads": args.threads, "batch": args.batch, "global_batch": size * args.batch,
                          "steps_per_s": best, "draw_ms": draw_ms, "parameters": parameters,
                          "device": trainer.device.type, "backend": getattr(trainer.world, "backend", "-")}), flush=True)
    if world is not None:
        world.close()


def measure(args: argparse.Namespace, processes: int, threads: int, batch: int) -> dict:
    """One configuration in fresh processes; its figures."""
    options = ["--worker", "--device", args.device, "--preset", args.preset, "--patch", str(args.patch),
               "--batch", str(batch), "--threads", str(threads), "--precision", args.precision,
               "--steps", str(args.steps), "--blocks", str(args.blocks), "--warmup", str(args.warmup)]
    script = str(Path(__file__).resolve())
    command = [sys.executable, script, *options] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), script, *options]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (one GPU per process)")
    parser.add_argument("--preset", default="tiny", help="network size preset (default: tiny)")
    parser.add_argument("--patch", type=int, default=64, help="crop size (default: 64)")
    parser.add_argument("--batch", type=int, default=4, help="crops per process per step (default: 4)")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts (default: 1 2)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per process (default: 1; on a shared, busy CPU several threads per "
                             "process wait on each other and slow down many times)")
    parser.add_argument("--precision", default="fp32", help="auto, bf16 or fp32 (default: fp32)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed block (default: 10)")
    parser.add_argument("--blocks", type=int, default=3, help="timed blocks; the fastest counts (default: 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default: 3)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from _common import header

    header("Data-parallel training: steps per second (benchmarks/train_ddp.py)")
    rows = []
    for n in args.processes:
        rows.append(measure(args, n, args.threads, args.batch))
        if n > 1:  # one process on the same global batch: the same work per step
            rows.append(measure(args, 1, args.threads, n * args.batch))
    first = rows[0]
    print(f"# denoise, preset {args.preset} ({first['parameters'] / 1e6:.2f} M parameters), {args.patch}^2 crops, "
          f"{args.precision}, on {first['device']}")
    print(f"{'processes':>9} {'threads':>7} {'batch':>5} {'global':>6} {'steps/s':>8} {'crops/s':>8} {'draw ms':>8}")
    for r in rows:
        print(f"{r['processes']:>9} {r['threads']:>7} {r['batch']:>5} {r['global_batch']:>6} {r['steps_per_s']:>8.2f} "
              f"{r['steps_per_s'] * r['global_batch']:>8.1f} {r['draw_ms']:>8.1f}")


if __name__ == "__main__":
    main()
