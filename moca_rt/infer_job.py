"""One ``python -m moca_rt.infer`` job as a library call: check the input, build, segment.

:func:`run_infer` takes :class:`InferOptions` (what the command line gives) and returns the
run's summary; :mod:`moca_rt.infer` only parses flags and maps the errors to exit codes. The
order matters for a user with huge checkpoints: the input is opened and checked first (a missing
file, a video without audio, a bad box file are reported in a second), then the models load,
then the output folder is created and filled. An error before any output exists leaves no
folder behind (one this run created is removed again).

SOURCE is a video file, a stream URL, an AVSBench frame folder, an image (with ``audio``), or a
whole AVSBench split (its index CSV, the folder holding it, or a folder tree of frame folders):
every video of the split is segmented with one model load (:func:`moca_rt.runner.segment_split`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from moca_rt.build import BuildSettings
from moca_rt.errors import InputError, NoAudioStreamError
from moca_rt.runner import (
    RunSummary,
    SplitSummary,
    collect_warnings,
    segment_source,
    segment_split,
)

__all__ = [
    "DEMO_SECONDS",
    "InferOptions",
    "InferSummary",
    "build_settings",
    "cli_message",
    "make_demo_clip",
    "run_infer",
    "source_options",
]

DEMO_SECONDS = 2.0

InferSummary = RunSummary  # the summary of one infer run (the name of earlier releases)

# Library option names in messages -> the command-line flags that set them.
_FLAG_NAMES = {"pass allow_silent=True": "pass --allow-silent"}


@dataclass
class InferOptions:
    """Everything ``run_infer`` needs: the input, how to read it, the outputs, and the settings
    of the pipeline to build. The CLI flags map one to one onto these fields and the settings'."""

    source: str | None
    out: Path
    settings: BuildSettings = field(default_factory=BuildSettings)
    audio: Path | None = None
    boxes: Path | None = None
    fps: float | None = None
    realtime: bool = False
    reconnect: int = 0
    timeout: float | None = None
    overlay: bool = False
    allow_silent: bool = False
    demo: bool = False
    progress: bool = True
    index_split: str | None = None
    threads: int | None = None
    demo_seconds: float = DEMO_SECONDS
    timeline: Path | None = None


def cli_message(error: BaseException | str) -> str:
    """An error's message with library option names replaced by their command-line flags."""
    text = str(error)
    for name, flag in _FLAG_NAMES.items():
        text = text.replace(name, flag)
    return text


def build_settings(opts: InferOptions) -> BuildSettings:
    """The settings to build for ``opts``: with ``--demo``, the embedded demo models (a seeded
    random SAM even for ``--proposals auto``, so every stage runs) and, for ``--engine
    onnxruntime`` without ``--engine-dir``, the demo trunk exported to ``OUT/onnx``."""
    settings = opts.settings
    if not opts.demo:
        return settings
    return replace(
        settings,
        proposals="grid" if settings.proposals == "auto" else settings.proposals,
        export_dir=settings.export_dir or Path(opts.out) / "onnx",
    )


def make_demo_clip(out_dir: Path, seed: int = 0, seconds: float = DEMO_SECONDS) -> Path:
    """A synthetic-world video (moving objects, sounds switching on and off) as H.264 + AAC mp4."""
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4

    world = SynthWorld(seed, image_size=224, video_seconds=seconds)
    scene = world.sample("video", 0)
    return write_mp4(
        out_dir / "demo_input.mp4",
        scene.frames,
        scene.audio,
        fps=25.0,
        sample_rate=scene.sample_rate,
    )


def run_infer(opts: InferOptions) -> RunSummary | SplitSummary:
    """Run the whole job with ``opts.threads`` CPU threads (:mod:`moca_rt.threads`; torch's
    count is restored afterwards); raises on unusable input or checkpoints, returns the summary.

    A decode error part-way is not raised: it is stored in ``summary.error`` after every
    decodable frame was written (a split: per video, the others still run). KeyboardInterrupt
    closes the outputs and sets ``summary.interrupted``.

    Raises:
        InputError, CheckpointError, OutOfMemoryError (:mod:`moca_rt.errors`),
        FileNotFoundError: a checkpoint path that does not exist.
        ValueError: ``threads`` below 1 (or a bad ``MOCA_THREADS``).
    """
    import torch

    from moca_rt.threads import configure_threads

    previous = torch.get_num_threads()
    threads = configure_threads(opts.threads)
    how = "--threads" if opts.threads is not None else "the default of moca_rt.threads"
    try:
        return _run(opts, [f"{threads} CPU thread(s) for the compute ({how})"])
    finally:
        torch.set_num_threads(previous)


