"""Forward time of one 256x256 tile: the published-size EMDiffuse-n network (15.7 M parameters)
and the demo model, in each memory layout / precision, with the network's counted FLOPs and the
fraction of the device's peak that the rate reaches.

    PYTHONPATH=. python3 benchmarks/forward_time.py [--repeats 3] [--batch 1 4] [--compile] [--graphs]
    PYTHONPATH=. python3 benchmarks/forward_time.py --device cuda --batch 1 16 64 --compile --graphs --json F

On CUDA, ``--graphs`` adds the bf16 forward captured once as a CUDA graph and replayed (no Python
or launch overhead between kernels), and ``--compile`` torch.compile's default mode and its
``reduce-overhead`` mode (compiled kernels replayed as CUDA graphs); each row says what its first call cost (compilation).

CPU peak = the measured rate of a 2048x2048 matrix product in the same dtype (the practical
ceiling of these cores); GPU peak = the card's dense bf16 data-sheet figure.
"""
from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch

from _common import PUBLISHED_UNET, count_flops, device_peak, forward_seconds, header, load_demo, load_note, machine
from napari_emdiffuse.nn.unet import UNet


def variants(device: torch.device, compile_: bool, graphs: bool = False) -> list[tuple[str, bool, torch.dtype | None, object]]:
    """(label, channels_last, autocast dtype, how: False, a torch.compile mode or True, "graph")."""
    if device.type == "cuda":
        out = [("fp32 NCHW (EMDiffuse)", False, None, False), ("fp32 channels_last", True, None, False),
               ("bf16 channels_last", True, torch.bfloat16, False)]
        if graphs:
            out.append(("bf16 channels_last CUDA graph", True, torch.bfloat16, "graph"))
        if compile_:
            out += [("bf16 channels_last compiled", True, torch.bfloat16, True),
                    ("bf16 compiled + CUDA graphs", True, torch.bfloat16, "reduce-overhead")]
        return out
    out = [("fp32 NCHW (EMDiffuse)", False, None, False), ("fp32 channels_last", True, None, False)]
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        out.append(("bf16 channels_last", True, torch.bfloat16, False))
    if compile_:
        out += [("fp32 channels_last compiled", True, None, True), ("bf16 channels_last compiled", True, torch.bfloat16, True)]
    return out


def run(name: str, net: torch.nn.Module, device: torch.device, batches: list[int], repeats: int, compile_: bool,
        graphs: bool = False, size: int = 256) -> dict:
    net = net.to(device).eval()
    params = sum(p.numel() for p in net.parameters()) / 1e6
    level = torch.full((1,), 0.5, device=device)
    flops = count_flops(net, torch.randn(1, net.in_channel, size, size, device=device), level)
    print(f"\n## {name}: {params:.2f} M parameters, {flops / 1e9:.1f} GFLOP per {size}x{size} tile")
    print(f"{'variant':32s} {'batch':>5s} {'s/batch':>8s} {'tiles/s':>8s} {'GFLOP/s':>8s} {'% peak':>7s}")
    torch.manual_seed(0)
    probe = torch.randn(1, net.in_channel, size, size, device=device)
    reference = None
    report = {"network": name, "parameters_m": round(params, 3), "gflop_per_tile": round(flops / 1e9, 3),
              "tile": size, "rows": []}
    for label, channels_last, dtype, how in variants(device, compile_, graphs):
        for batch in batches:
            row = {"variant": label, "batch": batch}
            try:
                sec, first = forward_seconds(net, batch, channels_last, dtype, repeats,
                                             size=size, compiled=how if how != "graph" else False, graphed=how == "graph")
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                print(f"{label:32s} {batch:5d} out of memory")
                report["rows"].append({**row, "error": "out of memory"})
                continue
            peak = device_peak(device, dtype)
            rate = flops * batch / sec
            frac = f"{100 * rate / peak:6.1f}%" if peak else "    n/a"
            note = f"  (first call {first:.0f} s)" if how else ""
            print(f"{label:32s} {batch:5d} {sec:8.3f} {batch / sec:8.2f} {rate / 1e9:8.1f} {frac}{note}", flush=True)
            report["rows"].append({**row, "s_per_batch": sec, "tiles_per_s": batch / sec, "gflop_per_s": rate / 1e9,
                                   "fraction_of_peak": rate / peak if peak else None, "first_call_s": first})
        if how:
            continue  # the same function as its eager row
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        with torch.inference_mode(), (torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()):
            out = net.to(memory_format=fmt)(probe.contiguous(memory_format=fmt), level).float()
        if reference is None:
            reference = out
        elif reference.abs().max() > 0:
            err = (out - reference).abs().max() / reference.abs().max()
            print(f"{'':32s} max |difference| to fp32 NCHW: {float(err):.2e} of the output's largest value")
            report["rows"][-1]["max_rel_difference_to_fp32"] = float(err)
    net.to(memory_format=torch.contiguous_format)
    if device.type == "cpu":
        print(f"peak (measured 2048^2 matmul): fp32 {device_peak(device, None) / 1e9:.0f} GFLOP/s"
              + (f", bf16 {device_peak(device, torch.bfloat16) / 1e9:.0f} GFLOP/s" if any(v[2] for v in variants(device, False)) else ""))
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--size", type=int, default=256, help="tile size (pixels)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd variants")
    ap.add_argument("--graphs", action="store_true", help="also time the bf16 forward as a replayed CUDA graph (CUDA)")
    ap.add_argument("--only", choices=["published", "demo"], help="time one network only")
    ap.add_argument("--model", default=None, help="the demo model's name or run folder (default: the bundled one)")
    ap.add_argument("--json", type=Path, help="write every row here")
    args = ap.parse_args()
    from napari_emdiffuse.device import resolve_device

    device = resolve_device(args.device)
    header(f"forward time of a {args.size}x{args.size} tile")
    if device.type != "cuda":
        print("# no CUDA GPU here: CPU figures only (the GPU bf16 rows need a GPU machine)")
    reports = []
    if args.only != "demo":
        torch.manual_seed(0)
        reports.append(run("EMDiffuse-n, published size", UNet(**PUBLISHED_UNET), device, args.batch, args.repeats,
                           args.compile, args.graphs, args.size))
    if args.only != "published":
        model, source = load_demo(args.model)
        reports.append(run(f"demo model ({source})", model.network, device, args.batch, args.repeats, args.compile,
                           args.graphs, args.size))
    print(f"\n# after: {load_note()}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": machine(), "device": str(device), "networks": reports}, indent=1))


if __name__ == "__main__":
    main()
