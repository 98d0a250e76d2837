"""Tiny ImageBind pretraining on the synthetic world (DESIGN section 6): audio-image InfoNCE.

No joint audio-image checkpoint can be downloaded here, so the tiny ``imagebind_synth`` preset is
trained by this module from random weights on matched (image, audio) pairs of the synthetic
world (the ``s4`` split, train partition; :class:`~moca_rt.train.data.SynthTrainingSet`).

One step, for a batch of B items with vision embeddings v_b (the vision encoder's L2-normalised
CLS projection) and audio embeddings a_b (the audio encoder's embedding, L2-normalised again
because the encoder scales it by its fixed logit scale and averages the clips):

    logits = exp(s) * V A^T            [B, B], s = log(1 / temperature), learnable
    loss   = (CE(logits, arange(B)) + CE(logits^T, arange(B))) / 2

the symmetric InfoNCE of CLIP/ImageBind. ``s`` starts at log(1 / 0.07) and is clamped to
``[log(1 / max_temperature), log(1 / min_temperature)]`` when used (default temperatures
0.01..1). The temperature is a training-only parameter: it is kept in the ``.train.pt`` state
and reported in the manifest, not in the weights (the official checkpoint has no slot for it;
the audio postprocessor's fixed logit scale of 20 is saved unchanged).

AdamW on every ImageBind parameter (weight decay on matrices only, not on norms, biases, CLS
tokens, positional tables or the temperature), linear warm-up for ``warmup`` steps then cosine
decay to 0 at ``iters``, optional bf16 autocast (weights and AdamW stay fp32, the loss is fp32).

Batches are a pure function of ``(seed, step)`` (:func:`~moca_rt.train.adaav.anchor_batch`:
a seeded permutation per epoch, tail dropped), so a resumed run sees the same batches.

Checkpoints in ``out`` (every ``save_every`` steps and at the end; the loop, the file set and the
shared flags are :mod:`moca_rt.train.step_files`, as for AdaAV):

* ``imagebind_step<NNNNNN>.safetensors``: the weights in the **official ImageBind key layout**
  (``modality_preprocessors.vision.rgbt_stem.proj.1.weight`` as a 5-D Conv3d kernel, each time
  slice = our Conv2d kernel / T, so the loader's time sum gives it back exactly for T = 2), the
  file :func:`~moca_rt.modeling.imagebind.load_imagebind` and
  ``MocaModel.from_config(imagebind_weights=...)`` load strictly;
* ``imagebind_step<NNNNNN>.json``: the manifest (command, seed, step, iters, final loss = the
  loss of the last step's batch before its update, loss history, held-out retrieval accuracy,
  temperature, sha256 of the weights file, git commit, config);
* ``imagebind_step<NNNNNN>.train.pt``: AdamW, scheduler, temperature, step, loss history
  (read with ``weights_only=True``).

Evaluation (:func:`evaluate_retrieval`): audio -> image top-1 retrieval over N held-out scenes
(the ``val`` partition of the same world): audio i is correct when its most similar image is
image i (chance 1/N); also the class-level accuracy (the retrieved image's sounding class is
audio i's class; chance about 1/C).

CLI: ``python -m moca_rt.train.pretrain_imagebind --preset imagebind_synth --data synth:2000
--iters 5000 --batch 32 --out runs/imagebind_synth``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from moca_rt.config import IMAGEBIND_PRESETS, ImageBindConfig
from moca_rt.modeling.imagebind import (
    OFFICIAL_TO_OURS,
    ImageBindVisionAudio,
    load_imagebind,
    official_key_layout,
)
from moca_rt.provenance import sha256_file
from moca_rt.train.adaav import anchor_batch
from moca_rt.train.core import (
    config_from_args as _config_from_args,
    config_parser,
)
from moca_rt.train.data import (
    SynthTrainingSet,
    TrainingSet,
    add_data_arguments,
    open_training_set,
)
from moca_rt.train.step_files import (
    Precision,
    StepFileTrainer,
    add_step_file_arguments,
    check_run_fields,
    checkpoint_stem as _stem_with_prefix,
)

__all__ = [
    "CHECKPOINT_PREFIX",
    "ContrastiveTemperature",
    "HeldOutSynthSet",
    "PretrainConfig",
    "PretrainResult",
    "PretrainTrainer",
    "RetrievalResult",
    "build_parser",
    "checkpoint_stem",
    "config_from_args",
    "embed_items",
    "evaluate_retrieval",
    "info_nce_loss",
    "init_model",
    "main",
    "official_state_dict",
    "retrieval_accuracy",
    "run_pretraining",
    "sha256_file",
]

CHECKPOINT_PREFIX = "imagebind_step"
_VISION_STEM_OFFICIAL = "modality_preprocessors.vision.rgbt_stem.proj.1.weight"


@dataclass(frozen=True)
class PretrainConfig:
    """Everything one pretraining run depends on (the CLI flags; recorded in every manifest).

    Attributes:
        preset: key of ``IMAGEBIND_PRESETS``.
        data: ``synth:N`` (N training scenes) or a VGGSound-style folder.
        out: checkpoint folder.
        iters: optimisation steps (cosine decay reaches 0 here). batch: pairs per step (>= 2,
            the other pairs are the negatives). lr: AdamW's peak learning rate.
        weight_decay: AdamW decay of the weight matrices. warmup: linear warm-up steps (< iters).
        temperature: initial InfoNCE temperature; min_temperature, max_temperature: its clamp.
        precision: "fp32" or "bf16" (autocast). device: torch device.
        seed: seeds the initial weights, the batches and the synthetic world.
        image_size: model input side (None = the preset's, 224); smaller square sizes
            interpolate the positional table. synth_image_size: rendered size of the scenes.
        audio_window_s: cut each scene's audio to this many seconds around the image's time.
        eval_items: held-out scenes for retrieval accuracy at each checkpoint (0 = none).
        eval_batch: scenes per forward pass in the evaluation.
        save_every, log_every: steps between checkpoints / loss-history entries.
        cache_inputs: keep every preprocessed training item in memory (about 0.9 MB each at
            224 pixels) instead of rendering and featurising it each time it is drawn.
    """

    preset: str = "imagebind_synth"
    data: str = "synth:2000"
    out: str = "runs/imagebind_synth"
    iters: int = 5000
    batch: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.05
    warmup: int = 200
    temperature: float = 0.07
    min_temperature: float = 0.01
    max_temperature: float = 1.0
    precision: Precision = "fp32"
    device: str = "cpu"
    seed: int = 0
    image_size: int | None = None
    synth_image_size: int = 224
    audio_window_s: float | None = None
    eval_items: int = 64
    eval_batch: int = 64
    save_every: int = 1000
    log_every: int = 10
    cache_inputs: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field ("expected X, got Y")."""
        if self.preset not in IMAGEBIND_PRESETS:
            raise ValueError(
                f"preset: expected one of {sorted(IMAGEBIND_PRESETS)}, got {self.preset!r}"
            )
        check_run_fields(self, positive=("eval_batch",))
        for name in ("warmup", "eval_items"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
        if self.warmup >= self.iters:
            raise ValueError(
                f"warmup: expected fewer steps than iters ({self.iters}), got {self.warmup}"
            )
        if self.eval_items == 1:
            raise ValueError("eval_items: expected 0 (no evaluation) or >= 2 scenes, got 1")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay: expected a finite value >= 0, got {self.weight_decay}")
        if not 0 < self.min_temperature <= self.temperature <= self.max_temperature:
            raise ValueError(
                f"temperature: expected 0 < min_temperature <= temperature <= max_temperature, "
                f"got {self.min_temperature}, {self.temperature}, {self.max_temperature}"
            )
        if self.synth_image_size < 32:
            raise ValueError(
                f"synth_image_size: expected >= 32 pixels, got {self.synth_image_size}"
            )
        if self.eval_items and not self.data.startswith("synth:"):
            raise ValueError(
                f"eval_items: expected 0 for folder data (held-out scenes come from the synthetic "
                f"world), got {self.eval_items} with data {self.data!r}"
            )


# --------------------------------------------------------------------------------------------
# loss and evaluation


class ContrastiveTemperature(nn.Module):
    """The learnable InfoNCE temperature, stored as ``log_scale = log(1 / temperature)``.

    :meth:`forward` returns the clamped scale ``exp(log_scale)`` (a 0-dim float32 tensor), in
    ``[1 / max_temperature, 1 / min_temperature]``; gradients stop at the clamp.
    """

    def __init__(
        self, temperature: float = 0.07, min_temperature: float = 0.01, max_temperature: float = 1.0
    ) -> None:
        super().__init__()
        if not 0 < min_temperature <= temperature <= max_temperature:
            raise ValueError(
                f"expected 0 < min_temperature <= temperature <= max_temperature, got "
                f"{min_temperature}, {temperature}, {max_temperature}"
            )
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.lo = math.log(1.0 / max_temperature)
        self.hi = math.log(1.0 / min_temperature)

    def forward(self) -> Tensor:
        return self.log_scale.clamp(self.lo, self.hi).exp()

    @property
    def temperature(self) -> float:
        """The temperature in use now (after the clamp)."""
        return float(1.0 / self().detach())


def info_nce_loss(vision: Tensor, audio: Tensor, scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE between matched rows of two embedding batches.

    Args:
        vision: [B, E] vision embeddings; audio: [B, E] audio embeddings of the same B items
            (row b of each is a matched pair). Both are L2-normalised here (in fp32).
        scale: the inverse temperature (0-dim tensor or float).

    Returns:
        0-dim float32 loss ``(CE(s V A^T, I) + CE(s A V^T, I)) / 2``; log(B) for random
        embeddings, 0 for a perfect match at a large scale.
    """
    if vision.dim() != 2 or vision.shape != audio.shape:
        raise ValueError(
            f"expected vision and audio embeddings of the same shape [B, E], got "
            f"{tuple(vision.shape)} and {tuple(audio.shape)}"
        )
    if vision.shape[0] < 2:
        raise ValueError(f"expected B >= 2 pairs (the others are negatives), got {vision.shape[0]}")
    v = F.normalize(vision.float(), dim=-1)
    a = F.normalize(audio.float(), dim=-1)
    logits = scale * (v @ a.T)
    target = torch.arange(v.shape[0], device=v.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def retrieval_accuracy(audio: Tensor, vision: Tensor) -> float:
    """Audio -> image top-1 retrieval accuracy of N matched pairs.

    Audio i retrieves the image with the largest cosine similarity (ties: the lowest index);
    it is correct when that image is image i. Chance level is 1/N.

    Args:
        audio: [N, E] audio embeddings; vision: [N, E] the images of the same N items.

    Returns:
        the fraction of the N audio rows that retrieve their own image, in [0, 1].
    """
    if audio.dim() != 2 or audio.shape != vision.shape or audio.shape[0] < 1:
        raise ValueError(
            f"expected audio and vision embeddings of the same shape [N, E] with N >= 1, got "
            f"{tuple(audio.shape)} and {tuple(vision.shape)}"
        )
    sim = F.normalize(audio.double(), dim=-1) @ F.normalize(vision.double(), dim=-1).T
    best = sim.argmax(dim=1)  # first maximal index
    hits = best == torch.arange(sim.shape[0], device=sim.device)
    return float(hits.double().mean())


@dataclass(frozen=True)
class RetrievalResult:
    """Held-out retrieval: ``accuracy`` (top-1 item), ``class_accuracy`` (retrieved image's
    sounding class == the audio's; None without classes), ``num_items`` N, ``chance`` 1/N."""

    accuracy: float
    class_accuracy: float | None
    num_items: int
    chance: float


class HeldOutSynthSet(SynthTrainingSet):
    """Scenes ``0 .. count-1`` of the ``s4`` split in a held-out partition (``val``, the
    default, or ``test``).

    Same world (seed, image size) as the training set but disjoint scenes: the partition is one
    of the seeds of every scene. Ids are ``synth:s4:<partition>:<i>``.
    """

    partitions = ("val", "test")


@torch.no_grad()
def embed_items(
    model: ImageBindVisionAudio,
    data: TrainingSet,
    image_size: int,
    batch: int = 64,
    precision: Precision = "fp32",
) -> tuple[Tensor, Tensor]:
    """Vision and audio embeddings of every item of ``data``: float32 [N, E] each, on the CPU,
    both L2-normalised."""
    device = next(model.parameters()).device
    vis, aud = [], []
    for start in range(0, len(data), batch):
        idx = list(range(start, min(start + batch, len(data))))
        images, fbank = data.model_inputs(idx, image_size)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            v, a = model(images.to(device), fbank.to(device))
        vis.append(F.normalize(v.float(), dim=-1).cpu())
        aud.append(F.normalize(a.float(), dim=-1).cpu())
    return torch.cat(vis), torch.cat(aud)


def evaluate_retrieval(
    model: ImageBindVisionAudio,
    data: TrainingSet,
    image_size: int,
    batch: int = 64,
    precision: Precision = "fp32",
) -> RetrievalResult:
    """Audio -> image top-1 retrieval accuracy of ``model`` over every item of ``data``.

    Args:
        model: ImageBind vision/audio (any device; evaluated without gradients, mode unchanged).
        data: N >= 2 held-out items, e.g. :class:`HeldOutSynthSet`.
        image_size: model input side.
        batch: items per forward pass.
    """
    if len(data) < 2:
        raise ValueError(f"expected at least 2 held-out items, got {len(data)}")
    vision, audio = embed_items(model, data, image_size, batch, precision)
    classes = data.class_ids()
    class_acc: float | None = None
    if classes is not None:
        labels = torch.as_tensor(classes)
        best = (audio.double() @ vision.double().T).argmax(dim=1)
        class_acc = float((labels[best] == labels).double().mean())
    n = len(data)
    return RetrievalResult(retrieval_accuracy(audio, vision), class_acc, n, 1.0 / n)


# --------------------------------------------------------------------------------------------
# official key layout


def official_state_dict(model: ImageBindVisionAudio) -> dict[str, Tensor]:
    """``model``'s weights under the official ImageBind key names (contiguous CPU tensors).

    Renamed through :data:`~moca_rt.modeling.imagebind.OFFICIAL_TO_OURS`; the vision stem
    becomes the official Conv3d kernel [D, 3, T, p, p] whose T time slices are each our Conv2d
    kernel / T (the loader sums them back; exact for T = 2). The result fits
    :func:`~moca_rt.modeling.imagebind.official_key_layout` key for key and shape for shape.
    """
    frames = model.config.vision.video_frames
    out: dict[str, Tensor] = {}
    for key, value in model.state_dict().items():
        official = next(
            (o + key[len(ours) :] for o, ours in OFFICIAL_TO_OURS if key.startswith(ours)), None
        )
        if official is None:
            raise KeyError(f"no official name for {key}")
        tensor = value.detach().float().cpu()
        if official == _VISION_STEM_OFFICIAL:
            tensor = (tensor / frames).unsqueeze(2).expand(-1, -1, frames, -1, -1)
        out[official] = tensor.contiguous()
    layout = official_key_layout(model.config)
    shapes = {k: tuple(v.shape) for k, v in out.items()}
    if shapes != layout:
        raise KeyError(f"official layout mismatch: {sorted(set(shapes) ^ set(layout))}")
    return out


def checkpoint_stem(path: str | Path) -> Path:
    """``out/imagebind_stepNNNNNN`` of a checkpoint file, or of a folder's latest checkpoint."""
    return _stem_with_prefix(path, CHECKPOINT_PREFIX)


# --------------------------------------------------------------------------------------------
# trainer


def _no_decay(name: str, param: Tensor) -> bool:
    return param.dim() < 2 or name.endswith(("cls_token", "pos_embed", "bias_k", "bias_v"))


class PretrainTrainer(StepFileTrainer):
    """The optimisation state of one pretraining run.

    Args:
        model: ImageBind vision/audio on its device (every parameter is trained).
        data: the training items (matched image and audio).
        config: the run's :class:`PretrainConfig`.
        eval_data: held-out items for :meth:`evaluate` (None = no evaluation).
    """

    prefix = CHECKPOINT_PREFIX
    desc = "imagebind"
    schedule_fields = ("iters", "warmup")
    config: PretrainConfig
    data: TrainingSet

    def __init__(
        self,
        model: ImageBindVisionAudio,
        data: TrainingSet,
        config: PretrainConfig,
        eval_data: TrainingSet | None = None,
    ) -> None:
        config.validate()
        if len(data) < config.batch:
            raise ValueError(
                f"data: expected at least batch = {config.batch} items, got {len(data)}"
            )
        self.config = config
        self.data = data
        self.eval_data = eval_data
        self.device = next(model.parameters()).device
        self.image_size = config.image_size or model.config.vision.image_size
        self.model = model
        self.temperature = ContrastiveTemperature(
            config.temperature, config.min_temperature, config.max_temperature
        ).to(self.device)
        self._start()
        self.cache: dict[int, tuple[Tensor, Tensor]] = {}
        self.model.train()

    def _optimiser(self) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
        """AdamW (decay on matrices only) with linear warm-up and cosine decay to 0."""
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.model.named_parameters():
            (no_decay if _no_decay(name, p) else decay).append(p)
        no_decay.append(self.temperature.log_scale)
        c = self.config
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": c.weight_decay},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=c.lr,
        )
        iters, warmup = c.iters, c.warmup

        def factor(s: int) -> float:
            if s < warmup:
                return (s + 1) / warmup
            return 0.5 * (
                1.0 + math.cos(math.pi * min(s - warmup, iters - warmup) / (iters - warmup))
            )

        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

    def batch_indices(self, step: int) -> Tensor:
        """int64 [batch] item indices of ``step`` (a pure function of seed and step)."""
        return anchor_batch(step, len(self.data), self.config.batch, self.config.seed)

    def _inputs(self, idx: list[int]) -> tuple[Tensor, Tensor]:
        if not self.config.cache_inputs:
            return self.data.model_inputs(idx, self.image_size)
        missing = [i for i in idx if i not in self.cache]
        if missing:
            images, fbank = self.data.model_inputs(missing, self.image_size)
            for i, im, fb in zip(missing, images, fbank, strict=True):
                self.cache[i] = (im, fb)
        return (
            torch.stack([self.cache[i][0] for i in idx]),
            torch.stack([self.cache[i][1] for i in idx]),
        )

    def loss_of(self, indices: Tensor | Sequence[int]) -> Tensor:
        """The InfoNCE loss of one batch of item indices (forward only; no optimiser step)."""
        images, fbank = self._inputs([int(i) for i in indices])
        enabled = self.config.precision == "bf16"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled):
            vision, audio = self.model(images.to(self.device), fbank.to(self.device))
        return info_nce_loss(vision, audio, self.temperature())

    def train_step(self, indices: Tensor | Sequence[int] | None = None) -> float:
        """One AdamW step on ``indices`` (default: :meth:`batch_indices` of the current step).

        Returns the loss before the step.
        """
        batch = self.batch_indices(self.step) if indices is None else indices
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_of(batch)
        loss.backward()
        return self._advance(loss.detach())

    def _progress_postfix(self) -> dict[str, str]:
        return {"tau": f"{self.temperature.temperature:.4f}"}

    def evaluate(self) -> RetrievalResult | None:
        """Retrieval accuracy on the held-out items (None without them); mode kept."""
        if self.eval_data is None:
            return None
        c = self.config
        return evaluate_retrieval(
            self.model, self.eval_data, self.image_size, c.eval_batch, c.precision
        )

    # checkpoints ------------------------------------------------------------------------

    def save(
        self,
        out_dir: str | Path,
        last_loss: float | None = None,
        command: str | None = None,
        evaluate: bool = True,
    ) -> Path:
        """Write the three checkpoint files of the current step; returns the manifest path."""
        retrieval = self.evaluate() if evaluate else None
        return self._write_checkpoint(
            out_dir,
            official_state_dict(self.model),
            # One metadata entry: safetensors writes several in hash-map order, so the bytes
            # (and the manifest's sha256) would differ between identical runs.
            {"moca_rt": json.dumps({"step": self.step, "preset": self.config.preset})},
            {"log_scale": self.temperature.log_scale.detach().cpu()},
            {
                "command": command if command is not None else shlex.join(sys.argv),
                "temperature": self.temperature.temperature,
                "final_loss": last_loss,
                "retrieval": None if retrieval is None else asdict(retrieval),
                "retrieval_data": None if self.eval_data is None else self.eval_data.source,
            },
        )

    def load(self, path: str | Path) -> None:
        """Restore weights, AdamW, scheduler, temperature, step and loss history.

        The weights are read back through :func:`~moca_rt.modeling.imagebind.load_imagebind`
        (the official layout, strictly), so :attr:`model` becomes a new module: hold the
        trainer, not the model passed in.

        Args:
            path: a checkpoint's ``.json``, ``.safetensors`` or ``.train.pt``, or a folder (its
                latest step).
        """
        stem, _ = self._read_checkpoint(path)
        dtype = next(self.model.parameters()).dtype
        self.model = load_imagebind(
            Path(str(stem) + ".safetensors"),
            _imagebind_config(self.config),
            device=self.device,
            dtype=dtype,
        )
        self.model.train()
        state = self._restore_train_state(stem)  # AdamW is rebuilt on the new parameters
        with torch.no_grad():
            self.temperature.log_scale.copy_(state["log_scale"])


def _imagebind_config(config: PretrainConfig) -> ImageBindConfig:
    """The ImageBind sizes of ``config.preset``."""
    return IMAGEBIND_PRESETS[config.preset]


# --------------------------------------------------------------------------------------------
# run


@dataclass
class PretrainResult:
    """What :func:`run_pretraining` returns: the trainer, the last manifest, the step losses."""

    trainer: PretrainTrainer
    manifest: Path | None
    losses: list[float]


def init_model(config: PretrainConfig) -> ImageBindVisionAudio:
    """Randomly initialised ImageBind of ``config.preset`` (seeded by ``config.seed``).

    Linear/conv weights keep torch's defaults; the transformer attention uses Xavier; the CLS
    tokens, positional tables and ``bias_k``/``bias_v`` are N(0, 0.02) (the modules' own init).
    """
    torch.manual_seed(config.seed)
    return ImageBindVisionAudio(_imagebind_config(config)).to(config.device)


def run_pretraining(
    config: PretrainConfig,
    resume: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    command: str | None = None,
    model: ImageBindVisionAudio | None = None,
) -> PretrainResult:
    """Pretrain as ``config`` says; the body of ``python -m moca_rt.train.pretrain_imagebind``.

    Opens the data (and the held-out ``val`` scenes when ``eval_items`` > 0), builds the model
    (or takes ``model``), optionally resumes, trains to ``config.iters`` steps and checkpoints
    every ``save_every`` steps and at the end (retrieval accuracy measured at each checkpoint).
    """
    config.validate()
    data = open_training_set(
        config.data, config.seed, config.synth_image_size, config.audio_window_s
    )
    eval_data: TrainingSet | None = None
    if config.eval_items:
        eval_data = HeldOutSynthSet(
            config.eval_items, config.seed, config.synth_image_size, config.audio_window_s
        )
    if model is None:
        model = init_model(config)
    trainer = PretrainTrainer(model, data, config, eval_data)
    if resume is not None:
        trainer.load(resume)
        log(f"resumed from step {trainer.step}")
    losses, manifest = trainer.run(lambda loss: trainer.save(config.out, loss, command), progress)
    return PretrainResult(trainer, manifest, losses)


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    d = PretrainConfig()
    p, arg = config_parser(
        "moca_rt.train.pretrain_imagebind",
        "Pretrain a tiny ImageBind (vision + audio) on the synthetic world with the "
        "symmetric audio-image InfoNCE loss; checkpoints use the official key layout.",
        d,
    )
    arg("preset", "The ImageBind sizes to train.", choices=sorted(IMAGEBIND_PRESETS))
    arg(
        "data",
        "synth:N for N training scenes of the synthetic world, or a VGGSound-style folder "
        "(then pass --eval-items 0).",
    )
    arg("batch", "Matched pairs per step; the other pairs of the batch are the negatives.")
    arg("lr", "AdamW's peak learning rate.")
    arg("weight_decay", "AdamW weight decay of the weight matrices.")
    arg("warmup", "Steps of linear learning-rate warm-up before the cosine decay.")
    arg("temperature", "Initial InfoNCE temperature (learned during training).")
    arg("min_temperature", "Lower clamp of the learned temperature.")
    arg("max_temperature", "Upper clamp of the learned temperature.")
    add_data_arguments(p, d.synth_image_size)
    arg("eval_items", "Held-out scenes for the retrieval accuracy at each checkpoint; 0 skips it.")
    arg("eval_batch", "Scenes per forward pass in the evaluation.")
    arg("cache_inputs", "Keep every preprocessed training item in memory after its first use.")
    add_step_file_arguments(p, d, "weights and AdamW stay fp32")
    return p


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    """The :class:`PretrainConfig` of parsed CLI arguments."""
    return _config_from_args(PretrainConfig(), args, audio_window_s=args.audio_window)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m moca_rt.train.pretrain_imagebind``: 0 on success, 2 on bad
    arguments or missing files."""
    args = build_parser().parse_args(argv)
    argv_list = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "-m", "moca_rt.train.pretrain_imagebind", *argv_list])
    try:
        config = config_from_args(args)
        result = run_pretraining(
            config, resume=args.resume, progress=sys.stderr.isatty(), command=command
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    last = result.losses[-1] if result.losses else float("nan")
    summary = f"done: step {result.trainer.step}, last loss {last:.4f}"
    if result.manifest is not None:
        meta: Mapping[str, object] = json.loads(result.manifest.read_text())
        summary += f", retrieval {meta['retrieval']}, manifest {result.manifest}"
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