def _run(opts: InferOptions, notes: list[str]) -> RunSummary | SplitSummary:
    from moca_rt.build import build_pipeline
    from moca_rt.datasets.avsbench import is_split_root
    from moca_rt.media import open_source
    from moca_rt.proposals import load_box_prompts

    settings = build_settings(opts)
    if settings.batch < 1:
        raise ValueError(f"--batch must be >= 1, is {settings.batch}")
    if opts.reconnect < 0:
        raise ValueError(f"--reconnect must be >= 0, is {opts.reconnect}")
    out = Path(opts.out)
    _check_out(out)
    created = not out.exists()
    source: Any = None
    try:
        source_spec = opts.source
        if opts.demo and source_spec is None:
            _make_out(out)
            source_spec = str(make_demo_clip(out, settings.seed, opts.demo_seconds))
            notes.append(
                f"demo: generated {source_spec} from the synthetic world (seed {settings.seed})"
            )
        if source_spec is None:
            raise InputError("no SOURCE given (or use --demo)")
        box_prompts = None
        if opts.boxes is not None:
            try:
                box_prompts = load_box_prompts(opts.boxes)
            except OSError as e:
                raise InputError(f"--boxes {opts.boxes}: {e.strerror or e}") from e
            except ValueError as e:  # the message may start with the path: name it once
                why = str(e).removeprefix(f"{opts.boxes}: ")
                raise InputError(f"--boxes {opts.boxes}: {why}") from e
        if settings.proposals == "boxes" and box_prompts is None:
            raise InputError("--proposals boxes needs --boxes FILE.json")
        split = None
        split_opts: dict[str, Any] = {}
        opened: list[str] = []
        if is_split_root(source_spec):
            if opts.timeline is not None:
                raise InputError(
                    f"--timeline {opts.timeline}: one timeline is one source; {source_spec} is "
                    "a whole split (python -m moca_rt.batch --timeline writes one per video)"
                )
            split, split_opts = _open_split(source_spec, opts, box_prompts, notes)
        else:
            source_opts, source_notes = source_options(source_spec, opts)
            notes.extend(source_notes)
            try:
                with collect_warnings() as opened:  # e.g. NaN samples of a wav read whole
                    source = open_source(source_spec, **source_opts)
            except NoAudioStreamError as e:
                raise InputError(cli_message(e)) from e
        built = build_pipeline(settings)
        notes.extend(built.notes)
        notes.extend(_warm_up_compiled(built.pipeline, settings.batch))
        _make_out(out)
    except BaseException:
        if source is not None:
            source.close()
        if created and out.is_dir():
            shutil.rmtree(out, ignore_errors=True)  # this run made it: leave nothing behind
        raise
    if split is not None:
        split_summary = SplitSummary(notes=notes)
        return segment_split(
            built.pipeline,
            split,
            out,
            batch=settings.batch,
            overlay=opts.overlay,
            progress=opts.progress,
            open_options=split_opts,
            summary=split_summary,
        )
    summary = segment_source(
        built.pipeline,
        source,
        out,
        batch=settings.batch,
        box_prompts=box_prompts,
        overlay=opts.overlay,
        progress=opts.progress,
        summary=RunSummary(out=str(out), notes=notes, warnings=opened),
    )
    if opts.timeline is not None:  # also after a break: the timeline of what was written
        from moca_rt.timeline import write_run_timeline

        notes.append(
            write_run_timeline(opts.timeline, source_spec, out, frame_rate=source.frame_rate)
        )
        summary.write(out)  # summary.json names the timeline too
    return summary


