"""Media sources: a threaded PyAV container reader and still-image sequences.

:func:`moca_rt.media.opener.open_source` picks one by the form of its input.
"""

from __future__ import annotations

import contextlib
import errno
import math
import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from moca_rt.av_audio import audio_frame_to_float
from moca_rt.config import SAMPLE_RATE, WINDOW_SECONDS
from moca_rt.errors import (
    MediaDecodeError,
    MediaError,
    MediaNotFoundError,
    MediaOpenError,
    NoAudioStreamError,
    NoVideoStreamError,
)
from moca_rt.frame_files import natural_key
from moca_rt.media.audio import AudioRing, _AudioAssembler, _frame_time, _window, load_audio_16k
from moca_rt.media.types import (
    _HEADER_DURATION_FORMATS,
    IMAGE_SUFFIXES,
    NETWORK_SCHEMES,
    AudioChunk,
    AudioResamplerName,
    ChannelMix,
    MediaFrame,
    SourceStats,
)

# --------------------------------------------------------------------------------------------
# the frame channel between the decoder thread and the consumer
# --------------------------------------------------------------------------------------------


class _End:
    pass


_END = _End()


class _FrameChannel:
    """Bounded hand-over of frames. ``drop=True``: when full, the OLDEST queued frame loses
    its image and audio (becomes a dropped record) instead of the producer waiting."""

    def __init__(self, capacity: int, drop: bool, stats: SourceStats) -> None:
        self.capacity = capacity
        self.drop = drop
        self.stats = stats
        self.items: deque[MediaFrame | _End] = deque()
        self.heavy = 0
        self.cond = threading.Condition()

    def put(self, frame: MediaFrame, stop: threading.Event) -> bool:
        with self.cond:
            while self.heavy >= self.capacity:
                if self.drop:
                    for item in self.items:
                        if isinstance(item, MediaFrame) and not item.dropped:
                            item.dropped, item.image, item.audio = True, None, None
                            self.heavy -= 1
                            self.stats.frames_dropped += 1
                            break
                    continue
                if stop.is_set():
                    return False
                self.cond.wait(0.05)
            self.items.append(frame)
            if not frame.dropped:
                self.heavy += 1
            self.cond.notify_all()
            return True

    def close(self) -> None:
        with self.cond:
            self.items.append(_END)
            self.cond.notify_all()

    def get(self, timeout: float) -> MediaFrame | _End | None:
        with self.cond:
            if not self.items:
                self.cond.wait(timeout)
            if not self.items:
                return None
            item = self.items.popleft()
            if isinstance(item, MediaFrame) and not item.dropped:
                self.heavy -= 1
            self.cond.notify_all()
            return item


# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------


