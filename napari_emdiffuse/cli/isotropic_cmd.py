"""``emdiffuse isotropic INPUT -o OUTPUT --z-factor F``: isotropic reconstruction of a volume."""
from __future__ import annotations

import argparse
import time

import numpy as np

from .common import (SIDE_OUTPUTS, add_restore_arguments, check_paths, fail, handle_errors, positive_int,
                     tqdm_progress)

DEFAULT_MODEL = "isotropic-fibsem"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "isotropic", help="generate the slices between acquired slices of a volume (TIFF or zarr)",
        description="Isotropic reconstruction: generate the F-1 slices between each pair of acquired "
                    "slices of a (Z, Y, X) volume, so n slices become (n-1)*F+1 with a z spacing F times "
                    "smaller (written into OUTPUT's metadata). Acquired slices pass through unchanged. "
                    "With 2 or more samples the per-voxel standard deviation (0 at acquired slices) is "
                    "written next to OUTPUT as OUTPUT_std.")
    add_restore_arguments(parser, default_model=DEFAULT_MODEL)
    parser.add_argument("--z-factor", type=positive_int, default=None, metavar="F",
                        help="output slices per acquired spacing; must be the model's (default: the model's, "
                             "5 for the bundled one)")
    parser.set_defaults(func=run)


def output_voxel_size(voxel_size, voxel_scale):
    """The input's voxel size (z, y, x) times the reconstruction's scale; None if it has none."""
    if voxel_size is None or len(voxel_size) != 3:
        return None
    return tuple(float(v) * s for v, s in zip(voxel_size, voxel_scale))


@handle_errors
def run(args: argparse.Namespace) -> int:
    from ..io import check_image, read_image, read_voxel_size, write_image
    from ..loading import load_model
    from ..tasks.isotropic import reconstruct
    from .streaming_opts import run_streaming, wants_streaming

    source, outputs = check_paths(args.input, args.output)
    if wants_streaming(args):  # --chunk/--halo/--cluster: streaming.py
        return run_streaming(args, "isotropic", source, DEFAULT_MODEL)
    volume = read_image(source)
    check_image(volume, source.name)
    if volume.ndim != 3 or volume.shape[0] < 2:
        fail(f"{source.name} has shape {tuple(volume.shape)}: isotropic reconstruction needs a stack "
             "(Z, Y, X) of at least 2 slices — for a 2D image use `emdiffuse superres` or `denoise`")
    model = load_model(args.model or DEFAULT_MODEL, task="isotropic", device="cpu")
    t0 = time.perf_counter()
    with tqdm_progress(f"isotropic {source.name}") as progress:
        result = reconstruct(volume, model, z_factor=args.z_factor, samples=args.samples, steps=args.steps,
                             sampler=args.sampler, tile=args.tile, overlap=args.overlap, device=args.device,
                             seed=args.seed, estimate=args.estimate, ensemble=args.ensemble, progress=progress)
    seconds = time.perf_counter() - t0
    voxel_size = output_voxel_size(read_voxel_size(source), result.info["voxel_scale"])
    # Side files first: an OUTPUT on disk means the whole run finished.
    for name, (_, dtype) in SIDE_OUTPUTS.items():
        value = getattr(result, name)
        if value is not None:
            write_image(outputs[name], np.asarray(value).astype(dtype), voxel_size, like=source)
    write_image(outputs["mean"], result.mean, voxel_size, like=source)
    info = result.info
    written = ", ".join(str(outputs[f]) for f in ("mean", *SIDE_OUTPUTS) if f == "mean" or getattr(result, f) is not None)
    spacing = f"z spacing {voxel_size[0]:g}" if voxel_size else "no voxel size in the input; z spacing 1/" + str(info["z_factor"])
    print(f"isotropic: {source.name} {'x'.join(map(str, volume.shape))} -> {'x'.join(map(str, result.mean.shape))} "
          f"(z-factor {info['z_factor']}, {spacing}) with {model.name}, {info['samples']} samples x "
          f"{info['steps']} steps ({info['sampler']}, {info['device']}) in {seconds:.1f} s -> {written}")
    return 0
