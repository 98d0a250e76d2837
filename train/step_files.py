"""The step loop and per-step checkpoint files of the real-data trainers (AdaAV, ImageBind).

:mod:`moca_rt.train.adaav` and :mod:`moca_rt.train.pretrain_imagebind` train on folders of
clips for hours and hand their checkpoints to other tools, so unlike the tiny-model stages of
:mod:`moca_rt.train.core` (one ``state.pt`` per stage folder) they write one file set per saved
step, named by a prefix and the step, ``out/<prefix>NNNNNN``:

* ``.safetensors``: the deployable weights (what the model loaders read);
* ``.train.pt``: optimiser, scheduler, step and loss history (read with ``weights_only=True``);
* ``.json``: the manifest: step, iters, learning rate, preset, data, seed, loss summary, sha256
  of the weights, git commit, the whole config, and what the trainer adds.

``--resume`` takes any of the three files or the folder (its latest step). :class:`StepFileTrainer`
holds what both trainers share: the optimiser step and loss history, writing and reading these
files, the loop from the current step to ``iters`` with a tqdm bar, and the CLI flags.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, get_args

import torch
from torch import Tensor

from moca_rt.provenance import git_commit, sha256_file
from moca_rt.train.core import add_config_argument

__all__ = [
    "LossHistory",
    "Precision",
    "StepFileTrainer",
    "add_step_file_arguments",
    "check_run_fields",
    "checkpoint_stem",
]

Precision = Literal["fp32", "bf16"]  # bf16: autocast, the trained weights and optimiser stay fp32

Optimiser = tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]


@dataclass
class LossHistory:
    """Loss history: every step's loss since the last entry, and one mean per log window."""

    windows: list[tuple[int, float]] = field(default_factory=list)  # (last step, mean loss)
    pending: list[float] = field(default_factory=list)

    def add(self, step: int, loss: float, log_every: int) -> None:
        """Record the loss of ``step``; a full window of ``log_every`` losses is closed."""
        self.pending.append(loss)
        if len(self.pending) >= log_every:
            self.close(step)

    def close(self, step: int) -> None:
        """Close the open window (if any) as the entry of ``step``."""
        if self.pending:
            self.windows.append((step, sum(self.pending) / len(self.pending)))
            self.pending = []

    def summary(self) -> dict[str, object]:
        means = [m for _, m in self.windows]
        return {
            "window_means": [[s, m] for s, m in self.windows],
            "first": means[0] if means else None,
            "last": means[-1] if means else None,
            "min": min(means) if means else None,
        }

    def state(self) -> dict[str, list[Any]]:
        """The ``history_*`` entries of a ``.train.pt`` file."""
        return {
            "history_windows": [[s, m] for s, m in self.windows],
            "history_pending": list(self.pending),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> LossHistory:
        return cls(
            [(int(s), float(m)) for s, m in state["history_windows"]],
            [float(v) for v in state["history_pending"]],
        )


def checkpoint_stem(path: str | Path, prefix: str) -> Path:
    """``out/<prefix>NNNNNN`` of a checkpoint file, or of a folder's latest checkpoint."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob(f"{prefix}*.json"))
        if not found:
            raise FileNotFoundError(f"resume: expected {prefix}*.json in {p}, found none")
        p = found[-1]
    name = p.name
    for suffix in (".train.pt", ".safetensors", ".json"):
        if name.endswith(suffix):
            stem = p.with_name(name[: -len(suffix)])
            break
    else:
        raise ValueError(
            f"resume: expected a checkpoint .json, .safetensors or .train.pt file or a folder, "
            f"got {p}"
        )
    for suffix in (".json", ".safetensors", ".train.pt"):
        if not Path(str(stem) + suffix).is_file():
            raise FileNotFoundError(f"resume: expected {stem}{suffix} beside {p}; it is missing")
    return stem


def check_run_fields(config: Any, positive: tuple[str, ...] = ()) -> None:
    """The checks both trainers' configs share: ``iters``, ``batch``, ``save_every``,
    ``log_every`` and the ``positive`` fields positive ints, ``batch`` >= 2, ``lr`` finite and
    > 0, ``precision`` a :data:`Precision`, ``image_size`` None or >= 14 pixels.

    Raises ``ValueError`` naming the first bad field ("expected X, got Y").
    """
    for name in ("iters", "batch", "save_every", "log_every", *positive):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if config.batch < 2:
        raise ValueError(
            f"batch: expected >= 2 (the rest of the batch gives the negatives), got {config.batch}"
        )
    if not (math.isfinite(config.lr) and config.lr > 0):
        raise ValueError(f"lr: expected a finite value > 0, got {config.lr}")
    if config.precision not in get_args(Precision):
        expected = " or ".join(repr(p) for p in get_args(Precision))
        raise ValueError(f"precision: expected {expected}, got {config.precision!r}")
    if config.image_size is not None and config.image_size < 14:
        raise ValueError(f"image_size: expected None or >= 14 pixels, got {config.image_size}")


class _Data(Protocol):
    @property
    def source(self) -> str: ...

    def __len__(self) -> int: ...


# A trainer's config: a frozen dataclass with (at least) the fields ``preset``, ``iters``,
# ``seed``, ``save_every`` and ``log_every`` read here, and those of the shared flags.
StepFileConfig = Any


class StepFileTrainer:
    """Optimiser, schedule, step and loss history of a trainer with per-step checkpoint files.

    A subclass sets :attr:`prefix` and :attr:`desc`, and in its constructor :attr:`config`,
    :attr:`data` and :attr:`device`, then calls :meth:`_start` (optimiser and scheduler from
    :meth:`_optimiser`, step 0, empty history). It implements :meth:`_optimiser`,
    :meth:`train_step` (ending in :meth:`_advance`), ``save`` (through
    :meth:`_write_checkpoint`) and ``load`` (through :meth:`_read_checkpoint` and
    :meth:`_restore_train_state`); :meth:`run` is the loop.
    """

    prefix: ClassVar[str]
    desc: ClassVar[str]  # the progress bar's label
    schedule_fields: ClassVar[tuple[str, ...]] = ("iters",)  # must match to resume
    config: StepFileConfig
    data: _Data
    device: torch.device
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    step: int
    history: LossHistory

    def _start(self) -> None:
        self.optimizer, self.scheduler = self._optimiser()
        self.step = 0
        self.history = LossHistory()

    def _optimiser(self) -> Optimiser:
        raise NotImplementedError

    def train_step(self) -> float:
        raise NotImplementedError

    def _progress_postfix(self) -> dict[str, str]:
        """Extra fields of the progress bar besides the loss."""
        return {}

    def _advance(self, loss: Tensor) -> float:
        """Optimiser and scheduler step after the backward pass; returns the loss as a float."""
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        value = float(loss)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {self.step}")
        self.history.add(self.step, value, self.config.log_every)
        return value

    # checkpoint files ---------------------------------------------------------------------

    def _write_checkpoint(
        self,
        out_dir: str | Path,
        weights: Mapping[str, Tensor],
        weights_metadata: dict[str, str],
        extra_state: Mapping[str, Any],
        manifest: Mapping[str, object],
    ) -> Path:
        """Write the three files of the current step; returns the manifest (``.json``) path.

        ``extra_state`` joins the ``.train.pt`` state, ``manifest`` the common manifest fields.
        """
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{self.prefix}{self.step:06d}"
        weights_path = Path(str(stem) + ".safetensors")
        tensors = {k: v.contiguous().cpu() for k, v in weights.items()}
        save_file(tensors, str(weights_path), metadata=weights_metadata)
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **extra_state,
            "step": self.step,
            **self.history.state(),
        }
        torch.save(state, str(stem) + ".train.pt")
        c = self.config
        meta: dict[str, object] = {
            "format": 1,
            "preset": c.preset,
            "seed": c.seed,
            "step": self.step,
            "iters": c.iters,
            "lr": self.scheduler.get_last_lr()[0],
            "loss": self.history.summary(),
            "data": self.data.source,
            "num_items": len(self.data),
            **manifest,
            "weights": weights_path.name,
            "weights_sha256": sha256_file(weights_path),
            "train_state": stem.name + ".train.pt",
            "git_commit": git_commit(),
            "config": asdict(c),  # type: ignore[call-overload]
            "saved": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        path = Path(str(stem) + ".json")
        path.write_text(json.dumps(meta, indent=2) + "\n")
        return path

    def _read_checkpoint(self, path: str | Path) -> tuple[Path, dict[str, Any]]:
        """The stem and manifest of a checkpoint this run can continue: the same preset and
        schedule (:attr:`schedule_fields`), and weights matching their recorded sha256."""
        stem = checkpoint_stem(path, self.prefix)
        meta = json.loads(Path(str(stem) + ".json").read_text())
        c = self.config
        if meta["preset"] != c.preset:
            raise ValueError(
                f"resume: expected a checkpoint of preset {c.preset!r}, got {meta['preset']!r} "
                f"in {stem}.json"
            )
        saved = {name: meta["config"][name] for name in self.schedule_fields}
        ours = {name: getattr(c, name) for name in self.schedule_fields}
        if saved != ours:

            def flags(values: dict[str, Any]) -> str:
                return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())

            raise ValueError(
                f"resume: expected {flags(saved)} (the schedule of {stem}.json), got {flags(ours)}"
            )
        weights_path = Path(str(stem) + ".safetensors")
        if "weights_sha256" in meta and sha256_file(weights_path) != meta["weights_sha256"]:
            raise ValueError(f"resume: expected {weights_path} to match the sha256 in {stem}.json")
        return stem, meta

    def _restore_train_state(self, stem: Path) -> dict[str, Any]:
        """Optimiser (rebuilt on the current parameters), scheduler, step and loss history from
        ``stem.train.pt``; returns the whole state for the subclass's own entries."""
        state = torch.load(str(stem) + ".train.pt", map_location=self.device, weights_only=True)
        # The scheduler's constructor resets the group lr, so the optimiser state is loaded
        # after it.
        self.optimizer, self.scheduler = self._optimiser()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        self.history = LossHistory.from_state(state)
        return state

    # the loop -----------------------------------------------------------------------------

    def run(
        self, save: Callable[[float], Path] | None, progress: bool = False
    ) -> tuple[list[float], Path | None]:
        """Train from the current step to ``config.iters``, checkpointing every ``save_every``
        steps and at the end through ``save(last loss)`` (None: a process that does not write).

        Returns the losses of the steps taken and the last checkpoint written.
        """
        c = self.config
        losses: list[float] = []
        checkpoint: Path | None = None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=c.iters, initial=self.step, desc=self.desc, unit="step")
        try:
            while self.step < c.iters:
                loss = self.train_step()
                losses.append(loss)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", **self._progress_postfix())
                done = self.step == c.iters
                if save is not None and (self.step % c.save_every == 0 or done):
                    if done:
                        self.history.close(self.step)
                    checkpoint = save(loss)
        finally:
            if bar is not None:
                bar.close()
        return losses, checkpoint


def add_step_file_arguments(
    parser: argparse.ArgumentParser, defaults: StepFileConfig, precision: str
) -> None:
    """The run flags both real-data trainers share: ``--iters --precision --device --seed
    --save-every --log-every --resume --out`` (defaults from ``defaults``; ``precision`` says
    what bf16 keeps in fp32)."""
    arg = partial(add_config_argument, parser, defaults)

    arg("iters", "Optimisation steps; the cosine schedule decays the rate to 0 here.")
    arg("precision", f"fp32, or bf16 autocast ({precision}).", choices=list(get_args(Precision)))
    arg("device", "Torch device, e.g. cuda or cpu.")
    arg("seed", "Seeds the initial weights, the batches and the synthetic world.")
    arg("save_every", "Steps between checkpoints.")
    arg("log_every", "Steps per loss-history entry in the checkpoint manifest.")
    parser.add_argument("--resume", help="A checkpoint file or folder to continue from.")
    arg("out", "Folder for the checkpoints and manifests.")