class MediaSource:
    """Iterable of :class:`MediaFrame` (single pass). Use as a context manager or call close().

    After iteration: ``error`` holds the decode error, if any (also raised at the end of the
    iteration unless ``raise_on_error=False``); ``stats`` holds counters; ``ended_by_timeout``
    says a live stream ended because no data arrived within its timeout; ``reconnect_log`` says
    when and why connections ended and were reopened (empty unless the source reconnects);
    :meth:`tail_audio` holds the original audio decoded after the last record. ``notes`` says
    what the source substituted without failing (silence for a missing audio stream);
    ``mask_names`` (frame folders) gives, per frame index, the file name of the frame's
    ground-truth mask in the AVSBench layout (None: masks are named by index).
    """

    def __init__(
        self,
        spec: str,
        *,
        fps: float | None,
        window_s: float,
        allow_silent: bool,
        raise_on_error: bool,
    ) -> None:
        if fps is not None and not fps > 0:
            raise ValueError(f"fps: expected a positive number or None, got {fps}")
        if not window_s > 0:
            raise ValueError(f"window_s: expected a positive number of seconds, got {window_s}")
        self.spec = spec
        self.fps = fps
        self.window_s = window_s
        self.allow_silent = allow_silent
        self.raise_on_error = raise_on_error
        self.error: MediaError | None = None
        self.stats = SourceStats()
        self.ended_by_timeout = False
        self.has_audio = False
        self.is_live = False
        self.width: int | None = None
        self.height: int | None = None
        self.frame_rate: float | None = None
        self.start_time = 0.0
        self.audio_sample_rate: int | None = None
        self.audio_channels = 0
        self.reconnect_log: list[str] = []
        self.notes: list[str] = []
        self.mask_names: list[str] | None = None
        self._iterated = False
        self._slot = -1
        self._t_first: float | None = None

    def _select(self, t: float) -> bool:
        """fps resampling: keep the first frame of each 1/fps slot."""
        if self.fps is None:
            return True
        if self._t_first is None:
            self._t_first = t
        slot = math.floor((t - self._t_first) * self.fps + 1e-6)
        if slot > self._slot:
            self._slot = slot
            return True
        self.stats.frames_skipped += 1
        return False

    def _frames(self) -> Iterator[MediaFrame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[MediaFrame]:
        if self._iterated:
            raise RuntimeError(f"{type(self).__name__} is single-pass; open the source again")
        self._iterated = True
        for frame in self._frames():
            self.stats.frames_yielded += 1
            yield frame
        if self.error is not None and self.raise_on_error:
            raise self.error

    def tail_audio(self) -> list[AudioChunk]:
        """Original audio decoded after the last record (``keep_raw_audio``; none by default).

        Complete once the iteration has ended: write it before closing an overlay.
        """
        return []

    def close(self) -> None:
        """Stop decoding and release files/sockets. Safe to call twice."""

    def __enter__(self) -> MediaSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _network_options(scheme: str, timeout: float) -> dict[str, str]:
    us = str(int(timeout * 1e6))
    if scheme in ("udp", "rtp"):
        return {"timeout": us, "overrun_nonfatal": "1", "fifo_size": "1000000"}
    if scheme.startswith("rtsp"):
        return {"timeout": us, "rtsp_transport": "tcp"}
    if scheme in ("http", "https"):
        return {"rw_timeout": us, "reconnect": "1"}
    return {"rw_timeout": us}


class ContainerSource(MediaSource):
    """A file or network stream decoded with PyAV on a background thread.

    Args:
        spec: local path or URL (http(s), rtsp, rtmp, udp MPEG-TS, ...).
        fps: output frame rate (None: every frame). See the module docstring.
        window_s: audio window length in seconds, centred on the frame time.
        allow_silent: a video without audio yields zero windows (``audio_missing=True``)
            instead of raising :class:`NoAudioStreamError`.
        realtime: drop frames the consumer cannot take in time (records stay, ``dropped=True``).
            Default: True for network sources, False for files.
        queue_size: frames (with images) held for the consumer.
        timeout: network sources: seconds without data before the stream counts as ended
            (``ended_by_timeout`` is then set; it is not an error).
        open_timeout: network sources: seconds to wait for the stream to start.
        options: extra FFmpeg options for ``av.open`` (override the defaults).
        resampler: "sinc" (``moca_rt.preprocess.resample``) or "swr" (libswresample).
        mix: channel mix to mono: "mean" (default) or "first" (channel 0 only).
        max_audio_lag_s: release a frame without full audio once video is this far past its
            window end (audio stalled or ended early).
        stall_timeout_s: the consumer raises :class:`MediaDecodeError` if no frame arrives for
            this long while the decoder still runs.
        keep_raw_audio: attach the original audio to the records (for the overlay writer).
        raise_on_error: raise the stored decode error at the end of the iteration.
    """

    def __init__(
        self,
        spec: str | Path,
        *,
        fps: float | None = None,
        window_s: float = WINDOW_SECONDS,
        allow_silent: bool = False,
        realtime: bool | None = None,
        queue_size: int = 8,
        timeout: float = 5.0,
        open_timeout: float = 15.0,
        options: dict[str, str] | None = None,
        resampler: AudioResamplerName = "sinc",
        mix: ChannelMix = "mean",
        max_audio_lag_s: float = 2.0,
        stall_timeout_s: float = 60.0,
        keep_raw_audio: bool = False,
        raise_on_error: bool = True,
    ) -> None:
        import av

        super().__init__(
            str(spec),
            fps=fps,
            window_s=window_s,
            allow_silent=allow_silent,
            raise_on_error=raise_on_error,
        )
        if resampler not in ("sinc", "swr"):
            raise ValueError(f"resampler: expected 'sinc' or 'swr', got {resampler!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size: expected >= 1, got {queue_size}")
        scheme = url_scheme(self.spec)
        self.is_live = scheme in NETWORK_SCHEMES
        self.realtime = self.is_live if realtime is None else realtime
        if mix not in ("mean", "first"):
            raise ValueError(f"mix: expected 'mean' or 'first', got {mix!r}")
        self.resampler = resampler
        self.mix = mix
        self.max_audio_lag_s = max_audio_lag_s
        self.stall_timeout_s = stall_timeout_s
        self.keep_raw_audio = keep_raw_audio
        open_kwargs: dict[str, Any] = {}
        if self.is_live:
            opts = _network_options(scheme, timeout)
            opts.update(options or {})
            open_kwargs = {"options": opts, "timeout": (open_timeout, timeout)}
        else:
            path = Path(self.spec)
            if not path.exists():
                raise MediaNotFoundError(errno.ENOENT, "media file not found", str(path))
            if path.is_file() and path.stat().st_size == 0:
                raise MediaOpenError(
                    f"cannot open {path}: expected a media file, got an empty (0-byte) file"
                )
            if options:
                open_kwargs = {"options": dict(options)}
        try:
            self._container = av.open(self.spec, **open_kwargs)
        except av.error.FFmpegError as e:
            hint = open_failure_hint(self.spec, timeout)
            raise MediaOpenError(f"cannot open {self.spec}: {hint}{e}") from e
        try:
            self._setup_streams()
        except BaseException:
            self._container.close()
            raise
        self._stop = threading.Event()
        self._channel = _FrameChannel(queue_size, self.realtime, self.stats)
        # Decoding starts with the iteration, so a source can be opened (and checked) before
        # slow work such as loading models without its frames piling up meanwhile.
        self._thread = threading.Thread(
            target=self._decode_loop, name="moca-media-decoder", daemon=True
        )

    def _setup_streams(self) -> None:
        c = self._container
        kinds = ", ".join(f"{s.type} {s.codec_context.name}" for s in c.streams) or "none"
        if not c.streams.video:
            raise NoVideoStreamError(f"{self.spec}: no video stream (streams found: {kinds})")
        self._video = c.streams.video[0]
        self._video.thread_type = "AUTO"
        self.width = self._video.codec_context.width or None
        self.height = self._video.codec_context.height or None
        rate = self._video.average_rate or self._video.guessed_rate
        self.frame_rate = float(rate) if rate else None
        self.start_time = (c.start_time or 0) / 1e6 if not self.is_live else 0.0
        self._audio = c.streams.audio[0] if c.streams.audio else None
        if self._audio is None and not self.allow_silent:
            raise NoAudioStreamError(
                f"{self.spec}: no audio stream (streams found: {kinds}); "
                "pass allow_silent=True to treat it as silence"
            )
        self.has_audio = self._audio is not None
        if self._audio is None:
            self.notes.append(
                f"{self.spec} has no audio stream: every frame is scored against silence, "
                "so every mask is empty"
            )
        if self._audio is not None:
            self.audio_sample_rate = self._audio.codec_context.sample_rate or None
            self.audio_channels = self._audio.codec_context.channels

    # ---- decoder thread ----

    def _decode_loop(self) -> None:
        import av

        assembler = _AudioAssembler(self.resampler, self.stats, self.mix)
        pending: deque[tuple[int, float, Any]] = deque()
        raw: list[AudioChunk] = []
        last_video_t = -math.inf
        next_index = 0
        half = self.window_s / 2
        errors: list[str] = []

        def release(force: bool) -> bool:
            """Emit pending frames whose window is complete (all of them when ``force``)."""
            while pending:
                index, t, vframe = pending[0]
                ready = (
                    self._audio is None or assembler.finished or assembler.covered_until >= t + half
                )
                lagging = last_video_t - t > half + self.max_audio_lag_s
                if not (ready or lagging or force):
                    return True
                pending.popleft()
                incomplete = not ready and not assembler.finished
                if incomplete:
                    self.stats.frames_audio_incomplete += 1
                image = vframe.to_ndarray(format="rgb24")
                out = MediaFrame(
                    index=index,
                    pts=t,
                    image=image,
                    audio=assembler.window(t, self.window_s),
                    audio_missing=self._audio is None,
                    audio_incomplete=incomplete,
                )
                if self.keep_raw_audio:
                    out.raw_audio = raw.copy()
                    raw.clear()
                if not self._channel.put(out, self._stop):
                    return False
                oldest = pending[0][1] if pending else t
                assembler.ring.trim(round((oldest - half) * SAMPLE_RATE) - SAMPLE_RATE)
            return True

        def handle(kind: str, decoded: list[Any]) -> None:
            nonlocal last_video_t, next_index
            for frame in decoded:
                if kind == "audio":
                    self.stats.audio_frames += 1
                    samples = audio_frame_to_float(frame)
                    t_a = _frame_time(frame)
                    if self.keep_raw_audio:
                        raw.append(
                            AudioChunk(
                                t_a if t_a is not None else assembler.covered_until,
                                frame.sample_rate,
                                samples.copy(),
                            )
                        )
                    assembler.push(samples, frame.sample_rate, t_a)
                    continue
                t = _frame_time(frame)
                if t is None:
                    step = 1.0 / (self.frame_rate or 25.0)
                    t = last_video_t + step if last_video_t > -math.inf else 0.0
                last_video_t = max(last_video_t, t)
                index = next_index
                next_index += 1
                self.stats.frames_decoded += 1
                if self._select(t):
                    pending.append((index, t, frame))

        streams = [self._video] + ([self._audio] if self._audio is not None else [])
        try:
            for packet in self._container.demux(*streams):
                if self._stop.is_set():
                    return
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as e:
                    if isinstance(e, av.error.EOFError):
                        continue
                    self.stats.corrupt_packets += 1
                    if len(errors) < 5:
                        errors.append(f"{packet.stream.type} packet at dts {packet.dts}: {e}")
                    continue
                handle(packet.stream.type, decoded)
                if not release(force=False):
                    return
        except (av.error.ExitError, OSError) as e:
            live_end = self.is_live and (
                isinstance(e, av.error.ExitError)
                or getattr(e, "errno", None) in (errno.EIO, errno.ETIMEDOUT)
            )
            if live_end:
                self.ended_by_timeout = True
            else:
                errors.append(f"demuxing stopped: {e}")
        except Exception as e:  # surfaced to the consumer after the decodable frames
            errors.append(f"demuxing stopped: {type(e).__name__}: {e}")
        finally:
            try:
                if not self._stop.is_set():
                    # Frames still inside the decoders (normal EOF already flushed them; a live
                    # stream that timed out did not).
                    for stream in streams:
                        with contextlib.suppress(av.error.FFmpegError):
                            handle(stream.type, stream.codec_context.decode(None))
                assembler.finish()
                if not self._stop.is_set():
                    release(force=True)
                    self._tail_audio = raw
                if not errors and not self.is_live and not self._stop.is_set():
                    errors.extend(self._truncation_check(last_video_t, assembler))
                if self.stats.frames_decoded == 0 and not errors and not self.ended_by_timeout:
                    errors.append("no decodable video frame")
                if errors:
                    self.error = MediaDecodeError(f"{self.spec}: " + "; ".join(errors))
            except Exception as e:
                self.error = MediaDecodeError(f"{self.spec}: {type(e).__name__}: {e}")
            finally:
                self._channel.close()

    def _truncation_check(self, last_video_t: float, assembler: _AudioAssembler) -> list[str]:
        """Files whose header promises more than was decoded (a cut download, a crash while
        recording). MPEG-TS declares no length, but it is a sequence of fixed-size packets: a
        file that ends inside one was cut (:func:`mpegts_cut_packet`); a cut that falls exactly
        on a packet boundary cannot be told from a clean end. Raw streams are taken as is."""
        if self._container.format.name == "mpegts" and Path(self.spec).is_file():
            cut = mpegts_cut_packet(Path(self.spec))
            return [cut] if cut is not None else []
        declared = self._video.frames
        if declared and self.stats.frames_decoded < declared:
            return [
                f"truncated: decoded {self.stats.frames_decoded} of {declared} video "
                "frames the container declares"
            ]
        duration = self._container.duration
        if duration and self._container.format.name in _HEADER_DURATION_FORMATS:
            step = 1.0 / (self.frame_rate or 25.0)
            media_end = max(last_video_t + step, assembler.covered_until) - self.start_time
            declared_s = duration / 1e6
            if media_end < declared_s - max(0.25, 3 * step):
                return [
                    f"truncated: media ends at {media_end:.2f} s but the container "
                    f"declares {declared_s:.2f} s"
                ]
        return []

    # ---- consumer side ----

    def _frames(self) -> Iterator[MediaFrame]:
        if not self._thread.is_alive() and self._thread.ident is None and not self._stop.is_set():
            self._thread.start()
        last = time.monotonic()
        while True:
            item = self._channel.get(timeout=0.1)
            if item is None:
                if time.monotonic() - last > self.stall_timeout_s:
                    self.error = MediaDecodeError(
                        f"{self.spec}: no frame for {self.stall_timeout_s:.0f} s; decoder stalled"
                    )
                    self.close()
                    return
                if not self._thread.is_alive() and not self._channel.items:
                    return
                continue
            if isinstance(item, _End):
                return
            last = time.monotonic()
            yield item

    def tail_audio(self) -> list[AudioChunk]:
        """Original audio decoded after the last record was emitted (``keep_raw_audio``);
        complete once the iteration has ended. Write it before closing an overlay."""
        return getattr(self, "_tail_audio", [])

    def close(self) -> None:
        if getattr(self, "_stop", None) is None:
            return
        self._stop.set()
        with self._channel.cond:
            self._channel.cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=10.0)
        if not self._thread.is_alive():
            self._container.close()


