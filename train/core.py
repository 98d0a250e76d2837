"""The small training core that the tiny-model loops share (ImageBind, SAM, AdaAV).

A loop is a :class:`TrainingStage`: it owns its model, optimiser and data, and knows how to take
one step, evaluate on its validation partition, save its weights and (de)serialise its state.
:func:`run_stage` does the rest, the same way for every stage:

* ``torch.set_num_threads(threads)`` (one thread per process is fastest on a busy 2-core box);
* a step loop from the last checkpoint (``state.pt`` in the stage folder, written atomically
  every ``save_every`` steps, so a killed run resumes where it stopped; batches are a pure
  function of ``(seed, step)`` through :func:`seeded_batch`, so a resumed run sees the batches
  the uninterrupted one would have);
* one progress line every ``log_every`` steps on stdout (step, mean losses of the window,
  steps/s, ETA) and the same record in ``log.jsonl``;
* evaluation before the first step (when ``eval_every`` > 0), every ``eval_every`` steps and
  at the end, logged; when the stage names a
  ``selection`` metric, the weights of the best evaluation so far are kept in ``best/``
  (selection on the validation partition only);
* ``done.json`` at the end (final metrics, selected step), after which a rerun skips the stage.

A stage module adds little to that: :class:`ResumableParts` gives a stage its
``state_dict`` / ``load_state_dict`` from its parts, :func:`train_configured_stage` runs it
from a config dataclass, and its CLI is :func:`stage_parser` (flags declared once from the
config's fields by :func:`add_config_argument`, read back by :func:`config_from_args`) and
:func:`run_stage_cli`. The two real-data trainers (``adaav``, ``pretrain_imagebind``) keep
their per-step checkpoint files and share them in :mod:`moca_rt.train.step_files`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

import torch

__all__ = [
    "LoopSettings",
    "ResumableParts",
    "StageResult",
    "TrainingStage",
    "add_config_argument",
    "add_loop_arguments",
    "atomic_save",
    "config_from_args",
    "config_parser",
    "finished",
    "loop_settings_from_args",
    "run_stage",
    "run_stage_cli",
    "save_weights_atomic",
    "seeded_batch",
    "set_threads",
    "stage_parser",
    "train_configured_stage",
]

STATE_FILE = "state.pt"
DONE_FILE = "done.json"
LOG_FILE = "log.jsonl"
BEST_DIR = "best"
FINAL_DIR = "final"


@dataclass(frozen=True)
class LoopSettings:
    """How :func:`run_stage` drives a stage.

    Attributes:
        out: the stage's folder (state, log, best and final weights).
        iters: optimisation steps in all (a resumed run continues up to this count).
        log_every: steps per progress line / JSONL record.
        save_every: steps between resumable checkpoints (0: only at the end).
        eval_every: steps between evaluations (0: only at the end).
        threads: ``torch.set_num_threads``; 0 leaves torch's default.
    """

    out: Path
    iters: int
    log_every: int = 10
    save_every: int = 100
    eval_every: int = 0
    threads: int = 1

    def __post_init__(self) -> None:
        if self.iters < 0:
            raise ValueError(f"iters must be >= 0, is {self.iters}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, is {self.log_every}")
        if self.save_every < 0 or self.eval_every < 0 or self.threads < 0:
            raise ValueError(
                f"save_every, eval_every and threads must be >= 0, are "
                f"{self.save_every}, {self.eval_every}, {self.threads}"
            )


def add_loop_arguments(
    parser: argparse.ArgumentParser,
    *,
    iters: int,
    eval_every: int,
    log_every: int,
    save_every: int | None = None,
) -> None:
    """The step-loop flags every stage CLI shares: ``--out --iters --eval-every --save-every
    --log-every --threads`` (``save_every`` None: checkpoints at each evaluation)."""
    parser.add_argument("--out", required=True, help="Stage folder (state, log, weights).")
    parser.add_argument("--iters", type=int, default=iters, help="Optimisation steps.")
    parser.add_argument(
        "--eval-every", type=int, default=eval_every, help="Steps between evaluations."
    )
    parser.add_argument(
        "--save-every",
        type=int,
        default=save_every,
        help="Steps between resumable checkpoints (default: at each evaluation).",
    )
    parser.add_argument("--log-every", type=int, default=log_every, help="Steps per progress line.")
    parser.add_argument(
        "--threads", type=int, default=1, help="Torch threads (1 is best on 2 busy cores)."
    )


def loop_settings_from_args(args: argparse.Namespace) -> LoopSettings:
    """The :class:`LoopSettings` of flags added by :func:`add_loop_arguments`."""
    return LoopSettings(
        out=Path(args.out),
        iters=args.iters,
        log_every=args.log_every,
        save_every=args.eval_every if args.save_every is None else args.save_every,
        eval_every=args.eval_every,
        threads=args.threads,
    )


ConfigT = TypeVar("ConfigT")


def add_config_argument(
    parser: argparse.ArgumentParser, defaults: Any, name: str, help: str, **kwargs: Any
) -> None:
    """``--name-with-dashes`` for the dataclass field ``name`` of a training config.

    The default is ``defaults.name`` and the type that of the default (a bool becomes a
    ``store_true`` flag; a str or None default parses as a string unless ``type`` is given), so a
    field's flag, type and default are written once; :func:`config_from_args` reads it back.
    ``kwargs`` go to ``add_argument`` (``choices``, ``type``, ...).
    """
    default = getattr(defaults, name)
    flag = "--" + name.replace("_", "-")
    if isinstance(default, bool):
        parser.add_argument(flag, action="store_true", help=help, **kwargs)
        return
    if default is not None and not isinstance(default, str):
        kwargs.setdefault("type", type(default))
    parser.add_argument(flag, default=default, help=help, **kwargs)


def config_from_args(
    defaults: ConfigT, args: argparse.Namespace, *, exclude: tuple[str, ...] = (), **values: Any
) -> ConfigT:
    """``defaults`` (a dataclass) with every field that ``args`` has a value of the same name
    for (less ``exclude``), then ``values`` (flags named otherwise) on top."""
    taken = {
        f.name: getattr(args, f.name)
        for f in fields(defaults)  # type: ignore[arg-type]
        if f.name not in exclude and hasattr(args, f.name)
    }
    return replace(defaults, **{**taken, **values})  # type: ignore[type-var]


def config_parser(
    module: str, description: str, defaults: Any
) -> tuple[argparse.ArgumentParser, Callable[..., None]]:
    """The parser of ``python -m <module>`` and :func:`add_config_argument` bound to it and to
    the config ``defaults`` (call it with a field name, the help and ``add_argument`` options)."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    return parser, partial(add_config_argument, parser, defaults)


