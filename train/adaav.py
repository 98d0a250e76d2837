"""AdaAV training of MoCA (DESIGN section 4, paper section 3.1): the loop and its CLI.

One step, for a batch of B anchor items a_b:

1. positives p_b: a random one of a_b's top-K in the pairing table; negatives n_b: a shuffle of
   the batch that never gives a_b itself or one of its top-K (:mod:`moca_rt.train.pairing`);
2. the anchor's audio runs once through the frozen audio trunk
   (:meth:`~moca_rt.modeling.moca.MocaModel.encode_audio`) and the *same* audio features are
   fused into the anchor, positive and negative images (one ``encode_vision`` call on the
   3B images, the audio rows repeated);
3. loss ``mean_b max(0, C(f_a, f_p) - C(f_a, f_n) + alpha)`` with the PMA cost C on the
   audio-enhanced patch features [B, g, g, Dv] (:func:`~moca_rt.kernels.pma.pma_triplet_loss`);
4. Adam on the adapter parameters only, cosine decay of the learning rate to 0 over ``iters``.

Batches are a pure function of ``(seed, step)``: epoch e shuffles the N items with a generator
seeded from ``(seed, e)`` and cuts it into ``N // (B * world_size)`` global batches (the tail
is dropped); rank r takes its B-slice; positives and negatives come from a generator seeded from
``(seed, step, rank)``. So a resumed run sees exactly the batches the uninterrupted one would.

Checkpoints (every ``save_every`` steps and at the end) in ``out``:
``adaav_step<NNNNNN>.safetensors`` (adapter weights only, keys ``adapters.<layer>.<name>``, what
:meth:`~moca_rt.modeling.moca.MocaModel.load_adapter_state_dict` reads),
``adaav_step<NNNNNN>.json`` (preset, data source, pairing, step, lr, loss summary, sha256 of
the weights, git commit, seed, the whole training config) and ``adaav_step<NNNNNN>.train.pt``
(Adam and scheduler state, loss history; read with ``weights_only=True``). ``--resume`` takes
any of the three files or the folder (its latest step). The loop, the files and the shared
flags are :mod:`moca_rt.train.step_files`.

Multi-GPU: under ``torchrun`` (``WORLD_SIZE > 1``) each process takes its rank's slice of every
global batch and the adapter gradients are averaged with ``all_reduce`` before each Adam step;
rank 0 alone writes checkpoints. That path is **untested here** (no multi-GPU machine).

CLI: ``python -m moca_rt.train.adaav --preset moca_huge --imagebind imagebind_huge.pth
--data /data/vggsound --pairing table.safetensors --out runs/adaav``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import Tensor

from moca_rt.config import DINO_PRESETS, MOCA_PRESETS
from moca_rt.kernels.pma import pma_triplet_loss
from moca_rt.modeling.moca import AudioFeatures, MocaModel
from moca_rt.train.core import config_from_args, config_parser
from moca_rt.train.data import TrainingSet, add_data_arguments, open_training_set
from moca_rt.train.pairing import (
    PairingTable,
    load_table,
    sample_negatives_or_redraw,
    sample_positive,
    save_table,
)
from moca_rt.train.step_files import (
    Precision,
    StepFileTrainer,
    add_step_file_arguments,
    check_run_fields,
    checkpoint_stem as _stem_with_prefix,
)

__all__ = [
    "AdaavTrainer",
    "ClassPairing",
    "KnnPairing",
    "TrainConfig",
    "anchor_batch",
    "build_pairing",
    "main",
    "repeat_audio",
    "run_training",
    "triplet_loss",
]

SearchMode = Literal["row", "full"]
CHECKPOINT_PREFIX = "adaav_step"


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on (the CLI flags; recorded in every checkpoint).

    Attributes:
        preset: key of ``MOCA_PRESETS``.
        data: ``synth:N`` or a VGGSound-style folder (:mod:`moca_rt.train.data`).
        pairing: a table file, ``auto`` (DINO kNN table built now) or ``class`` (synthetic world
            only: positives share the anchor's sounding class; ground truth, NOT unsupervised).
        out: checkpoint folder.
        iters: optimisation steps (the cosine schedule reaches 0 here). batch: anchors per step
            and process. lr: Adam's initial learning rate. alpha: triplet margin.
        search, max_disparity: PMA search ("row" with ``max_disparity`` None = whole scanline,
            0 = same pixel only; or "full" over all positions). ssd_weight, ncc_weight: weights.
        precision: "fp32" or "bf16" (autocast; adapters and Adam stay fp32).
        activation_checkpointing: recompute adapted blocks in the backward pass.
        cache_prefix: compute each image's frozen vision prefix once and keep it on ``device``.
        image_size: model input side; None = the preset's (224).
        synth_image_size: rendered size of synthetic scenes. audio_window_s: see data.py.
        k: neighbours of the ``auto`` table. imagebind, dino: weight files (None = random
            weights, for smoke tests only). dino_preset: DINO architecture for ``auto``.
        save_every, log_every: steps between checkpoints / loss-history entries.
        seed: seeds the adapters' init, the batches, and the synthetic world.
    """

    preset: str = "moca_huge"
    data: str = "synth:1000"
    pairing: str = "auto"
    out: str = "runs/adaav"
    iters: int = 10000
    batch: int = 8
    lr: float = 1e-4
    alpha: float = 0.3
    search: SearchMode = "row"
    max_disparity: int | None = None
    ssd_weight: float = 1.0
    ncc_weight: float = 1.0
    precision: Precision = "fp32"
    activation_checkpointing: bool = False
    cache_prefix: bool = False
    device: str = "cpu"
    seed: int = 0
    image_size: int | None = None
    synth_image_size: int = 224
    audio_window_s: float | None = None
    k: int = 10
    imagebind: str | None = None
    dino: str | None = None
    dino_preset: str = "dino_vitb16"
    save_every: int = 1000
    log_every: int = 10

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field ("expected X, got Y")."""
        if self.preset not in MOCA_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(MOCA_PRESETS)}, got {self.preset!r}")
        if self.dino_preset not in DINO_PRESETS:
            raise ValueError(
                f"dino_preset: expected one of {sorted(DINO_PRESETS)}, got {self.dino_preset!r}"
            )
        check_run_fields(self, positive=("k", "synth_image_size"))
        if not self.alpha >= 0:
            raise ValueError(f"alpha: expected >= 0, got {self.alpha}")
        if self.search not in get_args(SearchMode):
            raise ValueError(f"search: expected one of {get_args(SearchMode)}, got {self.search!r}")
        if self.max_disparity is not None:
            if self.search == "full":
                raise ValueError(
                    f"max_disparity: expected None with search='full', got {self.max_disparity}"
                )
            if self.max_disparity < 0:
                raise ValueError(f"max_disparity: expected None or >= 0, got {self.max_disparity}")
        if self.ssd_weight < 0 or self.ncc_weight < 0 or self.ssd_weight + self.ncc_weight == 0:
            raise ValueError(
                f"ssd_weight, ncc_weight: expected >= 0 and not both 0, got "
                f"{self.ssd_weight}, {self.ncc_weight}"
            )
        if self.pairing == "class" and not self.data.startswith("synth:"):
            raise ValueError(
                f"pairing: expected 'class' only with synth:N data (labels needed), got data "
                f"{self.data!r}"
            )


# --------------------------------------------------------------------------------------------
# pairing


class KnnPairing:
    """Positives and negatives from a kNN :class:`~moca_rt.train.pairing.PairingTable`."""

    def __init__(self, table: PairingTable, description: str) -> None:
        self.table = table
        self.description = description

    def positives(self, anchors: Tensor, generator: torch.Generator) -> Tensor:
        """int64 [B]: a uniformly random one of each anchor's top-K."""
        pos = sample_positive(self.table, anchors, generator)
        assert isinstance(pos, Tensor)
        return pos

    def negatives(self, anchors: Tensor, generator: torch.Generator) -> Tensor:
        """int64 [B]: a shuffle of the batch avoiding each anchor and its top-K (redrawn from
        all items when the batch has none)."""
        return sample_negatives_or_redraw(anchors, self.table, generator, self.table.n)


