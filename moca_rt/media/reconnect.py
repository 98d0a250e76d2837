"""A live network source that reopens its URL when the stream ends or breaks.

A camera on a flaky link, an RTSP server that restarts, a UDP sender that pauses: a plain
:class:`~moca_rt.media.sources.ContainerSource` ends there (a live stream's timeout is its end).
:class:`ReconnectingSource` opens the URL again, up to ``reconnects`` times in a row, and goes on
yielding records as one stream:

* indices continue (the first frame of a new connection follows the last record);
* pts stay increasing: when a new connection's clock starts at or before the last record's pts
  (a restarted sender), its frames (and their raw audio) are shifted to start one frame period
  after it; a clock that went on is kept as is;
* a connection that yielded at least one frame resets the count of attempts; ``segments`` counts
  connections and ``reconnect_log`` says when and why each one ended.

The end: ``reconnects`` attempts in a row failed to open or yielded nothing, or the consumer
closed the source. ``error`` / ``ended_by_timeout`` then describe the last connection; errors of
earlier connections are in ``reconnect_log`` (they were followed by a reconnect, not an end).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from moca_rt.errors import MediaOpenError
from moca_rt.media.sources import ContainerSource, MediaSource
from moca_rt.media.types import AudioChunk, MediaFrame, SourceStats

__all__ = ["ReconnectingSource"]

_DEFAULT_RATE = 25.0  # frames per second when neither the stream nor fps says


class ReconnectingSource(MediaSource):
    """A network :class:`ContainerSource` that is reopened when its stream ends or breaks.

    Args:
        spec: a network URL (udp, rtsp, http(s), ...).
        reconnects: reopen attempts in a row before giving up (>= 1); a connection that yields
            a frame resets the count.
        retry_delay_s: pause before each attempt.
        open_source: builds one connection (tests pass a fake); default :class:`ContainerSource`.
        **opts: options of :class:`ContainerSource` (``fps``, ``timeout``, ``open_timeout``,
            ``realtime``, ``keep_raw_audio``, ...). ``raise_on_error`` applies to the end.

    Raises:
        MediaOpenError (and subclasses): the first connection cannot be opened.
        ValueError: bad ``reconnects`` / ``retry_delay_s``.
    """

    def __init__(
        self,
        spec: str,
        *,
        reconnects: int,
        retry_delay_s: float = 1.0,
        open_source: Callable[..., MediaSource] | None = None,
        **opts: Any,
    ) -> None:
        if isinstance(reconnects, bool) or not isinstance(reconnects, int) or reconnects < 1:
            raise ValueError(f"reconnects: expected an int >= 1, got {reconnects!r}")
        if not retry_delay_s >= 0:
            raise ValueError(f"retry_delay_s: expected >= 0 seconds, got {retry_delay_s}")
        raise_on_error = bool(opts.pop("raise_on_error", True))
        self._opts = {**opts, "raise_on_error": False}
        self._open = open_source or ContainerSource
        self._current: MediaSource = self._open(spec, **self._opts)
        super().__init__(
            spec,
            fps=self._current.fps,
            window_s=self._current.window_s,
            allow_silent=self._current.allow_silent,
            raise_on_error=raise_on_error,
        )
        for name in (
            "has_audio",
            "is_live",
            "width",
            "height",
            "frame_rate",
            "start_time",
            "audio_sample_rate",
            "audio_channels",
        ):
            setattr(self, name, getattr(self._current, name))
        self.realtime = bool(getattr(self._current, "realtime", False))
        self.reconnects = reconnects
        self.retry_delay_s = retry_delay_s
        self.segments = 1
        self._stop = threading.Event()
        self._t0 = time.monotonic()

    def _log(self, text: str) -> None:
        self.reconnect_log.append(f"{time.monotonic() - self._t0:.1f} s: {text}")

    def _merge_stats(self, stats: SourceStats) -> None:
        for f in dataclasses.fields(SourceStats):
            if f.name != "frames_yielded":  # counted by this source's own iteration
                setattr(self.stats, f.name, getattr(self.stats, f.name) + getattr(stats, f.name))

    def _reopen(self, failures: int) -> MediaSource | None:
        """A new connection, or None once ``failures`` reaches ``reconnects`` (or on close).

        ``failures`` counts the attempts in a row so far that opened nothing or a connection
        without a record."""
        while failures < self.reconnects:
            if self._stop.wait(self.retry_delay_s):
                return None
            try:
                source = self._open(self.spec, **self._opts)
            except MediaOpenError as e:
                failures += 1
                self._log(f"reconnect failed ({failures}/{self.reconnects} in a row): {e}")
                continue
            self.segments += 1
            self._log(f"reconnected: connection {self.segments}")
            return source
        self._log(f"gave up after {self.reconnects} failed attempt(s) in a row")
        return None

    def _frames(self) -> Iterator[MediaFrame]:
        source: MediaSource | None = self._current
        next_index = 0
        last_pts: float | None = None
        failures = 0
        step = 1.0 / (self.frame_rate or self.fps or _DEFAULT_RATE)
        while source is not None:
            index_offset = next_index
            pts_offset: float | None = None
            yielded = 0
            for frame in source:
                if pts_offset is None:  # the first frame of a connection fixes its offsets
                    pts_offset = 0.0
                    if last_pts is not None and frame.pts <= last_pts:  # the clock restarted
                        pts_offset = last_pts + step - frame.pts
                frame = _shifted(frame, index_offset, pts_offset)
                next_index = frame.index + 1
                last_pts = frame.pts
                yielded += 1
                yield frame
            self._merge_stats(source.stats)
            self.error = source.error
            self.ended_by_timeout = source.ended_by_timeout
            self._last = source
            source.close()
            if self._stop.is_set():
                return
            why = (
                f"broke: {source.error}"
                if source.error is not None
                else "ended (no data within the timeout)"
                if source.ended_by_timeout
                else "ended"
            )
            self._log(f"connection {self.segments} {why} after {yielded} record(s)")
            failures = 0 if yielded else failures + 1
            source = self._reopen(failures)
            if source is not None:
                self._current = source

    def tail_audio(self) -> list[AudioChunk]:
        """Raw audio after the last record of the last connection (``keep_raw_audio``)."""
        return list(getattr(self, "_last", self._current).tail_audio())

    def close(self) -> None:
        """Stop reconnecting and close the current connection. Safe to call twice."""
        self._stop.set()
        self._current.close()


def _shifted(frame: MediaFrame, index_offset: int, pts_offset: float) -> MediaFrame:
    if index_offset == 0 and pts_offset == 0.0:
        return frame
    raw = [dataclasses.replace(c, pts=c.pts + pts_offset) for c in frame.raw_audio]
    return dataclasses.replace(
        frame, index=frame.index + index_offset, pts=frame.pts + pts_offset, raw_audio=raw
    )
