"""Load EMDiffuse checkpoints (``*_Network.pth`` / ``*_Network_ema.pth``) as they are published.

A checkpoint is a bare state dict: the UNet's parameters under a prefix (``denoise_fn.`` in the
training file; the EMA file may carry none or another one) next to the diffusion's schedule
buffers (``gammas``, ...), which are ignored. No config travels with it, so the UNet's shape is
read off the parameter shapes; what shapes cannot tell (heads, norm groups) takes EMDiffuse's
published values unless a sidecar JSON says otherwise.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from .diffusion.schedules import schedule_sigmas

# A key every EMDiffuse UNet has; whatever precedes it is the checkpoint's prefix.
ANCHOR_KEY = "cond_embed.0.weight"
# The UNet's top-level modules; anything else (schedule buffers, optimiser leftovers) is not the network.
NETWORK_ROOTS = {"cond_embed", "channel_embed", "input_blocks", "middle_block", "output_blocks", "out", "logvar_out"}
PUBLISHED_DEFAULTS = {"num_head_channels": 32, "norm_groups": 32}
TRAIN_SCHEDULE = "emdiffuse_train"
UNET_ARGS = ("in_channel", "out_channel", "inner_channel", "channel_mults", "res_blocks", "attn_res",
             "num_head_channels", "norm_groups", "dims", "dropout", "image_size")


def is_emdiffuse_state(state: dict) -> bool:
    return any(isinstance(k, str) and k.endswith(ANCHOR_KEY) for k in state)


def network_state(state: dict, name: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The UNet's parameters with their prefix removed (schedule buffers and the like dropped)."""
    anchors = [k for k in state if isinstance(k, str) and k.endswith(ANCHOR_KEY)]
    if not anchors:
        raise ValueError(f"{name} holds no EMDiffuse network (no '{ANCHOR_KEY}' key) — "
                         "pass a *_Network.pth or *_Network_ema.pth file, or a model card")
    prefix = min(anchors, key=len)[: -len(ANCHOR_KEY)]
    return {k[len(prefix):]: v for k, v in state.items()
            if isinstance(k, str) and k.startswith(prefix) and torch.is_tensor(v)
            and k[len(prefix):].split(".", 1)[0] in NETWORK_ROOTS}


def _res_out_channels(sd: dict, block: str) -> int:
    return sd[f"{block}.out_layers.3.weight"].shape[0]


def infer_unet_config(sd: dict[str, torch.Tensor]) -> dict:
    """UNet constructor arguments from a state dict's keys and shapes."""
    first = sd["input_blocks.0.0.weight"]
    inner = first.shape[0]
    n_out = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("output_blocks."))
    # The upsampling ResBlock closes the first (deepest) level: output block `res_blocks`.
    ups = [int(k.split(".")[1]) for k in sd
           if re.match(r"output_blocks\.\d+\.[12]\.in_layers\.", k)]
    res_blocks = min(ups) if ups else n_out - 1
    levels = n_out // (res_blocks + 1)
    # Input blocks: the stem, then per level `res_blocks` ResBlocks and (but the last) a downsampler.
    level_start = [1 + level * (res_blocks + 1) for level in range(levels)]
    channel_mults = [_res_out_channels(sd, f"input_blocks.{i}.0") // inner for i in level_start]
    attn_res = [2 ** level for level, start in enumerate(level_start)
                if any(f"input_blocks.{i}.1.qkv.weight" in sd for i in range(start, start + res_blocks))]
    return {
        "kind": "unet",
        "dims": first.ndim - 2,
        "in_channel": int(first.shape[1]),
        "out_channel": int(sd["out.2.weight"].shape[0]),
        "inner_channel": int(inner),
        "channel_mults": channel_mults,
        "res_blocks": res_blocks,
        "attn_res": attn_res,
        "dropout": 0.0,
        "slice_embedding": any(k.startswith("channel_embed.") for k in sd),
        "aleatoric": any(k.startswith("logvar_out.") for k in sd),
        **PUBLISHED_DEFAULTS,
    }


def _strip_json_comments(text: str) -> str:
    # EMDiffuse's config files carry // comments; keep string contents (URLs) intact.
    return re.sub(r'("(?:\\.|[^"\\])*")|//[^\n]*', lambda m: m.group(1) or "", text)


def _checkpoint_stem(path: Path) -> str:
    return re.sub(r"_Network(_ema)?$", "", path.stem, flags=re.IGNORECASE)


def read_sidecar(path: Path) -> dict:
    """An optional JSON config next to the checkpoint: ``<stem>.json``, ``<base>_config.json``
    or ``config.json`` (either EMDiffuse's own experiment config or a plain UNet kwargs dict)."""
    base = _checkpoint_stem(path)
    for candidate in (path.with_suffix(".json"), path.parent / f"{base}_config.json", path.parent / "config.json"):
        if candidate.is_file():
            try:
                return json.loads(_strip_json_comments(candidate.read_text()))
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read the config {candidate.name} next to {path.name} ({e}) — "
                                 "fix or remove it") from None
    return {}


