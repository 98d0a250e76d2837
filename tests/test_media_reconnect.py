"""ReconnectingSource logic with scripted fake connections (no network, no timing).

The real thing on a UDP loopback stream is in tests/test_stream_udp.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from moca_rt.media import (
    AudioChunk,
    MediaDecodeError,
    MediaFrame,
    MediaOpenError,
    MediaSource,
    ReconnectingSource,
    open_source,
)


@dataclass
class Connection:
    """One scripted connection: fails to open, or yields frames at ``pts`` then ends."""

    pts: list[float] = field(default_factory=list)
    fail_open: bool = False
    error: str | None = None  # the connection breaks with this error after its frames


class Script:
    """Opens connections from a list, in order; counts the opens."""

    def __init__(self, *connections: Connection) -> None:
        self.connections = list(connections)
        self.opened = 0

    def __call__(self, spec: str, **opts: Any) -> MediaSource:
        assert opts["raise_on_error"] is False  # errors are the reconnecting source's business
        conn = self.connections.pop(0) if self.connections else Connection(fail_open=True)
        self.opened += 1
        if conn.fail_open:
            raise MediaOpenError(f"cannot open {spec}: nobody is sending")
        return FakeConnection(spec, conn)


class FakeConnection(MediaSource):
    def __init__(self, spec: str, conn: Connection) -> None:
        super().__init__(spec, fps=None, window_s=2.0, allow_silent=True, raise_on_error=False)
        self.conn = conn
        self.is_live = True
        self.frame_rate = 10.0
        self.closed = False

    def _frames(self) -> Iterator[MediaFrame]:
        for i, t in enumerate(self.conn.pts):
            if self.closed:
                return
            self.stats.frames_decoded += 1
            chunk = AudioChunk(pts=t, sample_rate=16000, samples=np.zeros((1, 4), np.float32))
            yield MediaFrame(
                index=i,
                pts=t,
                image=np.zeros((2, 2, 3), np.uint8),
                audio=np.zeros(32000, np.float32),
                raw_audio=[chunk],
            )
        if self.conn.error is not None:
            self.error = MediaDecodeError(self.conn.error)
        else:
            self.ended_by_timeout = True

    def close(self) -> None:
        self.closed = True


def _open(script: Script, reconnects: int, **opts: Any) -> ReconnectingSource:
    return ReconnectingSource(
        "udp://127.0.0.1:1", reconnects=reconnects, retry_delay_s=0.0, open_source=script, **opts
    )


def test_restarted_clock_is_shifted_and_indices_continue() -> None:
    script = Script(
        Connection(pts=[1.0, 1.1, 1.2]),
        Connection(fail_open=True),
        Connection(pts=[1.0, 1.1]),  # a restarted sender: its clock starts again
        Connection(pts=[9.0, 9.1]),  # a clock that went on is kept
    )
    with _open(script, reconnects=2) as src:
        frames = list(src)
    assert [f.index for f in frames] == list(range(7))
    np.testing.assert_allclose([f.pts for f in frames], [1.0, 1.1, 1.2, 1.3, 1.4, 9.0, 9.1])
    np.testing.assert_allclose([f.raw_audio[0].pts for f in frames], [f.pts for f in frames])
    assert src.segments == 3 and script.opened == 6  # 4 scripted + 2 failures at the end
    assert src.error is None and src.ended_by_timeout
    assert src.stats.frames_decoded == 7 and src.stats.frames_yielded == 7
    log = "\n".join(src.reconnect_log)
    assert "reconnect failed (1/2 in a row)" in log and "gave up after 2 failed" in log
    assert log.count("reconnected: connection") == 2


def test_a_connection_without_records_counts_as_a_failure() -> None:
    script = Script(Connection(pts=[0.0, 0.1]), Connection(pts=[]), Connection(pts=[5.0]))
    with _open(script, reconnects=1) as src:
        frames = list(src)
    assert [f.pts for f in frames] == [0.0, 0.1]  # the third connection is never opened
    assert script.opened == 2 and src.segments == 2


def test_errors_before_a_reconnect_are_logged_the_last_one_is_raised() -> None:
    script = Script(
        Connection(pts=[0.0], error="corrupt packet"),
        Connection(pts=[3.0, 3.1], error="socket closed"),
    )
    got = []
    with _open(script, reconnects=1) as src, pytest.raises(MediaDecodeError, match="socket"):
        for f in src:
            got.append(f.index)
    assert got == [0, 1, 2]
    assert "broke: corrupt packet" in src.reconnect_log[0]
    with _open(
        Script(Connection(pts=[0.0], error="x")), reconnects=1, raise_on_error=False
    ) as quiet:
        assert len(list(quiet)) == 1 and isinstance(quiet.error, MediaDecodeError)


def test_close_stops_reconnecting() -> None:
    script = Script(Connection(pts=[0.0, 0.1, 0.2]), Connection(pts=[1.0]))
    src = _open(script, reconnects=3)
    for frame in src:
        assert frame.index == 0
        src.close()
    assert script.opened == 1 and src.segments == 1


def test_first_open_errors_and_bad_arguments_are_raised() -> None:
    with pytest.raises(MediaOpenError, match="nobody is sending"):
        _open(Script(Connection(fail_open=True)), reconnects=3)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="reconnects: expected an int >= 1"):
            _open(Script(Connection()), reconnects=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_delay_s"):
        ReconnectingSource("udp://x", reconnects=1, retry_delay_s=-1.0, open_source=Script())
    with pytest.raises(ValueError, match="reconnect: expected a network source"):
        open_source("clip.mp4", reconnect=2)
