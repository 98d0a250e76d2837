"""``python -m moca_rt.batch INPUT... --out DIR``: segment a corpus of videos on Ray Data.

Inputs: video files, folders (their videos, recursively), globs (``'clips/**/*.mp4'``, quoted),
and lists: a ``.txt``/``.lst`` file with one video per line (``#`` comments; relative paths
are taken from the list's folder) or a ``.csv`` file with a ``video`` or ``path`` column (else
its first column). AVSBench split roots are not read here (an open item); single AVSBench frame
folders can be listed in a text file like videos.

Execution: a Ray Data dataset of the videos, one per task, mapped by an actor pool of
pipelines (:class:`SegmentWorker`: one model load per actor, ``--actors`` of them, each with
``--num-gpus-per-actor``/``--num-cpus-per-actor``). Ray is started in-process (a local
cluster on this machine) unless ``--address auto`` or ``ray://HOST:PORT`` names a running one;
on a cluster, ``--out`` must be a folder every node sees (a shared file system) and moca-rt must
be installed on every node.

Outputs under ``--out``: per video ``NAME/`` with exactly what ``python -m moca_rt.infer``
writes (``masks/``, ``records.jsonl``, ``summary.json``) and, with ``--timeline otio|edl``,
``NAME/timeline.otio``/``.edl``; and the job manifest ``manifest.jsonl``: one line per
finished attempt (``video``, ``name``, ``status`` ok/error, ``frames``, ``processed``,
``error``, ``timings``, ``worker``; ``timeline_error`` when only the timeline could not be
written, e.g. an EDL at a rate SMPTE timecode lacks), appended and fsync'ed by the driver
alone. ``NAME`` is the video's file stem (with a short hash of its path when two stems collide).

Guarantees:

* Atomic outputs: a worker writes into ``--out/.partial/NAME.<pid>.<random>`` and renames the
  folder to ``NAME`` when the video is done, so a killed worker leaves no half-written output
  under a final name (its partial folder is removed when the job ends or restarts).
* Fault tolerance: Ray restarts a dead actor and retries its video (Ray Data's actor pools
  default to ``max_restarts=-1``, ``max_task_retries=-1``).
* A corrupt or missing video is recorded as an ``error`` line and the job goes on; a video that
  breaks part-way keeps the frames decoded before the break (as ``infer`` does) and is an
  ``error`` too.
* Resumable: a rerun skips every video whose last manifest line is ``ok`` and whose folder
  exists; errors are tried again (``--no-retry-errors`` skips them too).
* One job per ``--out`` folder at a time (the driver owns the manifest and ``.partial``).

Exit codes: 0 every video ok; 1 some videos are errors (the manifest says which and why);
2 bad command line; 3 no usable input (nothing found, unreadable list); 4 the workers could not
build the pipeline (a checkpoint that does not fit, missing files); 6 the Ray job failed
otherwise (the manifest keeps what finished: rerun to resume); 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from moca_rt.build import ENGINES, BuildSettings
from moca_rt.cli import flag_values
from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.errors import InputError
from moca_rt.precision import PRECISIONS

__all__ = [
    "MANIFEST_FILE",
    "PARTIAL_DIR",
    "VIDEO_SUFFIXES",
    "BatchOptions",
    "BatchReport",
    "SegmentWorker",
    "VideoJob",
    "collect_videos",
    "main",
    "publish",
    "read_manifest",
    "run_batch",
    "segment_video",
]

MANIFEST_FILE = "manifest.jsonl"
PARTIAL_DIR = ".partial"
VIDEO_SUFFIXES = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".ts",
    ".mts",
    ".flv",
    ".mpg",
    ".mpeg",
    ".wmv",
)
LIST_SUFFIXES = (".txt", ".lst", ".csv")
TimelineKind = Literal["otio", "edl"]

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_WORKERS = 4
EXIT_JOB_FAILED = 6
EXIT_INTERRUPTED = 130


@dataclass(frozen=True)
class VideoJob:
    """One video of the corpus: its path (or URL) as given and its output folder name."""

    video: str
    name: str


# --------------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------------


def _is_glob(text: str) -> bool:
    return any(c in text for c in "*?[")


def _list_entries(path: Path) -> list[str]:
    """The videos a ``.txt``/``.lst``/``.csv`` list names, relative ones from the list's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: expected a readable text list of videos, got {e}") from e
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        column = 0
        if rows:
            header = [c.strip().lower() for c in rows[0]]
            for name in ("video", "path"):
                if name in header:
                    column = header.index(name)
                    rows = rows[1:]
                    break
        entries = [r[column].strip() for r in rows if len(r) > column and r[column].strip()]
    else:
        entries = [
            line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")
        ]
    base = path.parent
    return [e if "://" in e or Path(e).is_absolute() else str(base / e) for e in entries]


