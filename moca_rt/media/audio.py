"""Decoded audio -> mono mix, 16 kHz, and a ring buffer keyed by presentation time.

Frames become float arrays through :func:`moca_rt.av_audio.audio_frame_to_float`.
"""

from __future__ import annotations

import errno
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from moca_rt.av_audio import audio_frame_to_float
from moca_rt.config import SAMPLE_RATE
from moca_rt.errors import MediaNotFoundError, MediaOpenError, NoAudioStreamError
from moca_rt.media.types import AudioResamplerName, ChannelMix, SourceStats

# Decoded samples are in [-1, 1] (full scale); codecs overshoot a little (AAC: rarely past 2).
# Beyond this bound a float file holds garbage (up to 3.4e38), which would overflow the float32
# sums of the audio preprocessing to inf: such samples are clipped to it, with a warning.
SAMPLE_LIMIT = 8.0

# --------------------------------------------------------------------------------------------
# audio: decoded frames -> mono mix, 16 kHz, presentation-time ring buffer
# --------------------------------------------------------------------------------------------


def _polyphase_kernel(orig: int, new: int) -> tuple[np.ndarray, int]:
    """The windowed-sinc kernel of ``moca_rt.preprocess.resample`` for these rates, as float64
    numpy [new / g, 2 * width + orig / g], and its half-width ``width`` in input samples."""
    import torch

    from moca_rt.preprocess import resample_kernel

    kernel, width = resample_kernel(orig, new, torch.float64, "cpu")
    return kernel[:, 0].numpy().copy(), int(width)


class _SincStream:
    """Streaming sinc resampler whose output equals a whole-signal torchaudio-style resample.

    Input is cut into blocks aligned to ``orig / gcd`` samples (so every block starts on the
    same filter phase as the whole signal) and each block is resampled with ``margin`` input
    samples of real context on both sides; the outputs of the context are discarded. The
    signal's own edges get zeros, exactly like the whole-signal zero padding.

    The kernel is ``moca_rt.preprocess.resample``'s; the strided convolution runs in numpy
    (float64) because tiny torch ops on a decoder thread pay intra-op thread barriers (100x
    slower on a loaded 2-core machine) and ``torch.set_num_threads`` would change the
    process-wide default.
    """

    def __init__(self, orig: int, new: int) -> None:
        g = math.gcd(orig, new)
        self.orig, self.new = orig, new
        self.iu, self.ou = orig // g, new // g
        self.kernel, self.width = _polyphase_kernel(orig, new)
        self.kernel_t = np.ascontiguousarray(self.kernel.T)  # [taps, ou], row-major
        self.margin = self.iu * math.ceil((self.width + 1) / self.iu)
        self.block = self.iu * max(1, math.ceil(0.1 * orig / self.iu))
        self.buf = np.zeros(self.margin, np.float64)
        self.done = 0
        self.total = 0

    def _apply(self, x: np.ndarray) -> np.ndarray:
        """Whole-signal resample of ``x`` (zero outside), ``ceil(len * ou / iu)`` samples."""
        taps = self.kernel.shape[1]
        xp = np.pad(x, (self.width, self.width + self.iu))
        steps = (len(xp) - taps) // self.iu + 1
        frames = np.lib.stride_tricks.sliding_window_view(xp, taps)[:: self.iu][:steps]
        frames = np.ascontiguousarray(frames)  # the windows overlap in memory (taps > iu)
        # Matrix-vector products along the shorter side: a small GEMM lets OpenBLAS start
        # threads, which costs 10-60x on a busy machine; GEMV stays on this thread.
        if len(frames) <= self.ou:
            y = np.stack([f @ self.kernel_t for f in frames])
        else:
            y = np.stack([frames @ k for k in self.kernel], axis=1)
        y = y.reshape(-1)
        return y[: math.ceil(len(x) * self.ou / self.iu)]

    def push(self, x: np.ndarray) -> np.ndarray:
        self.buf = np.concatenate([self.buf, x.astype(np.float64)])
        self.total += len(x)
        nblocks = (len(self.buf) - 2 * self.margin) // self.block
        if nblocks <= 0:
            return np.zeros(0, np.float32)
        n_in = nblocks * self.block
        y = self._apply(self.buf[: n_in + 2 * self.margin])
        lo = self.margin // self.iu * self.ou
        out = y[lo : lo + n_in // self.iu * self.ou]
        self.buf = self.buf[n_in:]
        self.done += n_in
        return out.astype(np.float32)

    def flush(self) -> np.ndarray:
        rest = self.total - self.done
        if rest <= 0:
            return np.zeros(0, np.float32)
        y = self._apply(np.concatenate([self.buf, np.zeros(self.margin)]))
        lo = self.margin // self.iu * self.ou
        n_out = math.ceil(self.total * self.new / self.orig) - self.done // self.iu * self.ou
        self.buf = np.zeros(self.margin, np.float64)
        self.done = self.total
        return y[lo : lo + n_out].astype(np.float32)


class _SwrStream:
    """libswresample (``av.AudioResampler``) rate conversion of a mono float stream."""

    def __init__(self, orig: int, new: int) -> None:
        import av

        self.orig = orig
        self.resampler = av.AudioResampler(format="flt", layout="mono", rate=new)
        self.pts = 0

    def _run(self, frame: Any) -> np.ndarray:
        outs = [f.to_ndarray().reshape(-1) for f in self.resampler.resample(frame)]
        return np.concatenate(outs).astype(np.float32) if outs else np.zeros(0, np.float32)

    def push(self, x: np.ndarray) -> np.ndarray:
        import av

        if len(x) == 0:
            return np.zeros(0, np.float32)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(x, dtype=np.float32)[None], format="flt", layout="mono"
        )
        frame.sample_rate = self.orig
        frame.pts = self.pts
        self.pts += len(x)
        return self._run(frame)

    def flush(self) -> np.ndarray:
        return self._run(None)


