"""The training loop: conditional diffusion with EMA, warm-up + cosine learning rate, gradient
accumulation, AMP on CUDA, validation, atomic checkpoints and exact resume; on one process or
data-parallel on several (``world``: see :mod:`.world` and :mod:`.distributed`)."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from ..device import autocast
from ..diffusion.denoiser import network_target, x0_from_output
from ..diffusion.ema import EMA
from ..diffusion.losses import get_loss, heteroscedastic
from ..model import RestorationModel
from . import runs
from .noise import draw_sigmas
from .world import SingleProcess


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 8
    lr: float = 2e-4
    warmup: int = 100
    grad_accum: int = 1
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    loss: str = "l2"
    noise_draw: str = "loguniform"
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    precision: str = "auto"  # auto: autocast on CUDA when amp; bf16: bf16 autocast on CPU too; fp32
    val_every: int = 200
    val_batch: int = 16
    checkpoint_every: int = 200

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"unknown training precision {self.precision!r}: use auto, bf16 or fp32")


@dataclass
class TrainUpdate:
    """What the loop reports: every step a loss; at validations also val loss, PSNR and a preview
    (the one-step estimate of a validation crop; ``extra`` holds that crop's input and target)."""

    step: int
    total: int
    loss: float
    lr: float
    val_loss: float | None = None
    val_psnr: float | None = None
    preview: np.ndarray | None = None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def lr_at(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Trainer:
    """Trains ``model`` on ``data`` (``draw(batch, rng)`` / ``fixed_batch(n)``) into ``run_dir``.

    With a data-parallel ``world`` every process draws the same global batch of
    ``world.size * batch_size`` crop positions and noise, from the same streams, and crops and
    trains on its own rows; gradients are averaged, so the steps are those of one process on the
    global batch."""

    def __init__(self, model: RestorationModel, data, config: TrainConfig, run_dir: str | Path,
                 val_data=None, callback: Callable[[TrainUpdate], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, world: SingleProcess | None = None):
        self.model, self.data, self.cfg = model, data, config
        self.val_data = val_data
        self.run_dir = Path(run_dir)
        self.callback, self.should_stop = callback, should_stop or (lambda: False)
        self.world = world or SingleProcess()
        self._check_channels()
        self.world.ready()
        self.device = self.world.device(config.device)
        # channels_last is a 4D (2D-image) memory format; 1D and 3D networks keep the default.
        memory_format = torch.channels_last if getattr(model.network, "dims", 2) == 2 else torch.preserve_format
        self.network = model.network.to(self.device, memory_format=memory_format).train()
        # Wrapped before the EMA copies it: the wrapper gives every process rank 0's weights.
        self.replica = self.world.wrap(self.network)
        self.ema = EMA(self.network, config.ema_decay)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.lr, weight_decay=0.0)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.device.type == "cuda" and config.amp)
        self.loss_fn = get_loss(config.loss)
        self.diffusion = model.diffusion
        self.step = 0
        self.history: list[dict] = []
        self.rng = np.random.default_rng(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        # Dropout draws from torch's global generator: the run keeps its own stream of it, so a
        # resumed run draws what the uninterrupted one would, whatever else used torch meanwhile.
        # (Each process of a data-parallel run has its own.)
        self.dropout_seed = self.world.dropout_seed(config.seed)
        self.torch_rng = torch.Generator().manual_seed(self.dropout_seed).get_state()
        self.cuda_rng: torch.Tensor | None = None
        self.resumed_world_size: int | None = None
        self.save_requested = False
        self.preview_pair: tuple[np.ndarray, np.ndarray] | None = None

    def _check_channels(self) -> None:
        batch = (self.val_data or self.data).fixed_batch(1)
        need = batch["condition"].shape[1] + batch["target"].shape[1]
        have = getattr(self.model.network, "in_channel", need)
        if have != need:
            raise ValueError(f"model {self.model.name!r} takes {have - 1} condition channel(s) but this "
                             f"{self.model.task} data gives {need - 1}: fine-tune a model made for this task "
                             "and data, or start a new one from a size preset")
        if "slice_index" in batch and not getattr(self.model.network, "slice_embedding", False):
            raise ValueError(f"model {self.model.name!r} has no slice embedding, which isotropic training "
                             "needs: fine-tune an isotropic model or start a new one from a size preset")

    @contextlib.contextmanager
    def _run_rng(self):
        """Torch's global generator(s) set to the run's own stream for the duration."""
        cuda = self.device.type == "cuda"
        with torch.random.fork_rng(devices=[self.device] if cuda else []):
            torch.set_rng_state(self.torch_rng)
            if cuda:
                if self.cuda_rng is None:
                    torch.cuda.manual_seed(self.dropout_seed)
                else:
                    torch.cuda.set_rng_state(self.cuda_rng, self.device)
            try:
                yield
            finally:
                self.torch_rng = torch.get_rng_state()
                if cuda:
                    self.cuda_rng = torch.cuda.get_rng_state(self.device)

    # ---- one optimisation step -------------------------------------------------------------
    def _loss(self, batch: dict[str, torch.Tensor], generator: torch.Generator,
              network: torch.nn.Module | None = None, total: int | None = None) -> torch.Tensor:
        """Mean loss over ``batch``: this process's rows of a global batch of ``total`` rows (None:
        the batch is all of it). Noise levels and noise are drawn for the whole global batch, so
        every process moves ``generator`` on alike, and each takes those of its rows."""
        d = self.diffusion
        total = total or len(batch["target"])
        sigma = draw_sigmas(total, self.cfg.noise_draw, generator, d["sigma_min"], d["sigma_max"])
        noise = torch.randn((total, *batch["target"].shape[1:]), generator=generator)
        rows = self.world.shard(total)
        x0 = batch["target"].to(self.device)
        cond = batch["condition"].to(self.device)
        noise, sigma = noise[rows].to(self.device), sigma[rows]
        gamma = (1 / (1 + sigma ** 2)).to(self.device).reshape(-1, *([1] * (x0.ndim - 1)))
        y = gamma.sqrt() * x0 + (1 - gamma).sqrt() * noise
        args = [torch.cat([cond, y], 1), gamma.reshape(-1)]
        if "slice_index" in batch:
            args.append(batch["slice_index"].to(self.device))
        with self._autocast():
            out = (self.replica if network is None else network)(*args).float()
        pred = out[:, : x0.shape[1]]
        target = network_target(d["parameterization"], x0, noise, gamma)
        loss = self.loss_fn(pred, target)
        if self.model.aleatoric:
            # The variance head learns the spread of the x0 error; detached so it cannot bend the mean.
            x0_hat = x0_from_output(d["parameterization"], pred.detach(), y, gamma)
            loss = loss + heteroscedastic(x0_hat, x0, logvar=out[:, -1:])
        return loss

    def _autocast(self):
        """bf16 on the CPU only when asked (1.6-1.8x faster where the CPU has native bf16)."""
        if self.cfg.precision == "bf16" and self.device.type == "cpu":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return autocast(self.device, self.cfg.amp and self.cfg.precision != "fp32")

    def train_step(self) -> float:
        self.world.at_step(self.step + 1)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        with self._run_rng():
            for micro in range(self.cfg.grad_accum):
                with self.world.accumulating(self.replica, last=micro == self.cfg.grad_accum - 1):
                    rows = self.cfg.batch_size * self.world.size  # the global batch
                    batch = self.world.draw(self.data, rows, self.rng)
                    loss = self._loss(batch, self.generator, total=rows) / self.cfg.grad_accum
                    self.scaler.scale(loss).backward()
                total += loss.item()
        total = self.world.mean(total)  # the same on every process, so all of them stop on divergence
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged at step {self.step + 1} (the loss is {total}): "
                                     "lower the learning rate (or turn off AMP) and resume from the last checkpoint")
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.network)
        self.step += 1
        return total

    # ---- validation ---------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> tuple[float, float, np.ndarray]:
        """Loss of the EMA network on a fixed held-out batch and fixed noise, and the PSNR of its
        one-step estimate from pure noise (the regression estimate) with a preview image."""
        data = self.val_data or self.data
        batch = data.fixed_batch(self.cfg.val_batch)
        # Data-parallel: each process takes its rows of the batch (rank 0 the first) and the
        # means are reduced over all of them.
        total = len(batch["target"])
        rows = self.world.shard(total)
        mine = {key: value[rows] for key, value in batch.items()}
        count = len(mine["target"])
        val_loss = mse = 0.0
        preview = None
        if count:
            val_loss = float(self._loss(mine, torch.Generator().manual_seed(4321), self.ema.network, total))
            denoise = self.model.__class__(self.model.card, self.ema.network).denoiser()
            x0 = mine["target"].to(self.device)
            sig = float(self.diffusion["sigma_max"])
            start = torch.randn(batch["target"].shape, generator=torch.Generator().manual_seed(99))[rows].to(self.device) * sig
            est = denoise(start, sig, mine["condition"].to(self.device), mine.get("slice_index"))
            mse = float(((est - x0) ** 2).mean())
            preview = est[0, 0].cpu().numpy()
        val_loss, mse = self.world.mean_over_rows([val_loss, mse], count, total)
        psnr = 10 * math.log10(4.0 / max(mse, 1e-12))  # peak-to-peak of [-1, 1] is 2
        # What the preview shows the estimate against: the input (its last channel) and the target.
        self.preview_pair = (batch["condition"][0, -1].numpy(), batch["target"][0, 0].numpy())
        return val_loss, psnr, preview

    # ---- checkpoints ----------------------------------------------------------------------------
    def card(self) -> dict:
        card = dict(self.model.card)
        card["training"] = {**card.get("training", {}), "config": asdict(self.cfg), "step": self.step}
        card["training"].pop("distributed", None)  # the processes of the latest session, if several
        processes = self.world.describe(self.cfg)
        if processes:
            card["training"]["distributed"] = processes
        if self.history:
            last = [h for h in self.history if h.get("val_loss") is not None]
            if last:
                card["training"]["val_loss"] = last[-1]["val_loss"]
                card["training"]["val_psnr_one_step"] = last[-1]["val_psnr"]
        return card

    def save(self) -> None:
        """Write the training state, then the model (EMA weights + card); each write is atomic.
        Data-parallel: every process hands rank 0 its dropout stream; only rank 0 writes."""
        dropout_streams = self.world.gather({"torch_rng": self.torch_rng, "cuda_rng": self.cuda_rng})
        if not self.world.is_main:
            self.save_requested = False
            return
        runs.remove_partial_writes(self.run_dir)
        state = {
            "step": self.step,
            "network": self.network.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": self.rng.bit_generator.state,
            "generator": self.generator.get_state(),
            "torch_rng": self.torch_rng,
            "history": self.history,
        }
        if self.cuda_rng is not None:
            state["cuda_rng"] = self.cuda_rng
        if self.world.size > 1:
            state.update(world_size=self.world.size, dropout_streams=dropout_streams)
        with self.world.writing():
            runs.save_torch(state, self.run_dir / runs.STATE_NAME)
            runs.save_model(self.card(), self.ema.network.state_dict(), self.run_dir)
        self.save_requested = False

    def request_save(self) -> None:
        """Ask for a checkpoint after the current step (safe from another thread)."""
        self.save_requested = True

    def resume(self) -> None:
        """Continue from the run folder's training state: model, EMA, optimiser, schedule
        position, step, history and every random stream, so the loss curve carries on exactly."""
        path = self.run_dir / runs.STATE_NAME
        if not path.is_file():
            raise ValueError(f"{self.run_dir} holds no training state ({runs.STATE_NAME}) to resume — "
                             "start a new run there, or fine-tune from its model instead")
        if self.world.is_main:
            runs.remove_partial_writes(self.run_dir)
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.network.load_state_dict(state["network"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.rng.bit_generator.state = state["rng"]
        self.generator.set_state(state["generator"].cpu())
        self.resumed_world_size = state.get("world_size", 1)
        streams = state.get("dropout_streams")
        if streams is not None and len(streams) == self.world.size:  # every process's own stream
            self.torch_rng = streams[self.world.rank]["torch_rng"].cpu()
            if streams[self.world.rank]["cuda_rng"] is not None and self.device.type == "cuda":
                self.cuda_rng = streams[self.world.rank]["cuda_rng"].cpu()
        elif self.world.rank == 0:  # one process's run (or another number of processes): rank 0's
            if "torch_rng" in state:  # absent from checkpoints written before it was kept
                self.torch_rng = state["torch_rng"].cpu()
            if "cuda_rng" in state and self.device.type == "cuda":
                self.cuda_rng = state["cuda_rng"].cpu()
        self.step, self.history = state["step"], list(state["history"])

    # ---- the loop -------------------------------------------------------------------------------
    def iterate(self, until: int | None = None) -> Iterator[TrainUpdate]:
        """Train until ``config.steps`` (or step ``until``), yielding an update after every step;
        a stop request is honoured after the step in progress. Whatever ends the loop (the last
        step, a stop, an error, the consumer closing the generator) leaves a saved checkpoint,
        except divergence, which keeps the last good one."""
        end = self.cfg.steps if until is None else min(until, self.cfg.steps)
        self.network.train()
        t0 = time.perf_counter()
        diverged = finished = False
        try:
            while self.step < end and not self.world.any(self.should_stop()):
                loss = self.train_step()
                update = TrainUpdate(self.step, self.cfg.steps, loss, lr_at(self.step - 1, self.cfg),
                                     seconds=time.perf_counter() - t0)
                record = {"step": self.step, "loss": loss}
                if self.step % self.cfg.val_every == 0 or self.step == self.cfg.steps:
                    update.val_loss, update.val_psnr, update.preview = self.validate()
                    update.extra["preview_input"], update.extra["preview_target"] = self.preview_pair
                    record.update(val_loss=update.val_loss, val_psnr=update.val_psnr)
                self.history.append(record)
                yield update
                if self.world.any(self.save_requested) or self.step % self.cfg.checkpoint_every == 0:
                    self.save()
            finished = True
        except FloatingPointError:
            diverged = True
            raise
        finally:
            self.network.eval()
            # A save needs every process of a data-parallel run: after a failure it keeps the
            # last checkpoint (resume then replays the lost steps exactly).
            if not diverged and (finished or self.world.size == 1):
                self.save()

    def run(self, until: int | None = None) -> list[dict]:
        """Train until ``config.steps`` (or step ``until``) or a stop request, passing each update
        to ``callback``; always ends with a saved checkpoint. Returns the loss history."""
        for update in self.iterate(until):
            if self.callback is not None:
                self.callback(update)
        return self.history