def _folder_videos(folder: Path) -> list[str]:
    return sorted(
        str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
    )


def collect_videos(inputs: Sequence[str]) -> list[VideoJob]:
    """The videos that ``inputs`` name, in order, each once (local paths made absolute: the
    manifest knows a video by it, whatever folder the job is started from), with unique output
    names.

    A list entry that does not exist stays in (the job records it as an error); a top-level
    input that does not exist, a glob that matches nothing or no video at all is an
    InputError.
    """
    found: list[str] = []
    for text in inputs:
        path = Path(text)
        if "://" in text:
            found.append(text)
        elif _is_glob(text) and not path.exists():
            matches = sorted(p for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"{text}: expected a glob that matches video files, got none")
            found.extend(matches)
        elif path.is_dir():
            videos = _folder_videos(path)
            if not videos:
                raise InputError(
                    f"{text}: expected a folder with videos ({', '.join(VIDEO_SUFFIXES)}), "
                    "found none"
                )
            found.extend(videos)
        elif path.suffix.lower() in LIST_SUFFIXES:
            if not path.is_file():
                raise InputError(f"{text}: list file not found")
            found.extend(_list_entries(path))
        elif path.exists():
            found.append(text)
        else:
            raise InputError(f"{text}: expected a video, folder, glob or list, found nothing")
    unique: list[str] = []
    seen: set[str] = set()
    for video in found:
        if "://" not in video:
            video = os.path.abspath(video)  # the manifest's key, the same from any folder
        key = video if "://" in video else str(Path(video).resolve())
        if key not in seen:
            seen.add(key)
            unique.append(video)
    if not unique:
        raise InputError(f"{list(inputs)}: expected at least one video, found none")
    return _named(unique)


def _named(videos: list[str]) -> list[VideoJob]:
    """Output names: the file stem, with 8 hex of the path's hash where stems collide."""
    stems = [Path(v.rstrip("/")).stem or "video" for v in videos]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    jobs = []
    for video, stem in zip(videos, stems, strict=True):
        name = stem
        if counts[stem] > 1:
            name = f"{stem}-{hashlib.sha1(video.encode()).hexdigest()[:8]}"
        jobs.append(VideoJob(video=video, name=name))
    return jobs


# --------------------------------------------------------------------------------------------
# One video (runs in a worker; also usable without Ray)
# --------------------------------------------------------------------------------------------


def publish(partial: Path, final: Path) -> None:
    """Rename the finished folder ``partial`` to ``final``; an existing ``final`` (a retried
    video whose first attempt finished after all) is moved aside first and then removed."""
    if final.exists():
        aside = partial.parent / f"{final.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.rename(final, aside)
        os.rename(partial, final)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(partial, final)


def _worker_identity() -> dict[str, Any]:
    who: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            who["node"] = ctx.get_node_id()
            actor = ctx.get_actor_id()
            if actor is not None:
                who["actor"] = actor
    except ImportError:
        pass
    return who