def _warm_up_compiled(pipeline: Any, batch: int) -> list[str]:
    """Compile a torch-compile pipeline's engines before the run, so that the stage table and
    frames/s count run time only; a note with the compile seconds (nothing for other engines)."""
    from moca_rt.engines.compiled import compiled_engines, warmup_pipeline

    if not compiled_engines(pipeline):
        return []
    started = time.perf_counter()
    warmup_pipeline(pipeline, sorted({1, batch}))
    seconds = time.perf_counter() - started
    return [f"torch-compile: compiled and warmed up in {seconds:.1f} s (not in the timings)"]


def _check_out(out: Path) -> None:
    """InputError unless ``out`` is a folder or can be created (before any model loads)."""
    import os

    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out}: expected a folder that can be created, got a file")
    base = out
    while not base.exists() and base != base.parent:
        base = base.parent
    if not base.is_dir() or not os.access(base, os.W_OK | os.X_OK):
        what = "a file" if base.exists() and not base.is_dir() else "not writable"
        raise InputError(
            f"--out {out}: expected a folder that can be created, but {base} is {what}"
        )


def _make_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: expected a folder that can be created, got {e}") from e


def _open_split(
    spec: str, opts: InferOptions, box_prompts: Any, notes: list[str]
) -> tuple[Any, dict[str, Any]]:
    """The videos of a split root and the options to open each; notes on flags it ignores."""
    from moca_rt.datasets.avsbench import split_videos

    try:
        split = split_videos(spec, opts.index_split)
    except (OSError, ValueError) as e:
        raise InputError(f"{spec}: {e}") from e
    if not split.videos:
        rows = f" of split {opts.index_split!r}" if opts.index_split else ""
        raise InputError(f"{spec}: expected at least one video{rows} in the index, found none")
    if opts.index_split is not None and split.subset == "tree":
        notes.append("--index-split ignored: SOURCE is a folder tree, not an AVSBench index")
    for flag, given in (
        ("--audio", opts.audio is not None),
        ("--boxes", box_prompts is not None),
        ("--realtime", opts.realtime),
        ("--reconnect", opts.reconnect > 0),
        ("--timeout", opts.timeout is not None),
    ):
        if given:
            notes.append(f"{flag} ignored: SOURCE is a split of {len(split.videos)} videos")
    where = f"; evaluate with --gt {split.gt_root}" if split.gt_root is not None else ""
    if split.subset == "avss":
        where = (
            "; its ground truth is class labels, the masks are class-agnostic (0/255), so "
            "evaluate --split avss does not score them"
        )
    notes.append(f"{split.subset} split at {split.root}: {len(split.videos)} videos{where}")
    return split, {"fps": opts.fps, "allow_silent": opts.allow_silent}


def source_options(spec: str, opts: InferOptions) -> tuple[dict[str, Any], list[str]]:
    """The ``open_source`` options for this kind of source, and notes on the flags that do not
    apply to it and are ignored (``--audio`` with a video or stream is an input error)."""
    from moca_rt.media import source_kind

    kind = source_kind(spec)
    source_opts: dict[str, Any] = {"fps": opts.fps, "allow_silent": opts.allow_silent}
    notes: list[str] = []
    if opts.index_split is not None:
        notes.append(f"--index-split ignored: {spec} is not an AVSBench split")
    if kind in ("stream", "file"):
        if opts.audio is not None:
            raise InputError(
                f"--audio {opts.audio}: expected an image or a frame folder as "
                f"SOURCE, got a video or stream ({spec}) that carries its own audio"
            )
        if opts.realtime:
            source_opts["realtime"] = True
        if opts.overlay:
            source_opts["keep_raw_audio"] = True
        if opts.reconnect and kind == "stream":
            source_opts["reconnect"] = opts.reconnect
        elif opts.reconnect:
            notes.append(f"--reconnect ignored: {spec} is a file, not a live stream")
        if opts.timeout is not None and kind == "stream":
            source_opts["timeout"] = opts.timeout
            source_opts["open_timeout"] = opts.timeout
        elif opts.timeout is not None:
            notes.append(f"--timeout ignored: {spec} is a file, not a network source")
    else:
        for flag, given in (
            ("--reconnect", opts.reconnect > 0),
            ("--realtime", opts.realtime),
            ("--timeout", opts.timeout is not None),
        ):
            if given:
                notes.append(f"{flag} ignored: an image or frame folder is not a live source")
        if opts.audio is not None:
            source_opts["audio"] = str(opts.audio)
    return source_opts, notes
