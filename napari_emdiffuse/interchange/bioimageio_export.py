"""Export a restoration model as a BioImage Model Zoo package (bioimageio model, format 0.5).

The package holds the single-pass posterior-mean network (:mod:`.posterior_mean`): raw image in,
restored image out in the input's intensities, with the card's normalisation inside. Two weight
formats carry the same network: ``pytorch_state_dict`` with its architecture as one source file
(the UNet and the wrapper, needing torch only) and ``torchscript``. Then test input and output,
a cover image, the documentation (which says what only napari-emdiffuse does: sampling, the
uncertainty maps, the ensemble), the EMDiffuse citation and the weights' licence.

Needs the ``bioimageio`` extra (``pip install napari-emdiffuse[bioimageio]``). Works offline:
no URL or GitHub user goes into the package, since validating one would fetch it.
"""
from __future__ import annotations

import copy
import inspect
import os
import re
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import torch
from bioimageio.spec import save_bioimageio_package
from bioimageio.spec.model.v0_5 import (ArchitectureFromFileDescr, Author, AxisId, BatchAxis, BioimageioConfig,
                                        ChannelAxis, CiteEntry, Config, Doi, EnsureDtypeDescr, EnsureDtypeKwargs,
                                        FileDescr, Identifier, InputTensorDescr, IntervalOrRatioDataDescr, LicenseId,
                                        ModelDescr, OutputTensorDescr, ParameterizedSize,
                                        PytorchStateDictWeightsDescr, ReproducibilityTolerance, SizeReference,
                                        SpaceInputAxis, SpaceOutputAxis, SpaceOutputAxisWithHalo, TensorId,
                                        TorchscriptWeightsDescr, Version, WeightsDescr)

from .. import __version__, sample_data
from ..io import check_image, read_image
from ..loading import load_model
from ..model import RestorationModel
from ..tasks.isotropic import resolve_z_factor
from ..tasks.superres import bin_mean
from . import posterior_mean
from .bioimageio_readme import EMDIFFUSE_CITATION, INPUT_ID, OUTPUT_ID, documentation, sample_words
from .posterior_mean import PosteriorMeanNetwork

ARCHITECTURE_FILE = "emdiffuse_posterior_mean.py"
TASK_TAGS = {"denoise": "denoising", "superres": "super-resolution", "isotropic": "isotropic-reconstruction"}
SEED = 0  # the noise start of the single pass; any seed gives an equally good estimate


class ExportError(ValueError):
    """A model or option that cannot be exported; the message is one line that says what to do."""


