"""Streaming restoration: chunk lattice, equality with the in-memory restore, independence of the
split, resume after a kill, OME-Zarr output, super-resolution and isotropic volumes, lazy layers."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from napari_emdiffuse.io import read_image, read_voxel_size
from napari_emdiffuse.model import model_from_card
from napari_emdiffuse.api import restore
from napari_emdiffuse.tasks import Geometry, get_task
from napari_emdiffuse.streaming import (ChunkGrid, finished_chunks, open_result, plan_stream, restore_chunk,
                                        result_layer_data, stream_restore)

REPO = Path(__file__).resolve().parents[1]
FIELDS = ("mean", "std", "aleatoric", "mask", "uncertainty")


def tiny_model(task="denoise", tile=16, overlap=4, sampler="ddpm", steps=2, **extra):
    """A random tiny aleatoric UNet. ddpm with 2 steps = 2 network evaluations that also inject
    noise, so the positional noise of every step is exercised."""
    in_channel = 3 if task == "isotropic" else 2
    card = {"name": f"tiny-{task}", "task": task,
            "network": {"in_channel": in_channel, "inner_channel": 8, "channel_mults": [1, 2], "res_blocks": 1,
                        "attn_res": [], "norm_groups": 4, "aleatoric": task != "isotropic",
                        "slice_embedding": task == "isotropic"},
            "diffusion": {"parameterization": "x0", "clip": [-1.5, 1.5], "sampler": sampler, "steps": steps,
                          "samples": 2},
            "tile": {"size": tile, "overlap": overlap}, "uncertainty": {"threshold": 0.2}, **extra}
    torch.manual_seed(0)
    model = model_from_card(card)
    with torch.no_grad():  # the UNet starts as zeros in places: perturb so samples really differ
        for p in model.network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def volume(shape=(2, 96, 96), seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    smooth = np.cumsum(np.cumsum(rng.normal(size=shape), axis=-1), axis=-2)
    noisy = 100 + 20 * smooth / np.abs(smooth).max() + rng.normal(0, 8, shape)
    return noisy.astype(dtype)


def read_all(output, fields=FIELDS):
    return {f: open_result(output, f)[...] for f in fields}


def test_chunk_lattice_covers_the_output_exactly_once():
    denoise, superres, isotropic = (get_task(name) for name in ("denoise", "superres", "isotropic"))
    iso = ChunkGrid.for_task(isotropic, (4, 30, 30), (2, 16, 16), 4, Geometry(z_factor=3))
    for grid in (ChunkGrid.for_task(denoise, (5, 100, 70), (2, 32, 48), 8, Geometry()),
                 ChunkGrid.for_task(superres, (3, 40, 50), (1, 16, 32), 4, Geometry(scale=2)), iso):
        hits = np.zeros(grid.out_shape, dtype=int)
        for index in grid.indices():
            hits[grid.out_region(index)] += 1
            read, origin, keep = grid.lateral(index)
            assert [r.start for r in read] == list(origin) and all(r.start >= 0 for r in read)
            kept = [k.stop - k.start for k in keep]
            assert kept == [r.stop - r.start for r in grid.out_region(index)[1:]]
        assert (hits == 1).all()
    assert iso.out_shape == (10, 30, 30) and [iso.units(isotropic, (j, 0, 0)) for j in range(2)] == [[0, 1], [2]]


def test_stream_equals_whole_plane_restore_for_any_lattice_when_the_halo_covers_every_step(tmp_path):
    """With halo >= evaluations x tile every pixel sees exactly what the whole plane sees:
    any Y/X lattice gives the in-memory result (to float rounding: tiles batch differently)."""
    model = tiny_model()
    image = volume((1, 96, 96))
    whole = restore(image, model, device="cpu", seed=3, batch_size=32)
    for chunk in ((1, 40, 40), (1, 32, 48)):  # middle windows (chunk + halo) are smaller than the plane
        out = tmp_path / f"out{chunk[1]}.zarr"
        report = stream_restore(image, out, model, chunk=chunk, halo=32, device="cpu", seed=3, batch_size=32)
        assert report.computed == report.chunks >= 6 and report.fields == FIELDS
        got = read_all(out)
        np.testing.assert_allclose(got["mean"], whole.mean, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["std"], whole.std, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got["aleatoric"], whole.aleatoric, rtol=0, atol=1e-4)
        assert (got["mask"] != whole.mask).mean() < 1e-3  # only pixels at the threshold can flip


def test_z_split_order_and_grouping_give_bit_identical_results(tmp_path):
    """For one Y/X lattice (any halo), Z chunking and the order chunks run in do not matter."""
    model = tiny_model()
    image = volume((3, 64, 64))
    a = stream_restore(image, tmp_path / "a.zarr", model, chunk=(1, 32, 32), halo=8, device="cpu")
    b = stream_restore(image, tmp_path / "b.zarr", model, chunk=(2, 32, 32), halo=8, device="cpu", order="reverse")
    assert a.chunks == 12 and b.chunks == 8
    for name, value in read_all(a.output).items():
        np.testing.assert_array_equal(read_all(b.output)[name], value)


def test_resume_skips_finished_chunks_and_redoes_a_half_written_one(tmp_path):
    model = tiny_model()
    image = volume((2, 64, 64))
    kwargs = dict(chunk=(1, 32, 32), halo=8, device="cpu", seed=1)
    reference = read_all(stream_restore(image, tmp_path / "ref.zarr", model, **kwargs).output)

    out = tmp_path / "out.zarr"
    job, array, _ = plan_stream(image, out, model, **kwargs)
    first = job.grid.indices()[:3]
    for index in first:
        restore_chunk(job, index, model, array)
    # A crash between a chunk's data and its marker: garbage data, no marker.
    half = job.grid.indices()[3]
    zarr.open_array(str(out), path="0", mode="r+")[job.grid.out_region(half)] = -7
    assert finished_chunks(out).sum() == 3

    seen = []
    report = stream_restore(image, out, model, on_chunk=lambda c: seen.append(c.index), **kwargs)
    assert report.skipped == 3 and report.computed == report.chunks - 3
    assert half in seen and not set(first) & set(seen)
    for name, value in read_all(out).items():
        np.testing.assert_array_equal(value, reference[name])
    assert finished_chunks(out).all()


def test_a_killed_run_resumes_where_it_stopped(tmp_path, tiny_model_dir):
    """SIGKILL a real run after its second finished chunk; the restart computes only the rest and
    the result equals an uninterrupted run."""
    source = tmp_path / "in.zarr"
    zarr.create_array(str(source), data=volume((2, 64, 64)), chunks=(1, 32, 32))
    out = tmp_path / "out.zarr"
    kwargs = dict(chunk=(1, 32, 32), halo=8, device="cpu", steps=1, samples=2)
    script = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from napari_emdiffuse.streaming import stream_restore\n"
        f"stream_restore({str(source)!r}, {str(out)!r}, {str(tiny_model_dir)!r}, "
        f"on_chunk=lambda c: print('done', c.index, flush=True), **{kwargs!r})\n"
        "print('finished', flush=True)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in child.stdout:
        lines.append(line)
        if len(lines) == 2:
            child.send_signal(signal.SIGKILL)
            break
    child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL and not any("finished" in line for line in lines)
    killed_done = int(finished_chunks(out).sum())
    assert 2 <= killed_done < 8

    report = stream_restore(str(source), out, str(tiny_model_dir), **kwargs)
    assert report.skipped == killed_done and report.computed == 8 - killed_done
    reference = stream_restore(str(source), tmp_path / "ref.zarr", str(tiny_model_dir), **kwargs)
    for name in FIELDS:
        np.testing.assert_array_equal(open_result(out, name)[...], open_result(reference.output, name)[...])


def test_resuming_with_other_settings_or_over_a_foreign_store_is_refused(tmp_path):
    model = tiny_model()
    image = volume((1, 48, 48))
    stream_restore(image, tmp_path / "out.zarr", model, chunk=(1, 24, 24), halo=8, device="cpu", seed=0)
    with pytest.raises(ValueError, match="other settings .*seed"):
        stream_restore(image, tmp_path / "out.zarr", model, chunk=(1, 24, 24), halo=8, device="cpu", seed=1)
    zarr.create_array(str(tmp_path / "foreign.zarr"), data=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="not an unfinished emdiffuse run"):
        stream_restore(image, tmp_path / "foreign.zarr", model, chunk=(1, 24, 24), device="cpu")
    with pytest.raises(ValueError, match="too small"):
        stream_restore(image, tmp_path / "x.zarr", model, chunk=(1, 8, 8), device="cpu")


def test_ome_zarr_in_and_out_with_voxel_sizes_and_superres_scaling(tmp_path):
    """An OME-Zarr (NGFF 0.5) input's voxel size reaches the outputs, halved in Y/X by x2
    super-resolution; the result reads back through the package's own reader."""
    source = tmp_path / "in.ome.zarr"
    group = zarr.open_group(str(source), mode="w")
    group.create_array("0", data=volume((2, 40, 40)).astype(np.uint16), chunks=(1, 20, 20))
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [0.05, 0.01, 0.01]}]}]}]}
    model = tiny_model("superres", superres={"scale": 2})
    out = tmp_path / "sr.ome.zarr"
    report = stream_restore(str(source), out, model, task="superres", chunk=(1, 20, 20), halo=16, device="cpu",
                            batch_size=32)
    assert report.shape == (2, 80, 80)
    mean = read_image(out)
    assert mean.shape == (2, 80, 80) and mean.dtype == np.uint16
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    dataset = attrs["ome"]["multiscales"][0]["datasets"][0]
    assert attrs["ome"]["version"] == "0.5" and dataset["path"] == "0"
    assert [a["unit"] for a in attrs["ome"]["multiscales"][0]["axes"]] == ["micrometer"] * 3
    assert dataset["coordinateTransformations"][0]["scale"] == pytest.approx([0.05, 0.005, 0.005])
    assert read_voxel_size(out) == pytest.approx((0.05, 0.005, 0.005))
    # The halo covers both steps' tiles (2 x 16 output pixels = 16 input pixels): = in-memory.
    whole = restore(np.asarray(group["0"]), model, task="superres", device="cpu", batch_size=32)
    np.testing.assert_array_equal(np.asarray(mean), whole.mean)