class ClassPairing:
    """Ground-truth pairing of the synthetic world (debugging only, NOT unsupervised).

    Positive: a uniformly random other item of the anchor's sounding class. Negatives: a shuffle
    of the batch that never gives an item of the anchor's class (``sample_negatives`` on a table
    whose row i lists i's class mates, padded by repeating them).
    """

    description = "class (ground-truth sounding class; not unsupervised)"

    def __init__(self, class_ids: Sequence[int]) -> None:
        classes = torch.as_tensor(list(class_ids), dtype=torch.int64)
        n = classes.numel()
        self.members: list[Tensor] = []
        for i in range(n):
            mates = torch.nonzero(classes == classes[i]).squeeze(1)
            mates = mates[mates != i]
            if mates.numel() == 0:
                raise ValueError(
                    f"pairing 'class': expected every sounding class to have >= 2 items, got "
                    f"item {i} alone in class {int(classes[i])}; use more synthetic scenes"
                )
            self.members.append(mates)
        width = max(m.numel() for m in self.members)
        self.table = torch.stack([m[torch.arange(width) % m.numel()] for m in self.members])

    def positives(self, anchors: Tensor, generator: torch.Generator) -> Tensor:
        out = []
        for a in anchors.tolist():
            mates = self.members[a]
            out.append(mates[int(torch.randint(0, mates.numel(), (1,), generator=generator))])
        return torch.stack(out)

    def negatives(self, anchors: Tensor, generator: torch.Generator) -> Tensor:
        """A shuffle of the batch avoiding the anchors' classes; when one class fills more than
        half the batch no such shuffle exists, and negatives are redrawn from all items."""
        return sample_negatives_or_redraw(anchors, self.table, generator, len(self.members))


