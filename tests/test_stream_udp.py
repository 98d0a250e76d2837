"""Live stream on loopback: a sender subprocess pushes H.264 + AAC MPEG-TS over UDP in real
time; the receiver is our ContainerSource. Only 127.0.0.1 is used; every wait is bounded."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import media_factory as mf
import numpy as np

from moca_rt.media import SAMPLE_RATE, open_source

SECONDS = 3.0
FPS = 25


def test_udp_mpegts_live_stream() -> None:
    port = mf.free_udp_port()
    sender = mf.start_udp_sender(port, SECONDS, start_delay=1.5)
    try:
        t0 = time.monotonic()
        frames = []
        with open_source(f"udp://127.0.0.1:{port}", timeout=2.0, open_timeout=15.0) as src:
            assert src.is_live and src.realtime
            for f in src:
                frames.append(f)
                assert time.monotonic() - t0 < 30, "receiver did not end"
        elapsed = time.monotonic() - t0
        out, err = sender.communicate(timeout=15)
    finally:
        if sender.poll() is None:
            sender.kill()
            sender.wait(5)
    assert sender.returncode == 0, err[-2000:]
    sent = mf.frames_sent(out)
    received = [f for f in frames if not f.dropped]
    print(
        f"udp: {len(received)} of {sent} frames received ({len(frames) - len(received)} "
        f"dropped records) in {elapsed:.1f} s"
    )
    assert src.error is None and src.ended_by_timeout  # end of a live stream, not a crash
    assert len(received) >= 0.8 * sent
    indices = [f.index for f in frames]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    # frames arrive in order (a lost first GOP would only shift the numbering)
    offsets = {(mf.read_index(f.image) - f.index) % 12 for f in received if f.image is not None}
    assert len(offsets) == 1, offsets
    for f in received:
        assert f.audio is not None and f.audio.shape == (2 * SAMPLE_RATE,)
        assert f.audio.dtype == np.float32 and np.isfinite(f.audio).all()
        assert f.image is not None and f.image.shape == (96, 128, 3)
    # a frame in the middle has the 440 Hz tone over most of its window
    mid = received[len(received) // 2]
    assert mid.audio is not None
    seg = mid.audio[8000:24000].astype(np.float64)
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    assert abs(np.argmax(spec) * SAMPLE_RATE / len(seg) - 440.0) < 2.0
    assert 0.25 < np.sqrt(np.mean(seg**2)) < 0.45


def test_udp_stream_reconnects_after_the_sender_restarts() -> None:
    """Two senders one after the other (the second restarts its clock at 0) and a source with
    reconnect=1: one stream of records with increasing indices and pts, then, when nobody
    sends any more, one failed attempt and the end."""
    port = mf.free_udp_port()
    # Sender 1 sends from ~1 s to ~2.5 s; the receiver's 1 s timeout ends that connection at
    # ~3.5 s and it reopens (waiting up to 4 s for data); sender 2 sends from ~5 s to ~6.5 s.
    senders = [mf.start_udp_sender(port, 1.5, 1.0), mf.start_udp_sender(port, 1.5, 5.0)]
    try:
        t0 = time.monotonic()
        frames = []
        with open_source(
            f"udp://127.0.0.1:{port}", timeout=1.0, open_timeout=4.0, reconnect=1, retry_delay_s=0.1
        ) as src:
            for f in src:
                frames.append(f)
                assert time.monotonic() - t0 < 40, "receiver did not end"
        results = [s.communicate(timeout=20) for s in senders]
    finally:
        for s in senders:
            if s.poll() is None:
                s.kill()
                s.wait(5)
    for s, (_, err) in zip(senders, results, strict=True):
        assert s.returncode == 0, err[-2000:]
    sent = [mf.frames_sent(out) for out, _ in results]
    received = [f for f in frames if not f.dropped and f.image is not None]
    print(
        f"reconnect: {len(received)} of {sum(sent)} frames in {src.segments} connections; "
        f"log {src.reconnect_log}"
    )
    assert src.segments == 2 and src.error is None and src.ended_by_timeout
    assert "gave up after 1 failed" in src.reconnect_log[-1]
    indices = [f.index for f in frames]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    pts = [f.pts for f in frames]
    assert all(b > a for a, b in itertools.pairwise(pts)), "pts must keep increasing"
    # The frames carry the sender's own frame number (mod 12): it restarts at the second sender.
    numbers = [mf.read_index(f.image) for f in received if f.image is not None]
    restarts = sum(1 for a, b in itertools.pairwise(numbers) if b != (a + 1) % 12)
    assert restarts >= 1
    assert len(received) >= 0.6 * sum(sent)


def test_http_source_on_loopback(tmp_path: Path) -> None:
    """A URL source over HTTP (python's http.server on 127.0.0.1) decodes like the file."""
    import functools
    import http.server
    import threading

    mf.write_video(tmp_path / "clip.mp4", num_frames=10, audio_rate=44100)

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/clip.mp4"
        with open_source(url, timeout=5.0, realtime=False) as src:
            frames = list(src)
        with open_source(tmp_path / "clip.mp4") as local:
            expected = list(local)
    finally:
        server.shutdown()
        server.server_close()
    assert src.error is None and len(frames) == 10
    for f, g in zip(frames, expected, strict=True):
        assert f.index == g.index and f.pts == g.pts
        assert f.image is not None and g.image is not None and np.array_equal(f.image, g.image)
        assert f.audio is not None and g.audio is not None and np.array_equal(f.audio, g.audio)