class _IdentityStream:
    def push(self, x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32, copy=False)

    def flush(self) -> np.ndarray:
        return np.zeros(0, np.float32)


def _make_stream(
    orig: int, method: AudioResamplerName
) -> _SincStream | _SwrStream | _IdentityStream:
    if orig == SAMPLE_RATE:
        return _IdentityStream()
    return _SincStream(orig, SAMPLE_RATE) if method == "sinc" else _SwrStream(orig, SAMPLE_RATE)


class AudioRing:
    """16 kHz mono samples on an absolute grid: sample ``n`` is at time ``n / 16000`` s.

    Positions that were never written read as zeros. ``trim(t)`` forgets samples before
    time ``t`` (the oldest window still needed), which keeps memory bounded in streams.
    """

    def __init__(self, rate: int = SAMPLE_RATE) -> None:
        self.rate = rate
        self.start = 0
        self.data = np.zeros(0, np.float32)
        self._pieces: list[np.ndarray] = []
        self._pending = 0
        self.empty = True

    @property
    def end(self) -> int:
        """Absolute index one past the last written sample."""
        return self.start + len(self.data) + self._pending

    def _consolidate(self) -> None:
        if self._pieces:
            self.data = np.concatenate([self.data, *self._pieces])
            self._pieces, self._pending = [], 0

    def seek(self, position: int) -> None:
        """Continue writing at absolute ``position`` (zero-fill a gap, or cut what follows)."""
        if self.empty:
            self.start, self.empty = position, False
            return
        if position > self.end:
            self.append(np.zeros(position - self.end, np.float32))
        elif position < self.end:
            self._consolidate()
            keep = max(position - self.start, 0)
            self.data = self.data[:keep]
            if keep == 0:
                self.start = position

    def append(self, samples: np.ndarray) -> None:
        if len(samples):
            self.empty = False
            self._pieces.append(samples.astype(np.float32, copy=False))
            self._pending += len(samples)

    def window(self, first: int, length: int) -> np.ndarray:
        """float32 [length] copy of absolute samples ``[first, first + length)``, zero-padded."""
        self._consolidate()
        out = np.zeros(length, np.float32)
        lo, hi = max(first, self.start), min(first + length, self.start + len(self.data))
        if hi > lo:
            out[lo - first : hi - first] = self.data[lo - self.start : hi - self.start]
        return out

    def trim(self, before: int) -> None:
        self._consolidate()
        drop = min(max(before - self.start, 0), len(self.data))
        if drop > self.rate:  # trim in chunks of at least 1 s to keep copies rare
            self.data = self.data[drop:].copy()
            self.start += drop


