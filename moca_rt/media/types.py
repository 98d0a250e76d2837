"""Constants and the records that media sources yield.

The media errors live in :mod:`moca_rt.errors` (the package's one error hierarchy); the sample
rate and window length in :mod:`moca_rt.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

NETWORK_SCHEMES = ("http", "https", "rtsp", "rtsps", "rtmp", "rtmps", "udp", "rtp", "tcp", "srt")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
AudioResamplerName = Literal["sinc", "swr"]
ChannelMix = Literal["mean", "first"]
# Containers whose duration comes from the header (not estimated from the bit rate).
_HEADER_DURATION_FORMATS = ("matroska,webm", "mov,mp4,m4a,3gp,3g2,mj2", "avi", "flv")


@dataclass
class AudioChunk:
    """Original decoded audio, before mixing and rate conversion (for re-encoding in sinks).

    ``samples`` is float32 [channels, n] in [-1, 1]; ``pts`` is the time of the first sample
    in seconds on the container clock.
    """

    pts: float
    sample_rate: int
    samples: np.ndarray


@dataclass
class MediaFrame:
    """One video frame and the audio around it.

    Attributes:
        index: position of the frame in the decoded input stream, counted from 0 (with ``fps``
            set, skipped frames keep their numbers, so indices can jump).
        pts: presentation time in seconds (container clock).
        image: uint8 [H, W, 3] RGB, or None for a dropped record.
        audio: float32 [32000] mono 16 kHz window covering ``[pts - 1, pts + 1)`` s, zero where
            the source has no audio (before its start, after its end, in gaps); None when dropped.
        audio_missing: the source has no audio at all (``allow_silent=True``); audio is zeros.
        audio_incomplete: emitted before the audio buffer covered the whole window (the audio
            stream lagged behind video by more than ``max_audio_lag_s``); the rest is zeros.
        dropped: real-time mode only: the consumer was too slow, image and audio were discarded.
        raw_audio: original audio decoded since the previous record (only with
            ``keep_raw_audio=True``); audio decoded after the last record is in
            ``ContainerSource.tail_audio()``.
    """

    index: int
    pts: float
    image: np.ndarray | None
    audio: np.ndarray | None
    audio_missing: bool = False
    audio_incomplete: bool = False
    dropped: bool = False
    raw_audio: list[AudioChunk] = field(default_factory=list)


@dataclass
class SourceStats:
    """Counters a source keeps while it runs (read them after or during iteration)."""

    frames_decoded: int = 0
    frames_yielded: int = 0
    frames_skipped: int = 0
    frames_dropped: int = 0
    frames_audio_incomplete: int = 0
    audio_frames: int = 0
    audio_samples_16k: int = 0
    audio_gaps: int = 0
    audio_overlaps: int = 0
    nonfinite_samples: int = 0
    clipped_samples: int = 0
    corrupt_packets: int = 0