def segment_video(
    pipeline: Any,
    job: VideoJob,
    out_root: Path,
    *,
    batch: int = 1,
    source_options: dict[str, Any] | None = None,
    notes: Sequence[str] = (),
    timeline: TimelineKind | None = None,
    timeline_min_gap: int = 0,
) -> dict[str, Any]:
    """Segment one video into ``out_root/job.name`` (atomically) and return its manifest row.

    Never raises for a bad video: open and decode errors, and any other failure of this video,
    become ``status: "error"`` with the message. A video that broke part-way keeps what was
    written before the break (as ``infer`` does).
    """
    from moca_rt.media import open_source
    from moca_rt.runner import RunSummary, segment_source

    started = time.perf_counter()
    partial = out_root / PARTIAL_DIR / f"{job.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    final = out_root / job.name
    row: dict[str, Any] = {
        "video": job.video,
        "name": job.name,
        "status": "error",
        "frames": 0,
        "processed": 0,
        "error": None,
        "timings": {},
        "worker": _worker_identity(),
    }
    try:
        source = open_source(job.video, **(source_options or {}))
    except Exception as e:  # missing, not a video, no audio, ...: recorded, the job goes on
        row["error"] = f"{type(e).__name__}: {e}"
        row["timings"] = {"total_s": round(time.perf_counter() - started, 4)}
        return row
    opened = time.perf_counter()
    try:
        partial.mkdir(parents=True)
        summary = segment_source(
            pipeline, source, partial, batch=batch, summary=RunSummary(notes=list(notes))
        )
        segmented = time.perf_counter()
        summary.out = str(final)  # the folder it is published as, not the partial one
        summary.write(partial)
        if timeline is not None:
            from moca_rt.timeline import write_run_timeline

            try:
                write_run_timeline(
                    partial / f"timeline.{timeline}",
                    job.video,
                    partial,
                    frame_rate=source.frame_rate,
                    min_gap=timeline_min_gap,
                )
            except InputError as e:  # e.g. an EDL of a 1 fps frame folder: keep the masks
                row["timeline_error"] = str(e).replace(str(partial), str(final))
        publish(partial, final)
    except Exception as e:  # a failure of this video only (the model, the disk): recorded
        shutil.rmtree(partial, ignore_errors=True)
        row["error"] = f"{type(e).__name__}: {e}"
        row["timings"] = {"total_s": round(time.perf_counter() - started, 4)}
        return row
    done = time.perf_counter()
    row.update(
        status="ok" if summary.error is None else "error",
        frames=summary.frames,
        processed=summary.processed,
        error=summary.error,
        timings={
            "open_s": round(opened - started, 4),
            "segment_s": round(segmented - opened, 4),
            "publish_s": round(done - segmented, 4),
            "total_s": round(done - started, 4),
        },
    )
    return row


class SegmentWorker:
    """A Ray Data actor: one pipeline, built once, that segments the videos of its batches.

    Batches are ``{"video": [...], "name": [...]}``; the result is ``{"row": [json, ...]}``,
    the manifest row of each video.
    """

    def __init__(
        self,
        settings: BuildSettings,
        out_root: str,
        source_options: dict[str, Any],
        timeline: TimelineKind | None,
        timeline_min_gap: int,
    ) -> None:
        from moca_rt.build import build_pipeline

        started = time.perf_counter()
        built = build_pipeline(settings)
        self.load_s = round(time.perf_counter() - started, 3)
        self.pipeline = built.pipeline
        self.notes = list(built.notes)
        self.batch = settings.batch
        self.out_root = Path(out_root)
        self.source_options = source_options
        self.timeline = timeline
        self.timeline_min_gap = timeline_min_gap
        self.videos_done = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        rows = []
        for video, name in zip(batch["video"], batch["name"], strict=True):
            row = segment_video(
                self.pipeline,
                VideoJob(str(video), str(name)),
                self.out_root,
                batch=self.batch,
                source_options=self.source_options,
                notes=self.notes,
                timeline=self.timeline,
                timeline_min_gap=self.timeline_min_gap,
            )
            row["worker"]["model_load_s"] = self.load_s
            row["worker"]["videos_before"] = self.videos_done
            self.videos_done += 1
            rows.append(json.dumps(row))
        return {"row": np.array(rows, dtype=object)}


# --------------------------------------------------------------------------------------------
# The job (driver)
# --------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The last manifest row of each video (a torn last line from a crash is ignored)."""
    last: dict[str, dict[str, Any]] = {}
    if not path.is_file():
        return last
    from moca_rt.sinks import read_jsonl

    for row in read_jsonl(path):
        last[str(row["video"])] = row
    return last


