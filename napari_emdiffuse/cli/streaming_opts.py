"""``--chunk`` / ``--halo`` / ``--cluster`` for the restoring subcommands: stream INPUT chunk by
chunk into OME-Zarr (resuming an unfinished OUTPUT), here or on a dask.distributed cluster."""
from __future__ import annotations

import argparse
import time
from pathlib import Path


def chunk_size(text: str) -> tuple[int, ...]:
    """``1024`` (Y = X), ``1024,512`` (Y, X) or ``4,1024,1024`` (Z, Y, X)."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, Y,X or Z,Y,X pixels, got {text!r}") from None
    if len(values) not in (1, 2, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N, Y,X or Z,Y,X pixels (each at least 1), got {text!r}")
    return (1, values[0], values[0]) if len(values) == 1 else values


def add_streaming_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "large volumes", "Stream INPUT chunk by chunk into an OME-Zarr OUTPUT; a run that was stopped "
        "resumes where it stopped when started again with the same options.")
    group.add_argument("--chunk", type=chunk_size, metavar="N|Y,X|Z,Y,X",
                       help="stream in chunks of this many pixels (e.g. 2048 or 4,2048,2048); OUTPUT must be .zarr")
    group.add_argument("--halo", type=int, metavar="PX",
                       help="context restored around each chunk in Y and X (default: half a tile, at least the "
                            "tile overlap + 32)")
    group.add_argument("--cluster", metavar="ADDRESS",
                       help="run the chunks on an existing dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 "
                            "(workers need this package and read INPUT/write OUTPUT at the same paths)")


def wants_streaming(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in ("chunk", "cluster", "halo"))


def run_streaming(args: argparse.Namespace, task: str, source: Path, default_model: str | None) -> int:
    """Stream ``source`` into OUTPUT (an OME-Zarr store and its _std/_aleatoric/_mask siblings)."""
    from ..io import image_format
    from ..streaming import DEFAULT_CHUNK, stream_restore
    from .common import fail, tqdm_progress

    if image_format(args.output) != "zarr":
        fail(f"--chunk/--halo/--cluster write OME-Zarr: give OUTPUT a .zarr name, not {Path(args.output).name}")
    model = args.model or default_model
    if not model:
        fail(f"no default {task} model is bundled — pass one with --model NAME|PATH")
    extra = {name: getattr(args, name) for name in ("estimate", "ensemble") if getattr(args, name, None) is not None}
    if task == "isotropic":
        extra["z_factor"] = args.z_factor
    if task == "superres" and getattr(args, "scale", None) is not None:
        from ..loading import load_model
        from ..tasks.superres import model_scale

        model = load_model(model, task=task)
        if model_scale(model) != args.scale:
            fail(f"model {model.name!r} super-resolves x{model_scale(model)}, not x{args.scale} — "
                 f"pass --scale {model_scale(model)} or choose a x{args.scale} model")
    t0 = time.perf_counter()
    with tqdm_progress(f"{task} {source.name} (chunks)") as progress:
        report = stream_restore(str(source), args.output, model, task=task, cluster=args.cluster,
                                chunk=args.chunk or DEFAULT_CHUNK, halo=args.halo, samples=args.samples,
                                steps=args.steps, sampler=args.sampler, tile=args.tile, overlap=args.overlap,
                                device=args.device, seed=args.seed, progress=progress, **extra)
    where = f"{report.info['workers']} workers at {args.cluster}" if args.cluster else "this machine"
    resumed = f", {report.skipped} already done" if report.skipped else ""
    from ..streaming import output_paths

    written = ", ".join(str(p) for p in output_paths(report.output, report.fields).values())
    print(f"{task}: {source.name} -> {'x'.join(map(str, report.shape))} in {report.chunks} chunks "
          f"({report.computed} restored{resumed}) on {where} in {time.perf_counter() - t0:.1f} s -> {written}")
    return 0
