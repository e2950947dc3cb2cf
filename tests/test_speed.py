"""Speed levers that must not change a result: work the engine skips."""
import numpy as np

from test_tiling import tiny_model

from napari_emdiffuse.api import restore


def test_one_sample_with_the_posterior_mean_evaluates_only_the_first_level():
    """Its later steps would only refine a sample nobody reads: skipped, the result unchanged."""
    model = tiny_model()
    image = (np.random.default_rng(9).random((40, 56)) * 255).astype(np.float32)
    progress = []
    fast = restore(image, model, tile=32, overlap=8, samples=1, steps=4, estimate="posterior_mean",
                   progress=lambda d, t: progress.append((d, t)))
    assert fast.info["evaluations"] == 1 and fast.info["steps"] == 1 and fast.std is None
    assert progress[-1][0] == progress[-1][1]  # the progress total counts what is run
    # the first level is the same whatever the step count: so is the estimate and its variance
    one = restore(image, model, tile=32, overlap=8, samples=1, steps=1, estimate="posterior_mean")
    np.testing.assert_array_equal(fast.mean, one.mean)
    np.testing.assert_array_equal(fast.aleatoric, one.aleatoric)
    # two samples are sampled to the end for their spread
    two = restore(image, model, tile=32, overlap=8, samples=2, steps=4, estimate="posterior_mean")
    assert two.info["evaluations"] == 4 and two.std is not None
    # the sample mean still runs every step
    assert restore(image, model, tile=32, overlap=8, samples=1, steps=3).info["evaluations"] == 3


def test_gpu_budget_training_picks_a_size_and_writes_the_run(tmp_path):
    """weights/*.py --gpu-budget on a machine without a GPU: the CPU dry run of the same path."""
    import sys
    from pathlib import Path

    import yaml

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "weights"))
    from _gpu_budget import STEPS_WANTED, train_within
    from napari_emdiffuse.loading import load_model
    from napari_emdiffuse.sample_data import load_pair
    from napari_emdiffuse.training.datasets import denoise_data
    from napari_emdiffuse.training.presets import new_card

    noisy, clean = load_pair()
    data = denoise_data(noisy[:160, :160], clean[:160, :160], patch=32, check=False)
    lines = []
    run = train_within(new_card("denoise", "tiny", name="budget-run"), data.train, data.val, 0.15, tmp_path / "run",
                       patch=32, device="cpu", log=lines.append)
    card = yaml.safe_load((run / "card.yaml").read_text())
    budget = card["training"]["gpu_budget"]
    assert budget["size"] == "tiny" and budget["steps"] >= 1 and budget["device"] == "cpu"
    assert budget["probes"][0]["size"] == "tiny" and budget["probes"][0]["affordable_steps"] < STEPS_WANTED["tiny"]
    assert card["network"]["inner_channel"] == 16 and card["network"]["aleatoric"]
    assert [p["size"] for p in budget["probes"]] == ["tiny"]  # it could not afford its steps: larger ones not tried
    assert any("training tiny on cpu" in line for line in lines)
    assert load_model(str(run)).network.inner_channel == 16


def test_gpu_check_dry_run_records_each_step_and_goes_on_after_a_failure(tmp_path):
    """The cheapest part of benchmarks/gpu_check.sh --dry-run (so the script cannot rot): each
    step in its own log, a failing one recorded and the next one run."""
    import json
    import os
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "gpu"
    done = subprocess.run(["bash", str(repo / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run", "--only", "env,batch",
                           "--bundle", str(tmp_path / "bundle")],
                          env={**os.environ, "GPU_CHECK_FAIL": "env"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = dict(line.split("\t")[:2] for line in (out / "summary.tsv").read_text().splitlines()[1:])
    assert rows["env"] == "failed (exit 1)" and rows["batch"] == "ok", rows
    assert "tests_device" not in rows and rows["total"] == "within budget"
    batch = json.loads((out / "batch.json").read_text())
    assert batch["oom_fallback"]["fell_back"] and batch["oom_fallback"]["batch_after_fallback"] == 1
    assert batch["oom_fallback"]["max_abs_difference_to_small_batch"] == 0
    assert (out / "batch.log").exists() and list((tmp_path / "bundle").glob("gpu_check.tgz.*"))
