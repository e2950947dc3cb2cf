"""Data-parallel training on the CPU: two processes with gloo, started by torchrun or, the way
SLURM's srun starts them, each with torchrun's environment. Tiny models, a few steps on real EM."""
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tifffile
import torch
import yaml

from conftest import TINY_CARD, write_tiny_run
from napari_emdiffuse.cli import main
from napari_emdiffuse.loading import load_model
from napari_emdiffuse.sample_data import load_fibsem, load_pair

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
LIMIT = 180  # seconds any launch may take: past it the test fails instead of hanging

# One process of the run. FAULT makes rank FAULT_RANK die (kill: SIGKILL) or hang (hang) when it
# begins step FAULT_STEP, read a file that is missing (input) while setting up, or finish with its
# heartbeat stuck in a torch call (stuck-heartbeat).
PROCESS = textwrap.dedent("""
    import os, signal, sys, time
    fault, argv = os.environ.get("FAULT"), sys.argv[1:]
    if fault and os.environ["RANK"] == os.environ["FAULT_RANK"]:
        from napari_emdiffuse.training.trainer import Trainer
        step = Trainer.train_step
        def faulty(self):
            if self.step + 1 == int(os.environ["FAULT_STEP"]):
                if fault == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(3600)
            return step(self)
        Trainer.train_step = faulty
        if fault == "stuck-heartbeat":  # at the end, the heartbeat is inside a store call that blocks
            import threading
            from datetime import timedelta
            from napari_emdiffuse.training.distributed import World
            close, entered = World.close, threading.Event()
            class Stuck:
                def __init__(self, store):
                    self.store = store
                def __getattr__(self, name):
                    return getattr(self.store, name)
                def multi_get(self, keys):
                    entered.set()
                    self.store.wait(["never-set"], timedelta(seconds=3600))
            def closing(self, *args):
                self._store = Stuck(self._store)
                entered.wait()
                close(self, *args)
            World.close = closing
        if fault == "input":
            argv[argv.index("--input") + 1] = "missing.tif"
    from napari_emdiffuse.cli import main
    sys.exit(main(argv))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, processes: int = 2, **fault) -> list[subprocess.Popen]:
    """The processes of one run, started as srun would: each with RANK, WORLD_SIZE, ... set."""
    port = free_port()
    procs = []
    for rank in range(processes):
        env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": str(processes),
               "RANK": str(rank), "LOCAL_RANK": str(rank), **{k.upper(): str(v) for k, v in fault.items()}}
        procs.append(subprocess.Popen([sys.executable, "-c", PROCESS, *map(str, argv)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def finish(procs: list[subprocess.Popen]) -> tuple[list[int], list[str], list[str]]:
    """Exit codes, stdout and stderr by rank."""
    try:
        outputs = [p.communicate(timeout=LIMIT) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [p.returncode for p in procs], [o for o, _ in outputs], [e for _, e in outputs]


def launch(argv, **fault):
    return finish(start(argv, **fault))


def state(run: Path) -> dict:
    return torch.load(run / "state.pt", weights_only=True)


def errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("emdiffuse: error:")]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    noisy, clean = load_pair()
    tifffile.imwrite(folder / "noisy.tif", noisy[:128, :160])
    tifffile.imwrite(folder / "clean.tif", clean[:128, :160])
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The model every compared run starts from (a new model's initial weights are random)."""
    return write_tiny_run(tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def base_with_dropout(tmp_path_factory):
    """Dropout draws from each process's own stream: resuming must restore every one of them."""
    return write_tiny_run(tmp_path_factory.mktemp("dropout"), network={**TINY_CARD["network"], "dropout": 0.1})


def denoise_args(pair, model, run, *more):
    return ["train", "denoise", "--input", pair / "noisy.tif", "--target", pair / "clean.tif", "--model", model,
            "--patch", "32", "--device", "cpu", "-o", run, *more]


def test_each_process_crops_only_its_rows_of_the_global_draw():
    import numpy as np

    from napari_emdiffuse.training.datasets import denoise_data, isotropic_data

    noisy, clean = load_pair()
    sources = {
        "one image, extra noise and jitter": denoise_data(noisy[:200, :300], clean[:200, :300], patch=32, check=False,
                                                          extra_noise=0.2, intensity_jitter=0.1).train,
        "images of two sizes": denoise_data([noisy[:200, :300], noisy[300:500, :200]], [clean[:200, :300], clean[300:500, :200]],
                                            patch=32, check=False, extra_noise=0.2).train,
        "isotropic slices": isotropic_data(load_fibsem()[:24, :96, :96], z_factor=3, patch=32).train,
    }
    for name, data in sources.items():
        whole_rng, rng = np.random.default_rng(5), np.random.default_rng(5)
        whole = data.draw(6, whole_rng)
        for rows in (slice(0, None, 2), slice(1, None, 2), slice(0)):
            rng = np.random.default_rng(5)
            mine = data.draw(6, rng, rows=rows)
            for key, value in whole.items():
                assert torch.equal(mine[key], value[rows]), (name, rows, key)
            assert rng.bit_generator.state == whole_rng.bit_generator.state, (name, rows)  # moved on alike


def test_one_step_on_two_processes_equals_one_step_of_one_process_on_the_global_batch(pair, base, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "napari_emdiffuse.cli", *map(str, denoise_args(pair, base, two, "--steps", "1",
                                                                                 "--batch-size", "2"))],
                          env=ENV, capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert main([str(a) for a in denoise_args(pair, base, one, "--steps", "1", "--batch-size", "4")]) == 0

    trained, reference = state(two), state(one)
    for key, weights in reference["network"].items():
        torch.testing.assert_close(trained["network"][key], weights, atol=1e-5, rtol=0)
    for got, expected in zip(trained["history"], reference["history"], strict=True):
        assert got == pytest.approx(expected, abs=1e-5)  # the loss every rank reports is the global mean
    # Rank 0 alone reports and writes; the run folder is a model like any other.
    assert done.stdout.count("trained denoise model") == 1 and "on 2 processes (gloo, cpu)" in done.stdout
    assert done.stderr.count("step 1/1 loss") == 1
    assert sorted(p.name for p in two.iterdir()) == ["card.yaml", "state.pt", "weights.pt"]
    card = load_model(two, task="denoise").card
    assert card["training"]["distributed"] == {
        "world_size": 2, "backend": "gloo", "device": "cpu", "batch_per_process": 2, "grad_accum": 1,
        "global_batch": 4, "validation": "split across the processes; loss and one-step PSNR reduced over all of them"}
    assert "distributed" not in load_model(one).card["training"]


def test_a_killed_process_stops_the_other_with_its_rank_and_the_run_resumes_exactly(pair, base_with_dropout, tmp_path):
    settings = ["--batch-size", "2", "--steps", "4", "--checkpoint-every", "2", "--val-every", "2", "--dist-timeout", "20"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    runs = [start(denoise_args(pair, base_with_dropout, whole, *settings)),
            start(denoise_args(pair, base_with_dropout, killed, *settings), fault="kill", fault_rank=1, fault_step=3)]
    (codes, _, _), (killed_codes, _, killed_err) = map(finish, runs)
    assert codes == [0, 0]
    assert killed_codes == [2, -9]
    [message] = errors(killed_err[0])
    assert "rank 1 of 2 stopped answering during step 3" in message
    assert f"{killed} keeps the checkpoint of step 2: run the same command with --resume" in message
    assert load_model(killed).card["training"]["step"] == 2

    resume = denoise_args(pair, base_with_dropout, killed, "--resume", "--dist-timeout", "20")
    resume.remove("--model"), resume.remove(base_with_dropout)
    codes, out, err = launch(resume)
    assert codes == [0, 0], err
    assert "steps 2-4 of 4" in out[0] and not out[1] and not err[1]
    expected, resumed = state(whole), state(killed)
    assert [h["step"] for h in resumed["history"]] == [1, 2, 3, 4]
    for got, want in zip(resumed["history"], expected["history"], strict=True):
        assert got == pytest.approx(want, abs=1e-6)
    for key, weights in expected["network"].items():
        torch.testing.assert_close(resumed["network"][key], weights, atol=1e-6, rtol=0)
    assert len(resumed["dropout_streams"]) == 2
    assert not torch.equal(resumed["dropout_streams"][0]["torch_rng"], resumed["dropout_streams"][1]["torch_rng"])


def test_a_finished_run_exits_cleanly_even_with_a_heartbeat_stuck_in_the_store(pair, base, tmp_path):
    # A thread left inside a torch call while the interpreter shuts down aborts the process
    # ("terminate called without an active exception", once in CI): leaving must not allow it.
    started = time.monotonic()
    codes, out, err = launch(denoise_args(pair, base, tmp_path / "run", "--batch-size", "2", "--steps", "2",
                                          "--dist-timeout", "20"), fault="stuck-heartbeat", fault_rank=1, fault_step=0)
    assert codes == [0, 0], err
    assert "trained denoise model" in out[0] and not err[1]
    assert load_model(tmp_path / "run").card["training"]["step"] == 2
    assert time.monotonic() - started < 60  # rank 1 gives its heartbeat 7 s, rank 0 waits 8 s for it


def test_a_hung_process_is_named_when_the_others_time_out(pair, base, tmp_path):
    codes, _, err = launch(denoise_args(pair, base, tmp_path / "run", "--batch-size", "2", "--steps", "3",
                                        "--dist-timeout", "15"), fault="hang", fault_rank=1, fault_step=2)
    assert codes == [2, 2]  # the hung process's own watcher ends it too
    [message] = errors(err[0])
    assert "rank 1 of 2 did not finish step 2 in 15 s while the others waited" in message
    assert "keeps the checkpoint of step 1" in message
    assert not errors(err[1])  # said once


def test_a_process_that_cannot_set_up_stops_all_with_its_reason(pair, base, tmp_path):
    codes, _, err = launch(denoise_args(pair, base, tmp_path / "run", "--steps", "2"), fault="input", fault_rank=1)
    assert codes == [2, 2]
    [message] = errors(err[0])
    assert message.startswith("emdiffuse: error: rank 1 of 2: ") and "missing.tif" in message
    assert not err[1] and not (tmp_path / "run").exists()


@pytest.mark.parametrize("task", ["superres", "isotropic"])
def test_every_task_trains_on_two_processes(task, tmp_path):
    if task == "superres":
        image = tmp_path / "hr.tif"
        tifffile.imwrite(image, load_pair()[1][:128, :128])
        inputs = ["--target", image]
    else:
        image = tmp_path / "volume.tif"
        tifffile.imwrite(image, load_fibsem()[:24, :96, :96], photometric="minisblack")
        inputs = ["--volume", image, "--z-factor", "3"]
    codes, out, err = launch(["train", task, *inputs, "-o", tmp_path / "run", "--steps", "2", "--patch", "32",
                              "--batch-size", "2", "--device", "cpu"])
    assert codes == [0, 0], err
    assert f"trained {task} model" in out[0] and not out[1]
    model = load_model(tmp_path / "run", task=task)
    assert model.card["training"]["distributed"]["global_batch"] == 4


def test_without_torchrun_nothing_distributed_is_imported(pair, base, tmp_path):
    script = textwrap.dedent(f"""
        import sys, torch
        from napari_emdiffuse.cli import main
        assert main({[str(a) for a in denoise_args(pair, base, tmp_path / "run", "--steps", "1")]!r}) == 0
        loaded = [m for m in sys.modules if m.startswith("napari_emdiffuse") and ("distributed" in m or "torchrun" in m)]
        assert not loaded and not torch.distributed.is_initialized(), loaded
    """)
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=LIMIT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "distributed" not in yaml.safe_load((tmp_path / "run" / "card.yaml").read_text())["training"]
