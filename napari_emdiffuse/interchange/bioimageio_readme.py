"""The documentation of an exported BioImage Model Zoo package: its README (what the package
computes, what stays with napari-emdiffuse, the model's evaluation and training) and the words
that name a model's source and test image."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from .. import __version__

if TYPE_CHECKING:  # the plan's module imports this one
    from ..model import RestorationModel
    from .bioimageio_export import ExportPlan

EMDIFFUSE_CITATION = ("Lu, C. et al. Diffusion-based deep learning method for augmenting ultrastructural "
                      "imaging and volume electron microscopy (EMDiffuse). Nat Commun 15, 4677 (2024).",
                      "10.1038/s41467-024-49125-z")
INPUT_ID, OUTPUT_ID = "raw", "restored"  # the package's tensor ids


def documentation(plan: ExportPlan) -> str:
    model, kw = plan.model, plan.kwargs
    card = model.card
    task_line = {
        "denoise": "denoises a 2D EM image (Y, X): the output has the input's shape",
        "superres": f"super-resolves a 2D EM image x{plan.scale}: the output has {plan.scale} times more "
                    f"pixels in Y and X (pixel size divided by {plan.scale})",
        "isotropic": f"generates the {plan.z_factor - 1} sections between each pair of acquired sections of a "
                     f"volume (Z, Y, X): Z sections become (Z-1)*{plan.z_factor}+1, the acquired ones unchanged "
                     f"(z spacing divided by {plan.z_factor})",
    }[model.task]
    binned = (f" (of its {kw['bin']}x{kw['bin']} block means, which hardly move with the noise level)"
              if kw["bin"] > 1 else "")
    training = card.get("training") or {}
    lines = [
        f"# {plan.name}",
        "",
        f"{' '.join(str(card.get('description', '')).split())}",
        "",
        f"Exported by napari-emdiffuse {__version__} (`emdiffuse export`) from {_source_words(model)}.",
        "",
        "## What this package computes",
        "",
        f"This model {task_line}. The network is an EMDiffuse-style conditional diffusion model; this "
        "package runs it **once**: its estimate of the clean image at the noisiest level of the diffusion, "
        "started from noise drawn from a fixed seed, which is its posterior-mean estimate E[clean | input] "
        "(no sampling noise, deterministic: the same input always gives the same output).",
        "",
        f"- Input `{INPUT_ID}`: raw intensities in any range, axes "
        f"{'(batch, channel, z, y, x)' if model.task == 'isotropic' else '(batch, channel, y, x)'} with one channel.",
        f"- Normalisation happens inside the network, as in napari-emdiffuse: each input's "
        f"{kw['percentiles'][0]} and {kw['percentiles'][1]} percentiles{binned} become -1 and +1"
        + (" (a volume's, taken on 16 evenly spaced sections)" if model.task == "isotropic" else "")
        + ", and the network's output is mapped back: the output is in the input's intensities (float32). "
        "It is inside because no bioimageio postprocessing step undoes a percentile scaling"
        + (" and none takes percentiles of block means" if kw["bin"] > 1 else "") + ".",
        "",
        "## Limitations",
        "",
        "- Give it whole images, or tiles of at least a few hundred pixels: each tile is normalised on "
        "its own, and the declared halo should be cropped when tiling.",
    ]
    ensemble = int(model.diffusion.get("ensemble", 1))
    if ensemble > 1:
        lines.append(f"- One view of the input: napari-emdiffuse averages this model's estimate over {ensemble} "
                     "rotations/flips of the input (its card's `ensemble`).")
    if kw["parameterization"] == "eps":
        lines.append(f"- {eps_caveat(plan)}")
    lines += [
        "",
        "## What needs napari-emdiffuse",
        "",
        "This package gives the restored image only. **Sampled uncertainty needs napari-emdiffuse** "
        "(`pip install napari-emdiffuse`, then `emdiffuse denoise|superres|isotropic` or the napari "
        "widgets, with the same model: card, run folder or checkpoint): the per-pixel standard deviation over diffusion "
        "samples (`OUTPUT_std`), the aleatoric standard deviation of the network's variance head "
        "(`OUTPUT_aleatoric`), and the reliability mask calibrated on held-out data (`OUTPUT_mask`); also "
        "the average over rotations and flips (the model card's `ensemble`), tiling with blended seams, "
        "and chunked processing of large volumes.",
        "",
        "## Validation",
        "",
        f"The test input is {plan.test_source}; `bioimageio test` reproduces the test output from it.",
    ]
    evaluation = card.get("evaluation")
    if evaluation:
        lines += ["", "The model card's evaluation, made with napari-emdiffuse and the settings listed with "
                  "each figure (this package computes the one-view, one-sample posterior mean):", "", "```yaml",
                  _yaml(evaluation).rstrip(), "```"]
    else:
        lines += ["", "Validate it on your own held-out pairs (input and reference acquired separately): "
                  "PSNR and SSIM against the reference, compared with a simple baseline "
                  "(Gaussian filter, bicubic or linear interpolation)."]
    if training:
        lines += ["", "## Training", "", "```yaml", _yaml({k: training[k] for k in training
                                                            if k in ("data", "validation", "degradation", "step", "hardware")}).rstrip(),
                  "```"]
    lines += ["", "## Citation", "", f"- {EMDIFFUSE_CITATION[0]} doi:{EMDIFFUSE_CITATION[1]}",
              f"- napari-emdiffuse {__version__}: diffusion-model restoration of EM images with per-pixel "
              "uncertainty, in napari and from the command line (MIT licence).", "",
              f"Weights licence: {plan.license}.", ""]
    return "\n".join(lines)


def eps_caveat(plan: ExportPlan) -> str:
    """Why the single pass of a noise-predicting network (EMDiffuse's) may be poor."""
    return (f"This network predicts the noise (eps, as EMDiffuse's networks do): its clean-image estimate at the "
            f"noisiest level multiplies the error of that prediction by sigma_max = {plan.kwargs['sigma_max']:.0f}, "
            "so this single pass can be far worse than napari-emdiffuse's sampled restoration (the mean of "
            "diffusion samples, its default for such networks); compare the two on your data before relying "
            "on it. Networks trained by napari-emdiffuse predict x0 and train at sigma_max for this estimate.")


def _yaml(data) -> str:

    return yaml.safe_dump(data, sort_keys=False, width=100)


def _source_words(model: RestorationModel) -> str:
    fmt = (model.card.get("source") or {}).get("format")
    where = Path(model.source).name if model.source else model.name
    return f"the EMDiffuse checkpoint `{where}`" if fmt == "emdiffuse" else f"the model `{model.name}` ({where})"


def sample_words(plan: ExportPlan) -> str:
    return "a real EM crop from the napari-emdiffuse sample data (" + {
        "denoise": "rows 576-767, columns 256-511 of the 4 us dwell SEM image of mouse cortex, EMDiffuse dataset",
        "superres": "the 2x2 binning of a 256 x 256 crop of ISBI 2012 ssTEM, Drosophila larva VNC",
        "isotropic": f"every {plan.z_factor}th section of a FlyEM FIB-SEM crop of Drosophila medulla, "
                     "CC BY, Janelia FlyEM / HHMI"}[plan.model.task] + ")"