@dataclass
class ExportPlan:
    """What the package will hold, decided from the model card before anything is written."""

    model: RestorationModel
    name: str
    license: str
    authors: list[str]
    kwargs: dict  # PosteriorMeanNetwork's, stored in the package
    scale: int = 1
    z_factor: int = 0
    multiple: int = 8  # the network's downsampling: input sizes step by it
    test_image: np.ndarray | None = None  # (Y, X) or (Z, Y, X) float32, what the model takes as input
    test_source: str = ""  # where the test image comes from, in words

    @property
    def size_min(self) -> int:
        """The smallest input side declared: at least 64 pixels, a multiple of the downsampling."""
        return -(-64 // self.multiple) * self.multiple


# ---- deciding what to export ----------------------------------------------------------------------
def plan_export(model: RestorationModel, *, name: str | None = None, license: str | None = None,
                authors: list[str] | None = None, z_factor: int | None = None,
                test_image: np.ndarray | str | os.PathLike | None = None) -> ExportPlan:
    """Check that ``model`` can be exported and collect the package's metadata; raises
    :class:`ExportError` with one line otherwise. ``test_image`` (an array or an image file, what
    the model takes as input) gives the test input and cover; default: a bundled sample crop."""
    net = model.card.get("network") or {}
    if int(net.get("dims", 2)) != 2:
        raise ExportError(f"model {model.name!r} has a {net.get('dims')}D network; only 2D networks are exported "
                          "(the bioimageio package evaluates planes) — export a 2D model")
    d, norm = model.diffusion, model.normalization
    scale = int((model.card.get("superres") or {}).get("scale", 2)) if model.task == "superres" else 1
    if model.task != "isotropic" and z_factor is not None:
        raise ExportError(f"--z-factor is for isotropic models; {model.name!r} is a {model.task} model — leave it out")
    f = 0
    if model.task == "isotropic":

        f = resolve_z_factor(model, z_factor)  # the card's, or the caller's where the card has none
    spdx = license or model.card.get("license")
    if not spdx:
        raise ExportError(f"the licence of the weights of {model.name!r} is not recorded (no `license` in a model "
                          "card) — pass --license with an SPDX identifier, e.g. MIT or CC-BY-4.0")
    _check_license(spdx)
    clip = d.get("clip")
    kwargs = {
        "network": {k: (list(v) if isinstance(v, tuple) else v) for k, v in net.items()},
        "task": model.task, "parameterization": d["parameterization"],
        "clip": None if clip is None else [float(c) for c in clip], "sigma_max": float(d["sigma_max"]),
        "percentiles": [float(norm["low"]), float(norm["high"])], "bin": int(norm.get("bin", 1)),
        "scale": scale, "z_factor": f, "seed": SEED,
    }
    kwargs["network"]["dropout"] = 0.0
    kwargs["network"].pop("use_checkpoint", None)
    given = list(authors or []) or [str(a) for a in (model.card.get("authors") or [])]
    plan = ExportPlan(model, _package_name(name or model.name), spdx, given, kwargs, scale, f,
                      int(model.network.downsample_factor))
    plan.test_image = _test_crop(plan, sample_image(plan) if test_image is None else test_image)
    plan.test_source = (sample_words(plan) if test_image is None else
                        f"a central crop of {Path(test_image).name if isinstance(test_image, (str, os.PathLike)) else 'an image'} "
                        "given at export")
    return plan


def _package_name(name: str) -> str:
    """bioimageio names allow letters, digits, ``_+- ()``; other characters become ``-``."""
    clean = re.sub(r"[^A-Za-z0-9_+\- ()]", "-", name).strip() or "model"
    return clean[:128]


def _check_license(spdx: str) -> None:

    try:
        LicenseId(spdx)
    except ValueError:
        raise ExportError(f"{spdx!r} is not an SPDX licence identifier — pass one such as MIT, "
                          "Apache-2.0, CC-BY-4.0 (see spdx.org/licenses)") from None


# ---- the network -------------------------------------------------------------------------------------
def build_network(plan: ExportPlan) -> PosteriorMeanNetwork:
    """The exported network with the model's weights, float32, eval mode, on the CPU."""
    network = PosteriorMeanNetwork(**copy.deepcopy(plan.kwargs))
    network.network.load_state_dict({k: v.float().cpu() for k, v in plan.model.network.state_dict().items()})
    return network.eval()


def architecture_source() -> str:
    """One Python file defining the UNet classes and :class:`PosteriorMeanNetwork` with no import
    but torch: the sources of their modules, their relative imports dropped (each name they import
    is defined above it in the file)."""
    modules = [sys.modules[posterior_mean.UNet.__module__], sys.modules[posterior_mean.ResidualUNet.__module__],
               posterior_mean]
    parts = [f'"""The network of a napari-emdiffuse {__version__} BioImage Model Zoo export, needing torch only:\n'
             f'{", ".join(m.__name__ for m in modules)} in one file (generated; relative imports removed)."""\n'
             "from __future__ import annotations\n"]
    for module in modules:
        lines = [line for line in inspect.getsource(module).splitlines()
                 if not line.startswith("from __future__") and not re.match(r"from \.+[\w.]* import ", line)]
        parts.append(f"\n# ---- {module.__name__} " + "-" * max(4, 90 - len(module.__name__)) + "\n"
                     + "\n".join(lines) + "\n")
    return "".join(parts)


def torchscript_network(network: PosteriorMeanNetwork) -> torch.jit.ScriptModule:
    """``network`` as TorchScript: the wrapper scripted, the UNet traced (it is not scriptable) with
    its device constants made to follow its input, so the file runs on any device."""
    wrapper = copy.deepcopy(network)
    side = 2 * network.multiple
    example = (torch.zeros(2, int(network.network.in_channel), side, side), torch.full((2,), 0.5),
               torch.tensor([0.0, 1.0]))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation and tracer warnings
        traced = torch.jit.trace(wrapper.network, example, check_trace=False)
        _devices_follow_input(traced)
        wrapper.network = traced
        return torch.jit.script(wrapper)


def _devices_follow_input(traced: torch.jit.ScriptModule) -> None:
    """The tracer records the device of tensors made inside forward (the noise-level embedding,
    ``as_tensor``) as constants (cpu); make each the device of the first input instead."""
    graph = traced.graph
    first_input = list(graph.inputs())[1]  # inputs()[0] is the module itself
    for node in list(graph.nodes()):
        if node.kind() == "prim::Constant" and node.output().type().kind() == "DeviceObjType":
            device = graph.create("prim::device", [first_input])
            device.output().setType(node.output().type())
            device.insertBefore(node)
            node.output().replaceAllUsesWith(device.output())
            node.destroy()


# ---- test data and cover -------------------------------------------------------------------------------
TEST_SIDE, TEST_SECTIONS = 256, 5  # the test input's largest crop: the package stays small


def sample_image(plan: ExportPlan) -> np.ndarray:
    """A real EM image from the bundled sample data, of the kind the model takes as input."""

    if plan.model.task == "denoise":  # the 4 us dwell SEM image, in the rows its card evaluates on
        return sample_data.load_pair()[0][576:768, 256:512]
    if plan.model.task == "superres":  # 2x2 binning: what a scan at twice the pixel size gives
        return bin_mean(sample_data.load_sstem()[0, :256, :256], plan.scale)
    volume = sample_data.load_fibsem()  # every f-th section of the FIB-SEM crop
    return volume[np.unique(np.minimum(np.arange(TEST_SECTIONS) * plan.z_factor, len(volume) - 1))]


def _test_crop(plan: ExportPlan, image) -> np.ndarray:
    """The central crop of ``image`` (or the image file) that the package stores as its test input:
    at most 256 pixels a side and 5 sections, each side a size the package declares."""

    name = "the test image"
    if isinstance(image, (str, os.PathLike)):
        name, image = Path(image).name, read_image(image)
    check_image(image, name)
    isotropic = plan.model.task == "isotropic"
    want = "a stack of acquired sections (Z, Y, X)" if isotropic else "a 2D image (Y, X)"
    if image.ndim != (3 if isotropic else 2) or (isotropic and image.shape[0] < 2):
        raise ExportError(f"{name} has shape {tuple(image.shape)}; a {plan.model.task} model takes {want} — "
                          f"pass {want} as the test image")
    window = [slice(0, min(image.shape[0], TEST_SECTIONS))] if isotropic else []
    for side in image.shape[-2:]:
        if side < plan.size_min:
            raise ExportError(f"{name} is {side} pixels across; the package needs at least {plan.size_min} — "
                              "pass a larger test image")
        size = plan.size_min + (min(side, TEST_SIDE) - plan.size_min) // plan.multiple * plan.multiple
        window.append(slice((side - size) // 2, (side - size) // 2 + size))
    return np.ascontiguousarray(np.asarray(image[tuple(window)]), dtype=np.float32)


def cover_image(plan: ExportPlan, raw: np.ndarray, restored: np.ndarray) -> np.ndarray:
    """Input | output side by side (uint8), both on the input's contrast; isotropic models show an
    XZ cut, the input's sections repeated to the output's depth."""
    a, b = raw[0, 0], restored[0, 0]
    if plan.model.task == "isotropic":
        row = a.shape[-2] // 2
        a = np.repeat(a[:, row, :], plan.z_factor, axis=0)[: b.shape[0]]
        b = b[:, row, :]
        stretch = max(1, round(b.shape[1] / b.shape[0]))  # about square panels: XZ cuts are flat
        a, b = np.repeat(a, stretch, axis=0), np.repeat(b, stretch, axis=0)
    else:
        a = np.repeat(np.repeat(a, plan.scale, axis=0), plan.scale, axis=1)
    lo, hi = np.percentile(raw, [0.5, 99.5])
    gap = np.full((a.shape[0], max(2, a.shape[1] // 64)), hi, dtype=np.float32)
    side_by_side = np.concatenate([a, gap, b], axis=1)
    return (np.clip((side_by_side - lo) / max(hi - lo, 1e-12), 0, 1) * 255).round().astype(np.uint8)


# ---- the package -------------------------------------------------------------------------------------------
def _axes(plan: ExportPlan, halo: int):
    """Input and output axes. Super-resolution: output y/x at 1/scale the input's pixel size;
    isotropic: input z spacing = z_factor output sections (size (Z-1)*f+1)."""

    raw = TensorId(INPUT_ID)
    inputs = [BatchAxis(), ChannelAxis(channel_names=[Identifier("em")])]
    outputs = [BatchAxis(), ChannelAxis(channel_names=[Identifier("em")])]
    if plan.model.task == "isotropic":
        inputs.append(SpaceInputAxis(id=AxisId("z"), size=ParameterizedSize(min=2, step=1), scale=plan.z_factor))
        outputs.append(SpaceOutputAxis(id=AxisId("z"), size=SizeReference(tensor_id=raw, axis_id=AxisId("z"),
                                                                            offset=1 - plan.z_factor), scale=1))
    for axis in ("y", "x"):
        inputs.append(SpaceInputAxis(id=AxisId(axis), size=ParameterizedSize(min=plan.size_min, step=plan.multiple),
                                     scale=1))
        outputs.append(SpaceOutputAxisWithHalo(id=AxisId(axis), halo=halo * plan.scale, scale=1 / plan.scale,
                                               size=SizeReference(tensor_id=raw, axis_id=AxisId(axis))))
    return inputs, outputs


def export_bioimageio(model: RestorationModel | str | os.PathLike, output: str | os.PathLike, *,
                      name: str | None = None, license: str | None = None, authors: list[str] | None = None,
                      z_factor: int | None = None, test_image=None) -> Path:
    """Write ``model`` (a RestorationModel, or anything :func:`load_model` takes) as a bioimageio
    package ``output`` (.zip), atomically: nothing appears at ``output`` unless the whole package
    was written. Returns its path. What cannot be exported raises :class:`ExportError` (a
    ValueError) with one line; the model's own files are only read."""
    plan = prepare_export(model, output, name=name, license=license, authors=authors, z_factor=z_factor,
                          test_image=test_image)
    return write_package(plan, Path(output))


def prepare_export(model: RestorationModel | str | os.PathLike, output: str | os.PathLike, **options) -> ExportPlan:
    """Load the model if needed and check it, the options (see :func:`plan_export`) and the
    output path, before anything is written."""

    output = Path(output)
    if output.suffix.lower() != ".zip":
        raise ExportError(f"{output} is not a .zip path — bioimageio packages are zip files: name it e.g. model.zip")
    _check_output(output)
    if not isinstance(model, RestorationModel):
        model = load_model(model, device="cpu")
    return plan_export(model, **options)


def _check_output(output: Path) -> None:
    """A .zip path that replaces at most an earlier package: never a folder or another zip file
    (a model itself is never a .zip, so the output cannot be the model)."""

    target = output.expanduser()
    if target.is_dir():
        raise ExportError(f"{output} is a folder — give the path of a .zip file to write")
    if target.exists():
        try:
            with zipfile.ZipFile(target) as existing:
                names = set(existing.namelist())
        except (OSError, zipfile.BadZipFile):
            names = set()
        if not names & {"rdf.yaml", "bioimageio.yaml"}:
            raise ExportError(f"{output} exists and is not a bioimageio package, so it is not overwritten — "
                              "choose another output name")


def write_package(plan: ExportPlan, output: Path) -> Path:
    """Write the package of a checked plan to ``output`` (atomically)."""

    network = build_network(plan)
    raw = plan.test_image[None, None]
    with torch.no_grad():
        restored = network(torch.from_numpy(raw)).numpy()
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".emdiffuse-export-", dir=output.parent) as tmp:
        folder = Path(tmp).resolve()
        _write_files(plan, network, raw, restored, folder)
        package = folder / "package.zip"
        save_bioimageio_package(_description(plan, network, restored, folder), output_path=package)
        os.replace(package, output)
    return output


def _write_files(plan: ExportPlan, network: PosteriorMeanNetwork, raw: np.ndarray, restored: np.ndarray,
                 folder: Path) -> None:
    """The package's files, by the names :func:`_description` refers to."""

    np.save(folder / "test_input.npy", raw)
    np.save(folder / "test_output.npy", restored)
    tifffile.imwrite(folder / "sample_input.tif", raw[0, 0])  # for people and viewers, as the spec asks
    tifffile.imwrite(folder / "sample_output.tif", restored[0, 0])
    iio.imwrite(folder / "cover.png", cover_image(plan, raw, restored))
    (folder / "README.md").write_text(documentation(plan))
    (folder / ARCHITECTURE_FILE).write_text(architecture_source())
    torch.save(network.state_dict(), folder / "weights.pt")
    torchscript_network(network).save(str(folder / "weights_torchscript.pt"))


def _description(plan: ExportPlan, network: PosteriorMeanNetwork, restored: np.ndarray, folder: Path):

    model = plan.model
    torch_version = Version(torch.__version__.split("+")[0])
    # sizes the network takes without padding; the halo is half the restore core's tile overlap
    in_axes, out_axes = _axes(plan, halo=max(plan.multiple, int(model.tile["overlap"]) // 2))
    span = float(restored.max() - restored.min()) or 1.0
    return ModelDescr(
        name=plan.name,
        description=_one_line_description(plan),
        authors=[Author(name=a) for a in plan.authors],
        cite=[CiteEntry(text=EMDIFFUSE_CITATION[0], doi=Doi(EMDIFFUSE_CITATION[1]))],
        license=LicenseId(plan.license),
        documentation=FileDescr(source=folder / "README.md"),
        covers=[FileDescr(source=folder / "cover.png")],
        tags=["electron-microscopy", TASK_TAGS[model.task], "diffusion-model", "emdiffuse", "napari-emdiffuse",
              "3d" if model.task == "isotropic" else "2d", "pytorch"],
        inputs=[InputTensorDescr(
            id=TensorId(INPUT_ID), axes=in_axes, description="raw EM intensities (any range); normalised inside",
            test_tensor=FileDescr(source=folder / "test_input.npy"),
            sample_tensor=FileDescr(source=folder / "sample_input.tif"),
            data=IntervalOrRatioDataDescr(type="float32"),
            preprocessing=[EnsureDtypeDescr(kwargs=EnsureDtypeKwargs(dtype="float32"))])],
        outputs=[OutputTensorDescr(
            id=TensorId(OUTPUT_ID), axes=out_axes, description="posterior-mean estimate, in the input's intensities",
            test_tensor=FileDescr(source=folder / "test_output.npy"),
            sample_tensor=FileDescr(source=folder / "sample_output.tif"),
            data=IntervalOrRatioDataDescr(type="float32"))],
        weights=WeightsDescr(
            pytorch_state_dict=PytorchStateDictWeightsDescr(
                source=folder / "weights.pt", pytorch_version=torch_version,
                architecture=ArchitectureFromFileDescr(source=folder / ARCHITECTURE_FILE,
                                                       callable="PosteriorMeanNetwork", kwargs=plan.kwargs)),
            torchscript=TorchscriptWeightsDescr(source=folder / "weights_torchscript.pt",
                                                pytorch_version=torch_version, parent="pytorch_state_dict")),
        config=Config(
            bioimageio=BioimageioConfig(
                # other devices and libraries round differently: allow a small fraction of the range
                reproducibility_tolerance=[ReproducibilityTolerance(
                    relative_tolerance=1e-3, absolute_tolerance=round(5e-3 * span, 6),
                    mismatched_elements_per_million=1000)],
                architecture_type="conditional diffusion UNet", modality="electron microscopy",
                task=TASK_TAGS[model.task]),
            **{"napari-emdiffuse": _provenance(plan)}),
    )


def _one_line_description(plan: ExportPlan) -> str:
    words = {"denoise": "Denoising", "superres": f"x{plan.scale} super-resolution",
             "isotropic": f"isotropic reconstruction (x{plan.z_factor} in z)"}[plan.model.task]
    return (f"{words} of electron-microscopy images: single-pass posterior mean of an EMDiffuse-style diffusion "
            "model; sampled uncertainty (std, aleatoric, reliability mask) needs napari-emdiffuse.")


def _provenance(plan: ExportPlan) -> dict:
    model = plan.model
    weights = (model.card.get("weights") or {}).get("sha256")
    return {"version": __version__, "model": model.name, "task": model.task,
            "source": (model.card.get("source") or {}).get("format", "model card"),
            "weights_sha256": weights, "estimate": "posterior_mean, one pass, no ensemble", "seed": SEED}


__all__ = ["export_bioimageio", "prepare_export", "plan_export", "write_package", "sample_image", "build_network", "architecture_source", "torchscript_network",
           "ExportError", "ExportPlan"]
