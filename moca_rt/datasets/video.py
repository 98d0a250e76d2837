"""MP4 (H.264 + AAC) writing and reading with PyAV, synchronised by timestamps.

Video frames get ``pts = f`` in a ``1/fps`` time base; audio frames get ``pts`` = the index of
their first sample in a ``1/sample_rate`` time base, so a player (and :func:`read_video`) puts
sample s at time ``s / sample_rate`` and frame f at ``f / fps`` no matter how the encoder
buffers. AAC adds encoder delay (priming) and pads the last frame to 1024 samples; the MP4
muxer records the delay in an edit list, so decoders drop it. :func:`read_video` reports the
time of the first decoded sample (``audio_start``) instead of assuming 0, and callers should
trim or pad by time, never by counting samples.

The synthetic ``video`` split is written as ``<id>.mp4`` plus per-frame masks
``gt_masks/<id>/<id>_<k>.png`` (k = 1..F, 0/255, frame k shown at time ``(k - 1) / fps``) and a
``videos.json`` record of fps, sounding flags and class names (see ``moca_rt.datasets``'s CLI).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from moca_rt.av_audio import audio_frame_to_float

_AAC_FRAME = 1024


def write_mp4(
    path: str | Path,
    frames: np.ndarray,
    audio: np.ndarray | None,
    fps: float = 25.0,
    sample_rate: int = 16000,
    crf: int = 18,
    audio_bitrate: int = 96000,
) -> Path:
    """Encode ``frames`` (H.264, yuv420p) and ``audio`` (AAC) into an MP4 file.

    Args:
        path: output file (parent folders are created).
        frames: uint8 [F, H, W, 3] RGB; H and W must be even (yuv420p).
        audio: float [T] or [C, T] in [-1, 1] at ``sample_rate`` (C = 1 or 2), or None.
        fps: frame rate; frame f is shown at ``f / fps`` seconds.
        crf: x264 constant rate factor (0 = lossless luma, 18 = visually near-lossless).
        audio_bitrate: AAC bit rate in bit/s.

    Returns:
        ``path`` as a Path. x264 runs single-threaded without macroblock-tree rate control, so
        the same input gives the same bytes.
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}")
    if frames.shape[1] % 2 or frames.shape[2] % 2:
        raise ValueError(
            f"expected even frame height and width for yuv420p, got {frames.shape[1:3]}"
        )
    if fps <= 0:
        raise ValueError(f"expected fps > 0, got {fps}")
    wave: np.ndarray | None = None
    if audio is not None:
        wave = np.asarray(audio, dtype=np.float32)
        if wave.ndim == 1:
            wave = wave[None]
        if wave.ndim != 2 or wave.shape[0] not in (1, 2):
            raise ValueError(
                f"expected audio [T] or [C, T] with C in (1, 2), got {np.asarray(audio).shape}"
            )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), "w", format="mp4") as container:
        # mbtree=0: with x264's macroblock-tree rate control the same frames encoded to other
        # bytes run to run (PyAV 18.1: 3 of 3 encodes differed, decoded pixels up to 76 levels
        # apart; single-threaded all the same); without it, every encode was the same.
        vstream = container.add_stream(
            "libx264",
            rate=rate,
            options={"crf": str(crf), "threads": "1", "x264-params": "mbtree=0"},
        )
        vstream.width = frames.shape[2]
        vstream.height = frames.shape[1]
        vstream.pix_fmt = "yuv420p"
        vstream.time_base = 1 / rate
        astream = None
        if wave is not None:
            layout = "mono" if wave.shape[0] == 1 else "stereo"
            astream = container.add_stream("aac", rate=sample_rate, layout=layout)
            astream.bit_rate = audio_bitrate
            astream.time_base = Fraction(1, sample_rate)
        # Interleave by time so the muxer does not buffer a whole stream.
        a_pos = 0
        total = 0 if wave is None else wave.shape[1]
        for f in range(frames.shape[0]):
            # Convert here: left to the encoder, rgb24 -> yuv420p gave different bytes run to
            # run (PyAV 18, 19 of 20 encodes differed); this conversion is reproducible.
            vf = av.VideoFrame.from_ndarray(frames[f], format="rgb24").reformat(format="yuv420p")
            vf.pts = f
            vf.time_base = 1 / rate
            container.mux(vstream.encode(vf))
            t_end = (f + 1) / float(rate)
            while (
                astream is not None
                and wave is not None
                and a_pos < total
                and a_pos / sample_rate < t_end
            ):
                a_pos = _mux_audio_chunk(container, astream, wave, a_pos, sample_rate)
        while astream is not None and wave is not None and a_pos < total:
            a_pos = _mux_audio_chunk(container, astream, wave, a_pos, sample_rate)
        container.mux(vstream.encode(None))
        if astream is not None:
            container.mux(astream.encode(None))
    return path


def _mux_audio_chunk(
    container: object, astream: object, wave: np.ndarray, pos: int, sample_rate: int
) -> int:
    import av

    chunk = np.ascontiguousarray(wave[:, pos : pos + _AAC_FRAME])
    layout = "mono" if wave.shape[0] == 1 else "stereo"
    frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = pos
    frame.time_base = Fraction(1, sample_rate)
    container.mux(astream.encode(frame))  # type: ignore[attr-defined]
    return pos + chunk.shape[1]


@dataclass(frozen=True, eq=False)
class VideoData:
    """Decoded media file.

    * ``frames``: uint8 [F, H, W, 3] RGB; ``frame_times``: float64 [F] presentation times (s).
    * ``audio``: float32 [C, T] at ``sample_rate`` (None if the file has no audio stream);
      ``audio_start``: presentation time (s) of ``audio[:, 0]``.
    """

    frames: np.ndarray
    frame_times: np.ndarray
    fps: float
    audio: np.ndarray | None
    sample_rate: int
    audio_start: float

    @property
    def duration(self) -> float:
        """Video duration in seconds (frame count / fps)."""
        return self.frames.shape[0] / self.fps if self.fps > 0 else 0.0


def read_video(
    path: str | Path, max_frames: int | None = None, with_audio: bool = True
) -> VideoData:
    """Decode all (or the first ``max_frames``) video frames and the first audio stream."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no video file at {path}")
    frames: list[np.ndarray] = []
    times: list[float] = []
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError(f"expected a video stream in {path}, got none")
        vstream = container.streams.video[0]
        fps = float(vstream.average_rate or vstream.guessed_rate or 0.0)
        for frame in container.decode(vstream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(
                float(frame.time) if frame.time is not None else len(times) / max(fps, 1e-9)
            )
            if max_frames is not None and len(frames) >= max_frames:
                break
    audio: np.ndarray | None = None
    rate = 0
    start = 0.0
    if with_audio:
        with av.open(str(path)) as container:
            if container.streams.audio:
                astream = container.streams.audio[0]
                rate = int(astream.codec_context.sample_rate or 0)
                chunks = []
                for i, aframe in enumerate(container.decode(astream)):
                    if i == 0 and aframe.time is not None:
                        start = float(aframe.time)
                    chunks.append(audio_frame_to_float(aframe))
                audio = np.concatenate(chunks, axis=1) if chunks else np.zeros((1, 0), np.float32)
    stacked = np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
    return VideoData(stacked, np.asarray(times, np.float64), fps, audio, rate, start)
