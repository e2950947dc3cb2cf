"""The predicted-error tables of docs/benchmarks.md, from the reports the evaluations write:

    python benchmarks/uncertainty_tables.py

reads build/denoise_quality.json (benchmarks/denoise_quality.py), build/superres-sstem_quality.json
and build/isotropic-fibsem_quality.json (weights/train_superres.py / train_isotropic.py evaluate)
and prints, as Markdown: the test scores of each preset's map against the gradient proxies, the
reliability diagram (measured over predicted RMSE by decile of the predicted error) and the
mask's precision and recall. Nothing is recomputed here.
"""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORTS = {"demo-denoise": "build/denoise_quality.json", "superres-sstem": "build/superres-sstem_quality.json",
           "isotropic-fibsem": "build/isotropic-fibsem_quality.json"}


def cases(name: str, report: dict) -> dict:
    """Each test case's judged map: the denoiser has three inputs, the tasks one."""
    if name == "demo-denoise":
        return {f"{name}, {case.replace('_', ' ')}": report[case]["uncertainty"]
                for case in ("as_acquired", "noisier", "synthetic")}
    return {name: report["test"]["uncertainty"]}


def yes(flag: bool) -> str:
    return "yes" if flag else "**no**"


def main() -> None:
    judged, calibrations = {}, {}
    for name, path in REPORTS.items():
        file = REPO / path
        if not file.exists():
            print(f"({path} is missing: run its evaluation first)")
            continue
        report = json.loads(file.read_text())
        judged.update(cases(name, report))
        calibrations[name] = report["uncertainty"]
    print("| preset | predicted error (fitted on val) | mask threshold | val Spearman | val mask: flagged / recall |")
    print("|---|---|---|---|---|")
    for name, unc in calibrations.items():
        cal = unc["predicted_error"]
        weights = " + ".join(f"{w} x {src}" for src, w in cal["weights"].items())
        fallback = f"; 1 sample: {cal['fallback']['weights']}" if "fallback" in cal else ""
        mask = unc["validation"]["mask"]
        print(f"| `{name}` | {weights}, smoothed {cal['smoothing_px']:g} px{fallback} | {unc['threshold']} | "
              f"{unc['validation']['spearman']} | {mask['flagged']:.0%} / {mask['recall']:.0%}"
              f"{'' if mask['target_met'] else ' (target not reachable)'} |")
    print()
    print("| test case | Spearman: map / best proxy (gain, 95% interval) | within images: map / best proxy | AUSE: map / best proxy (ratio) "
          "| ranks | calibrated | RMS predicted / measured | mask: flagged, precision, recall |")
    print("|---|---|---|---|---|---|---|---|")
    for case, u in judged.items():
        proxies = u["proxies"].values()
        best_sp = max(p["spearman"] for p in proxies)
        best_ause = min(p["ause"] for p in proxies)
        within = "-"
        if "spearman_within_images" in u:
            within = f"{u['spearman_within_images']} / {max(p['spearman_within_images'] for p in proxies)}"
        m = u.get("mask", {})
        ci = u.get("spearman_gain_ci95")  # reports written before the interval existed have none
        gain = f"{u['spearman_gain']:+.3f}" + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")
        print(f"| {case} | {u['spearman']} / {best_sp} ({gain}) | {within} | "
              f"{u['ause']} / {best_ause} ({u['ause_ratio']}x) | {yes(u['ranks'])} | {yes(u['calibrated'])} | "
              f"{u['rms_predicted']} / {u['rms_measured']} | "
              f"{m.get('flagged', 0):.1%}, {m.get('precision', 0):.2f}, {m.get('recall', 0):.2f} |")
    print()
    print("Reliability diagrams (test): measured / predicted block RMSE in each decile of the predicted error")
    print()
    print("| test case | " + " | ".join(f"d{i}" for i in range(1, 11)) + " |")
    print("|---|" + "---|" * 10)
    for case, u in judged.items():
        cells = [f"{b['ratio']:.2f} ({b['predicted']:.1f})" for b in u["reliability"]]
        print(f"| {case} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
