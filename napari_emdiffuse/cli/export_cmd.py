"""``emdiffuse export MODEL -o model.zip``: a model as a BioImage Model Zoo package (see
:mod:`napari_emdiffuse.interchange.bioimageio_export`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import fail, handle_errors, positive_int

EXTRA_HINT = "pip install 'napari-emdiffuse[bioimageio]'"


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="package a model for the BioImage Model Zoo (bioimageio .zip)",
        description="Package MODEL as a BioImage Model Zoo model (bioimageio format 0.5): the single-pass "
                    "posterior-mean network with its normalisation, pytorch_state_dict and torchscript "
                    "weights, test input and output, cover image, documentation and citation, for "
                    "bioimageio.core and the other tools that read the format; sampled uncertainty stays "
                    "with napari-emdiffuse. Check the package with `bioimageio test OUTPUT`.")
    parser.add_argument("model", metavar="MODEL",
                        help="bundled preset (see `emdiffuse models`), model card, run folder or EMDiffuse "
                             "*_Network.pth checkpoint")
    parser.add_argument("-o", "--output", metavar="OUTPUT", required=True, help="the package to write (.zip)")
    parser.add_argument("--name", help="the package's name (default: the model's)")
    parser.add_argument("--authors", nargs="+", metavar="NAME",
                        help="the model's authors, e.g. --authors 'Ada Lovelace' 'Alan Turing' "
                             "(default: the model card's)")
    parser.add_argument("--license", metavar="SPDX",
                        help="licence of the weights as an SPDX identifier, e.g. MIT or CC-BY-4.0 (default: the "
                             "model card's; required for checkpoints and run folders whose card has none)")
    parser.add_argument("--z-factor", type=positive_int, metavar="F",
                        help="isotropic models: slices per acquired section spacing (default: the model card's; "
                             "required for vEMDiffuse checkpoints)")
    parser.add_argument("--test-image", metavar="IMAGE",
                        help="TIFF or zarr the package's test input and cover come from, of the kind the model "
                             "takes (2D; a stack of acquired sections for isotropic models); a central crop of at "
                             "most 256 x 256 pixels is stored (default: a crop of the bundled sample data)")
    parser.set_defaults(func=run)


@handle_errors
def run(args: argparse.Namespace) -> int:
    try:
        import bioimageio.spec  # noqa: F401 - the optional dependency, checked before any work
    except ImportError:
        fail(f"exporting needs the bioimageio extra, which is not installed — {EXTRA_HINT}")
    from ..interchange.bioimageio_export import prepare_export, write_package  # lazily: optional extra
    from ..interchange.bioimageio_readme import eps_caveat

    plan = prepare_export(args.model, args.output, name=args.name, license=args.license, authors=args.authors,
                          z_factor=args.z_factor, test_image=args.test_image)
    path = write_package(plan, Path(args.output))
    model = plan.model
    size_mb = path.stat().st_size / 1e6
    note = "" if plan.authors else " (no authors given: add --authors before uploading to bioimage.io)"
    print(f"export: {model.name} ({model.task}) -> {path} ({size_mb:.1f} MB, pytorch_state_dict + torchscript, "
          f"licence {plan.license}){note}; check it with `bioimageio test {path}`")
    if plan.kwargs["parameterization"] == "eps":
        print(f"note: {eps_caveat(plan)}")
    return 0
