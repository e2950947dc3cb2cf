"""Where the default's time goes: cProfile of ``restore(image, "demo-denoise")`` on the demo
pair's val rows (96 x 768), the share of the network against everything else (tiling, blending,
noise, normalisation, summarising), and torch's operator profile of one bf16 forward of a batch
of 256 x 256 tiles.

    PYTHONPATH=. python3 benchmarks/profile_default.py [--threads 1] [--batch 4]
"""
from __future__ import annotations

import argparse
import cProfile
import pstats

import torch

from _common import header, load_demo, load_note, split_region
from napari_emdiffuse.api import restore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    noisy, _, _ = split_region("val")
    model, source = load_demo(args.model)
    header(f"profile of the default, {source}, val rows")
    restore(noisy, model, device="cpu")  # warm-up
    profile = cProfile.Profile()
    profile.enable()
    res = restore(noisy, model, device="cpu")
    profile.disable()
    stats = pstats.Stats(profile)
    total = max(v[3] for v in stats.stats.values())  # the outermost call's cumulative time
    by_name = {}
    for (file, line, name), v in stats.stats.items():
        if file == "~" and name.startswith("<built-in method torch"):
            by_name[name] = by_name.get(name, 0.0) + v[2]
    print(f"settings: {res.info['samples']} sample(s) x {res.info['steps']} step(s), ensemble {res.info['ensemble']}; "
          f"{total:.2f} s in all")
    # UNet.forward: the unet.py forward with the largest cumulative time (the outermost one)
    net = max((v[3] for k, v in stats.stats.items() if k[0].endswith("nn/unet.py") and k[2] == "forward"), default=0.0)
    print(f"network (UNet.forward): {net:.2f} s = {100 * net / total:.0f}%; the rest (tiling, blending, noise, "
          f"normalisation, summarising): {100 * (1 - net / total):.0f}%")
    for name, sec in sorted(by_name.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {name[len('<built-in method '):-1]:40s} {sec:7.2f} s {100 * sec / total:5.1f}%")

    from torch.profiler import ProfilerActivity, profile as torch_profile

    net_ = model.network.eval().to(memory_format=torch.channels_last)
    x = torch.randn(args.batch, net_.in_channel, 256, 256).contiguous(memory_format=torch.channels_last)
    level = torch.full((args.batch,), 0.5)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        net_(x, level)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            net_(x, level)
    print(f"\none bf16 forward of {args.batch} tiles of 256 x 256, channels_last:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))
    print(f"# after: {load_note()}")


if __name__ == "__main__":
    main()