@dataclass
class BatchOptions:
    """Everything :func:`run_batch` needs; the CLI flags map one to one onto these fields."""

    inputs: list[str]
    out: Path
    settings: BuildSettings = field(default_factory=BuildSettings)
    address: str | None = None
    actors: int = 1
    num_gpus_per_actor: float = 0.0
    num_cpus_per_actor: float = 1.0
    fps: float | None = None
    allow_silent: bool = False
    timeline: TimelineKind | None = None
    timeline_min_gap: int = 0
    retry_errors: bool = True
    progress: bool = True


@dataclass
class BatchReport:
    """What a job did: videos found, skipped as done, and ok / error among those it ran."""

    videos: int = 0
    skipped: int = 0
    ok: int = 0
    errors: int = 0
    wall_s: float = 0.0
    manifest: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def videos_per_s(self) -> float:
        ran = self.ok + self.errors
        return ran / self.wall_s if self.wall_s > 0 else 0.0


def _pending(
    jobs: list[VideoJob], out: Path, manifest: dict[str, dict[str, Any]], retry_errors: bool
) -> list[VideoJob]:
    todo = []
    for job in jobs:
        last = manifest.get(job.video)
        if last is not None and last["status"] == "ok" and (out / job.name).is_dir():
            continue
        if last is not None and last["status"] == "error" and not retry_errors:
            continue
        todo.append(job)
    return todo


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (a driver killed mid-write), so that the lines
    appended next stay whole; that video is simply run again."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        fh.truncate(data.rfind(b"\n") + 1)


def _missing_files(settings: BuildSettings) -> str | None:
    """The first checkpoint or engine path of ``settings`` that does not exist, named by flag
    (checked on the driver: a worker failing to build its pipeline is a costlier way to learn)."""
    for name in ("imagebind", "adapter", "sam", "engine_dir"):
        value = getattr(settings, name)
        if value is not None and not Path(value).exists():
            return f"--{name.replace('_', '-')} {value}: not found"
    return None


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise InputError(f"the batch job needs Ray Data ({e}): pip install 'moca-rt[ray]'") from e
    return ray


def _rows(opts: BatchOptions, todo: list[VideoJob], out: Path) -> Iterator[dict[str, Any]]:
    """Run ``todo`` on Ray Data and yield each video's manifest row as it finishes."""
    ray = _import_ray()
    started_here = False
    if not ray.is_initialized():
        init: dict[str, Any] = {"address": opts.address, "log_to_driver": False}
        if opts.address is None:
            init["include_dashboard"] = False
        ray.init(**init)
        started_here = True
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # ours counts videos; Ray's count blocks
        source_options: dict[str, Any] = {"fps": opts.fps, "allow_silent": opts.allow_silent}
        dataset = ray.data.from_items(
            [asdict(job) for job in todo], override_num_blocks=len(todo)
        ).map_batches(
            SegmentWorker,
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=opts.actors),
            num_cpus=opts.num_cpus_per_actor,
            num_gpus=opts.num_gpus_per_actor,
            fn_constructor_kwargs={
                "settings": opts.settings,
                "out_root": str(out),
                "source_options": source_options,
                "timeline": opts.timeline,
                "timeline_min_gap": opts.timeline_min_gap,
            },
        )
        for item in dataset.iter_rows():
            yield json.loads(item["row"])
    finally:
        if started_here:
            ray.shutdown()