def test_isotropic_volume_streams_gap_chunks_like_the_in_memory_reconstruction(tmp_path):
    from napari_emdiffuse.api import restore as reconstruct

    model = tiny_model("isotropic", isotropic={"z_factor": 2})
    image = volume((4, 72, 32))
    whole = reconstruct(image, model, device="cpu", batch_size=32)
    for cz in (1, 2):  # whole planes: any split in z is bit-identical
        out = tmp_path / f"iso{cz}.zarr"
        report = stream_restore(image, out, model, task="isotropic", chunk=(cz, 72, 32), device="cpu", batch_size=32)
        assert report.shape == (7, 72, 32)
        np.testing.assert_array_equal(open_result(out)[...], whole.mean)
        np.testing.assert_array_equal(open_result(out, "std")[...], whole.std)
    # chunks in Y too, with the halo covering both steps' tiles: equal to float rounding
    out = tmp_path / "iso_yx.zarr"
    stream_restore(image, out, model, task="isotropic", chunk=(2, 24, 32), halo=32, device="cpu", batch_size=32)
    np.testing.assert_allclose(open_result(out)[...], whole.mean, rtol=0, atol=1e-4)


def test_two_dimensional_inputs_and_dask_arrays_stream_lazily(tmp_path):
    import dask.array as da

    model = tiny_model()
    plane = volume((1, 48, 64))[0]
    lazy = da.from_array(plane, chunks=(24, 32))
    report = stream_restore(lazy, tmp_path / "p.zarr", model, chunk=(24, 32), halo=32, device="cpu")
    assert report.shape == (48, 64) and report.chunks == 4
    np.testing.assert_allclose(open_result(report.output)[...], restore(plane, model, device="cpu").mean,
                               rtol=0, atol=1e-4)


