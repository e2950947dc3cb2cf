"""A block-level objective for the demo denoiser's aleatoric head, tried on val (issue 14).

    OMP_NUM_THREADS=2 python benchmarks/block_head.py [--iterations 400] [--window 16]

The bundled head was trained with the per-pixel heteroscedastic NLL, which rewards modelling the
noise pixel by pixel; the map is judged on how it ranks 16 x 16 block errors, and longer training
makes that ranking worse (docs/benchmarks.md). Here only the head (GroupNorm, SiLU, 3 x 3 conv;
the rest of the network frozen, so the restored image is unchanged) is refitted on the **train**
rows with a block-level Gaussian NLL: for every ``window`` x ``window`` window (stride 4) the
predicted variance is the window mean of ``exp(logvar)`` and the observed one the window mean of
the squared error of the network's estimate at the noisiest level (as the posterior mean makes
it), ``log v + m / v``. The network's last features are computed once per noise draw on the whole
train band. Then the val rows are restored through the engine with each head and the map
calibrated and judged as a card's would be (``denoise_quality.val_map``). Nothing reads the test
rows; nothing is written to the card.
"""
from __future__ import annotations

import argparse
import copy
import json

import numpy as np
import torch
import torch.nn.functional as F

from _common import header
from denoise_quality import val_map
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.api import restore
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.normalize import Normalizer
from napari_emdiffuse.sample_data import load_pair

DRAWS = 3  # noise draws at the noisiest level, each a fixed seed


def normalised_band(model, pair, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(condition, target) of a band of the pair, each image normalised whole as in training."""
    norm = model.card["normalization"]
    return tuple(torch.from_numpy(Normalizer.for_card(a, norm)(a)[rows].astype(np.float32))[None, None] for a in pair)


def band_features(model, cond: torch.Tensor, target: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the head's input features, the squared error of the estimate) in the model's normalised
    units, the network seeing the band whole at the noisiest level."""
    captured = []
    hook = model.network.logvar_out.register_forward_hook(lambda module, args, out: captured.append(args[0].detach()))
    sigma = float(model.diffusion["sigma_max"])
    x = torch.randn(cond.shape, generator=torch.Generator().manual_seed(seed)) * sigma
    try:
        with torch.no_grad():
            x0, _ = model.denoiser().with_logvar(x, sigma, cond)
    finally:
        hook.remove()
    return captured[0].float(), (x0.float() - target) ** 2


def fit_head(head: torch.nn.Module, draws, window: int, iterations: int, lr: float = 1e-3) -> torch.nn.Module:
    head = copy.deepcopy(head).float().train()
    opt = torch.optim.Adam(head.parameters(), lr=lr)
    pool = lambda v: F.avg_pool2d(v, window, stride=4)  # noqa: E731
    for i in range(iterations):
        feats, sq = draws[i % len(draws)]
        v = pool(torch.exp(head(feats)))
        loss = (torch.log(v) + pool(sq) / v).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i % 100 == 0 or i == iterations - 1:
            print(json.dumps({"iteration": i, "block_nll": round(loss.item(), 4)}), flush=True)
    return head.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--window", type=int, default=16)
    args = ap.parse_args()
    header("the aleatoric head refitted on train-row blocks, judged on the val rows (test not read)")
    model = load_model("demo-denoise")
    model.network.float()
    pair = load_pair()
    cond, target = normalised_band(model, pair, ev.rows_of("demo-denoise", "train"))
    draws = [band_features(model, cond, target, seed) for seed in range(DRAWS)]
    bundled_head = copy.deepcopy(model.network.logvar_out)
    heads = {"bundled (per-pixel NLL)": bundled_head,
             f"refitted ({args.window} px windows)": fit_head(bundled_head, draws, args.window, args.iterations)}
    val = ev.rows_of("demo-denoise", "val")
    noisy, clean = pair[0][val], pair[1][val]
    means = []
    for name, head in heads.items():
        model.network.logvar_out = head
        res = restore(noisy, model, device="cpu", seed=0)
        means.append(res.mean)
        print(json.dumps({"head": name, "val_psnr": round(ev.psnr(res.mean, clean), 3), **val_map(res, noisy, clean)}), flush=True)
    print("restored image unchanged by the head:", bool(np.array_equal(means[0], means[-1])))


if __name__ == "__main__":
    main()