Pairing = KnnPairing | ClassPairing


def build_pairing(
    spec: str,
    data: TrainingSet,
    out_dir: Path,
    *,
    k: int = 10,
    dino: str | None = None,
    dino_preset: str = "dino_vitb16",
    device: str = "cpu",
    seed: int = 0,
    log: Callable[[str], None] = print,
    save: bool = True,
) -> Pairing:
    """The pairing of a run: a saved table, ``auto`` (DINO kNN now) or ``class``.

    ``auto`` featurises every training image with DINO (``dino`` weights, or random weights
    seeded by ``seed`` with a printed note: pairs from random DINO are not meaningful), builds
    the exact cosine top-``k`` table and saves it as ``out_dir/pairing.safetensors`` (when
    ``save``; other DDP ranks build the same table without writing it). A table
    file must have one row per training item and, when it records item ids, the same ids.
    """
    if spec == "class":
        classes = data.class_ids()
        if classes is None:
            raise ValueError(
                f"pairing: expected 'class' only for the synthetic world, got data {data.source}"
            )
        log("note: pairing 'class' uses ground-truth sounding classes (debugging, not MoCA)")
        return ClassPairing(classes)
    if spec == "auto":
        from torch import nn

        from moca_rt.modeling.dino import DinoViT, load_dino
        from moca_rt.train.pairing import DinoFeaturiser, compute_features

        config = DINO_PRESETS[dino_preset]
        if dino is not None:
            model = load_dino(dino, config, device=device)
        else:
            log(
                "note: --pairing auto without --dino uses a randomly initialised DINO "
                f"(seed {seed}): the kNN pairs are not meaningful; pass --dino PATH for MoCA"
            )
            torch.manual_seed(seed)
            model = DinoViT(config).to(device).eval()
            nn.init.normal_(model.pos_embed, std=0.02)
            nn.init.normal_(model.cls_token, std=0.02)
        featuriser = DinoFeaturiser(model, "gap")
        feats = compute_features(featuriser, data.images(), 64, device, config.image_size)
        table = PairingTable.build(feats, k, featuriser.name, data.item_ids(), device=device)
        path = out_dir / "pairing.safetensors"
        if save:
            out_dir.mkdir(parents=True, exist_ok=True)
            save_table(table, path)
        return KnnPairing(table, f"auto:{path}")
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"pairing: expected a table file, 'auto' or 'class', got {spec!r}")
    table = load_table(path)
    if table.n != len(data):
        raise ValueError(
            f"pairing: expected a table with one row per training item ({len(data)}), got "
            f"{table.n} rows in {path}"
        )
    if table.item_ids is not None:
        ids = data.item_ids()
        bad = next((i for i in range(len(ids)) if ids[i] != table.item_ids[i]), None)
        if bad is not None:
            raise ValueError(
                f"pairing: expected the table's item {bad} to be {ids[bad]!r}, got "
                f"{table.item_ids[bad]!r} ({path} was built for other data)"
            )
    return KnnPairing(table, str(path))