def test_lazy_layer_shows_finished_chunks_as_they_arrive(tmp_path):
    """The napari flow: create the output, add its lazy layer, refresh as chunks finish."""
    from napari.components import ViewerModel

    model = tiny_model()
    image = volume((1, 64, 64))
    out = tmp_path / "live.zarr"
    job, _, _ = plan_stream(image, out, model, chunk=(1, 32, 32), halo=8, device="cpu")
    data, meta, kind = result_layer_data(out)
    viewer = ViewerModel()
    layer = viewer.add_image(data, **meta)
    assert kind == "image" and layer.contrast_limits == pytest.approx(job.normalizer, rel=1e-3)
    assert float(np.asarray(layer._slice.image.raw).max()) == 0  # nothing finished yet

    snapshots = []

    def on_chunk(chunk):  # what the widget does in the GUI thread
        layer.refresh()
        snapshots.append((chunk.region, np.asarray(layer._slice.image.raw).copy()))

    stream_restore(image, out, model, chunk=(1, 32, 32), halo=8, device="cpu", on_chunk=on_chunk)
    final = open_result(out)[0]
    assert len(snapshots) == 4
    for n, (region, view) in enumerate(snapshots):
        finished = np.zeros(final.shape, bool)
        for earlier, _ in snapshots[: n + 1]:
            finished[earlier[1:]] = True
        np.testing.assert_array_equal(view[finished], final[finished])
        assert (view[~finished] == 0).all()