def stage_parser(
    module: str,
    description: str,
    defaults: Any,
    *,
    batch: str,
    iters: int,
    eval_every: int,
    log_every: int,
    save_every: int | None = None,
) -> tuple[argparse.ArgumentParser, Callable[..., None]]:
    """:func:`config_parser` with the flags every synthetic-world stage CLI shares:
    :func:`add_loop_arguments` and, from the stage config ``defaults``, ``--batch`` (help
    ``batch``), ``--lr``, ``--train-scenes``, ``--val-scenes``, ``--seed`` and ``--world-seed``.
    """
    parser, arg = config_parser(module, description, defaults)
    add_loop_arguments(
        parser, iters=iters, eval_every=eval_every, log_every=log_every, save_every=save_every
    )
    arg("batch", batch)
    arg("lr", "Peak learning rate (after the warm-up; cosine decay to 0).")
    arg("train_scenes", "Scenes per training split.")
    arg("val_scenes", "Validation scenes per split.")
    arg("seed", "Seed of the initial weights and the batches (and of SAM's prompts).")
    arg("world_seed", "Seed of the synthetic world.")
    return parser, arg


class TrainingStage(Protocol):
    """What a loop provides to :func:`run_stage`.

    ``selection`` names the evaluation metric that picks the shipped step (higher is better),
    or is None to ship the last step.
    """

    name: str
    selection: str | None

    def train_step(self, step: int) -> dict[str, float]:
        """Take optimisation step ``step`` (0-based); returns its losses (floats)."""
        ...

    def evaluate(self) -> dict[str, float]:
        """Metrics on the validation partition (the model's train/eval mode is restored)."""
        ...

    def save_weights(self, folder: Path) -> list[Path]:
        """Write the deployable weights into ``folder``; returns the files written."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (model, optimiser, scheduler, ...)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ResumableParts:
    """The ``state_dict`` / ``load_state_dict`` of a :class:`TrainingStage` whose resumable
    state is a few named parts, each with its own ``state_dict`` / ``load_state_dict`` (modules,
    optimiser, scheduler); a stage lists them, in loading order, in :meth:`resumable_parts`."""

    def resumable_parts(self) -> dict[str, Any]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {name: part.state_dict() for name, part in self.resumable_parts().items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, part in self.resumable_parts().items():
            part.load_state_dict(state[name])


@dataclass
class StageResult:
    """What one stage produced: final metrics, the selected step, the weights folder."""

    name: str
    steps: int
    selected_step: int
    metrics: dict[str, float]
    weights: Path
    seconds: float
    evaluations: list[dict[str, Any]] = field(default_factory=list)


def set_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)`` when ``threads > 0``."""
    if threads > 0:
        torch.set_num_threads(threads)