def _find_unet_args(config) -> dict:
    """The UNet arguments anywhere in a sidecar: under a "unet" key, or the dict itself."""
    if isinstance(config, dict):
        if isinstance(config.get("unet"), dict):
            return config["unet"]
        for value in config.values():
            found = _find_unet_args(value)
            if found:
                return found
        if "inner_channel" in config:
            return config
    elif isinstance(config, list):
        for value in config:
            found = _find_unet_args(value)
            if found:
                return found
    return {}


def _task_from_words(text: str) -> str | None:
    text = text.lower()
    if re.search(r"emdiffuse-r|super|(^|[^a-z])sr([^a-z]|$)", text):
        return "superres"
    if re.search(r"vemdiffuse|isotropic", text):
        return "isotropic"
    if re.search(r"emdiffuse-n|denois", text):
        return "denoise"
    return None


def infer_task(path: Path, config: dict, net: dict) -> str:
    """vEMDiffuse (3 input channels and a slice embedding) is isotropic; a 2-channel network
    denoises unless the sidecar or the file name says super-resolution (EMDiffuse-r)."""
    if net["slice_embedding"]:
        return "isotropic"
    if net["in_channel"] != 2:
        raise ValueError(f"{path.name} has {net['in_channel']} input channels and no slice embedding, "
                         "which no EMDiffuse task uses — pass a model card that describes it")
    for words in (str(config.get("task", "")), str(config.get("name", "")), path.name):
        task = _task_from_words(words)
        if task in ("denoise", "superres"):
            return task
    return "denoise"


def card_for_checkpoint(path: str | Path, state: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """A model card for an EMDiffuse checkpoint and its network's state dict."""
    path = Path(path)
    sd = network_state(state, path.name)
    try:
        net = infer_unet_config(sd)
    except (KeyError, IndexError, ValueError, ZeroDivisionError):
        raise ValueError(f"{path.name} does not have the layout of an EMDiffuse UNet — "
                         "pass a model card (.yaml) that describes its network") from None
    config = read_sidecar(path)
    net.update({k: v for k, v in _find_unet_args(config).items() if k in UNET_ARGS})
    net["dropout"] = 0.0  # inference only
    sigmas = schedule_sigmas(TRAIN_SCHEDULE)
    card = {
        "name": _checkpoint_stem(path),
        "task": infer_task(path, config, net),
        "description": f"EMDiffuse checkpoint {path.name}",
        "network": net,
        # The network predicts noise for EMDiffuse's training noise range, on images scaled to [-1, 1].
        "diffusion": {"parameterization": "eps", "clip": [-1.0, 1.0],
                      "sigma_min": float(sigmas[0]), "sigma_max": float(sigmas[-1])},
        "source": {"format": "emdiffuse", "file": str(path)},
    }
    return card, sd
