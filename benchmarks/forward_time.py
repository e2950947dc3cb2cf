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
import time

import torch

from _common import PUBLISHED_UNET, count_flops, gpu_peak, header, load_demo, load_note, matmul_peak, timed
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
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    peaks: dict = {}
    reference = None
    for label, channels_last, dtype, compiled in variants(device, compile_):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = net.to(memory_format=fmt)
        fn = torch.compile(model) if compiled else model
        for batch in batches:
            x = torch.randn(batch, net.in_channel, 256, 256, device=device, generator=None).contiguous(memory_format=fmt)
            lv = level.expand(batch)

            def forward():
                cast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
                with torch.inference_mode(), cast:
                    return fn(x, lv)

            t0 = time.perf_counter()
            forward()  # first call: compilation when compiled
            first = time.perf_counter() - t0
            sec = timed(forward, repeats, warmup=1 if compiled else 0, sync=sync)
            if device.type == "cuda":
                peak = gpu_peak(torch.cuda.get_device_name())
            else:
                key = dtype or torch.float32
                peak = peaks.setdefault(key, matmul_peak(key))
            rate = flops * batch / sec
            frac = f"{100 * rate / peak:6.1f}%" if peak else "    n/a"
            note = f"  (first call {first:.0f} s)" if compiled else ""
            print(f"{label:32s} {batch:5d} {sec:8.3f} {batch / sec:8.2f} {rate / 1e9:8.1f} {frac}{note}", flush=True)
            if batch == 1:
                torch.manual_seed(0)
                probe = torch.randn(1, net.in_channel, 256, 256, device=device).contiguous(memory_format=fmt)
                with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
                    out = fn(probe, level).float()
                if reference is None:
                    reference = out
                elif reference.abs().max() > 0:
                    err = (out - reference).abs().max() / reference.abs().max()
                    print(f"{'':32s} max |difference| to fp32 NCHW: {float(err):.2e} of the output range")
    net.to(memory_format=torch.contiguous_format)
    if device.type == "cpu":
        print("peak (measured matmul): " + ", ".join(f"{str(k).split('.')[-1]} {v / 1e9:.0f} GFLOP/s" for k, v in peaks.items()))


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
