"""Set up a training run from what a user chooses (task, data, size or base model, settings),
the same way for the command line and the napari widget: new, fine-tuned or resumed."""
from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Callable

from ..loading import load_model, read_card
from ..model import RestorationModel, model_from_card
from ..run_folder import CARD_NAME
from ..tasks import get_task
from . import runs
from .datasets import TrainingData
from .presets import SUGGESTED, new_card
from .trainer import TrainConfig, Trainer, TrainUpdate


def build_data(task: str, normalization: dict | None = None, **inputs) -> TrainingData:
    """The registered task's training data. ``inputs``: denoise: noisy, clean (+ register,
    check, ...); superres: high_res (+ scale); isotropic: volume, z_factor (+ anisotropic); all:
    patch, val_fraction, ..."""
    return get_task(task).training_data(normalization=normalization, **inputs)


def default_config(preset: str, **overrides) -> TrainConfig:
    """A preset's suggested settings, with validation and checkpoints about ten times a run."""
    suggested = SUGGESTED.get(preset, SUGGESTED["tiny"])
    values = {"steps": suggested["steps"], "batch_size": suggested["batch_size"], "lr": suggested["lr"]}
    values.update({k: v for k, v in overrides.items() if v is not None})
    steps = values["steps"]
    values.setdefault("warmup", min(100, max(1, steps // 20)))
    values.setdefault("val_every", min(200, max(1, steps // 10)))
    values.setdefault("checkpoint_every", values["val_every"])
    return TrainConfig(**values)


def _config_fields(values: dict) -> dict:
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in values.items() if k in names}


def prepare(task: str, run_dir: str | Path, inputs: dict, *, preset: str = "tiny", base: str | None = None,
            resume: bool = False, name: str | None = None, settings: dict | None = None,
            callback: Callable[[TrainUpdate], None] | None = None,
            should_stop: Callable[[], bool] | None = None, world=None) -> tuple[Trainer, TrainingData]:
    """A :class:`Trainer` ready to ``run()``, and its data.

    ``inputs`` go to the task's data builder (see :func:`build_data`). ``settings`` are
    TrainConfig fields (None = default); ``patch`` may be among them. ``base`` (a preset name,
    model card, run folder or EMDiffuse checkpoint) is fine-tuned; ``resume`` continues the run
    in ``run_dir`` with its stored settings, changed only where ``settings`` says so. ``world``:
    the processes of a data-parallel run (:mod:`.distributed`); None trains in this process alone."""
    run_dir = Path(run_dir)
    settings = {k: v for k, v in (settings or {}).items() if v is not None}
    patch = settings.pop("patch", None)
    if resume:
        if base is not None:
            raise ValueError("a resumed run continues its own model: drop the base model (--model) "
                             "or start a new run folder to fine-tune")
        if not runs.has_state(run_dir):
            raise ValueError(f"{run_dir} holds no training run to resume — check the folder, or start a "
                             "new run there without resume")
        model = run_model(run_dir)
        if model.task != task:
            raise ValueError(f"{run_dir} is a {model.task} run, not {task}: resume it as `train {model.task}`")
        trained = model.card.get("training", {})
        data_patch = trained.get("data", {}).get("patch")
        data = build_data(task, model.normalization, patch=patch or data_patch or 128, **inputs)
        config = TrainConfig(**{**_config_fields(trained.get("config", {})), **_config_fields(settings)})
    else:
        if runs.is_run_folder(run_dir):
            raise ValueError(f"{run_dir} already holds a training run — resume it (CLI: --resume; widget: Resume), or choose another folder")
        base_model = load_model(base, task=task) if base is not None else None
        data = build_data(task, base_model.normalization if base_model else None,
                          patch=patch or SUGGESTED.get(preset, SUGGESTED["tiny"])["patch"], **inputs)
        model = start_model(data, preset, base_model, name)
        config = default_config(preset, **_config_fields(settings))
    trainer = Trainer(model, data.train, config, run_dir, val_data=data.val, callback=callback,
                      should_stop=should_stop, world=world)
    if resume:
        trainer.resume()
    return trainer, data


def start_model(data, preset: str = "tiny", base=None, name: str | None = None):
    """The model a run trains: a new one of size ``preset``, or ``base`` (a loaded
    RestorationModel, e.g. from ``load_model``) to fine-tune. ``data`` is a TrainingData."""
    if base is None:
        card = new_card(data.task, preset, name, data.condition_channels, data.slice_embedding)
        card.update(copy.deepcopy(data.card))
        card["training"] = {"data": data.info}
        return model_from_card(card)
    base.require_task(data.task)
    card = {k: copy.deepcopy(v) for k, v in base.card.items() if k not in ("weights", "training", "evaluation")}
    card.update(copy.deepcopy(data.card))
    card["name"] = name or f"{base.name}-finetuned"
    card["description"] = f"{base.card.get('description', base.name)} Fine-tuned on the user's data."
    card["training"] = {"data": data.info, "fine_tuned_from": base.source or base.name}
    return RestorationModel(card=card, network=base.network, source=base.source)


def run_model(run_dir):
    """The model of an existing run folder, to resume: its card's network (the training state
    then restores every weight)."""
    return model_from_card(read_card(Path(run_dir) / CARD_NAME))
