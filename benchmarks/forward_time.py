"""Forward time of one 256x256 tile: the published-size EMDiffuse-n network (15.7 M parameters)
and the demo model, in each memory layout / precision, with the network's counted FLOPs and the
fraction of the device's peak that the rate reaches.

    PYTHONPATH=. python3 benchmarks/forward_time.py [--repeats 3] [--batch 1 4] [--compile]

CPU peak = the measured rate of a 2048x2048 matrix product in the same dtype (the practical
ceiling of these cores); GPU peak = the card's dense bf16 data-sheet figure.
"""
from __future__ import annotations

import argparse
import contextlib
import torch

from _common import PUBLISHED_UNET, count_flops, device_peak, forward_seconds, header, load_demo, load_note
from napari_emdiffuse.nn.unet import UNet


def variants(device: torch.device, compile_: bool) -> list[tuple[str, bool, torch.dtype | None, bool]]:
    """(label, channels_last, autocast dtype, compiled)."""
    if device.type == "cuda":
        out = [("fp32 NCHW (EMDiffuse)", False, None, False), ("bf16 channels_last", True, torch.bfloat16, False)]
        if compile_:
            out.append(("bf16 channels_last compiled", True, torch.bfloat16, True))
        return out
    out = [("fp32 NCHW (EMDiffuse)", False, None, False), ("fp32 channels_last", True, None, False)]
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        out.append(("bf16 channels_last", True, torch.bfloat16, False))
    if compile_:
        out += [("fp32 channels_last compiled", True, None, True), ("bf16 channels_last compiled", True, torch.bfloat16, True)]
    return out


def run(name: str, net: torch.nn.Module, device: torch.device, batches: list[int], repeats: int, compile_: bool) -> None:
    net = net.to(device).eval()
    params = sum(p.numel() for p in net.parameters()) / 1e6
    level = torch.full((1,), 0.5, device=device)
    flops = count_flops(net, torch.randn(1, net.in_channel, 256, 256, device=device), level)
    print(f"\n## {name}: {params:.2f} M parameters, {flops / 1e9:.1f} GFLOP per 256x256 tile")
    print(f"{'variant':32s} {'batch':>5s} {'s/batch':>8s} {'tiles/s':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    torch.manual_seed(0)
    probe = torch.randn(1, net.in_channel, 256, 256, device=device)
    reference = None
    for label, channels_last, dtype, compiled in variants(device, compile_):
        for batch in batches:
            sec, first = forward_seconds(net, batch, channels_last, dtype, repeats, compiled=compiled)
            peak = device_peak(device, dtype)
            rate = flops * batch / sec
            frac = f"{100 * rate / peak:6.1f}%" if peak else "    n/a"
            note = f"  (first call {first:.0f} s)" if compiled else ""
            print(f"{label:32s} {batch:5d} {sec:8.3f} {batch / sec:8.2f} {rate / 1e9:8.1f} {frac}{note}", flush=True)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
            out = net.to(memory_format=fmt)(probe.contiguous(memory_format=fmt), level).float()
        if reference is None:
            reference = out
        elif reference.abs().max() > 0:
            err = (out - reference).abs().max() / reference.abs().max()
            print(f"{'':32s} max |difference| to fp32 NCHW: {float(err):.2e} of the output's largest value")
    net.to(memory_format=torch.contiguous_format)
    if device.type == "cpu":
        print(f"peak (measured 2048^2 matmul): fp32 {device_peak(device, None) / 1e9:.0f} GFLOP/s"
              + (f", bf16 {device_peak(device, torch.bfloat16) / 1e9:.0f} GFLOP/s" if any(v[2] for v in variants(device, False)) else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    ap.add_argument("--only", choices=["published", "demo"], help="time one network only")
    args = ap.parse_args()
    from napari_emdiffuse.device import resolve_device

    device = resolve_device(args.device)
    header("forward time of a 256x256 tile")
    if device.type != "cuda":
        print("# no CUDA GPU here: CPU figures only (the GPU bf16 rows need a GPU machine)")
    if args.only != "demo":
        torch.manual_seed(0)
        run("EMDiffuse-n, published size", UNet(**PUBLISHED_UNET), device, args.batch, args.repeats, args.compile)
    if args.only != "published":
        model, source = load_demo()
        run(f"demo model ({source})", model.network, device, args.batch, args.repeats, args.compile)
    print(f"\n# after: {load_note()}")


if __name__ == "__main__":
    main()
