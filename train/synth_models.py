"""One command reproduces every shipped tiny weight from scratch (DESIGN section 6).

``python -m moca_rt.train.synth_models --out DIR`` runs, each stage resumable in its own folder
(``DIR/<stage>/``: ``state.pt`` checkpoints, ``log.jsonl``, ``done.json``; a rerun continues an
interrupted stage and skips finished ones):

1. ``imagebind``: tiny ImageBind pretraining, InfoNCE + dense term (:mod:`.imagebind_synth`);
2. ``sam``: tiny SAM trained for promptable segmentation on instance masks (:mod:`.sam_synth`);
   with ``--parallel`` (default) it runs in a second process beside stage 1;
3. ``adaav``: AdaAV by MoCA on the frozen stage-1 ImageBind (:mod:`.adaav_synth`);
4. ``calibrate``: K, delta, MPM metric/threshold and tau on the validation partition
   (:func:`~moca_rt.train.quality.calibrate`);
5. ``package``: ``DIR/weights/`` = the selected weights of every stage and ``manifest.json``
   (command, seeds, versions, validation metrics, calibration, sha256 of each file), the folder
   that ships as ``moca_rt/assets/synth/``.

Nothing here reads the test partition. One progress line per ``--log-every`` steps on stdout;
``--threads`` torch threads per process (1 is fastest on a busy 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from moca_rt.provenance import git_commit, sha256_file
from moca_rt.train.core import DONE_FILE, LoopSettings, StageResult

__all__ = ["ReproduceSettings", "main", "reproduce"]


@dataclass(frozen=True)
class ReproduceSettings:
    """Steps and sizes of each stage (the defaults are what ships; ``quick`` is a smoke test)."""

    out: Path
    threads: int = 1
    parallel: bool = True
    world_seed: int = 0
    seed: int = 0
    imagebind_iters: int = 800
    imagebind_scenes: int = 2000
    sam_iters: int = 3300
    sam_eval_every: int = 1100
    adaav_iters: int = 300
    adaav_scenes: int = 500
    val_scenes: int = 48
    calibration_scenes: int = 96
    log_every: int = 20
    eval_every: int = 100

    @classmethod
    def quick(cls, out: Path, threads: int = 1) -> ReproduceSettings:
        """A handful of steps per stage on tiny sets: exercises every stage in seconds."""
        return cls(
            out=out,
            threads=threads,
            parallel=False,
            imagebind_iters=2,
            imagebind_scenes=8,
            sam_iters=2,
            adaav_iters=2,
            adaav_scenes=8,
            val_scenes=4,
            calibration_scenes=4,
            log_every=1,
            eval_every=0,
            sam_eval_every=0,
        )


def _versions() -> dict[str, str]:
    import numpy

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def _stage_settings(
    s: ReproduceSettings, name: str, iters: int, eval_every: int | None = None
) -> LoopSettings:
    every = s.eval_every if eval_every is None else eval_every
    save = max(min(every, 500), 50) if iters > 50 else 0
    return LoopSettings(
        out=s.out / name,
        iters=iters,
        log_every=s.log_every,
        save_every=save,
        eval_every=every,
        threads=s.threads,
    )


def run_imagebind(s: ReproduceSettings) -> StageResult:
    from moca_rt.train.imagebind_synth import ImageBindStageConfig, train_imagebind

    config = ImageBindStageConfig(
        world_seed=s.world_seed,
        seed=s.seed,
        train_scenes=s.imagebind_scenes,
        val_scenes=s.val_scenes,
        batch=min(32, s.imagebind_scenes),
        warmup=min(50, max(s.imagebind_iters // 4, 1)),
        train_splits=("s4",),
    )
    return train_imagebind(config, _stage_settings(s, "imagebind", s.imagebind_iters))


# The tiny SAM's recipe is SamTrainConfig's defaults (focal : dice 1 : 1, 80% point prompts,
# tied query/key init, batch 4 at lr 1e-3; measured on val, see train/sam_synth.py), 3300 steps,
# validated every 1100 (an 8 s grid-proposal eval; 12 val scenes are too few to select among
# 33 nearby checkpoints). Grid proposals keep SAM's quality filters at the thresholds its IoU
# head supports (predicted IoU 0.6 / stability 0.8: val recall 0.880 with 6 proposals per image
# against 0.886 with 66 unfiltered; SAM's 0.88 / 0.95 keep too little); NMS stays on.
SAM_SETTINGS: dict[str, Any] = {"train_scenes": 1000}


def _sam_proposals() -> dict[str, Any]:
    from moca_rt.train.sam_synth import RECOMMENDED_PROPOSALS

    return dict(RECOMMENDED_PROPOSALS)


def run_sam(s: ReproduceSettings) -> StageResult:
    from moca_rt.train.sam_synth import SamTrainConfig, train_sam

    if s.sam_iters > 10:
        config = SamTrainConfig(world_seed=s.world_seed, seed=s.seed, **SAM_SETTINGS)
    else:
        config = SamTrainConfig.quick()
    return train_sam(config, _stage_settings(s, "sam", s.sam_iters, s.sam_eval_every))


def run_adaav(s: ReproduceSettings, imagebind: Path) -> StageResult:
    from moca_rt.train.adaav_synth import AdaavStageConfig, train_adaav

    config = AdaavStageConfig(
        imagebind=str(imagebind),
        world_seed=s.world_seed,
        seed=s.seed,
        train_scenes=s.adaav_scenes,
        val_scenes=s.val_scenes,
        batch=min(8, s.adaav_scenes),
    )
    return train_adaav(config, _stage_settings(s, "adaav", s.adaav_iters))


def _sam_process(s: ReproduceSettings) -> None:
    run_sam(s)


def run_calibration(
    s: ReproduceSettings, imagebind: Path, adapter: Path, sam: Path, proposals: dict[str, Any]
) -> dict[str, Any]:
    """Calibrate the pipeline on val (cached in ``calibrate/calibration.json``)."""
    from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
    from moca_rt.modeling.moca import MocaModel
    from moca_rt.modeling.sam import load_sam
    from moca_rt.pipeline import MocaPipeline, PipelineConfig
    from moca_rt.proposals import ProposalConfig, SamProposals
    from moca_rt.train.quality import ReplayProposals, ReplayTrunk, calibrate
    from moca_rt.train.synth_eval import render_eval_set

    folder = s.out / "calibrate"
    path = folder / "calibration.json"
    key = {
        "imagebind": sha256_file(imagebind),
        "adapter": sha256_file(adapter),
        "sam": sha256_file(sam),
    }
    if path.is_file():
        saved = json.loads(path.read_text())
        if saved.get("inputs") == key:
            print("[calibrate] done already; skipped", flush=True)
            return dict(saved)
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model = MocaModel.from_config(
        MOCA_PRESETS["moca_synth"], imagebind_weights=imagebind, adapter_weights=adapter
    )
    trunk = ReplayTrunk(model)
    sam_model = load_sam(sam, SAM_PRESETS["sam_synth"])
    source = ReplayProposals(SamProposals(sam_model, ProposalConfig(**proposals)))
    n = s.calibration_scenes
    val = {
        split: render_eval_set(split, n, s.world_seed, "val", 224)
        for split in ("s4", "ms3", "offscreen", "noise")
    }

    def make(config: PipelineConfig) -> MocaPipeline:
        return MocaPipeline(trunk, source, config)  # type: ignore[arg-type]

    def log(line: str) -> None:
        print(f"[calibrate] {line}", flush=True)

    result = calibrate(make, val, PipelineConfig(), log=log)
    out = {
        "inputs": key,
        "pipeline": {k: v for k, v in asdict(result.config).items() if k in _PIPELINE_KEYS},
        "proposals": proposals,
        "objective": result.objective,
        "steps": result.steps,
        "tau_curve": result.tau_curve,
        "seconds": time.perf_counter() - start,
        "val_scenes_per_split": n,
    }
    path.write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    return out


_PIPELINE_KEYS = (
    "num_clusters",
    "tau",
    "delta",
    "mpm_threshold",
    "mpm_metric",
    "silence_dbfs",
    "image_size",
)


def package(
    s: ReproduceSettings,
    stages: dict[str, StageResult],
    files: dict[str, Path],
    calibration: dict[str, Any],
    command: str,
) -> Path:
    """Copy the selected weights to ``out/weights`` and write ``manifest.json``."""
    folder = s.out / "weights"
    folder.mkdir(parents=True, exist_ok=True)
    roles, entries = {}, {}
    for role, src in files.items():
        dst = folder / src.name
        shutil.copyfile(src, dst)
        roles[role] = dst.name
        entries[dst.name] = {"sha256": sha256_file(dst), "bytes": dst.stat().st_size}
    manifest = {
        "format": 1,
        "command": command,
        "seed": s.seed,
        "world_seed": s.world_seed,
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(s).items() if k != "out"
        },
        "git_commit": git_commit(),
        "versions": _versions(),
        "presets": {"imagebind": "imagebind_synth", "moca": "moca_synth", "sam": "sam_synth"},
        "roles": roles,
        "files": entries,
        "stages": {
            name: {
                "steps": r.steps,
                "selected_step": r.selected_step,
                "val_metrics": r.metrics,
                "seconds": round(r.seconds, 1),
            }
            for name, r in stages.items()
        },
        "calibration": {
            "pipeline": calibration["pipeline"],
            "proposals": calibration["proposals"],
            "objective": calibration["objective"],
            "tau_curve": calibration["tau_curve"],
        },
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return folder


STAGES = ("imagebind", "sam", "adaav", "calibrate", "package")


def reproduce(
    s: ReproduceSettings, command: str = "", stages: Sequence[str] = STAGES
) -> Path | None:
    """Run the stages (each resuming, or skipped when its folder says it is done), calibrate,
    package; returns the weights folder (None when ``package`` is not among ``stages``).

    ``stages`` may name a subset (e.g. ``imagebind`` alone to train that stage now and the rest
    later); a stage that needs an earlier one's weights requires that stage to be done already.
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"stages must be among {list(STAGES)}, got {unknown}")
    s.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(s.threads, 1))
    timings: dict[str, float] = {}
    began = time.perf_counter()
    results: dict[str, StageResult] = {}
    sam_proc = None
    if "sam" in stages and s.parallel and "imagebind" in stages:
        ctx = multiprocessing.get_context("spawn")
        sam_proc = ctx.Process(target=_sam_process, args=(s,), name="sam-stage")
        sam_proc.start()
    needs_ib = any(x in stages for x in ("imagebind", "adaav", "calibrate", "package"))
    if needs_ib:
        t = time.perf_counter()
        results["imagebind"] = _require(
            s, "imagebind", "imagebind" in stages, lambda: run_imagebind(s)
        )
        timings["imagebind"] = time.perf_counter() - t
    if sam_proc is not None:
        t = time.perf_counter()
        sam_proc.join()
        if sam_proc.exitcode != 0:
            raise RuntimeError(
                f"the SAM stage failed (exit code {sam_proc.exitcode}); see {s.out / 'sam'}"
            )
        timings["sam_after_imagebind"] = time.perf_counter() - t
    if any(x in stages for x in ("sam", "calibrate", "package")):
        t = time.perf_counter()
        results["sam"] = _require(s, "sam", "sam" in stages, lambda: run_sam(s))
        timings.setdefault("sam", time.perf_counter() - t)
    if any(x in stages for x in ("adaav", "calibrate", "package")):
        t = time.perf_counter()
        ib_weights = results["imagebind"].weights / "imagebind_synth.safetensors"
        results["adaav"] = _require(s, "adaav", "adaav" in stages, lambda: run_adaav(s, ib_weights))
        timings["adaav"] = time.perf_counter() - t
    if not any(x in stages for x in ("calibrate", "package")):
        return None
    files = {
        "imagebind": results["imagebind"].weights / "imagebind_synth.safetensors",
        "adapter": results["adaav"].weights / "adaav_synth.safetensors",
        "sam": results["sam"].weights / "sam_synth.safetensors",
    }
    t = time.perf_counter()
    calibration = run_calibration(
        s, files["imagebind"], files["adapter"], files["sam"], _sam_proposals()
    )
    timings["calibrate"] = time.perf_counter() - t
    if "package" not in stages:
        return None
    folder = package(s, results, files, calibration, command)
    timings["total"] = time.perf_counter() - began
    (s.out / "timings.json").write_text(json.dumps(timings, indent=2) + "\n")
    print(
        "[synth_models] done in "
        + ", ".join(f"{k} {v / 60:.1f} min" for k, v in timings.items())
        + f"; weights in {folder}",
        flush=True,
    )
    return folder


