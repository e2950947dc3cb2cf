"""``emdiffuse TASK INPUT -o OUTPUT``: one subcommand per registered task (denoise, superres,
isotropic, ...), all run by the same restore session; ``--chunk`` / ``--halo`` / ``--cluster``
stream INPUT chunk by chunk into OME-Zarr (resuming an unfinished OUTPUT), here or on a
dask.distributed cluster."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..io import read_calibration, read_image
from ..requests import ESTIMATES, RestoreRequest, SamplingOptions
from ..restore_session import RestoreSession, check_paths
from ..results import output_paths, sampling_summary
from ..streaming import DEFAULT_CHUNK
from ..tasks import all_tasks, get_task
from ..tasks.base import Task, positive_int
from ..uncertainty import unreliable_fraction
from .common import handle_errors, tqdm_progress


def chunk_size(text: str) -> tuple[int, ...]:
    """``1024`` (Y = X), ``1024,512`` (Y, X) or ``4,1024,1024`` (Z, Y, X)."""
    try:
        values = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, Y,X or Z,Y,X pixels, got {text!r}") from None
    if len(values) not in (1, 2, 3) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected N, Y,X or Z,Y,X pixels (each at least 1), got {text!r}")
    return (1, values[0], values[0]) if len(values) == 1 else values


def add_parsers(subparsers) -> None:
    for task in all_tasks():
        parser = subparsers.add_parser(task.name, help=task.summary, description=task.description)
        add_restore_arguments(parser, task)
        parser.set_defaults(func=run, task=task.name)


def add_restore_arguments(parser: argparse.ArgumentParser, task: Task) -> None:
    """INPUT, -o OUTPUT, the sampling options, the task's own options and the streaming options."""
    parser.add_argument("input", metavar="INPUT", help="TIFF (2D or a stack) or zarr store to restore")
    parser.add_argument("-o", "--output", metavar="OUTPUT", required=True,
                        help="where to write the result (.tif/.tiff or .zarr); the per-pixel std goes "
                             "next to it as OUTPUT_std (with 2 or more samples), the reliability mask "
                             "as OUTPUT_mask, an aleatoric model's std as OUTPUT_aleatoric")
    parser.add_argument("--model", metavar="NAME|PATH", default=task.default_model,
                        help="bundled preset (see `emdiffuse models`), model card, run folder or "
                             f"EMDiffuse *_Network.pth checkpoint (default: {task.default_model})")
    parser.add_argument("--samples", type=positive_int, metavar="K",
                        help="diffusion samples to average; 2 or more also write OUTPUT_std, their spread (default: the model card's)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="sampler steps (default: the model card's)")
    parser.add_argument("--sampler", metavar="NAME", help="ddpm, ddim, dpmpp_2m, heun, ... (default: the model card's)")
    parser.add_argument("--tile", type=positive_int, metavar="T", help="tile size in pixels (default: the model card's)")
    parser.add_argument("--overlap", type=int, metavar="PX", help="tile overlap in pixels (default: the model card's)")
    parser.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:1 or mps (default: auto)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; the same seed gives the same result (default: 0)")
    parser.add_argument("--estimate", choices=list(ESTIMATES),
                        help="the restored image: the model's posterior mean (no sampling noise) or the "
                             "mean of the samples, as EMDiffuse does (default: the model card's)")
    parser.add_argument("--ensemble", type=positive_int, metavar="E",
                        help="posterior mean averaged over E of 8 views of the input (rotations/flips; for "
                             "isotropic, rotations and the two z directions) (default: the model card's)")
    task.add_arguments(parser)
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


def request_from(args: argparse.Namespace, task: Task) -> RestoreRequest:
    options = SamplingOptions(samples=args.samples, steps=args.steps, sampler=args.sampler, tile=args.tile,
                              overlap=args.overlap, estimate=args.estimate, ensemble=args.ensemble,
                              device=args.device, seed=args.seed)
    return RestoreRequest(task.name, args.model, options, task.params(args))


def wants_streaming(args: argparse.Namespace) -> bool:
    return any(getattr(args, name, None) is not None for name in ("chunk", "cluster", "halo"))


@handle_errors
def run(args: argparse.Namespace) -> int:
    """Read INPUT, check it, restore it, write OUTPUT (the input's dtype) and its side files
    atomically (or stream them into OME-Zarr), and print a one-line summary."""
    task = get_task(args.task)
    source, _ = check_paths(args.input, args.output)
    t0 = time.perf_counter()
    if wants_streaming(args):
        return _stream(args, task, source, t0)
    image = read_image(source)
    with tqdm_progress(f"{task.name} {source.name}") as progress:
        session = RestoreSession(request_from(args, task), progress=progress)
        session.check(image, source.name)
        result = session.whole(image)
    written = session.write(result, args.output, like=source)
    info, geometry = result.info, session.geometry
    shape = "x".join(map(str, image.shape))
    out_shape = "x".join(map(str, result.mean.shape))
    resized = f" -> {out_shape}" if out_shape != shape else ""
    if geometry.z_factor > 1:
        calibration = read_calibration(source)
        spacing = (f"z spacing {geometry.output_calibration(calibration, 3).spacing_text(0)}" if calibration
                   else f"no voxel size in the input; z spacing 1/{geometry.z_factor}")
        resized += f" (z-factor {geometry.z_factor}, {spacing})"
    unreliable = (f"{unreliable_fraction(result.mask):.1%} unreliable pixels" if result.mask is not None
                  else "no reliability mask")
    if result.uncertainty is not None:
        unreliable = f"predicted error {float(np.sqrt(np.mean(np.square(result.uncertainty)))):.2g} grey levels RMS; " + unreliable
    print(f"{task.name}: {source.name} {shape} {image.dtype}{resized} with {session.model.name}, "
          f"{sampling_summary(info)} in "
          f"{time.perf_counter() - t0:.1f} s; {unreliable} -> {', '.join(map(str, written))}")
    validation = info.get("validation") or {}
    if validation.get("beyond"):
        print(f"{task.name}: warning: this input lies beyond what {session.model.name} was validated on "
              f"({'; '.join(validation['why'])}) — treat the result and its uncertainty with caution", file=sys.stderr)
    return 0


def _stream(args: argparse.Namespace, task: Task, source: Path, t0: float) -> int:
    """Stream ``source`` into OUTPUT (an OME-Zarr store and its siblings)."""
    if Path(args.output).suffix.lower() != ".zarr":
        raise ValueError(f"--chunk/--halo/--cluster write OME-Zarr: give OUTPUT a .zarr name, not {Path(args.output).name}")
    with tqdm_progress(f"{task.name} {source.name} (chunks)") as progress:
        session = RestoreSession(request_from(args, task), progress=progress)
        report = session.stream(str(source), args.output, cluster=args.cluster, chunk=args.chunk or DEFAULT_CHUNK,
                                halo=args.halo)
    where = f"{report.info['workers']} workers at {args.cluster}" if args.cluster else "this machine"
    resumed = f", {report.skipped} already done" if report.skipped else ""
    written = ", ".join(str(p) for p in output_paths(report.output, report.fields).values())
    print(f"{task.name}: {source.name} -> {'x'.join(map(str, report.shape))} in {report.chunks} chunks "
          f"({report.computed} restored{resumed}) on {where} in {time.perf_counter() - t0:.1f} s -> {written}")
    return 0