# --------------------------------------------------------------------------------------------
# batches and loss


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for key in keys:  # a fixed mixing of the keys (not Python's salted hash)
        seed = (seed * 1_000_003 + int(key) + 0x9E3779B9) % (2**61 - 1)
    return torch.Generator().manual_seed(seed)


def anchor_batch(
    step: int, num_items: int, batch: int, seed: int, rank: int = 0, world_size: int = 1
) -> Tensor:
    """The anchors (int64 [batch] item indices) of ``step`` for ``rank`` (module docstring)."""
    global_batch = batch * world_size
    if num_items < global_batch:
        raise ValueError(
            f"data: expected at least batch x world size = {global_batch} items, got {num_items}"
        )
    per_epoch = num_items // global_batch
    epoch, j = divmod(step, per_epoch)
    perm = torch.randperm(num_items, generator=_generator(seed, 1, epoch))
    start = j * global_batch + rank * batch
    return perm[start : start + batch]


def repeat_audio(audio: AudioFeatures, times: int) -> AudioFeatures:
    """The audio features of B windows tiled ``times`` times along the batch ([times * B]).

    Row ``t * B + b`` is window b, so images ordered (anchors, positives, negatives) all meet
    their anchor's audio.
    """

    def tile(x: Tensor) -> Tensor:
        return x.repeat(times, *([1] * (x.dim() - 1)))

    return AudioFeatures(
        tuple(tile(x) for x in audio.layer_inputs),
        tuple(tile(x) for x in audio.layer_post_attention),
        tile(audio.embedding),
    )


def triplet_loss(
    model: MocaModel,
    fbank: Tensor,
    vision_inputs: Tensor,
    *,
    from_prefix: bool = False,
    alpha: float = 0.3,
    search: SearchMode = "row",
    max_disparity: int | None = None,
    ssd_weight: float = 1.0,
    ncc_weight: float = 1.0,
) -> Tensor:
    """MoCA's loss for one batch: anchor audio fused into anchor, positive and negative images.

    Args:
        model: the MoCA model (adapters trainable).
        fbank: [B, S, 1, 128, 204] the anchors' audio (ImageBind fbank clips).
        vision_inputs: the 3B images [3B, 3, H, W] (CLIP-normalised) ordered anchors, positives,
            negatives, or with ``from_prefix`` their prefix tokens [3B, 1 + N, Dv]
            (:meth:`~moca_rt.modeling.moca.MocaModel.encode_vision_prefix`).
        alpha, search, max_disparity, ssd_weight, ncc_weight: of
            :func:`~moca_rt.kernels.pma.pma_triplet_loss`.

    Returns:
        scalar float32 loss (differentiable wrt the adapters).
    """
    b = fbank.shape[0]
    if fbank.dim() != 5 or vision_inputs.shape[0] != 3 * b:
        raise ValueError(
            f"expected fbank [B, S, 1, M, T] and 3B vision inputs, got {tuple(fbank.shape)} and "
            f"{tuple(vision_inputs.shape)}"
        )
    audio = repeat_audio(model.encode_audio(fbank), 3)
    if from_prefix:
        feats = model.encode_vision_from_prefix(vision_inputs, audio)
    else:
        feats = model.encode_vision(vision_inputs, audio)
    f_anchor, f_pos, f_neg = feats.patch_features.float().split(b)
    return pma_triplet_loss(
        f_anchor,
        f_pos,
        f_neg,
        alpha,
        max_disparity=max_disparity,
        search=search,
        ssd_weight=ssd_weight,
        ncc_weight=ncc_weight,
    )