def test_cli_chunk_streams_resumes_and_explains_a_tiff_output(tmp_path, tiny_model_dir, capsys):
    from napari_emdiffuse.cli import main

    source = tmp_path / "in.zarr"
    zarr.create_array(str(source), data=volume((2, 64, 64)), chunks=(1, 32, 32))
    args = ["denoise", str(source), "-o", str(tmp_path / "out.zarr"), "--model", str(tiny_model_dir),
            "--chunk", "32", "--halo", "8", "--steps", "1", "--device", "cpu"]
    assert main(args) == 0
    assert "in 8 chunks (8 restored) on this machine" in capsys.readouterr().out
    assert finished_chunks(tmp_path / "out.zarr").all() and (tmp_path / "out_std.zarr").is_dir()
    assert main(args) == 0
    assert "(0 restored, 8 already done)" in capsys.readouterr().out
    assert main([*args[:3], str(tmp_path / "out.tif"), *args[4:]]) == 2
    assert "give OUTPUT a .zarr name" in capsys.readouterr().err


def test_a_large_volume_normaliser_reads_a_bounded_sample_close_to_the_full_fit(monkeypatch):
    from napari_emdiffuse import streaming
    from napari_emdiffuse.engine import fit_normalizer

    class Counting:
        """An array that counts the pixels read from it."""

        def __init__(self, array):
            self.array, self.read = array, 0
            self.shape, self.ndim, self.dtype = array.shape, array.ndim, array.dtype

        def __getitem__(self, index):
            out = self.array[index]
            self.read += out.size
            return out

    model = tiny_model()
    image = volume((20, 200, 200))
    full = fit_normalizer(image, model)
    monkeypatch.setattr(streaming.chunks, "NORMALIZER_PIXELS", 60_000)
    counting = Counting(image)
    sampled = streaming.volume_normalizer(counting, model)
    assert counting.read <= 60_000
    span = full.hi - full.lo
    assert abs(sampled.lo - full.lo) < 0.05 * span and abs(sampled.hi - full.hi) < 0.05 * span
