"""Editor timelines of a run: OpenTimelineIO (``.otio``) and CMX 3600 EDL (``.edl``).

Video editors exchange cut information as timelines, not as JSONL. A run's timeline holds one
video track with one clip, the source (an external reference to the file, its frame rate taken
from the source), and on that clip one marker per *sounding interval*: a maximal run of frames
whose segmented mask is not empty. The marker's range covers the interval in frames of the
source; its metadata gives the first and last frame index, the number of frames and the mean
mask area. The timeline's metadata (``metadata["moca_rt"]``) points at the per-frame mask
folder and the records, relative to the timeline file, so a folder that is moved or renamed
as a whole (the batch job writes to a temporary folder and renames it) keeps its links.

Time: a record of frame ``index`` covers frames ``[index, next record's index)`` (with
``--fps`` some frames are skipped and produce no record; the interval lasts until the next
decision), the last one a single frame. Frame ``k`` starts at ``k / rate`` seconds. Dropped
records (real-time mode, no mask) count as not sounding.

``.edl`` goes through OTIO's CMX 3600 adapter (the ``otio-cmx3600-adapter`` package): markers
become ``* LOC`` comment lines (start only; an EDL has no marker durations), metadata is lost.

OpenTimelineIO is an optional dependency (``pip install 'moca-rt[otio]'``); it is imported only
when a timeline is written or read.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moca_rt.errors import InputError

__all__ = [
    "TIMELINE_SUFFIXES",
    "SoundingInterval",
    "build_timeline",
    "frame_intervals",
    "import_otio",
    "intervals_from_records",
    "timeline_path",
    "write_run_timeline",
    "write_timeline",
]

TIMELINE_SUFFIXES = (".otio", ".edl")
OTIO_MISSING = (
    "OpenTimelineIO is not installed: pip install 'moca-rt[otio]' "
    "(opentimelineio, and otio-cmx3600-adapter for .edl)"
)
MARKER_NAME = "sounding"


@dataclass(frozen=True)
class SoundingInterval:
    """Frames ``[start, end)`` of the source in which a sounding object is segmented.

    ``frames``: records in the interval; ``mean_area``: their mean mask area as a fraction of
    the frame.
    """

    start: int
    end: int
    frames: int
    mean_area: float


def import_otio() -> Any:
    """The ``opentimelineio`` module, or InputError with the install hint."""
    try:
        import opentimelineio
    except ImportError as e:
        raise InputError(f"{OTIO_MISSING} ({e})") from e
    return opentimelineio


def timeline_path(text: str) -> Path:
    """argparse ``type`` of ``--timeline``: a path ending in ``.otio`` or ``.edl``, with
    OpenTimelineIO installed."""
    path = Path(text)
    if path.suffix.lower() not in TIMELINE_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"expected a file ending in {' or '.join(TIMELINE_SUFFIXES)}, got {text!r}"
        )
    if importlib.util.find_spec("opentimelineio") is None:  # say so before a long run
        raise argparse.ArgumentTypeError(OTIO_MISSING)
    return path


def frame_intervals(flags: Sequence[bool]) -> list[tuple[int, int]]:
    """Maximal runs of True in per-frame flags, as half-open frame ranges ``[start, end)``."""
    runs: list[tuple[int, int]] = []
    start: int | None = None
    for k, on in enumerate(flags):
        if on and start is None:
            start = k
        elif not on and start is not None:
            runs.append((start, k))
            start = None
    if start is not None:
        runs.append((start, len(flags)))
    return runs


def _mask_area(record: Mapping[str, Any]) -> float:
    """Fraction of the frame covered by a record's mask (0 for dropped records)."""
    from pycocotools import mask as mask_utils

    rle = record.get("mask")
    if record.get("dropped") or rle is None:
        return 0.0
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    coded = {
        "size": [h, w],
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    return float(mask_utils.area(coded)) / float(h * w) if h * w else 0.0


def intervals_from_records(
    records: Iterable[Mapping[str, Any]], *, min_gap: int = 0, min_frames: int = 1
) -> list[SoundingInterval]:
    """The sounding intervals of a run's records (``records.jsonl``).

    Args:
        records: JSONL records of one source (``index``, ``dropped``, ``mask`` as COCO RLE).
        min_gap: merge intervals separated by at most this many non-sounding frames (0: off);
            an editor may prefer fewer, longer markers over a flickering segmentation.
        min_frames: drop intervals shorter than this many frames (after merging).
    """
    if min_gap < 0 or min_frames < 1:
        raise ValueError(f"expected min_gap >= 0 and min_frames >= 1, got {min_gap}, {min_frames}")
    rows = sorted(records, key=lambda r: int(r["index"]))
    spans: list[list[float]] = []  # start, end, frames, area sum
    for i, rec in enumerate(rows):
        area = _mask_area(rec)
        if area <= 0.0:
            continue
        start = int(rec["index"])
        end = int(rows[i + 1]["index"]) if i + 1 < len(rows) else start + 1
        if spans and start - int(spans[-1][1]) <= min_gap:
            spans[-1][1] = end
            spans[-1][2] += 1
            spans[-1][3] += area
        else:
            spans.append([start, end, 1, area])
    return [
        SoundingInterval(int(s), int(e), int(n), round(a / n, 6))
        for s, e, n, a in spans
        if e - s >= min_frames
    ]


def _target_url(source: str) -> str:
    """A file URL for a local source (editors resolve those), the text as given otherwise."""
    if "://" in source:
        return source
    return Path(source).resolve().as_uri()


def build_timeline(
    source: str,
    intervals: Sequence[SoundingInterval],
    rate: float,
    num_frames: int,
    *,
    name: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """An ``otio.schema.Timeline``: one video track, one clip of the source (``num_frames`` at
    ``rate``), one marker per interval (named ``sounding FIRST-LAST``, green), ``metadata`` under
    ``metadata["moca_rt"]``."""
    otio = import_otio()
    if not rate > 0:
        raise InputError(f"frame rate: expected > 0, got {rate}")
    frames = max(num_frames, max((iv.end for iv in intervals), default=0))

    def span(start: int, length: int) -> Any:
        return otio.opentime.TimeRange(
            otio.opentime.RationalTime(start, rate), otio.opentime.RationalTime(length, rate)
        )

    title = name or Path(source).stem
    reference = otio.schema.ExternalReference(
        target_url=_target_url(source), available_range=span(0, frames)
    )
    clip = otio.schema.Clip(name=title, media_reference=reference, source_range=span(0, frames))
    for iv in intervals:
        clip.markers.append(
            otio.schema.Marker(
                name=f"{MARKER_NAME} {iv.start}-{iv.end - 1}",
                marked_range=span(iv.start, iv.end - iv.start),
                color=otio.schema.MarkerColor.GREEN,
                metadata={
                    "moca_rt": {
                        "first_frame": iv.start,
                        "last_frame": iv.end - 1,
                        "segmented_records": iv.frames,
                        "mean_mask_area": iv.mean_area,
                    }
                },
            )
        )
    track = otio.schema.Track(name="video", kind=otio.schema.TrackKind.Video)
    track.append(clip)
    timeline = otio.schema.Timeline(name=title)
    timeline.tracks.append(track)
    timeline.metadata["moca_rt"] = dict(metadata or {})
    return timeline


def write_timeline(timeline: Any, path: Path, rate: float) -> Path:
    """Write ``timeline`` as ``.otio`` (JSON) or ``.edl`` (CMX 3600), atomically (a temporary
    file renamed into place)."""
    otio = import_otio()
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in TIMELINE_SUFFIXES:
        raise InputError(f"timeline: expected a file ending in .otio or .edl, got {path}")
    if suffix == ".edl":
        if "cmx_3600" not in otio.adapters.available_adapter_names():
            raise InputError(
                f"{path}: the CMX 3600 adapter is not installed: pip install otio-cmx3600-adapter"
            )
        try:
            text = otio.adapters.write_to_string(timeline, "cmx_3600", rate=rate)
        except Exception as e:  # the adapter raises its own error kinds (e.g. bad timecode rates)
            raise InputError(f"{path}: cannot write a CMX 3600 EDL at {rate} fps: {e}") from e
    else:
        text = otio.adapters.write_to_string(timeline, "otio_json")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def write_run_timeline(
    path: Path,
    source: str,
    out: Path,
    *,
    frame_rate: float | None,
    min_gap: int = 0,
    min_frames: int = 1,
) -> str:
    """Write the timeline of a finished run (``out/records.jsonl``, ``out/masks``) to ``path``.

    ``frame_rate``: the source's (``MediaSource.frame_rate``); None (a frame folder) takes it
    from the records' times. Returns a one-line note for the run's summary.
    """
    from moca_rt.sinks import read_jsonl

    records = read_jsonl(out / "records.jsonl")
    rate = frame_rate or _rate_from_records(records)
    intervals = intervals_from_records(records, min_gap=min_gap, min_frames=min_frames)
    num_frames = max((int(r["index"]) for r in records), default=-1) + 1
    path = Path(path)
    base = path.resolve().parent
    meta = {
        "source": source,
        "frame_rate": rate,
        "masks": os.path.relpath((out / "masks").resolve(), base),
        "mask_name_format": "{index:06d}.png",
        "records": os.path.relpath((out / "records.jsonl").resolve(), base),
        "min_gap": min_gap,
        "min_frames": min_frames,
    }
    timeline = build_timeline(source, intervals, rate, num_frames, metadata=meta)
    write_timeline(timeline, path, rate)
    return f"timeline: {len(intervals)} sounding interval(s) at {rate:g} fps in {path}"


def _rate_from_records(records: Sequence[Mapping[str, Any]]) -> float:
    """Frames per second from the records' index and pts (1.0 when there is nothing to go by,
    e.g. a single image)."""
    rows = sorted(records, key=lambda r: int(r["index"]))
    if len(rows) < 2:
        return 1.0
    di = int(rows[-1]["index"]) - int(rows[0]["index"])
    dt = float(rows[-1]["pts"]) - float(rows[0]["pts"])
    return round(di / dt, 6) if dt > 0 and di > 0 else 1.0
