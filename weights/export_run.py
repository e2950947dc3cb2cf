"""Export a training run as a bundled preset: fp16 weights in weights/, the card in models/.

    python weights/export_run.py build/demo-denoise-run --name demo-denoise \
        --command "python weights/train_demo_denoise.py --steps 6000"

The card keeps the run's network, diffusion and training sections and gains the weight file's
sha256 and the command that trained it. When the preset's card already exists (a retrained or
fine-tuned preset), its hand-set parts stay: the inference defaults in ``diffusion`` (sampler,
steps, samples, estimate, ensemble) and any other section the run does not
write; its ``evaluation`` is dropped, since it scored the old weights (the evaluate commands
write it again).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from napari_emdiffuse.files import sha256_of
from napari_emdiffuse.training.runs import CARD_NAME, WEIGHTS_NAME, save_card, save_torch

REPO = Path(__file__).resolve().parents[1]


def export(run: Path, name: str, command: str | None = None) -> Path:
    card = yaml.safe_load((run / CARD_NAME).read_text())
    out = REPO / "models" / f"{name}.yaml"
    if out.exists():
        card = merged_card(yaml.safe_load(out.read_text()), card)
    state = torch.load(run / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}  # a few MB, no loss that shows
    weight_file = REPO / "weights" / f"{name}.pt"
    save_torch(half, weight_file)
    card["name"] = name
    card["weights"] = {"file": weight_file.name, "sha256": sha256_of(weight_file), "dtype": "float16"}
    if command:
        card.setdefault("training", {})["command"] = command
    save_card(card, out)
    return out


INFERENCE_DEFAULTS = ("sampler", "grid", "steps", "samples", "estimate", "ensemble")


def merged_card(old: dict, run: dict) -> dict:
    """The run's card with the hand-set parts of the preset's existing card (see the module doc)."""
    card = {k: v for k, v in old.items() if k != "evaluation"}
    card.update({k: v for k, v in run.items() if k != "name"})
    diffusion = old.get("diffusion", {})
    card["diffusion"] = {**run.get("diffusion", {}), **{k: diffusion[k] for k in INFERENCE_DEFAULTS if k in diffusion}}
    training = run.get("training", {})
    if "fine_tuned_from" in training:  # keep how the starting weights were trained
        before = old.get("training", {})
        earlier = {k: before[k] for k in ("data", "step", "command") if k in before}
        earlier["sha256"] = old.get("weights", {}).get("sha256")
        card["training"] = {**training, "before_fine_tune": earlier}
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--command")
    args = ap.parse_args()
    print(export(args.run, args.name, args.command))


if __name__ == "__main__":
    main()
