"""``python -m moca_rt.infer SOURCE``: segment the sounding objects of a video, stream or folder.

Outputs under ``--out``: ``masks/NNNNNN.png`` (one per processed frame, 0/255),
``records.jsonl`` (one record per input frame: index, pts, dropped, scores, chosen clusters,
COCO RLE mask, per-stage timings; flushed per record), optionally ``overlay.mp4`` (mask tinted
over the frames, original audio) and ``summary.json``.

``--engine`` picks what runs the MoCA trunk (ImageBind audio + adapted vision): ``torch`` (the
default), ``onnxruntime`` or ``tensorrt`` on the exported ``audio`` and ``vision`` units in
``--engine-dir`` (:class:`moca_rt.engines.moca_units.EngineMocaModel`). SAM proposals, k-means
and mask matching stay on torch. ``--demo --engine onnxruntime`` first exports the demo trunk
to ``OUT/onnx``.

This module parses the command line, runs the source through the pipeline and writes the
outputs; the pipeline itself is built by :func:`moca_rt.build.build_pipeline` from the
:class:`~moca_rt.build.BuildSettings` the flags give, and the errors of :mod:`moca_rt.errors`
become the exit codes below.

Exit codes:

* 0  every input frame was processed;
* 1  the source broke part-way (corrupt or truncated): every decodable frame was processed and
     written, then the decode error was reported;
* 2  bad command line (argparse);
* 3  the input cannot be used: missing, empty, not a video, no audio stream (see
     ``--allow-silent``), bad box-prompt file;
* 4  a checkpoint does not fit the model it was given for (the message names the keys);
* 5  out of GPU memory (the message suggests a smaller ``--batch``);
* 130 interrupted (Ctrl-C): outputs written so far are flushed and closed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from moca_rt.build import ENGINES, BuildSettings
from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.errors import CheckpointError, InputError, OutOfMemoryError
from moca_rt.precision import PRECISIONS
from moca_rt.runner import RunSummary, segment_source
from moca_rt.timeline import timeline_path, write_run_timeline

EXIT_OK = 0
EXIT_DECODE_ERROR = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_BAD_CHECKPOINT = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_INTERRUPTED = 130

DEMO_SECONDS = 2.0


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
    overlay: bool = False
    allow_silent: bool = False
    demo: bool = False
    progress: bool = True
    timeline: Path | None = None


InferSummary = RunSummary  # the summary of one infer run (the name of earlier releases)


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


def make_demo_clip(out_dir: Path, seed: int = 0) -> Path:
    """A synthetic-world video (moving objects, sounds switching on and off) as H.264 + AAC mp4."""
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4

    world = SynthWorld(seed, image_size=224, video_seconds=DEMO_SECONDS)
    scene = world.sample("video", 0)
    return write_mp4(
        out_dir / "demo_input.mp4",
        scene.frames,
        scene.audio,
        fps=25.0,
        sample_rate=scene.sample_rate,
    )


def run_infer(opts: InferOptions) -> InferSummary:
    """Run the whole job; raises on unusable input or checkpoints, returns the summary.

    A decode error part-way is not raised: it is stored in ``summary.error`` after every
    decodable frame was written. KeyboardInterrupt closes the outputs and sets
    ``summary.interrupted``.

    Raises:
        InputError, CheckpointError, OutOfMemoryError (:mod:`moca_rt.errors`),
        FileNotFoundError: a checkpoint path that does not exist.
    """
    from moca_rt.build import build_pipeline
    from moca_rt.media import NoAudioStreamError, open_source
    from moca_rt.proposals import load_box_prompts

    settings = build_settings(opts)
    if settings.batch < 1:
        raise ValueError(f"--batch must be >= 1, is {settings.batch}")
    if opts.reconnect < 0:
        raise ValueError(f"--reconnect must be >= 0, is {opts.reconnect}")
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: expected a folder that can be created, got {e}") from e
    summary = InferSummary(out=str(out))
    notes = summary.notes
    source_spec = opts.source
    if opts.demo and source_spec is None:
        source_spec = str(make_demo_clip(out, settings.seed))
        notes.append(
            f"demo: generated {source_spec} from the synthetic world (seed {settings.seed})"
        )
    if source_spec is None:
        raise InputError("no SOURCE given (or use --demo)")
    box_prompts = None
    if opts.boxes is not None:
        try:
            box_prompts = load_box_prompts(opts.boxes)
        except (OSError, ValueError) as e:
            raise InputError(f"--boxes {opts.boxes}: {e}") from e
    if settings.proposals == "boxes" and box_prompts is None:
        raise InputError("--proposals boxes needs --boxes FILE.json")
    built = build_pipeline(settings)
    notes.extend(built.notes)

    source_opts, source_notes = _source_options(source_spec, opts)
    notes.extend(source_notes)
    try:
        source = open_source(source_spec, **source_opts)
    except NoAudioStreamError as e:
        raise InputError(f"{e} (on the command line: --allow-silent)") from e

    summary = segment_source(
        built.pipeline,
        source,
        out,
        batch=settings.batch,
        box_prompts=box_prompts,
        overlay=opts.overlay,
        progress=opts.progress,
        summary=summary,
    )
    if opts.timeline is not None:  # also after a break: the timeline of what was written
        notes.append(
            write_run_timeline(opts.timeline, source_spec, out, frame_rate=source.frame_rate)
        )
    return summary


def _source_options(spec: str, opts: InferOptions) -> tuple[dict[str, Any], list[str]]:
    """The ``open_source`` options for this kind of source, and notes on the flags that do not
    apply to it and are ignored (``--audio`` with a video or stream is an input error)."""
    from moca_rt.media import source_kind

    kind = source_kind(spec)
    source_opts: dict[str, Any] = {"fps": opts.fps, "allow_silent": opts.allow_silent}
    notes: list[str] = []
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
    else:
        if opts.reconnect:
            notes.append("--reconnect ignored: an image or frame folder is not a live source")
        if opts.audio is not None:
            source_opts["audio"] = str(opts.audio)
        if opts.realtime:
            notes.append("--realtime ignored: an image or frame folder is not a live source")
    return source_opts, notes


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m moca_rt.infer",
        description="Segment the objects that make the sound in a video file, a live stream "
        "(http, rtsp, udp MPEG-TS), an AVSBench frame folder, or an image with a wav file.",
        epilog="Exit codes: 0 ok; 1 the source broke part-way (outputs kept); 2 bad arguments; "
        "3 unusable input; 4 checkpoint does not fit; 5 out of GPU memory; 130 interrupted.",
    )
    p.add_argument(
        "source", nargs="?", help="The input: a file path, URL, AVSBench frame folder or image."
    )
    p.add_argument(
        "--audio", type=Path, help="The wav file that goes with an image or frame folder."
    )
    p.add_argument(
        "--out", type=Path, default=Path("moca_out"), help="The output folder (created if needed)."
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="Segment a generated synthetic-world clip with the shipped tiny models "
        "(trained on the synthetic world).",
    )
    models = p.add_argument_group("models")
    models.add_argument(
        "--preset",
        choices=sorted(MOCA_PRESETS),
        help="The MoCA model size; defaults to moca_huge with --imagebind, "
        "else the tiny moca_synth.",
    )
    models.add_argument(
        "--imagebind",
        type=Path,
        help="The official imagebind_huge.pth checkpoint "
        "(a tiny imagebind_synth file needs --preset moca_synth).",
    )
    models.add_argument("--adapter", type=Path, help="Trained AdaAV weights (.safetensors or .pt).")
    models.add_argument(
        "--sam", type=Path, help="An official sam_vit_{h,l,b} checkpoint for mask proposals."
    )
    models.add_argument(
        "--sam-preset",
        choices=sorted(SAM_PRESETS),
        help="The SAM size; read from the checkpoint when not given.",
    )
    models.add_argument(
        "--random-weights",
        action="store_true",
        help="Seeded random weights for every checkpoint not given, instead of the "
        "shipped trained tiny models (moca_synth, sam_synth).",
    )
    run = p.add_argument_group("running")
    run.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="The torch device to run on, such as cpu or cuda:0.",
    )
    run.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="The compute precision of the models; with an engine it must be the "
        "precision the units were exported in (fp32 or fp16).",
    )
    run.add_argument(
        "--engine",
        choices=ENGINES,
        default="torch",
        help="What runs the MoCA trunk (ImageBind audio and adapted vision): torch, or "
        "the exported units on onnxruntime (CUDA provider with a cuda --device) or "
        "TensorRT. SAM proposals, k-means and mask matching always run on torch.",
    )
    run.add_argument(
        "--engine-dir",
        type=Path,
        help="The folder of exported units for --engine onnxruntime "
        "(audio_<precision>.onnx and vision_<precision>.onnx from "
        "python -m moca_rt.export.create_onnx) or tensorrt (one audio_*.engine and "
        "one vision_*.engine from python -m moca_rt.export.build_trt). With --demo "
        "and onnxruntime it may be left out: the demo trunk is exported to OUT/onnx.",
    )
    run.add_argument("--batch", type=int, default=1, help="The number of frames per model call.")
    run.add_argument(
        "--fps",
        type=float,
        help="Process this many frames per second of video (others are skipped).",
    )
    run.add_argument(
        "--realtime",
        action="store_true",
        help="Drop frames when processing falls behind the stream and record them as dropped.",
    )
    run.add_argument(
        "--reconnect",
        type=int,
        default=0,
        metavar="N",
        help="Live streams: reopen the URL up to N times in a row when it ends or breaks "
        "(records go on with increasing indices and pts); 0 ends with the stream.",
    )
    run.add_argument(
        "--overlay",
        action="store_true",
        help="Also write overlay.mp4 with the masks and the original audio.",
    )
    run.add_argument(
        "--allow-silent",
        action="store_true",
        help="Treat a video without an audio stream as silence instead of failing.",
    )
    run.add_argument(
        "--seed", type=int, default=0, help="The seed of k-means++ and of random demo weights."
    )
    run.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")
    run.add_argument(
        "--timeline",
        type=timeline_path,
        help="Also write an editor timeline of the sounding intervals: OUT.otio "
        "(OpenTimelineIO) or OUT.edl (CMX 3600); needs moca-rt[otio].",
    )
    th = p.add_argument_group("thresholds")
    th.add_argument("--tau", type=float, help="The minimum cosine score of a sounding cluster.")
    th.add_argument(
        "--delta", type=float, help="Clusters within delta of the best score also sound."
    )
    th.add_argument(
        "--silence-db",
        type=float,
        dest="silence_dbfs",
        help="Windows quieter than this RMS level in dBFS give an empty mask.",
    )
    th.add_argument(
        "--clusters",
        type=int,
        dest="num_clusters",
        help="The number of k-means clusters per frame (2 to 16).",
    )
    th.add_argument(
        "--proposals",
        choices=("auto", "grid", "boxes", "none"),
        default="auto",
        help="Where mask proposals come from: a SAM point grid, user boxes, "
        "or none (cluster masks only).",
    )
    th.add_argument(
        "--boxes",
        type=Path,
        help='A JSON file of per-frame boxes: {"frames": {"0": [[x0, y0, x1, y1], ...]}}.',
    )
    th.add_argument(
        "--points-per-side",
        type=int,
        help="The SAM point grid size for proposals "
        "(16 with a real --sam, 4 for the random demo SAM).",
    )
    th.add_argument(
        "--mpm-threshold",
        type=float,
        help="Keep proposals whose IoU with the cluster mask is above this.",
    )
    th.add_argument(
        "--mpm-metric",
        choices=("iou", "coverage"),
        help="How a proposal is matched to the cluster mask.",
    )
    return p


def options_from_args(args: argparse.Namespace) -> InferOptions:
    """The options of a parsed command line (the flags of BuildSettings' fields go there)."""
    given = vars(args)
    settings = BuildSettings(
        **{f.name: given[f.name] for f in fields(BuildSettings) if f.name in given}
    )
    return InferOptions(
        source=args.source,
        out=args.out,
        settings=settings,
        audio=args.audio,
        boxes=args.boxes,
        fps=args.fps,
        realtime=args.realtime,
        reconnect=args.reconnect,
        overlay=args.overlay,
        allow_silent=args.allow_silent,
        demo=args.demo,
        progress=not args.no_progress,
        timeline=args.timeline,
    )


def _usage_problem(opts: InferOptions) -> str | None:
    """A message for option values argparse cannot check (ranges, combinations), or None."""
    settings = build_settings(opts)
    if opts.reconnect < 0:
        return f"--reconnect: expected >= 0, got {opts.reconnect}"
    if opts.fps is not None and not opts.fps > 0:
        return f"--fps: expected > 0, got {opts.fps}"
    problem = settings.usage_problem()
    if problem is not None:
        return problem
    try:
        settings.pipeline_config()
    except ValueError as e:
        return str(e)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source is None and not args.demo:
        parser.error("SOURCE is required unless --demo is given")
    opts = options_from_args(args)
    usage = _usage_problem(opts)
    if usage is not None:
        parser.error(usage)
    try:
        summary = run_infer(opts)
    except CheckpointError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CHECKPOINT
    except (InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OutOfMemoryError as e:
        print(
            f"error: out of GPU memory with --batch {opts.settings.batch} ({e}); try a smaller "
            "--batch, --precision bf16, or --proposals none",
            file=sys.stderr,
        )
        return EXIT_OUT_OF_MEMORY
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    print(summary.timing_table())
    print(f"outputs in {summary.out}")
    if summary.interrupted:
        print("interrupted: outputs so far are written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.error is not None:
        print(
            f"error: the source broke after {summary.frames} frames: {summary.error}",
            file=sys.stderr,
        )
        return EXIT_DECODE_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
