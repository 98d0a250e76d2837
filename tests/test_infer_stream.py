"""``python -m moca_rt.infer udp://...`` on a live loopback stream.

A sender subprocess (``tests/media_factory.py``) pushes H.264 + AAC MPEG-TS over UDP to
127.0.0.1 in real time while the CLI (a second subprocess, tiny random model, no proposals)
segments it. When the sender stops, the stream times out, and the CLI must end on its own with
exit 0 and one record per received frame. Every wait is bounded.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import media_factory as mf
import numpy as np
from PIL import Image

from moca_rt.sinks import decode_rle, read_jsonl

SECONDS = 3.0


def _port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def test_cli_segments_a_live_udp_stream(tmp_path: Path) -> None:
    port = mf.free_udp_port()
    out = tmp_path / "live"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "moca_rt.infer",
            f"udp://127.0.0.1:{port}",
            "--out",
            str(out),
            *("--preset", "moca_test", "--proposals", "none", "--no-progress", "--device", "cpu"),
            "--realtime",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    sender = None
    try:
        # start sending once the CLI listens on the port (UDP sent earlier would be lost)
        deadline = time.monotonic() + 60
        while not _port_taken(port):
            assert cli.poll() is None, cli.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the CLI never opened the UDP port"
            time.sleep(0.05)
        sender = mf.start_udp_sender(port, SECONDS, start_delay=0.2)
        sent_out, sent_err = sender.communicate(timeout=30)
        assert sender.returncode == 0, sent_err[-2000:]
        # no data for the source's timeout (5 s) ends the stream: the CLI exits by itself
        stdout, stderr = cli.communicate(timeout=40)
    finally:
        for proc in (cli, sender):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert cli.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    sent = mf.frames_sent(sent_out)
    records = read_jsonl(out / "records.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    processed = [r for r in records if not r["dropped"]]
    print(
        f"live udp: {len(records)} of {sent} sent frames arrived ({len(processed)} segmented, "
        f"{len(records) - len(processed)} dropped records)"
    )
    # one record per received frame, in order, and the summary agrees
    assert summary["frames"] == len(records) and summary["error"] is None
    assert summary["processed"] == len(processed) and summary["dropped"] == len(records) - len(
        processed
    )
    indices = [r["index"] for r in records]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    assert len(records) >= 0.8 * sent
    assert processed, "no frame was segmented"
    for rec in processed:
        mask = decode_rle(rec)
        assert mask.shape == (96, 128)
        png = np.asarray(Image.open(out / "masks" / f"{rec['index']:06d}.png"))
        assert np.array_equal(mask * 255, png)
        assert not rec["silent"]  # the 440 Hz tone is in every window of the stream's middle
    assert f"{len(records)} frames ({len(processed)} processed" in stdout
