"""What the restoring subcommands (denoise, superres, isotropic) share: their arguments, input and
output checks, progress bar, writing of the result and its uncertainty maps, and error reporting.

Every anticipated failure (bad input, bad model, bad option) ends as ONE line on stderr,
``emdiffuse: error: <what is wrong> — <what to do>``, and exit status 2; INPUT is only ever read.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, NoReturn

import numpy as np

EXIT_ERROR, EXIT_INTERRUPTED = 2, 130
# Extra files written next to OUTPUT, by RestoreResult field: name tag and dtype.
SIDE_OUTPUTS = {"std": ("std", np.float32), "aleatoric": ("aleatoric", np.float32), "mask": ("mask", np.uint8)}
DEFAULT_MODELS = {"denoise": "demo-denoise"}


class CliError(Exception):
    """A problem the user can fix; its message is printed as one line."""


def fail(message: str) -> NoReturn:
    raise CliError(message)


def one_line(message: object) -> str:
    return " ".join(str(message).split())


def report_error(message: object) -> int:
    print(f"emdiffuse: error: {one_line(message)}", file=sys.stderr)
    return EXIT_ERROR


def handle_errors(run: Callable[..., int]) -> Callable[..., int]:
    """Turn user-fixable failures into one line on stderr and exit status 2 (no traceback).
    ValueError and OSError are how the core reports bad inputs, models and options."""
    @functools.wraps(run)
    def wrapper(*args, **kwargs) -> int:
        try:
            return run(*args, **kwargs)
        except (CliError, ValueError) as e:
            return report_error(e)
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            return report_error(f"{where}{e.strerror or e} — check the path and its permissions")
        except KeyboardInterrupt:
            print("emdiffuse: interrupted; nothing was written", file=sys.stderr)
            return EXIT_INTERRUPTED
    return wrapper


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def add_restore_arguments(parser: argparse.ArgumentParser, default_model: str | None = None) -> None:
    """INPUT, -o OUTPUT and the sampling options every restoring subcommand takes."""
    parser.add_argument("input", metavar="INPUT", help="TIFF (2D or a stack) or zarr store to restore")
    parser.add_argument("-o", "--output", metavar="OUTPUT", required=True,
                        help="where to write the result (.tif/.tiff or .zarr); the per-pixel std goes "
                             "next to it as OUTPUT_std (with 2 or more samples), the reliability mask "
                             "as OUTPUT_mask, an aleatoric model's std as OUTPUT_aleatoric")
    parser.add_argument("--model", metavar="NAME|PATH", default=default_model,
                        help="bundled preset (see `emdiffuse models`), model card, run folder or "
                             f"EMDiffuse *_Network.pth checkpoint (default: {default_model})")
    parser.add_argument("--samples", type=positive_int, metavar="K",
                        help="diffusion samples to average; 2 or more also give the uncertainty (default: the model card's)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="sampler steps (default: the model card's)")
    parser.add_argument("--sampler", metavar="NAME", help="ddpm, ddim, dpmpp_2m, heun, ... (default: the model card's)")
    parser.add_argument("--tile", type=positive_int, metavar="T", help="tile size in pixels (default: the model card's)")
    parser.add_argument("--overlap", type=int, metavar="PX", help="tile overlap in pixels (default: the model card's)")
    parser.add_argument("--device", default="auto", metavar="D", help="auto, cpu, cuda, cuda:1 or mps (default: auto)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed; the same seed gives the same result (default: 0)")
    parser.add_argument("--estimate", choices=["posterior_mean", "sample_mean"],
                        help="the restored image: the model's posterior mean (no sampling noise) or the "
                             "mean of the samples, as EMDiffuse does (default: the model card's)")
    parser.add_argument("--ensemble", type=positive_int, metavar="E",
                        help="posterior mean averaged over E of 8 views of the input (rotations/flips; for "
                             "isotropic, rotations and the two z directions) (default: the model card's)")
    from .streaming_opts import add_streaming_arguments  # --chunk/--halo/--cluster: streaming.py

    add_streaming_arguments(parser)


@contextlib.contextmanager
def tqdm_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr, only when it is a terminal."""
    from tqdm import tqdm

    bar = tqdm(total=None, desc=description, unit="eval", file=sys.stderr, leave=False,
               disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def progress(done: int, total: int) -> None:
        if bar.total != total:
            bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def output_paths(output: Path) -> dict[str, Path]:
    """OUTPUT and the side files next to it, by RestoreResult field."""
    from ..io import sibling_path

    return {"mean": output, **{field: sibling_path(output, tag) for field, (tag, _) in SIDE_OUTPUTS.items()}}


def check_paths(input_arg: str, output_arg: str) -> tuple[Path, dict[str, Path]]:
    """Known formats, an existing INPUT, and no output (or side output) that would overwrite it."""
    from ..io import image_format

    source, output = Path(input_arg), Path(output_arg)
    image_format(source)
    image_format(output)
    if not source.exists():
        fail(f"{source} does not exist — check the INPUT path")
    outputs = output_paths(output)
    resolved_input = source.resolve()
    for path in outputs.values():
        resolved = path.resolve()
        if resolved == resolved_input or resolved_input in resolved.parents:
            fail(f"output {path} would overwrite the input {source} — choose another OUTPUT name")
    return source, outputs


def _output_voxel_size(voxel_size, in_shape, out_shape):
    """The input's voxel size, scaled where the output has more pixels (super-resolution, isotropic)."""
    if voxel_size is None or not len(voxel_size) == len(in_shape) == len(out_shape):
        return None
    return tuple(v * i / o for v, i, o in zip(voxel_size, in_shape, out_shape))


def write_outputs(result, outputs: dict[str, Path], voxel_size, like: Path) -> list[Path]:
    """Write a RestoreResult's mean and side maps (those it has) atomically; returns the paths.
    Side files go first: an OUTPUT on disk means the whole run finished."""
    from ..io import write_image

    written = []
    for field, (_, dtype) in SIDE_OUTPUTS.items():
        value = getattr(result, field)
        if value is not None:
            written.append(write_image(outputs[field], np.asarray(value).astype(dtype), voxel_size, like=like))
    return [write_image(outputs["mean"], result.mean, voxel_size, like=like), *written]


@handle_errors
def run_restore_command(args: argparse.Namespace, task: str, extra: dict | None = None,
                        restore_fn: Callable | None = None) -> int:
    """Read INPUT, check it, restore it with ``restore_fn`` (default :func:`restore.restore`,
    given ``extra`` keyword arguments), write OUTPUT (the input's dtype) and its side files
    atomically, and print a one-line summary."""
    from ..io import check_image, read_image, read_voxel_size
    from ..loading import load_model
    from ..normalize import to_dtype
    from ..uncertainty import unreliable_fraction
    from .streaming_opts import run_streaming, wants_streaming

    source, outputs = check_paths(args.input, args.output)
    if wants_streaming(args):
        return run_streaming(args, task, source, DEFAULT_MODELS.get(task))
    image = read_image(source)
    check_image(image, source.name)
    model_name = args.model or DEFAULT_MODELS.get(task)
    if not model_name:
        fail(f"no default {task} model is bundled — pass one with --model NAME|PATH")
    model = load_model(model_name, task=task, device="cpu")
    if restore_fn is None:
        from ..restore import restore as restore_fn

    t0 = time.perf_counter()
    with tqdm_progress(f"{task} {source.name}") as progress:
        result = restore_fn(image, model, samples=args.samples, steps=args.steps, sampler=args.sampler,
                            tile=args.tile, overlap=args.overlap, device=args.device, seed=args.seed,
                            progress=progress, estimate=args.estimate, ensemble=args.ensemble, **(extra or {}))
    seconds = time.perf_counter() - t0

    voxel_size = _output_voxel_size(read_voxel_size(source), image.shape, result.mean.shape)
    if result.mean.dtype != image.dtype:
        result.mean = to_dtype(result.mean, image.dtype)
    written = write_outputs(result, outputs, voxel_size, source)
    info = result.info
    unreliable = (f"{unreliable_fraction(result.mask):.1%} unreliable pixels" if result.mask is not None
                  else "no reliability mask")
    print(f"{task}: {source.name} {'x'.join(map(str, image.shape))} {image.dtype} with {model.name}, "
          f"{info.get('samples', args.samples)} samples x {info.get('steps', args.steps)} steps "
          f"({info.get('sampler', args.sampler)}, {info.get('device', args.device)}) in {seconds:.1f} s; "
          f"{unreliable} -> {', '.join(map(str, written))}")
    return 0