def seeded_batch(seed: int, step: int, count: int, batch: int) -> list[int]:
    """Item indices of ``step``: a seeded permutation of ``range(count)`` per epoch, in order,
    the tail that does not fill a batch dropped. A pure function of its arguments."""
    if batch < 1 or count < batch:
        raise ValueError(f"expected 1 <= batch <= count, got batch {batch}, count {count}")
    per_epoch = count // batch
    epoch, slot = divmod(step, per_epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(count, generator=gen)
    return order[slot * batch : (slot + 1) * batch].tolist()


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename over ``path`` (no half-written file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_weights_atomic(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> Path:
    """Write ``state`` as safetensors through a temporary file renamed over ``path``."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


class _Progress:
    """Windowed mean losses -> one stdout line and one JSONL record per window."""

    def __init__(self, name: str, settings: LoopSettings, stream: TextIO) -> None:
        self.name = name
        self.settings = settings
        self.stream = stream
        self.sums: dict[str, float] = {}
        self.count = 0
        self.window_start = time.perf_counter()
        self.log = (settings.out / LOG_FILE).open("a")

    def step(self, step: int, losses: dict[str, float]) -> None:
        for k, v in losses.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1
        if self.count >= self.settings.log_every or step + 1 == self.settings.iters:
            self.flush(step + 1)

    def flush(self, step: int) -> None:
        if not self.count:
            return
        elapsed = time.perf_counter() - self.window_start
        rate = self.count / elapsed if elapsed > 0 else float("inf")
        means = {k: v / self.count for k, v in self.sums.items()}
        eta = (self.settings.iters - step) / rate if rate > 0 else float("nan")
        self.record({"kind": "train", "step": step, "steps_per_s": rate, **means})
        text = " ".join(f"{k} {v:.4f}" for k, v in means.items())
        print(
            f"[{self.name}] step {step}/{self.settings.iters} {text} "
            f"({rate:.2f} steps/s, eta {eta / 60:.1f} min)",
            file=self.stream,
            flush=True,
        )
        self.sums, self.count = {}, 0
        self.window_start = time.perf_counter()

    def record(self, entry: dict[str, Any]) -> None:
        self.log.write(json.dumps({"stage": self.name, "time": time.time(), **entry}) + "\n")
        self.log.flush()

    def close(self) -> None:
        self.log.close()


def finished(settings: LoopSettings) -> StageResult | None:
    """The recorded result of a stage folder finished for ``settings.iters`` steps, else None.

    Lets a caller skip building an expensive stage (data rendering) that would not train.
    """
    done_path = settings.out / DONE_FILE
    if not done_path.exists():
        return None
    done = json.loads(done_path.read_text())
    if done.get("steps") != settings.iters:
        return None
    return StageResult(**{**done, "weights": Path(done["weights"])})  # done.json is its asdict


def run_stage(
    stage: TrainingStage,
    settings: LoopSettings,
    stream: TextIO | None = None,
    on_evaluation: Callable[[int, dict[str, float]], None] | None = None,
) -> StageResult:
    """Train ``stage`` up to ``settings.iters`` steps (resuming), evaluate, keep the best weights.

    Returns the result recorded in ``done.json``; a stage whose ``done.json`` exists (for the
    same ``iters``) is not trained again and its recorded result is returned.
    """
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    stream = sys.stdout if stream is None else stream
    done_path = out / DONE_FILE
    recorded = finished(settings)
    if recorded is not None:
        print(f"[{stage.name}] done already ({done_path}); skipped", file=stream, flush=True)
        return recorded
    set_threads(settings.threads)
    start_step, best_value, best_step, spent = 0, -math.inf, -1, 0.0
    evaluations: list[dict[str, Any]] = []
    state_path = out / STATE_FILE
    if state_path.exists():
        saved = torch.load(state_path, map_location="cpu", weights_only=False)
        stage.load_state_dict(saved["stage"])
        start_step, best_value, best_step = saved["step"], saved["best_value"], saved["best_step"]
        evaluations, spent = saved["evaluations"], saved["seconds"]
        print(f"[{stage.name}] resumed at step {start_step}", file=stream, flush=True)
    progress = _Progress(stage.name, settings, stream)
    began = time.perf_counter()

    def elapsed() -> float:
        return spent + time.perf_counter() - began

    def evaluate(step: int) -> None:
        nonlocal best_value, best_step
        metrics = stage.evaluate()
        entry = {"step": step, **metrics}
        evaluations.append(entry)
        progress.record({"kind": "eval", **entry})
        text = " ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        print(f"[{stage.name}] eval at step {step}: {text}", file=stream, flush=True)
        if on_evaluation is not None:
            on_evaluation(step, metrics)
        if stage.selection is not None:
            if stage.selection not in metrics:
                raise KeyError(
                    f"{stage.name}: evaluation lacks the selection metric {stage.selection!r}"
                )
            value = metrics[stage.selection]
            if value > best_value:
                best_value, best_step = value, step
                stage.save_weights(out / BEST_DIR)

    def checkpoint(step: int) -> None:
        atomic_save(
            {
                "stage": stage.state_dict(),
                "step": step,
                "best_value": best_value,
                "best_step": best_step,
                "evaluations": evaluations,
                "seconds": elapsed(),
            },
            state_path,
        )

    try:
        if settings.eval_every and start_step == 0 and not evaluations:
            evaluate(0)  # the untrained baseline starts every curve (and may be selected)
        for step in range(start_step, settings.iters):
            losses = stage.train_step(step)
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise FloatingPointError(f"{stage.name}: {bad} not finite at step {step}")
            progress.step(step, losses)
            done_steps = step + 1
            if (
                settings.eval_every
                and done_steps % settings.eval_every == 0
                and done_steps < settings.iters
            ):
                evaluate(done_steps)
            if settings.save_every and done_steps % settings.save_every == 0:
                checkpoint(done_steps)
        if not evaluations or evaluations[-1]["step"] != settings.iters:
            evaluate(settings.iters)
        final = out / FINAL_DIR
        stage.save_weights(final)
        if stage.selection is not None and best_step >= 0:
            weights, selected = out / BEST_DIR, best_step
        else:
            weights, selected = final, settings.iters
        checkpoint(settings.iters)
        metrics = next(e for e in evaluations if e["step"] == selected)
        result = StageResult(
            name=stage.name,
            steps=settings.iters,
            selected_step=selected,
            metrics={k: v for k, v in metrics.items() if k != "step"},
            weights=weights,
            seconds=elapsed(),
            evaluations=evaluations,
        )
        _write_json(done_path, {**asdict(result), "weights": str(weights)})
        progress.record({"kind": "done", "selected_step": selected, "seconds": result.seconds})
        print(
            f"[{stage.name}] done: {settings.iters} steps in {result.seconds / 60:.1f} min, "
            f"selected step {selected}",
            file=stream,
            flush=True,
        )
        return result
    finally:
        progress.close()


def train_configured_stage(
    config: Any, settings: LoopSettings, build: Callable[[], TrainingStage]
) -> StageResult:
    """Run (or resume) a stage of a dataclass ``config``: what every ``train_<stage>`` does.

    A stage finished for ``settings.iters`` steps is skipped before ``build`` (which may render
    thousands of scenes) runs. Otherwise: ``torch.set_num_threads(max(threads, 1))``, the
    config written to ``config.json`` in the stage folder, ``build()``, :func:`run_stage`.
    """
    recorded = finished(settings)
    if recorded is not None:
        print(f"[{settings.out.name}] done already ({settings.out}); skipped", flush=True)
        return recorded
    torch.set_num_threads(max(settings.threads, 1))
    settings.out.mkdir(parents=True, exist_ok=True)
    (settings.out / "config.json").write_text(
        json.dumps(asdict(config), indent=2, sort_keys=True) + "\n"
    )
    return run_stage(build(), settings)


def run_stage_cli(
    args: argparse.Namespace,
    config: ConfigT,
    train: Callable[[ConfigT, LoopSettings], StageResult],
) -> int:
    """The end of every stage CLI: ``train(config, settings of args)``, then one summary line;
    returns the exit code 0."""
    result = train(config, loop_settings_from_args(args))
    print(f"weights: {result.weights}  metrics: {result.metrics}")
    return 0