_TS_SYNC = 0x47
# Packet layouts of MPEG-TS files: 188-byte packets, 192 (a 4-byte timestamp first: Blu-ray
# M2TS) and 204 (16 Reed-Solomon bytes after the packet: DVB); (size, offset of the sync byte).
_TS_LAYOUTS = ((188, 0), (192, 4), (204, 0))


def mpegts_cut_packet(path: Path) -> str | None:
    """Why the MPEG-TS file at ``path`` looks cut inside a packet, or None.

    The packet layout is the one whose sync bytes (0x47) sit at every packet start of the
    first packets; the file is cut when its size is not a whole number of such packets. None
    when no layout fits (not recognisably TS) or the size is whole.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(204 * 8)
    for packet, sync in _TS_LAYOUTS:
        starts = range(sync, min(len(head), packet * 8), packet)
        if len(starts) < 2 or any(head[i] != _TS_SYNC for i in starts):
            continue
        extra = size % packet
        if extra == 0:
            return None
        return (
            f"truncated: the file ends {extra} bytes into a {packet}-byte MPEG-TS packet "
            f"({size // packet} whole packets)"
        )
    return None


def mp4_problem(path: Path) -> str | None:
    """Why the ISO-BMFF (mp4/mov) file at ``path`` cannot be read, from its top-level boxes, or
    None (not an mp4, or nothing wrong with its boxes).

    An mp4 is a sequence of boxes (4-byte big-endian size, 4-byte type); its index (``moov``)
    is often written last, so a download or recording cut short has none.
    """
    size = path.stat().st_size
    boxes: list[str] = []
    with path.open("rb") as fh:
        pos = 0
        while pos + 8 <= size:
            fh.seek(pos)
            head = fh.read(16)
            length, kind = int.from_bytes(head[:4], "big"), head[4:8]
            if not kind.isascii() or not kind.decode("ascii").isprintable():
                break
            if length == 1 and len(head) >= 16:
                length = int.from_bytes(head[8:16], "big")
            elif length == 0:
                length = size - pos
            if length < 8:
                break
            name = kind.decode("ascii")
            boxes.append(name)
            if pos + length > size:
                if not boxes or boxes[0] != "ftyp":
                    return None
                return (
                    f"truncated: the file ends {size - pos} bytes into its {length}-byte "
                    f"'{name}' box" + ("" if "moov" in boxes else " and has no 'moov' index box")
                )
            pos += length
    if not boxes or boxes[0] != "ftyp":
        return None
    if "moov" not in boxes:
        return (
            "no 'moov' index box: likely truncated (an mp4 written with its index at the end "
            "and cut before it) or not a complete mp4"
        )
    return None


def open_failure_hint(spec: str, timeout: float) -> str:
    """What an FFmpeg open failure of ``spec`` likely means, as ``"reason; "`` or ""."""
    import socket
    from urllib.parse import urlsplit

    scheme = url_scheme(spec)
    if scheme in NETWORK_SCHEMES:
        if scheme in ("udp", "rtp"):
            return f"no stream data arrived within {timeout:g} s (nothing sends to it?); "
        parts = urlsplit(spec)
        default_port = {"rtsp": 554, "rtsps": 322, "rtmp": 1935, "rtmps": 443, "http": 80}
        port = parts.port or default_port.get(scheme, 443)
        host = parts.hostname or ""
        try:
            with socket.create_connection((host, port), timeout=min(timeout, 5.0)):
                return ""
        except socket.gaierror:
            return f"unknown host {host!r}; "
        except ConnectionRefusedError:
            return f"nothing listens on {host}:{port} (connection refused); "
        except TimeoutError:
            return f"{host}:{port} does not answer within {min(timeout, 5.0):g} s; "
        except OSError as e:
            return f"{host}:{port} cannot be reached ({e.strerror or e}); "
    path = Path(spec)
    if path.is_file():
        problem = mp4_problem(path)
        if problem is not None:
            return f"{problem}; "
    return ""


def url_scheme(spec: str) -> str:
    """The lower-case scheme of a URL (``"udp"`` for ``udp://...``); "" for a plain path."""
    m = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", spec)
    return m.group(1).lower() if m else ""


def is_network_url(spec: str | Path) -> bool:
    """Whether ``spec`` is a URL with a network scheme (a live or remote stream)."""
    return url_scheme(str(spec)) in NETWORK_SCHEMES


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except OSError as e:
        raise MediaOpenError(f"cannot read image {path}: {e}") from e


class ImageSequenceSource(MediaSource):
    """Still images at given times with one audio file (AVSBench folders, image + wav pairs).

    The audio is decoded and resampled whole before the first frame (files are short), then
    each image gets the window centred on its time.

    Args:
        images: image paths in display order.
        times: presentation time of each image, seconds from the start of the audio.
        audio: audio file (wav/flac/mp3/...), or None with ``allow_silent=True``.
    """

    def __init__(
        self,
        images: list[Path],
        times: list[float],
        audio: str | Path | None,
        *,
        spec: str,
        fps: float | None = None,
        window_s: float = WINDOW_SECONDS,
        allow_silent: bool = False,
        resampler: AudioResamplerName = "sinc",
        mix: ChannelMix = "mean",
    ) -> None:
        super().__init__(
            spec, fps=fps, window_s=window_s, allow_silent=allow_silent, raise_on_error=True
        )
        if len(images) != len(times):
            raise ValueError(
                f"expected one time per image, got {len(images)} images and {len(times)} times"
            )
        if not images:
            raise MediaOpenError(f"{spec}: expected at least one image, found none")
        self.images, self.times = images, times
        self.ring: AudioRing | None = None
        if audio is not None:
            self.ring = load_audio_16k(audio, resampler, self.stats, mix)
            self.has_audio = True
            self.audio_sample_rate, self.audio_channels = SAMPLE_RATE, 1
        elif not allow_silent:
            raise NoAudioStreamError(
                f"{spec}: no audio file; pass allow_silent=True to treat it as silence"
            )
        first = _read_image(images[0])
        self.height, self.width = first.shape[:2]
        self._first = first

    def _frames(self) -> Iterator[MediaFrame]:
        n = round(self.window_s * SAMPLE_RATE)
        for index, (path, t) in enumerate(zip(self.images, self.times, strict=True)):
            self.stats.frames_decoded += 1
            if not self._select(t):
                continue
            image = self._first if index == 0 else _read_image(path)
            if self.ring is not None:
                audio = _window(self.ring, t, self.window_s)
            else:
                audio = np.zeros(n, np.float32)
            yield MediaFrame(
                index=index, pts=t, image=image, audio=audio, audio_missing=self.ring is None
            )

    def tail_audio(self) -> list[AudioChunk]:
        """The whole audio file as one 16 kHz mono chunk (what an overlay video carries)."""
        ring = self.ring
        if ring is None or ring.empty:
            return []
        samples = ring.window(ring.start, ring.end - ring.start)
        return [AudioChunk(ring.start / SAMPLE_RATE, SAMPLE_RATE, samples[None])]


def find_avsbench_audio(frames_dir: Path) -> Path | None:
    """The wav of an AVSBench frame folder ``.../visual_frames/<rel>/<vid>``.

    Looks for ``.../audio_wav/<rel>/<vid>.wav`` (also ``audio_wavs``), then ``<vid>.wav`` next
    to the folder or inside it.
    """
    parts = frames_dir.resolve().parts
    if "visual_frames" in parts:
        k = len(parts) - 1 - parts[::-1].index("visual_frames")
        root, rel = Path(*parts[:k]), Path(*parts[k + 1 :])
        for name in ("audio_wav", "audio_wavs"):
            cand = (root / name / rel).with_suffix(".wav")
            if cand.is_file():
                return cand
    for cand in (frames_dir.with_suffix(".wav"), frames_dir / f"{frames_dir.name}.wav"):
        if cand.is_file():
            return cand
    return None


def open_avsbench(
    frames_dir: str | Path,
    audio: str | Path | None = None,
    *,
    first_time: float = 0.5,
    interval: float = 1.0,
    **opts: Any,
) -> ImageSequenceSource:
    """AVSBench clip: frames ``<vid>_1.png ... <vid>_5.png`` over 5 s of audio.

    S4/MS3 sample one frame per second; frame k (0-based, natural filename order) is taken as
    the centre of second k: ``t = first_time + k * interval`` = k + 0.5 s.
    """
    frames_dir = Path(frames_dir)
    if not frames_dir.is_dir():
        raise MediaNotFoundError(errno.ENOENT, "frame folder not found", str(frames_dir))
    images = sorted(
        (p for p in frames_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: natural_key(p.stem),
    )
    if not images:
        raise MediaOpenError(
            f"{frames_dir}: expected image files ({', '.join(IMAGE_SUFFIXES)}), found none"
        )
    if audio is None:
        audio = find_avsbench_audio(frames_dir)
    times = [first_time + k * interval for k in range(len(images))]
    source = ImageSequenceSource(images, times, audio, spec=str(frames_dir), **opts)
    source.mask_names = [gt_mask_name(p) for p in images]
    return source


def gt_mask_name(frame: Path) -> str:
    """The AVSBench ground-truth file name of a frame image: S4 ``<vid>_<k>.png`` for
    ``<vid>_<k>.png``, MS3 ``<vid>_<k>.png`` for ``<vid>.mp4_<k>.png``, AVSS ``<i>.png`` for
    ``<i>.jpg``."""
    return frame.stem.replace(".mp4_", "_") + ".png"


def open_image_audio(
    image: str | Path, audio: str | Path | None, *, image_time: float | None = None, **opts: Any
) -> ImageSequenceSource:
    """One image with an audio file: a single frame at ``image_time`` (default: the middle of
    the audio, so a 2 s file fills the window exactly)."""
    image = Path(image)
    if not image.is_file():
        raise MediaNotFoundError(errno.ENOENT, "image not found", str(image))
    src = ImageSequenceSource([image], [0.0], audio, spec=str(image), **opts)
    if image_time is None:
        ring = src.ring
        image_time = (
            0.0 if ring is None or ring.empty else (ring.start + ring.end) / 2 / SAMPLE_RATE
        )
    src.times = [image_time]
    return src
