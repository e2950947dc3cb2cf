"""More candidates for the demo denoiser's predicted-error map, screened on the val rows only
(issue 14: the bundled map's Spearman gain over the gradient proxy is +0.128 on val and +0.064 on
test, bar +0.10). Nothing here reads the test rows.

    OMP_NUM_THREADS=2 python benchmarks/map_candidates.py

* the card's map (aleatoric std, smoothed 4 px), for reference;
* view spread: how much the four flipped views' posterior means disagree (each view restored on
  its own), alone at 0-8 px and added to the aleatoric variance with non-negative weights fitted
  on val (``evaluation.fit_weights``, as the card's map is);
* block regression: log block RMSE as a least-squares combination of the log of per-block
  features (the aleatoric std at 0 and 4 px, the gradient of the input and of the output, the
  output's mean, the removed residual's RMS), fitted on the **train** rows' blocks (where the
  model was trained, so its errors there are a little smaller) and scored on val, every subset of
  one to three features and all of them.

Each line: the val Spearman with the block RMSE, and the gain over the best gradient proxy with
its 95% interval (``evaluation.spearman_gap``).
"""
from __future__ import annotations

import itertools
import json

import numpy as np

from _common import header
from napari_emdiffuse import evaluation as ev
from napari_emdiffuse.api import restore
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.sample_data import load_pair
from napari_emdiffuse.uncertainty import predicted_error

VIEWS = {  # (forward, inverse) flips of a plane
    "identity": (lambda a: a, lambda a: a),
    "flip x": (lambda a: a[:, ::-1], lambda a: a[:, ::-1]),
    "flip y": (lambda a: a[::-1], lambda a: a[::-1]),
    "flip both": (lambda a: a[::-1, ::-1], lambda a: a[::-1, ::-1]),
}


def restored(model, pair, rows: slice) -> dict:
    noisy, clean = (a[rows] for a in pair)
    res = restore(noisy, model, device="cpu", seed=0)
    return {"noisy": noisy, "clean": clean, "mean": res.mean, "aleatoric": res.aleatoric,
            "error": ev.block_rmse(res.mean, clean)}


def view_spread(model, noisy) -> np.ndarray:
    means = [inverse(restore(np.ascontiguousarray(forward(noisy)), model, device="cpu", seed=0, ensemble=1).mean)
             for forward, inverse in VIEWS.values()]
    return np.std(means, axis=0, ddof=1)


def block_features(part: dict) -> dict:
    noisy, mean = (np.asarray(part[k], dtype=np.float64) for k in ("noisy", "mean"))
    rms = lambda values, sigma: np.sqrt(ev.block_mean_square(values, sigma))  # noqa: E731
    return {"aleatoric 0 px": np.log(rms(part["aleatoric"], 0.0)), "aleatoric 4 px": np.log(rms(part["aleatoric"], 4.0)),
            "gradient of the input": np.log(ev.gradient_proxy(noisy)),
            "gradient of the output": np.log(ev.gradient_proxy(mean)),
            "output mean": np.log(ev.blocks(mean).mean(axis=1)),
            "removed RMS": np.log(ev.block_rms(noisy - mean))}


def regression(train: dict, val: dict, names) -> np.ndarray:
    """The val blocks' predicted log error from a least-squares fit on the train blocks."""
    design = lambda feats: np.column_stack([feats[n] for n in names] + [np.ones(len(feats[names[0]]))])  # noqa: E731
    coef, *_ = np.linalg.lstsq(design(train["features"]), np.log(train["error"]), rcond=None)
    return design(val["features"]) @ coef


def main() -> None:
    header("predicted-error candidates for the demo denoiser, on the val rows (the test rows are not read)")
    model = load_model("demo-denoise")
    pair = load_pair()
    train, val = (restored(model, pair, ev.rows_of("demo-denoise", part)) for part in ("train", "val"))
    proxies = {"gradient of the input": ev.gradient_proxy(val["noisy"]), "gradient of the output": ev.gradient_proxy(val["mean"])}
    best = max(proxies, key=lambda n: ev.spearman(proxies[n], val["error"]))

    def report(name: str, predicted) -> None:
        gap = ev.spearman_gap(predicted, val["error"], proxies[best], val["error"])
        print(json.dumps({"candidate": name, "val_spearman": round(ev.spearman(predicted, val["error"]), 3),
                          "gain_over_" + best.replace(" ", "_"): gap["gap"], "ci95": gap["ci95"]}), flush=True)

    report("card map", ev.block_rms(predicted_error(None, val["aleatoric"], model.card["uncertainty"]["predicted_error"])))
    spread = view_spread(model, val["noisy"])
    for sigma in (0.0, 2.0, 4.0, 8.0):
        squares = {"aleatoric": ev.block_mean_square(val["aleatoric"], sigma),
                   "view spread": ev.block_mean_square(spread, sigma)}
        report(f"view spread, {sigma:g} px", np.sqrt(squares["view spread"]))
        weights = ev.fit_weights(squares, val["error"])
        report(f"aleatoric + view spread, {sigma:g} px, weights {weights}",
               np.sqrt(sum(w ** 2 * squares[n] for n, w in weights.items())))
    for part in (train, val):
        part["features"] = block_features(part)
    names = list(train["features"])
    scored = []
    for count in (1, 2, 3):
        for subset in itertools.combinations(names, count):
            scored.append((ev.spearman(regression(train, val, subset), val["error"]), subset))
    for _, subset in sorted(scored, reverse=True)[:5]:
        report("block regression (fitted on train): " + " + ".join(subset), regression(train, val, subset))
    report("block regression (fitted on train): all six", regression(train, val, names))


if __name__ == "__main__":
    main()
