"""The model card schema: what each section of a card may hold, checked whenever a card is read.

A typo in a card (an unknown key, a wrong type, a missing part) is an error that names the card
and the field; it is never silently ignored. The sections the product reads are closed (unknown
keys are errors); the record sections (``training``, ``evaluation``, ``source``) are free-form.
``weights.file`` must be a bare file name: it decides where a download is written, so a card can
never write outside the weights cache.
"""
from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .device import PRECISIONS
from .diffusion.denoiser import PARAMETERIZATIONS
from .diffusion.samplers import SAMPLERS
from .diffusion.schedules import GRIDS
from .model import DEFAULT_DIFFUSION, DEFAULT_NORMALIZATION
from .requests import ESTIMATES
from .tasks import task_names

PositiveInt = Annotated[int, Field(ge=1)]
PositiveFloat = Annotated[float, Field(gt=0)]
SHA256 = re.compile(r"[0-9a-f]{64}")
URL_SCHEMES = ("https", "http", "ftp", "sftp", "file")  # pooch's protocols, and local files


# the values the engine knows for the diffusion settings named by a string
CHOICES = {"parameterization": PARAMETERIZATIONS, "sampler": tuple(SAMPLERS), "grid": GRIDS,
           "estimate": ESTIMATES, "precision": PRECISIONS}


def _one_of(value, allowed, what: str):
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}: use one of {', '.join(map(str, allowed))}")
    return value


class _Section(BaseModel):
    """A closed section. A key left out takes the engine's default (model.py, nn/unet.py), which
    is not repeated here: the ``= None`` of a non-optional field is never validated, so an absent
    key passes and an explicit null is refused."""
    model_config = ConfigDict(extra="forbid")


class Network(_Section):
    kind: Literal["unet", "residual_unet"] = None
    dims: Literal[1, 2, 3] = None
    in_channel: PositiveInt = None
    out_channel: PositiveInt = None
    inner_channel: PositiveInt = None
    channel_mults: Annotated[list[PositiveInt], Field(min_length=1)] = None
    res_blocks: Annotated[int, Field(ge=0)] = None
    attn_res: list[PositiveInt] = None
    num_head_channels: PositiveInt = None
    norm_groups: PositiveInt = None
    dropout: Annotated[float, Field(ge=0, lt=1)] = None
    slice_embedding: bool = None
    aleatoric: bool = None
    use_checkpoint: bool = None
    image_size: Optional[PositiveInt] = None  # EMDiffuse configs carry it; the network ignores it
    residual_z_factor: Optional[PositiveInt] = None


class Diffusion(_Section):
    parameterization: str = None
    clip: Optional[Annotated[list[float], Field(min_length=2, max_length=2)]] = None
    sigma_min: PositiveFloat = None
    sigma_max: PositiveFloat = None
    sampler: str = None
    grid: str = None
    steps: PositiveInt = None
    samples: PositiveInt = None
    rho: PositiveFloat = None
    estimate: str = None
    ensemble: Annotated[int, Field(ge=1, le=8)] = None
    precision: str = None
    sampler_options: dict[str, Any] = None

    @field_validator(*CHOICES)
    @classmethod
    def known_choice(cls, value, info):
        return _one_of(value, CHOICES[info.field_name], info.field_name)

    @model_validator(mode="after")
    def noise_range(self):
        low = DEFAULT_DIFFUSION["sigma_min"] if self.sigma_min is None else self.sigma_min
        high = DEFAULT_DIFFUSION["sigma_max"] if self.sigma_max is None else self.sigma_max
        if low >= high:
            raise ValueError(f"sigma_min ({low}) must be below sigma_max ({high})")
        return self


class Normalization(_Section):
    low: Annotated[float, Field(ge=0, le=100)] = None
    high: Annotated[float, Field(ge=0, le=100)] = None
    bin: PositiveInt = None

    @model_validator(mode="after")
    def ordered(self):
        low = DEFAULT_NORMALIZATION["low"] if self.low is None else self.low
        high = DEFAULT_NORMALIZATION["high"] if self.high is None else self.high
        if low >= high:
            raise ValueError(f"the low percentile ({low}) must be below the high one ({high})")
        return self


class Tile(_Section):
    size: PositiveInt = None
    overlap: Annotated[int, Field(ge=0)] = None


def bare_file_name(name: str) -> str:
    """``name`` itself when it names a file without any folder; a ValueError otherwise."""
    if (not name or name in (".", "..") or any(c in name for c in '/\\:') or name != name.strip()
            or any(ord(c) < 32 for c in name)):
        raise ValueError(f"must be a bare file name such as model.pt (no folder, '..', drive or absolute path), "
                         f"got {name!r}")
    return name


class Weights(_Section):
    file: str
    sha256: Optional[str] = None
    url: Optional[str] = None
    dtype: Optional[str] = None

    @field_validator("file")
    @classmethod
    def bare(cls, value):
        return bare_file_name(value)

    @field_validator("sha256")
    @classmethod
    def hexadecimal(cls, value):
        if value is not None and not SHA256.fullmatch(value):
            raise ValueError(f"must be 64 lowercase hexadecimal digits, got {value!r}")
        return value

    @field_validator("url")
    @classmethod
    def known_scheme(cls, value):
        if value is not None and value.partition("://")[0].lower() not in URL_SCHEMES:
            raise ValueError(f"must be an {', '.join(URL_SCHEMES[:-1])} or {URL_SCHEMES[-1]} URL, got {value!r}")
        return value

    @model_validator(mode="after")
    def url_needs_hash(self):
        if self.url and not self.sha256:
            raise ValueError("a url needs the weights' sha256 (weights.sha256), so that a download is checked")
        return self


