"""Output writers: per-frame mask PNGs, a JSONL log with COCO RLE masks, an overlay video.

Every writer is a context manager; ``close()`` flushes and is safe to call twice. The JSONL
writer flushes after every record, so a crash or Ctrl-C keeps every record written so far.

Masks are [H, W] arrays in image pixels (row = y, column = x), any dtype; non-zero (or True)
is foreground.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from moca_rt.media import AudioChunk, MediaFrame, MediaSource
    from moca_rt.pipeline import FrameResult

# FrameResult fields a JSONL record carries under their own names, in record order.
RESULT_FIELDS = ("silent", "level_dbfs", "kmeans_iterations", "proposals", "proposals_kept")


def _check_mask(mask: np.ndarray, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D [H, W] array, got shape {tuple(mask.shape)}")
    if mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty mask, got shape {tuple(mask.shape)}")
    return mask != 0


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """COCO run-length encoding of a [H, W] mask: ``{"size": [H, W], "counts": str}``."""
    from pycocotools import mask as mask_utils

    binary = _check_mask(mask)
    rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
    counts = rle["counts"]
    return {
        "size": [int(v) for v in rle["size"]],
        "counts": counts.decode("ascii") if isinstance(counts, bytes) else counts,
    }


def decode_rle(record: Mapping[str, Any]) -> np.ndarray:
    """uint8 [H, W] mask with values 0/1 from a JSONL record (its ``"mask"``) or an RLE dict.

    Raises:
        ValueError: the record holds no mask (a dropped frame) or the RLE is malformed.
    """
    from pycocotools import mask as mask_utils

    rle = record.get("mask", record) if "counts" not in record else record
    if rle is None or not isinstance(rle, Mapping) or "counts" not in rle or "size" not in rle:
        raise ValueError(
            f"expected a record with a COCO RLE mask ({{'size', 'counts'}}), got "
            f"keys {sorted(record)}" + (" (mask is null)" if rle is None else "")
        )
    counts = rle["counts"]
    coded = {
        "size": list(rle["size"]),
        "counts": counts.encode("ascii") if isinstance(counts, str) else counts,
    }
    with warnings.catch_warnings():
        # pycocotools' Cython array wrapper predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(coded)
    return np.ascontiguousarray(decoded, dtype=np.uint8)


class MaskPngWriter:
    """One 8-bit PNG per frame (0 background, 255 foreground), named by the frame index.

    Args:
        out_dir: folder to create/fill.
        name_format: file name pattern, formatted with ``index`` (default ``{index:06d}.png``).
        names: the file name of each frame index (e.g. the AVSBench ground-truth names of a
            frame folder, so ``moca_rt.evaluate`` pairs them as they are); indices past its
            end use ``name_format``.
    """

    def __init__(
        self,
        out_dir: str | Path,
        name_format: str = "{index:06d}.png",
        names: Sequence[str] | None = None,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.name_format = name_format
        self.names = list(names) if names is not None else []
        self.written = 0

    def path_for(self, index: int) -> Path:
        if 0 <= index < len(self.names):
            return self.out_dir / self.names[index]
        return self.out_dir / self.name_format.format(index=index)

    def write(self, index: int, mask: np.ndarray) -> Path:
        """Write ``mask`` [H, W] (non-zero = foreground) for frame ``index``; returns the path."""
        from PIL import Image

        if index < 0:
            raise ValueError(f"index: expected >= 0, got {index}")
        binary = _check_mask(mask)
        path = self.path_for(index)
        tmp = path.with_name(path.name + ".part")
        Image.fromarray(binary.astype(np.uint8) * 255, mode="L").save(tmp, format="PNG")
        os.replace(tmp, path)  # never leave a half-written PNG under the final name
        self.written += 1
        return path

    def close(self) -> None:
        """Nothing is buffered; present for symmetry with the other writers."""

    def __enter__(self) -> MaskPngWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    """numpy/torch scalars and arrays -> plain JSON; NaN/inf -> None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    raise ValueError(f"expected a JSON-serialisable value, got {type(value).__name__}")