class _AudioAssembler:
    """Decoded audio frames (any rate/layout/format) -> the presentation-time ring at 16 kHz."""

    GAP_TOLERANCE_S = 0.004  # Matroska stores milliseconds: pts jitter up to 0.5 ms per frame
    MAX_GAP_S = 1.0  # larger jumps (or any backwards jump beyond this) start a new segment

    def __init__(
        self, method: AudioResamplerName, stats: SourceStats, mix: ChannelMix = "mean"
    ) -> None:
        if mix not in ("mean", "first"):
            raise ValueError(f"mix: expected 'mean' or 'first', got {mix!r}")
        self.mix = mix
        self.method = method
        self.stats = stats
        self.ring = AudioRing()
        self.stream: _SincStream | _SwrStream | _IdentityStream | None = None
        self.seg_rate = 0
        self.seg_t0 = 0.0
        self.seg_in = 0
        self.finished = False
        self._warned_nonfinite = False
        self._warned_clipped = False

    @property
    def covered_until(self) -> float:
        """Time (s) up to which 16 kHz audio is final."""
        return self.ring.end / SAMPLE_RATE

    def _emit(self, samples: np.ndarray) -> None:
        self.ring.append(samples)
        self.stats.audio_samples_16k += len(samples)

    def _new_segment(self, rate: int, t0: float) -> None:
        if self.stream is not None:
            self._emit(self.stream.flush())
        self.ring.seek(round(t0 * SAMPLE_RATE))
        self.stream = _make_stream(rate, self.method)
        self.seg_rate, self.seg_t0, self.seg_in = rate, t0, 0

    def push(self, samples: np.ndarray, rate: int, t_start: float | None) -> None:
        """Add float32 [C, N] samples at ``rate`` Hz whose first sample is at ``t_start`` s."""
        bad = ~np.isfinite(samples)
        if bad.any():
            self.stats.nonfinite_samples += int(bad.sum())
            samples = np.where(bad, np.float32(0.0), samples)
            if not self._warned_nonfinite:
                self._warned_nonfinite = True
                warnings.warn(
                    "decoded audio holds NaN/inf samples; they are replaced by 0 "
                    "(see SourceStats.nonfinite_samples)",
                    RuntimeWarning,
                    stacklevel=2,
                )
        samples = self._clip_garbage(samples)
        if samples.shape[0] > 1 and self.mix == "mean":
            mono = samples.mean(axis=0, dtype=np.float32)
        else:
            mono = samples[0]
        if self.stream is None or rate != self.seg_rate:
            self._new_segment(rate, t_start if t_start is not None else self.covered_until)
        elif t_start is not None:
            delta = t_start - (self.seg_t0 + self.seg_in / self.seg_rate)
            if abs(delta) > self.MAX_GAP_S:
                self._new_segment(rate, t_start)
            elif delta > self.GAP_TOLERANCE_S:
                self.stats.audio_gaps += 1
                gap = np.zeros(round(delta * rate), np.float32)
                self.seg_in += len(gap)
                self._emit(self._push_stream(gap))
            elif delta < -self.GAP_TOLERANCE_S:
                self.stats.audio_overlaps += 1
                mono = mono[round(-delta * rate) :]
        assert self.stream is not None
        self.seg_in += len(mono)
        self._emit(self._push_stream(mono))

    def _clip_garbage(self, samples: np.ndarray) -> np.ndarray:
        """Clip finite samples beyond :data:`SAMPLE_LIMIT` (float garbage) and count them."""
        over = np.abs(samples) > SAMPLE_LIMIT
        if not over.any():
            return samples
        self.stats.clipped_samples += int(over.sum())
        peak = float(np.abs(samples).max())
        if not self._warned_clipped:
            self._warned_clipped = True
            warnings.warn(
                f"decoded audio holds samples up to {peak:.3g} times full scale (not audio: "
                f"a broken float file?); they are clipped to +-{SAMPLE_LIMIT:g} "
                "(see SourceStats.clipped_samples)",
                RuntimeWarning,
                stacklevel=3,
            )
        return np.clip(samples, -SAMPLE_LIMIT, SAMPLE_LIMIT)

    def _push_stream(self, x: np.ndarray) -> np.ndarray:
        assert self.stream is not None
        return self.stream.push(x)

    def finish(self) -> None:
        if self.stream is not None:
            self._emit(self.stream.flush())
        self.finished = True

    def window(self, t: float, window_s: float) -> np.ndarray:
        return _window(self.ring, t, window_s)


def _window(ring: AudioRing, t: float, window_s: float) -> np.ndarray:
    """Window of ``window_s`` s centred on ``t``; first sample ``round(t * 16000) - n // 2``
    (the convention of ``moca_rt.preprocess.audio_windows``)."""
    n = round(window_s * SAMPLE_RATE)
    return ring.window(round(t * SAMPLE_RATE) - n // 2, n)


def _frame_time(frame: Any) -> float | None:
    """pts in seconds, else the decoder's best-effort timestamp, else None."""
    t = frame.time
    if t is not None and math.isfinite(t):
        return float(t)
    best = getattr(frame, "best_effort_timestamp", None)  # absent on some PyAV builds
    if best is not None and frame.time_base is not None:
        return float(best * frame.time_base)
    return None


def load_audio_16k(
    path: str | Path,
    resampler: AudioResamplerName = "sinc",
    stats: SourceStats | None = None,
    mix: ChannelMix = "mean",
) -> AudioRing:
    """Decode a whole audio file (any PyAV-readable format) into a 16 kHz mono :class:`AudioRing`.

    ``mix="mean"`` averages the channels; ``"first"`` keeps channel 0 (what the official
    ImageBind fbank effectively sees for multi-channel files).

    Raises:
        MediaNotFoundError: the path does not exist.
        MediaOpenError: empty or unreadable file.
        NoAudioStreamError: the file holds no audio stream.
    """
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaNotFoundError(errno.ENOENT, "audio file not found", str(path))
    if path.stat().st_size == 0:
        raise MediaOpenError(f"cannot open {path}: expected an audio file, got an empty file")
    stats = stats if stats is not None else SourceStats()
    assembler = _AudioAssembler(resampler, stats, mix)
    try:
        with av.open(str(path)) as c:
            if not c.streams.audio:
                raise NoAudioStreamError(f"{path}: no audio stream")
            for frame in c.decode(c.streams.audio[0]):
                stats.audio_frames += 1
                assembler.push(audio_frame_to_float(frame), frame.sample_rate, _frame_time(frame))
    except av.error.FFmpegError as e:
        raise MediaOpenError(f"cannot decode audio file {path}: {e}") from e
    assembler.finish()
    return assembler.ring
