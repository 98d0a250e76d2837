"""``python -m moca_rt.infer SOURCE``: segment the sounding objects of a video, stream or folder.

Outputs under ``--out``: ``masks/*.png`` (one per processed frame, 0/255; ``NNNNNN.png`` by
frame index, or the ground truth's names for an AVSBench frame folder), ``records.jsonl`` (one
record per input frame: index, pts, dropped, scores, chosen clusters, COCO RLE mask, its PNG,
per-stage timings; flushed per record), optionally ``overlay.mp4`` (mask tinted over the frames,
the original audio; an image or frame folder's wav at 16 kHz) and ``summary.json`` (counts,
timings, notes, warnings and the error, if any).

SOURCE may also be a whole AVSBench split (S4/MS3/AVSS: its index CSV, the folder holding it,
or a folder tree of frame folders): every video with one model load, masks at
``masks/<the ground truth's relative path>``, so ``python -m moca_rt.evaluate --pred OUT/masks
--gt <the split's gt_masks>`` pairs them unchanged; ``videos/<path>/records.jsonl`` per video;
a video that fails is recorded in ``summary.json`` and skipped.

``--engine`` picks what runs the MoCA trunk (ImageBind audio + adapted vision): ``torch`` (the
default), ``onnxruntime`` or ``tensorrt`` on the exported ``audio`` and ``vision`` units in
``--engine-dir`` (:class:`moca_rt.engines.moca_units.EngineMocaModel`). SAM proposals, k-means
and mask matching stay on torch. ``--demo --engine onnxruntime`` first exports the demo trunk
to ``OUT/onnx``.

This module parses the command line and maps errors to exit codes; the job itself (check the
input, then load the models, then write) is :func:`moca_rt.infer_job.run_infer`. ``--threads``
sets the CPU threads of the compute (:mod:`moca_rt.threads`); before torch loads, this module
sets ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it (spinning OpenMP workers made
the demo 10x slower on a busy machine).

Exit codes:

* 0  every input frame was processed;
* 1  the source broke part-way (corrupt or truncated): every decodable frame was processed and
     written, then the decode error was reported (``summary.json``'s ``error``); a split: some
     videos failed and were skipped, the others are written;
* 2  bad command line (argparse);
* 3  the input cannot be used: missing, empty, not a video, no audio stream (see
     ``--allow-silent``), bad box-prompt file; reported before the models load, and nothing is
     left in ``--out``;
* 4  a checkpoint does not fit the model it was given for (the message names the keys);
* 5  out of GPU memory (the message suggests a smaller ``--batch``);
* 6  an unexpected error (a bug: please report it); once outputs exist, ``summary.json``
     records it;
* 130 interrupted (Ctrl-C): outputs written so far are flushed and closed.

Notes (what was chosen or ignored) and warnings (what the input lacked and was substituted:
silence, zero padding, clipped samples) go to stderr and ``summary.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

# Before torch loads OpenMP: idle OpenMP workers sleep instead of spinning on a busy machine
# (moca_rt.threads, benchmarks/threads.py); OMP_WAIT_POLICY=ACTIVE in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch

from moca_rt.build import ENGINES, BuildSettings
from moca_rt.cli import flag_values
from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.errors import CheckpointError, InputError, OutOfMemoryError
from moca_rt.infer_job import (  # re-exported: the names of earlier releases
    DEMO_SECONDS as DEMO_SECONDS,
    InferOptions as InferOptions,
    InferSummary as InferSummary,
    build_settings,
    cli_message,
    make_demo_clip as make_demo_clip,
    run_infer,
)
from moca_rt.precision import PRECISIONS
from moca_rt.runner import RunSummary, SplitSummary
from moca_rt.timeline import timeline_path

EXIT_OK = 0
EXIT_DECODE_ERROR = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_BAD_CHECKPOINT = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_INTERNAL = 6
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m moca_rt.infer",
        description="Segment the objects that make the sound in a video file, a live stream "
        "(http, rtsp, udp MPEG-TS), an AVSBench frame folder, or an image with a wav file.",
        epilog="Exit codes: 0 ok; 1 the source broke part-way (outputs kept) or videos of a "
        "split failed; 2 bad arguments; 3 unusable input; 4 checkpoint does not fit; 5 out of "
        "GPU memory; 6 unexpected error (a bug); 130 interrupted.",
    )
    p.add_argument(
        "source",
        nargs="?",
        help="The input: a file path, URL, AVSBench frame folder, image, or a whole AVSBench "
        "split (its index CSV or folder tree).",
    )
    p.add_argument(
        "--audio", type=Path, help="The wav file that goes with an image or frame folder."
    )
    p.add_argument(
        "--out", type=Path, default=Path("moca_out"), help="The output folder (created if needed)."
    )
    p.add_argument(
        "--index-split",
        choices=("train", "val", "test"),
        help="With an AVSBench index as SOURCE: only the videos of this split (default: all).",
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
        help="The MoCA model size; defaults to the one the --imagebind checkpoint fits "
        "(read from its shapes), else the tiny moca_synth.",
    )
    models.add_argument(
        "--imagebind",
        type=Path,
        help="An ImageBind checkpoint (the official imagebind_huge.pth, or a tiny one).",
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
        help="What runs the models: torch (eager); torch-compile (the trunk and SAM's "
        "image encoder under torch.compile); onnxruntime (exported units: the trunk, SAM's "
        "image encoder and, on the CPU in fp32, SAM's grid decoder; from --engine-dir, or "
        "exported first with --demo); tensorrt (the trunk's engines in --engine-dir); auto "
        "(onnxruntime on the CPU in fp32, exported once into ~/.cache/moca_rt; torch-compile "
        "on CUDA; see docs/design.md). k-means and mask matching run on torch.",
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
        "--threads",
        type=int,
        help="CPU threads of the compute (default: every CPU, at most 8, with OpenMP's idle "
        "workers sleeping as this command sets them; half the CPUs if OMP_WAIT_POLICY=ACTIVE; "
        "MOCA_THREADS overrides the default).",
    )
    run.add_argument(
        "--timeout",
        type=float,
        help="Network sources: seconds to wait for the connection and for data before the "
        "stream counts as unreachable or ended (default 15 s to connect, 5 s between packets).",
    )
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
        help="Also write overlay.mp4 with the masks and the original audio (an image or "
        "frame folder's wav, at 16 kHz).",
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
    return InferOptions(
        **flag_values(InferOptions, given),
        settings=BuildSettings(**flag_values(BuildSettings, given)),
        progress=not args.no_progress,
        demo_seconds=DEMO_SECONDS,  # read at call time: tests shorten the demo here
    )


def _usage_problem(opts: InferOptions) -> str | None:
    """A message for option values argparse cannot check (ranges, combinations), or None."""
    settings = build_settings(opts)
    if opts.reconnect < 0:
        return f"--reconnect: expected >= 0, got {opts.reconnect}"
    if opts.fps is not None and not opts.fps > 0:
        return f"--fps: expected > 0, got {opts.fps}"
    if opts.timeout is not None and not opts.timeout > 0:
        return f"--timeout: expected > 0 seconds, got {opts.timeout}"
    problem = settings.usage_problem()
    if problem is not None:
        return problem
    try:
        settings.pipeline_config()
    except ValueError as e:
        return str(e)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from moca_rt.threads import default_threads

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source is None and not args.demo:
        parser.error("SOURCE is required unless --demo is given")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads: expected >= 1, got {args.threads}")
    opts = options_from_args(args)
    usage = _usage_problem(opts)
    if usage is not None:
        parser.error(usage)
    try:
        default_threads()
    except ValueError as e:  # a bad MOCA_THREADS
        parser.error(str(e))
    try:
        summary = run_infer(opts)
    except CheckpointError as e:
        return _fail(e, EXIT_BAD_CHECKPOINT)
    except (InputError, FileNotFoundError) as e:
        return _fail(e, EXIT_BAD_INPUT)
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
    except Exception as e:  # a bug: one line, not a traceback (summary.json records it)
        return _fail(f"unexpected {type(e).__name__}: {e} (please report this)", EXIT_INTERNAL)
    return _report(summary)


def _fail(error: BaseException | str, code: int) -> int:
    print(f"error: {cli_message(error)}", file=sys.stderr)
    return code


def _report(summary: RunSummary | SplitSummary) -> int:
    """Print the notes, warnings and timings of a finished run; return its exit code."""
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    for warning in summary.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(summary.timing_table())
    print(f"outputs in {summary.out}")
    if summary.interrupted:
        print("interrupted: outputs so far are written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.error is None:
        return EXIT_OK
    if isinstance(summary, SplitSummary):
        print(
            f"error: {cli_message(summary.error)} (see {summary.out}/summary.json)",
            file=sys.stderr,
        )
    else:
        print(
            f"error: the source broke after {summary.frames} frames: {summary.error}",
            file=sys.stderr,
        )
    return EXIT_DECODE_ERROR


if __name__ == "__main__":
    sys.exit(main())