# --------------------------------------------------------------------------------------------
# trainer


class AdaavTrainer(StepFileTrainer):
    """The optimisation state of one run (model, Adam, cosine schedule, step, history).

    Args:
        model: a :class:`MocaModel` on its device; only its adapters are optimised.
        data: the training items.
        pairing: a :class:`KnnPairing` or :class:`ClassPairing` over ``data``.
        config: the run's :class:`TrainConfig` (loss, schedule, precision, caching).
    """

    prefix = CHECKPOINT_PREFIX
    desc = "adaav"
    config: TrainConfig
    data: TrainingSet

    def __init__(
        self,
        model: MocaModel,
        data: TrainingSet,
        pairing: Pairing,
        config: TrainConfig,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        config.validate()
        self.model = model
        self.data = data
        self.pairing = pairing
        self.config = config
        self.rank, self.world_size = rank, world_size
        self.device = next(model.parameters()).device
        self.image_size = config.image_size or model.config.imagebind.vision.image_size
        self._start()
        self.prefix_cache: dict[int, Tensor] = {}
        model.activation_checkpointing = config.activation_checkpointing
        model.train()

    def _optimiser(self) -> tuple[torch.optim.Adam, torch.optim.lr_scheduler.LambdaLR]:
        """Adam on the adapters and the closed-form cosine decay to 0 at ``iters``."""
        iters = self.config.iters
        optimizer = torch.optim.Adam(self.model.trainable_parameters(), lr=self.config.lr)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, iters) / iters))
        )
        return optimizer, scheduler

    def batch_indices(self, step: int) -> tuple[Tensor, Tensor, Tensor]:
        """(anchors, positives, negatives) item indices of ``step``, each int64 [B]."""
        c = self.config
        anchors = anchor_batch(step, len(self.data), c.batch, c.seed, self.rank, self.world_size)
        gen = _generator(c.seed, 2, step, self.rank)
        return anchors, self.pairing.positives(anchors, gen), self.pairing.negatives(anchors, gen)

    def _autocast(self) -> torch.autocast:
        enabled = self.config.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _prefix_tokens(self, idx: list[int]) -> Tensor:
        """Cached frozen prefix tokens [len(idx), 1 + N, Dv] of items (computed once each)."""
        missing = sorted({i for i in idx if i not in self.prefix_cache})
        if missing:
            images = self.data.model_images(missing, self.image_size).to(self.device)
            with self._autocast():
                tokens = self.model.encode_vision_prefix(images)
            for i, t in zip(missing, tokens, strict=True):
                self.prefix_cache[i] = t
        return torch.stack([self.prefix_cache[i] for i in idx])

    def loss_of(self, anchors: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
        """The triplet loss of one batch of item indices (forward only; no optimiser step)."""
        c = self.config
        a_idx = [int(i) for i in anchors]
        others = [int(i) for i in torch.cat([positives, negatives])]
        if c.cache_prefix:
            fbank = self.data.model_audio(a_idx)
            vision = self._prefix_tokens(a_idx + others)
        else:
            images, fbank = self.data.model_inputs(a_idx, self.image_size)
            others_images = self.data.model_images(others, self.image_size)
            vision = torch.cat([images, others_images]).to(self.device)
        with self._autocast():
            return triplet_loss(
                self.model,
                fbank.to(self.device),
                vision,
                from_prefix=c.cache_prefix,
                alpha=c.alpha,
                search=c.search,
                max_disparity=c.max_disparity,
                ssd_weight=c.ssd_weight,
                ncc_weight=c.ncc_weight,
            )

    def train_step(self, batch: tuple[Tensor, Tensor, Tensor] | None = None) -> float:
        """One Adam step on ``batch`` (default: :meth:`batch_indices` of the current step).

        Returns the loss before the step (a float, averaged over processes under DDP).
        """
        anchors, positives, negatives = (
            batch if batch is not None else self.batch_indices(self.step)
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_of(anchors, positives, negatives)
        loss.backward()
        value = loss.detach().float()
        if self.world_size > 1:  # DDP path: untested here (no multi-GPU machine)
            import torch.distributed as dist

            for p in self.model.trainable_parameters():
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                dist.all_reduce(p.grad)
                p.grad /= self.world_size
            dist.all_reduce(value)
            value /= self.world_size
        return self._advance(value)

    def _progress_postfix(self) -> dict[str, str]:
        return {"lr": f"{self.scheduler.get_last_lr()[0]:.2e}"}

    # checkpoints ------------------------------------------------------------------------

    def save(self, out_dir: str | Path, extra: dict[str, object] | None = None) -> Path:
        """Write the three checkpoint files of the current step; returns the JSON path."""
        return self._write_checkpoint(
            out_dir,
            self.model.adapter_state_dict(),
            {"step": str(self.step)},
            {},
            {"pairing": self.pairing.description, **(extra or {})},
        )

    def load(self, path: str | Path) -> None:
        """Restore adapters, Adam, scheduler, step and loss history from a checkpoint.

        Args:
            path: a checkpoint's ``.json``, ``.safetensors`` or ``.train.pt`` file, or a folder
                (its latest step).
        """
        stem, _ = self._read_checkpoint(path)
        # load_adapter_state_dict replaces the parameters: Adam is rebuilt on the new ones.
        self.model.load_adapter_state_dict(str(stem) + ".safetensors")
        self._restore_train_state(stem)


def checkpoint_stem(path: str | Path, prefix: str = CHECKPOINT_PREFIX) -> Path:
    """``out/<prefix>NNNNNN`` of a checkpoint file, or of a folder's latest checkpoint
    (:func:`moca_rt.train.step_files.checkpoint_stem` with AdaAV's prefix by default)."""
    return _stem_with_prefix(path, prefix)


# --------------------------------------------------------------------------------------------
# run


@dataclass
class TrainResult:
    """What :func:`run_training` returns: the trainer (final state) and the last checkpoint."""

    trainer: AdaavTrainer
    checkpoint: Path | None
    losses: list[float]


def _distributed() -> tuple[int, int, int]:
    """(rank, local rank, world size) from torchrun's environment; (0, 0, 1) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    return int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world


def run_training(
    config: TrainConfig,
    resume: str | Path | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    model: MocaModel | None = None,
) -> TrainResult:
    """Train AdaAV as ``config`` says; the body of ``python -m moca_rt.train.adaav``.

    Builds (or takes) the model, opens the data, builds or loads the pairing, optionally
    resumes, runs until ``config.iters`` steps, checkpointing every ``save_every`` steps and at
    the end (rank 0 only). Under ``torchrun`` with ``WORLD_SIZE > 1`` it initialises the process
    group from the environment (NCCL on CUDA, gloo otherwise) and uses ``cuda:LOCAL_RANK``.
    """
    config.validate()
    rank, local_rank, world = _distributed()
    device = config.device
    if world > 1:  # DDP path: untested here (no multi-GPU machine)
        import torch.distributed as dist

        cuda = device.startswith("cuda")
        dist.init_process_group("nccl" if cuda else "gloo")
        if cuda:
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
    if rank != 0:
        progress, log = False, (lambda _msg: None)
    out = Path(config.out)
    data = open_training_set(
        config.data, config.seed, config.synth_image_size, config.audio_window_s
    )
    pairing = build_pairing(
        config.pairing,
        data,
        out,
        k=config.k,
        dino=config.dino,
        dino_preset=config.dino_preset,
        device=device,
        seed=config.seed,
        log=log,
        save=rank == 0,
    )
    if world > 1 and config.pairing == "auto":  # every rank built the same table; rank 0 saved
        torch.distributed.barrier()
    if model is None:
        preset = MOCA_PRESETS[config.preset]
        if config.imagebind is None:
            log("note: no --imagebind given: ImageBind has random weights (smoke tests only)")
        torch.manual_seed(config.seed)
        model = MocaModel.from_config(preset, device=device, imagebind_weights=config.imagebind)
        model = model.to(device)
    trainer = AdaavTrainer(model, data, pairing, config, rank, world)
    if resume is not None:
        trainer.load(resume)
        log(f"resumed from step {trainer.step}")
    try:
        losses, checkpoint = trainer.run(
            (lambda _loss: trainer.save(out)) if rank == 0 else None, progress
        )
        if world > 1:
            # Rank 0 may still be writing the last checkpoint: leave together (a rank that tore
            # the group down first made the other abort in gloo in 3 of 6 runs).
            torch.distributed.barrier()
    finally:
        if world > 1:
            torch.distributed.destroy_process_group()
    return TrainResult(trainer, checkpoint, losses)


# --------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig()
    p, arg = config_parser(
        "moca_rt.train.adaav",
        "Train MoCA's audio-visual adapters (AdaAV) on frozen ImageBind with the "
        "DINO-paired PMA triplet loss.",
        d,
    )
    arg("preset", "The model sizes (ImageBind and adapters).", choices=sorted(MOCA_PRESETS))
    arg(
        "imagebind",
        "Official ImageBind weights (imagebind_huge.pth layout); without it ImageBind is "
        "random, which is only good for smoke tests.",
    )
    arg("data", "synth:N for N scenes of the synthetic world, or a VGGSound-style folder.")
    arg(
        "pairing",
        "A pairing table file (python -m moca_rt.train.pairing), 'auto' to build the DINO kNN "
        "table now, or 'class' (synthetic world only: ground-truth positives for debugging; "
        "not unsupervised).",
    )
    arg(
        "dino",
        "DINO ViT-B/16 weights for --pairing auto; without them DINO is random and the pairs "
        "are meaningless.",
    )
    arg("dino_preset", "DINO architecture for --pairing auto.", choices=sorted(DINO_PRESETS))
    arg("k", "Neighbours per image for --pairing auto.")
    arg("batch", "Anchors per step and process.")
    arg("lr", "Adam's initial learning rate.")
    arg("alpha", "Triplet margin.")
    arg(
        "search",
        "PMA search: along the same row, or over all positions (ablation).",
        choices=list(get_args(SearchMode)),
    )
    arg(
        "max_disparity",
        "Largest row disparity; default the whole scanline, 0 compares the same pixel only "
        "(the no-matching ablation).",
        type=int,
    )
    arg("ssd_weight", "Weight of the SSD term.")
    arg("ncc_weight", "Weight of the NCC term.")
    arg(
        "activation_checkpointing",
        "Recompute the adapted blocks in the backward pass to save memory.",
    )
    arg("cache_prefix", "Compute each image's frozen vision prefix once and keep it on the device.")
    add_data_arguments(p, d.synth_image_size)
    add_step_file_arguments(p, d, "adapters and Adam stay fp32")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m moca_rt.train.adaav``: 0 on success, 2 on bad arguments."""
    args = build_parser().parse_args(argv)
    config = config_from_args(TrainConfig(), args, audio_window_s=args.audio_window)
    try:
        result = run_training(config, resume=args.resume, progress=sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    last = result.losses[-1] if result.losses else float("nan")
    print(f"done: step {result.trainer.step}, last loss {last:.4f}, checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