class JsonlWriter:
    """One JSON object per line, flushed (and optionally fsync'ed) after every record.

    Args:
        path: output file (parent folders are created).
        append: continue an existing file instead of truncating it.
        fsync: also ``os.fsync`` after each record (survives power loss; slower).
    """

    def __init__(self, path: str | Path, append: bool = False, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115
        self.fsync = fsync
        self.written = 0

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record (numpy values converted; non-finite floats become null)."""
        if self._fh.closed:
            raise ValueError(f"expected an open writer, got a closed one ({self.path})")
        self._fh.write(json.dumps(_jsonable(record), separators=(",", ":")) + "\n")
        self._fh.flush()
        if self.fsync:
            os.fsync(self._fh.fileno())
        self.written += 1

    def write_frame(
        self,
        index: int,
        pts: float,
        mask: np.ndarray | None = None,
        *,
        dropped: bool = False,
        scores: Sequence[float] | np.ndarray | None = None,
        chosen: Iterable[int] | None = None,
        timings: Mapping[str, float] | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Write the record of one frame and return it.

        Fields: ``index``, ``pts`` (s), ``dropped``, ``scores`` (per cluster), ``chosen``
        (cluster ids), ``mask`` (COCO RLE with ``counts`` as str, or null when there is none,
        e.g. dropped), ``timings`` (stage -> milliseconds), then ``extra``.
        """
        record: dict[str, Any] = {
            "index": int(index),
            "pts": float(pts),
            "dropped": bool(dropped),
            "scores": None if scores is None else [float(s) for s in np.asarray(scores).ravel()],
            "chosen": None if chosen is None else [int(c) for c in chosen],
            "mask": None if mask is None else mask_to_rle(mask),
            "timings": None if timings is None else {str(k): float(v) for k, v in timings.items()},
        }
        record.update(extra)
        self.write(record)
        return record

    def write_result(
        self, frame: MediaFrame, result: FrameResult | None, mask_file: str | None = None
    ) -> dict[str, Any]:
        """Write the record of a source record and the pipeline's result for it; return it.

        A dropped record (``result`` None) has ``dropped: true`` and null scores, clusters, mask
        and timings. A processed one has those of :meth:`write_frame`, then the result's
        :data:`RESULT_FIELDS`, ``fallback`` (no proposal matched: the coarse cluster mask),
        ``audio_missing`` and, when given, ``mask_file`` (the mask PNG, relative to the
        record file's folder).
        """
        if result is None:
            return self.write_frame(frame.index, frame.pts, None, dropped=True)
        extra: dict[str, Any] = {name: getattr(result, name) for name in RESULT_FIELDS}
        if mask_file is not None:
            extra["mask_file"] = mask_file
        return self.write_frame(
            frame.index,
            frame.pts,
            result.mask,
            scores=result.scores,
            chosen=result.chosen,
            timings=result.timings_ms,
            **extra,
            fallback=result.used_fallback,
            audio_missing=frame.audio_missing,
        )

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.flush()
            self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All complete records of a JSONL file (a torn last line from a crash is ignored)."""
    records = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if line.endswith("\n"):
                    raise
    return records


def tint(
    image: np.ndarray,
    mask: np.ndarray,
    color: tuple[int, int, int] = (255, 0, 64),
    alpha: float = 0.5,
) -> np.ndarray:
    """uint8 [H, W, 3] RGB with ``color`` blended at ``alpha`` inside ``mask`` [H, W]."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image: expected uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}")
    binary = _check_mask(mask)
    if binary.shape != image.shape[:2]:
        raise ValueError(
            f"mask: expected shape {image.shape[:2]} (the image's), got {binary.shape}"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    out = image.copy()
    blend = (1.0 - alpha) * image[binary].astype(np.float32) + alpha * np.asarray(color, np.float32)
    out[binary] = np.clip(np.round(blend), 0, 255).astype(np.uint8)
    return out


class OverlayVideoWriter:
    """H.264 video of the frames with the mask tinted over them, plus the original audio
    re-encoded to AAC. Timestamps are kept: a frame or audio chunk at container time ``t``
    lands at ``t - time_origin`` in the output.

    Args:
        path: output file (.mp4, .mkv, .mov).
        frame_rate: nominal rate written into the stream (timestamps still come from pts).
        audio_sample_rate: rate of the original audio; None writes no audio stream.
        audio_channels: channel count of the original audio (1 or more).
        time_origin: container time mapped to 0 (``source.start_time`` for files).
        color, alpha: tint of the mask.
        crf: x264 quality (lower = better).
    """

    TIME_BASE = Fraction(1, 90000)

    def __init__(
        self,
        path: str | Path,
        *,
        frame_rate: float = 25.0,
        audio_sample_rate: int | None = None,
        audio_channels: int = 1,
        time_origin: float = 0.0,
        color: tuple[int, int, int] = (255, 0, 64),
        alpha: float = 0.5,
        crf: int = 23,
    ) -> None:
        import av

        if not frame_rate > 0:
            raise ValueError(f"frame_rate: expected > 0, got {frame_rate}")
        if audio_sample_rate is not None and (audio_sample_rate <= 0 or audio_channels < 1):
            raise ValueError(
                f"audio: expected a positive rate and >= 1 channel, got "
                f"{audio_sample_rate} Hz, {audio_channels} channels"
            )
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.frame_rate = Fraction(frame_rate).limit_denominator(1001)
        self.time_origin = time_origin
        self.color, self.alpha, self.crf = color, alpha, crf
        self._container = av.open(str(self.path), "w")
        self._video: Any = None
        self._audio: Any = None
        self._rate = audio_sample_rate
        self._channels = audio_channels
        if audio_sample_rate is not None:
            layout = {1: "mono", 2: "stereo"}.get(audio_channels, f"{audio_channels}c")
            try:
                self._audio = self._container.add_stream(
                    "aac", rate=audio_sample_rate, layout=layout
                )
            except (ValueError, av.error.FFmpegError):
                self._audio = self._container.add_stream(
                    "aac", rate=audio_sample_rate, layout="stereo"
                )
                self._channels = 2
            self._audio.bit_rate = 128000
        self._size: tuple[int, int] | None = None
        self._last_pts = -1
        self._audio_buf = np.zeros((self._channels, 0), np.float32)
        self._audio_next = 0  # output sample index of the first buffered sample
        self.frames_written = 0
        self.frames_skipped = 0
        self.audio_samples_written = 0
        self._closed = False

    @classmethod
    def for_source(cls, path: str | Path, source: MediaSource, **kwargs: Any) -> OverlayVideoWriter:
        """A writer matching ``source``'s frame rate, audio format and start time."""
        kwargs.setdefault("frame_rate", source.frame_rate or 25.0)
        kwargs.setdefault(
            "audio_sample_rate", source.audio_sample_rate if source.has_audio else None
        )
        kwargs.setdefault("audio_channels", max(source.audio_channels, 1))
        kwargs.setdefault("time_origin", source.start_time)
        return cls(path, **kwargs)

    def _open_video(self, height: int, width: int) -> None:
        self._video = self._container.add_stream("libx264", rate=self.frame_rate)
        # yuv420p needs even sizes; odd frames are padded by one edge row/column.
        self._size = (height, width)
        self._video.height, self._video.width = height + height % 2, width + width % 2
        self._video.pix_fmt = "yuv420p"
        self._video.codec_context.time_base = self.TIME_BASE
        self._video.time_base = self.TIME_BASE
        self._video.options = {"preset": "veryfast", "crf": str(self.crf)}

    def write(self, image: np.ndarray, mask: np.ndarray | None, pts: float) -> bool:
        """Encode one frame (uint8 [H, W, 3] RGB) with ``mask`` tinted, at container time
        ``pts`` s. Returns False (and counts it) when the timestamp does not increase."""
        import av

        if self._closed:
            raise ValueError(f"expected an open writer, got a closed one ({self.path})")
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image: expected uint8 [H, W, 3], got {image.dtype} {tuple(image.shape)}"
            )
        if self._video is None:
            self._open_video(*image.shape[:2])
            self._encode_audio(final=False)
        if image.shape[:2] != self._size:
            raise ValueError(
                f"image: expected the size of the first frame {self._size}, got {image.shape[:2]}"
            )
        pts_out = round((pts - self.time_origin) / self.TIME_BASE)
        if pts_out <= self._last_pts or pts_out < 0:
            self.frames_skipped += 1
            return False
        self._last_pts = pts_out
        shown = image if mask is None else tint(image, mask, self.color, self.alpha)
        if shown.shape[0] % 2 or shown.shape[1] % 2:
            shown = np.pad(
                shown, ((0, shown.shape[0] % 2), (0, shown.shape[1] % 2), (0, 0)), mode="edge"
            )
        # Convert to yuv420p here: the encoder's own conversion is not bit-reproducible.
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(shown), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts, frame.time_base = pts_out, self.TIME_BASE
        for packet in self._video.encode(frame):
            self._container.mux(packet)
        self.frames_written += 1
        return True

    def write_frame(self, frame: MediaFrame, mask: np.ndarray | None) -> bool:
        """Write a source record: its original audio chunks, then (unless dropped) the image."""
        self.write_audio(frame.raw_audio)
        if frame.image is None:
            return False
        return self.write(frame.image, mask, frame.pts)

    def tap_audio(self, frames: Iterable[MediaFrame]) -> Iterator[MediaFrame]:
        """Pass source records through, writing each one's original audio (dropped records'
        too) as it is read, before the pipeline's batching holds the frames back."""
        for frame in frames:
            if frame.raw_audio:
                self.write_audio(frame.raw_audio)
            yield frame

    def write_audio(self, chunks: Iterable[AudioChunk]) -> None:
        """Queue original audio (float32 [C, N] chunks keyed by pts) and encode full AAC frames.

        Chunks are placed by their pts: gaps become silence, overlaps and audio before
        ``time_origin`` are cut. Chunks at another rate are skipped.
        """
        if self._audio is None or self._rate is None:
            return
        for chunk in chunks:
            if chunk.sample_rate != self._rate:
                continue
            x = np.asarray(chunk.samples, np.float32)
            if x.shape[0] != self._channels:
                x = (
                    np.repeat(x.mean(axis=0, keepdims=True), self._channels, axis=0)
                    if x.shape[0] != 2 or self._channels != 1
                    else x.mean(axis=0, keepdims=True)
                )
            start = round((chunk.pts - self.time_origin) * self._rate)
            end_buf = self._audio_next + self._audio_buf.shape[1]
            if start > end_buf:
                gap = np.zeros((self._channels, start - end_buf), np.float32)
                self._audio_buf = np.concatenate([self._audio_buf, gap], axis=1)
            elif start < end_buf:
                x = x[:, end_buf - start :]
            self._audio_buf = np.concatenate([self._audio_buf, x], axis=1)
        if self._video is not None:  # the header is written with the first packet: wait for
            self._encode_audio(final=False)  # the video stream to exist

    def _encode_audio(self, final: bool) -> None:
        import av

        rate = self._rate
        if rate is None:
            return
        size = self._audio.codec_context.frame_size or 1024
        while self._audio_buf.shape[1] >= size or (final and self._audio_buf.shape[1] > 0):
            n = min(size, self._audio_buf.shape[1])
            piece = np.ascontiguousarray(self._audio_buf[:, :n])
            if n < size:
                piece = np.pad(piece, ((0, 0), (0, size - n)))
            self._audio_buf = self._audio_buf[:, n:]
            frame = av.AudioFrame.from_ndarray(piece, format="fltp", layout=self._audio.layout.name)
            frame.sample_rate = rate
            frame.pts, frame.time_base = self._audio_next, Fraction(1, rate)
            self._audio_next += n
            for packet in self._audio.encode(frame):
                self._container.mux(packet)
            self.audio_samples_written += n

    def close(self) -> None:
        """Flush both encoders and finish the file (safe to call twice)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._audio is not None:
                self._encode_audio(final=True)
                for packet in self._audio.encode(None):
                    self._container.mux(packet)
            if self._video is not None:
                for packet in self._video.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self) -> OverlayVideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