class Superres(_Section):
    scale: Annotated[int, Field(ge=2)] = None
    degradation: Optional[str] = None


class Isotropic(_Section):
    z_factor: Annotated[int, Field(ge=2)] = None
    route: Literal["isotropic", "anisotropic"] = None
    slice_index: Optional[str] = None


class PredictedError(_Section):
    """How the predicted-error map is made (uncertainty.predicted_error): a weight per source
    (the aleatoric std, the spread of the samples), a smoothing scale, and a calibration to fall
    back on when a weighed source is missing (one sample has no spread)."""

    weights: dict[Literal["aleatoric", "spread"], Annotated[float, Field(ge=0)]]
    smoothing_px: Annotated[float, Field(ge=0)] = None
    calibrated: Optional[bool] = None
    fallback: Optional["PredictedError"] = None


class Validated(_Section):
    """What inputs the model was validated on (uncertainty.validation_check)."""

    limit: Optional[PositiveFloat] = None  # the RMS predicted error ([-1, 1] units) beyond which an input is unvalidated
    relative_error: Optional[dict[str, float]] = None
    residual_correlation: Optional[list[float]] = None
    residual_correlation_noisier: Optional[list[float]] = None  # on the noisier validation copy: mixtures of the two pass
    removed: Optional[dict[str, float]] = None  # uncertainty.removed_fraction on the validation inputs
    removed_limit: Optional[PositiveFloat] = None
    tolerance: Optional[PositiveFloat] = None


class Uncertainty(_Section):
    threshold: Annotated[float, Field(ge=0)] = None
    predicted_error: Optional[PredictedError] = None
    mask_from: Optional[Literal["predicted_error", "std", "aleatoric"]] = None
    validated: Optional[Validated] = None
    # records: how the threshold and the map were calibrated and judged
    mask_target: Optional[str] = None
    validation: Optional[dict[str, Any]] = None
    test: Optional[dict[str, Any]] = None
    calibration_scale: Optional[PositiveFloat] = None
    quantity: Optional[str] = None
    calibrated_on: Optional[str] = None
    # what benchmarks/denoise_quality.py measured when it calibrated the threshold
    spearman_block_std_vs_error: Optional[float] = None
    spearman_gradient_proxy_vs_error: Optional[float] = None
    flagged_block_fraction: Optional[float] = None
    rmse_flagged_blocks: Optional[float] = None
    rmse_other_blocks: Optional[float] = None


class Card(_Section):
    name: Annotated[str, Field(min_length=1)]
    task: str
    description: str = None
    license: Annotated[str, Field(min_length=1)] = None  # of the weights (an SPDX id), for exports
    network: Network
    diffusion: Optional[Diffusion] = None
    normalization: Optional[Normalization] = None
    tile: Optional[Tile] = None
    weights: Optional[Weights] = None
    superres: Optional[Superres] = None
    isotropic: Optional[Isotropic] = None
    uncertainty: Optional[Uncertainty] = None
    # free-form records: how the model was trained and scored, where it came from
    training: Optional[dict[str, Any]] = None
    evaluation: Optional[dict[str, Any]] = None
    source: Optional[dict[str, Any]] = None

    @field_validator("task")
    @classmethod
    def known_task(cls, value):
        return _one_of(value, task_names(), "task")


def validate_card(card: Any, source: str) -> dict:
    """``card`` checked against the schema, with its values in their proper types (the keys it
    gives and no others); a one-line ValueError naming ``source`` and the field otherwise."""
    if not isinstance(card, dict):
        raise ValueError(f"{source} is not a model card (it needs name, task and network) — "
                         "pass a model card, a run folder or a weights file")
    try:
        checked = Card.model_validate(card)
    except ValidationError as e:
        problems = e.errors(include_url=False)
        more = f" (and {len(problems) - 1} more problem{'s' if len(problems) > 2 else ''})" if len(problems) > 1 else ""
        raise ValueError(f"model card {source}: {_describe(problems[0])}{more} — fix the card") from None
    return checked.model_dump(exclude_unset=True)


def _describe(problem: dict) -> str:
    loc = [str(part) for part in problem["loc"]]
    field = ".".join(loc) or "the card"
    kind = problem["type"]
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1)
        hint = f" (did you mean {'.'.join(loc[:-1] + close)}?)" if close else f" (known: {', '.join(known)})"
        return f"unknown key {field}{hint}"
    if kind == "missing":
        return f"{field} is missing"
    if kind == "value_error":
        return f"{field}: {problem['ctx']['error']}" if loc else str(problem["ctx"]["error"])
    given = repr(problem.get("input"))
    given = given if len(given) <= 60 else given[:57] + "..."
    if kind in ("model_type", "dict_type"):
        return f"{field} must be a section of key: value lines (got {given})"
    return f"{field}: {problem['msg'][0].lower()}{problem['msg'][1:]} (got {given})"


def _section_model(annotation):
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _section_model(arg)
        if found is not None:
            return found
    return None


def _known_keys(loc: list[str]) -> list[str]:
    model = Card
    for part in loc:
        field = model.model_fields.get(part)
        model = _section_model(field.annotation) if field else None
        if model is None:
            return []
    return list(model.model_fields)


__all__ = ["Card", "validate_card", "bare_file_name"]