def _require(
    s: ReproduceSettings, name: str, run: bool, train: Callable[[], StageResult]
) -> StageResult:
    """Train stage ``name`` when asked; otherwise it must be done already (its result is read)."""
    if run or (s.out / name / DONE_FILE).is_file():
        return train()
    raise RuntimeError(f"stage {name!r} is needed but not done in {s.out / name}; run it first")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m moca_rt.train.synth_models",
        description="Reproduce the shipped tiny models (ImageBind, SAM, AdaAV) and their "
        "calibration from scratch on the synthetic world; every stage resumes where it stopped.",
    )
    d = ReproduceSettings(out=Path("."))
    p.add_argument(
        "--out", required=True, help="Run folder (one sub-folder per stage, weights/ at the end)."
    )
    p.add_argument("--threads", type=int, default=d.threads, help="Torch threads per process.")
    p.add_argument(
        "--no-parallel", action="store_true", help="Train SAM after ImageBind instead of beside it."
    )
    p.add_argument(
        "--stages",
        default=",".join(STAGES),
        help="Comma-separated stages to run; 'imagebind' or 'sam' alone train just that stage.",
    )
    p.add_argument(
        "--quick", action="store_true", help="A handful of steps per stage (smoke test)."
    )
    p.add_argument(
        "--imagebind-iters", type=int, default=d.imagebind_iters, help="ImageBind steps."
    )
    p.add_argument("--sam-iters", type=int, default=d.sam_iters, help="SAM steps.")
    p.add_argument("--adaav-iters", type=int, default=d.adaav_iters, help="AdaAV steps.")
    p.add_argument("--log-every", type=int, default=d.log_every, help="Steps per progress line.")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.quick:
        s = ReproduceSettings.quick(out, args.threads)
    else:
        s = ReproduceSettings(
            out=out,
            threads=args.threads,
            parallel=not args.no_parallel,
            imagebind_iters=args.imagebind_iters,
            sam_iters=args.sam_iters,
            adaav_iters=args.adaav_iters,
            log_every=args.log_every,
        )
    command = "python -m moca_rt.train.synth_models " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    reproduce(replace(s), command, tuple(args.stages.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