def run_batch(opts: BatchOptions) -> BatchReport:
    """Segment every video of ``opts.inputs`` that the manifest does not mark done.

    Raises:
        InputError: no usable input, Ray not installed, bad option values.
        Exceptions of Ray when the job itself fails (workers that cannot build the pipeline,
        a lost cluster); the manifest keeps every video that finished.
    """
    from tqdm import tqdm

    if opts.actors < 1:
        raise InputError(f"--actors: expected >= 1, got {opts.actors}")
    problem = opts.settings.usage_problem() or _missing_files(opts.settings)
    if problem is not None:
        raise InputError(problem)
    started = time.perf_counter()
    jobs = collect_videos(opts.inputs)
    out = Path(opts.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: expected a folder that can be created, got {e}") from e
    manifest_path = out / MANIFEST_FILE
    todo = _pending(jobs, out, read_manifest(manifest_path), opts.retry_errors)
    report = BatchReport(videos=len(jobs), skipped=len(jobs) - len(todo))
    report.manifest = str(manifest_path)
    shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)  # left by a killed earlier job
    bar = tqdm(
        total=len(jobs),
        initial=report.skipped,
        desc="videos",
        unit="video",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not opts.progress,
    )
    try:
        if todo:
            _drop_torn_tail(manifest_path)
            with open(manifest_path, "a", encoding="utf-8") as manifest:
                for row in _rows(opts, todo, out):
                    manifest.write(json.dumps(row, separators=(",", ":")) + "\n")
                    manifest.flush()
                    os.fsync(manifest.fileno())
                    report.rows.append(row)
                    if row["status"] == "ok":
                        report.ok += 1
                    else:
                        report.errors += 1
                    bar.set_postfix(ok=report.ok, errors=report.errors, refresh=False)
                    bar.update(1)
    finally:
        bar.close()
        shutil.rmtree(out / PARTIAL_DIR, ignore_errors=True)  # what killed workers left
        report.wall_s = time.perf_counter() - started
    return report


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m moca_rt.batch",
        description="Segment the sounding objects of many videos on Ray Data: an actor pool "
        "of pipelines, a resumable job manifest, per video the outputs of moca_rt.infer.",
        epilog="Exit codes: 0 all ok; 1 some videos failed (see the manifest); 2 bad arguments; "
        "3 no usable input; 4 the workers could not build the pipeline; 6 the Ray job failed "
        "(rerun to resume); 130 interrupted.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        help="Videos, folders of videos, quoted globs, or .txt/.csv lists of videos.",
    )
    p.add_argument("--out", type=Path, required=True, help="The output folder of the job.")
    ray_group = p.add_argument_group("ray")
    ray_group.add_argument(
        "--address",
        help="A running Ray cluster: auto, or ray://HOST:PORT; default: start Ray here.",
    )
    ray_group.add_argument(
        "--actors", type=int, default=1, help="The number of pipeline actors (model copies)."
    )
    ray_group.add_argument(
        "--num-gpus-per-actor",
        type=float,
        default=0.0,
        help="GPUs each actor reserves (fractions share a GPU); > 0 makes --device cuda.",
    )
    ray_group.add_argument(
        "--num-cpus-per-actor", type=float, default=1.0, help="CPUs each actor reserves."
    )
    models = p.add_argument_group("models (as in moca_rt.infer)")
    models.add_argument("--preset", choices=sorted(MOCA_PRESETS), help="The MoCA model size.")
    models.add_argument("--imagebind", type=Path, help="The ImageBind checkpoint.")
    models.add_argument("--adapter", type=Path, help="Trained AdaAV weights.")
    models.add_argument("--sam", type=Path, help="A SAM checkpoint for mask proposals.")
    models.add_argument("--sam-preset", choices=sorted(SAM_PRESETS), help="The SAM size.")
    models.add_argument(
        "--random-weights",
        action="store_true",
        help="Seeded random weights for every checkpoint not given.",
    )
    models.add_argument("--engine", choices=ENGINES, default="torch", help="What runs the trunk.")
    models.add_argument("--engine-dir", type=Path, help="The exported units of --engine.")
    run = p.add_argument_group("running (as in moca_rt.infer)")
    run.add_argument("--device", help="The torch device of each actor (default: cuda with GPUs).")
    run.add_argument("--precision", choices=PRECISIONS, default="fp32", help="Compute precision.")
    run.add_argument("--batch", type=int, default=1, help="The number of frames per model call.")
    run.add_argument("--fps", type=float, help="Process this many frames per second of video.")
    run.add_argument(
        "--allow-silent", action="store_true", help="Treat videos without audio as silence."
    )
    run.add_argument("--seed", type=int, default=0, help="The seed of k-means++ and weights.")
    run.add_argument(
        "--proposals",
        choices=("auto", "grid", "boxes", "none"),
        default="auto",
        help="Where mask proposals come from (boxes are not supported in batch jobs).",
    )
    run.add_argument("--points-per-side", type=int, help="The SAM point grid size.")
    run.add_argument("--tau", type=float, help="The minimum cosine score of a sounding cluster.")
    run.add_argument("--delta", type=float, help="Clusters within delta of the best also sound.")
    run.add_argument("--clusters", type=int, dest="num_clusters", help="k-means clusters.")
    job = p.add_argument_group("job")
    job.add_argument(
        "--timeline",
        choices=("otio", "edl"),
        help="Also write NAME/timeline.otio or .edl per video (needs moca-rt[otio]).",
    )
    job.add_argument(
        "--timeline-min-gap",
        type=int,
        default=0,
        help="Merge sounding intervals separated by at most this many frames.",
    )
    job.add_argument(
        "--no-retry-errors",
        action="store_true",
        help="On a rerun, also skip the videos the manifest records as errors.",
    )
    job.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")
    return p


