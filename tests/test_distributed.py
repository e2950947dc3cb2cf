"""Streaming on dask.distributed: a scheduler and two worker processes on loopback give exactly
the local result, workers load a model by path once, and a cluster run resumes a local one."""
import numpy as np
import pytest
import zarr

from napari_emdiffuse.streaming import cluster as emd_distributed
from napari_emdiffuse.streaming import finished_chunks, open_result, plan_stream, restore_chunk, stream_restore
from test_streaming import FIELDS, tiny_model, volume


@pytest.fixture(scope="module")
def cluster():
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as local:
        yield local


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "in.zarr"
    zarr.create_array(str(path), data=volume((2, 64, 64)), chunks=(1, 32, 32))
    return path


def test_two_workers_on_loopback_give_the_local_result_exactly(cluster, source, tmp_path):
    model = tiny_model()
    kwargs = dict(chunk=(1, 32, 32), halo=8, device="cpu", seed=2)
    local = stream_restore(str(source), tmp_path / "local.zarr", model, **kwargs)
    workers = set()
    remote = stream_restore(str(source), tmp_path / "remote.zarr", model, cluster=cluster.scheduler_address,
                            on_chunk=lambda c: workers.add(c.worker), **kwargs)
    assert remote.computed == remote.chunks == 8 and remote.info["workers"] == 2
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)  # both did work
    for name in FIELDS:
        np.testing.assert_array_equal(open_result(remote.output, name)[...], open_result(local.output, name)[...])


def test_workers_load_a_model_by_path_and_resume_a_local_run(cluster, source, tmp_path, tiny_model_dir):
    kwargs = dict(chunk=(1, 32, 32), halo=8, device="cpu", steps=1)
    reference = stream_restore(str(source), tmp_path / "ref.zarr", str(tiny_model_dir), **kwargs)
    out = tmp_path / "out.zarr"
    job, array, model = plan_stream(str(source), out, str(tiny_model_dir), **kwargs)
    for index in job.grid.indices()[:3]:  # a local run that stopped after three chunks
        restore_chunk(job, index, model, array)
    report = stream_restore(str(source), out, str(tiny_model_dir), cluster=cluster.scheduler_address, **kwargs)
    assert report.skipped == 3 and report.computed == 5 and finished_chunks(out).all()
    for name in ("mean", "std", "aleatoric", "mask"):
        np.testing.assert_array_equal(open_result(out, name)[...], open_result(reference.output, name)[...])


def test_cluster_errors_are_clear(source, tmp_path, monkeypatch):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(emd_distributed, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ValueError, match="cannot reach the dask scheduler at tcp://127.0.0.1"):
        stream_restore(str(source), tmp_path / "o.zarr", tiny_model(), cluster=f"tcp://127.0.0.1:{port}",
                       chunk=(1, 32, 32), device="cpu")
    with pytest.raises(ValueError, match="file the workers can read"):
        stream_restore(volume((1, 32, 32)), tmp_path / "p.zarr", tiny_model(), cluster=f"tcp://127.0.0.1:{port}",
                       device="cpu")