def options_from_args(args: argparse.Namespace) -> BatchOptions:
    given = dict(vars(args))
    if given.get("device") is None:
        given["device"] = "cuda" if args.num_gpus_per_actor > 0 else "cpu"
    return BatchOptions(
        **flag_values(BatchOptions, given),
        settings=BuildSettings(**flag_values(BuildSettings, given)),
        retry_errors=not args.no_retry_errors,
        progress=not args.no_progress,
    )


def _usage_problem(opts: BatchOptions) -> str | None:
    if opts.actors < 1:
        return f"--actors: expected >= 1, got {opts.actors}"
    if opts.num_gpus_per_actor < 0 or opts.num_cpus_per_actor < 0:
        return "--num-gpus-per-actor / --num-cpus-per-actor: expected >= 0"
    if opts.fps is not None and not opts.fps > 0:
        return f"--fps: expected > 0, got {opts.fps}"
    if opts.timeline_min_gap < 0:
        return f"--timeline-min-gap: expected >= 0, got {opts.timeline_min_gap}"
    if opts.timeline is not None and importlib.util.find_spec("opentimelineio") is None:
        from moca_rt.timeline import OTIO_MISSING

        return f"--timeline {opts.timeline}: {OTIO_MISSING}"
    if opts.settings.proposals == "boxes":
        return "--proposals boxes: box prompts are per video; use moca_rt.infer --boxes"
    problem = opts.settings.usage_problem()
    if problem is not None:
        return problem
    try:
        opts.settings.pipeline_config()
    except ValueError as e:
        return str(e)
    return None


def _root_cause(text: str) -> str:
    """The last ``SomeError: message`` line of a Ray error's text (the worker's own exception
    under Ray's wrapping), else its first line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception): ", line):
            return line
    return lines[0] if lines else "(no message)"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    opts = options_from_args(parser.parse_args(argv))
    usage = _usage_problem(opts)
    if usage is not None:
        parser.error(usage)
    try:
        report = run_batch(opts)
    except (InputError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(
            "interrupted: the manifest keeps the finished videos; rerun to resume", file=sys.stderr
        )
        return EXIT_INTERRUPTED
    except Exception as e:  # Ray's errors: actors that cannot start, a lost cluster
        text = str(e)
        init_failed = "__init__" in text or "CheckpointError" in text
        print(
            f"error: the Ray job failed ({type(e).__name__}): {_root_cause(text)}; "
            + (
                "the workers could not build the pipeline"
                if init_failed
                else "the manifest keeps the finished videos, rerun to resume"
            ),
            file=sys.stderr,
        )
        return EXIT_WORKERS if init_failed else EXIT_JOB_FAILED
    print(
        f"{report.videos} videos: {report.skipped} skipped (done before), {report.ok} ok, "
        f"{report.errors} errors in {report.wall_s:.1f} s; manifest {report.manifest}"
    )
    for row in report.rows:
        if row["status"] != "ok":
            print(f"error: {row['video']}: {row['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if report.errors else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
