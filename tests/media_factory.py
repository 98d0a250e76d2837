"""Helpers that write small synthetic test media with PyAV (no files are downloaded).

Every video frame carries its own index in a flat grey patch (top-left quarter, level
``index_level(i)``) so tests can check order and completeness after lossy H.264 coding, and
the audio is a pure sine so frequency, amplitude and alignment can be checked after AAC and
resampling.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


def index_level(i: int) -> int:
    """Grey level (0..255) that encodes frame ``i``: steps of 20, so 12 distinct values."""
    return 20 + 20 * (i % 12)


def read_index(image: np.ndarray) -> int:
    """Inverse of :func:`index_level` modulo 12, read from the patch centre of an RGB frame."""
    h, w = image.shape[:2]
    patch = image[h // 8 : h // 4 + 1, w // 8 : w // 4 + 1].astype(np.float64).mean()
    return round((patch - 20.0) / 20.0) % 12


def make_frame(i: int, height: int, width: int) -> np.ndarray:
    """uint8 HWC RGB frame: a gradient background and the index patch in the top-left quarter."""
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), np.uint8)
    img[..., 0] = (xx * 255 // max(width - 1, 1)).astype(np.uint8)
    img[..., 1] = (yy * 255 // max(height - 1, 1)).astype(np.uint8)
    img[..., 2] = 128
    img[: height // 2 + 1, : width // 2 + 1] = index_level(i)
    return img


def sine(
    freq: float, sample_rate: int, duration: float, channels: int = 1, amplitude: float = 0.5
) -> np.ndarray:
    """float32 [channels, samples] sine starting at phase 0 at t = 0 (same in every channel)."""
    n = round(duration * sample_rate)
    t = np.arange(n, dtype=np.float64) / sample_rate
    wave = (amplitude * np.sin(2.0 * np.pi * freq * t)).astype(np.float32)
    return np.repeat(wave[None], channels, axis=0)


def block_frames(sizes: list[tuple[int, int]], seed: int) -> list[np.ndarray]:
    """Random uint8 RGB frames of the given (height, width) with a flat red block in the top-left
    quarter, so k-means has structure to find."""
    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img[: h // 2, : w // 2] = (200, 40, 40)
        out.append(img)
    return out


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write float32 [C, N] samples in [-1, 1] as PCM16 WAV."""
    path = Path(path)
    channels = samples.shape[0]
    pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream(
            "pcm_s16le", rate=sample_rate, layout="mono" if channels == 1 else "stereo"
        )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm.T.reshape(1, -1)), format="s16", layout=stream.layout.name
        )
        frame.sample_rate = sample_rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_video(
    path: str | Path,
    *,
    num_frames: int = 25,
    fps: int = 25,
    height: int = 64,
    width: int = 64,
    audio_rate: int | None = 48000,
    audio_channels: int = 1,
    freq: float = 440.0,
    amplitude: float = 0.5,
    audio_duration: float | None = None,
    onset: float = 0.0,
    vcodec: str | None = None,
    acodec: str | None = None,
    container_format: str | None = None,
) -> Path:
    """Write a video with ``num_frames`` indexed frames and (optionally) a sine soundtrack.

    Defaults by suffix: .mp4/.mov/.mkv/.ts -> H.264 (libx264) + AAC, .webm -> VP9 + Opus (48 kHz).
    ``audio_rate=None`` writes a video without an audio stream. The audio lasts
    ``audio_duration`` seconds (default: the video duration) and starts at t = 0; it is
    silent before ``onset`` seconds (a sharp tone onset for alignment checks).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if vcodec is None:
        vcodec = "libvpx-vp9" if suffix == ".webm" else "libx264"
    if acodec is None:
        acodec = "libopus" if suffix == ".webm" else "aac"
    with av.open(str(path), "w", format=container_format) as out:
        vs = out.add_stream(vcodec, rate=fps)
        vs.width, vs.height = width, height
        vs.pix_fmt = "yuv420p"
        if vcodec == "libx264":
            vs.options = {"preset": "ultrafast", "crf": "18"}
        elif vcodec == "libvpx-vp9":
            vs.options = {"deadline": "realtime", "cpu-used": "8"}
        a_stream = None
        if audio_rate is not None:
            layout = "mono" if audio_channels == 1 else "stereo"
            a_stream = out.add_stream(acodec, rate=audio_rate, layout=layout)
            a_stream.bit_rate = 128000
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(make_frame(i, height, width), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if a_stream is not None and audio_rate is not None:
            duration = num_frames / fps if audio_duration is None else audio_duration
            wave = sine(freq, audio_rate, duration, audio_channels, amplitude)
            wave[:, : round(onset * audio_rate)] = 0.0
            chunk = 1024
            resampler_fmt = a_stream.codec_context.format.name
            for start in range(0, wave.shape[1], chunk):
                piece = np.ascontiguousarray(wave[:, start : start + chunk])
                af = av.AudioFrame.from_ndarray(piece, format="fltp", layout=a_stream.layout.name)
                af.sample_rate = audio_rate
                af.pts = start
                af.time_base = Fraction(1, audio_rate)
                if resampler_fmt != "fltp":
                    af = av.AudioResampler(format=resampler_fmt).resample(af)[0]
                for packet in a_stream.encode(af):
                    out.mux(packet)
            for packet in a_stream.encode(None):
                out.mux(packet)
    return path


def write_truncated(src: str | Path, dst: str | Path, keep_fraction: float) -> Path:
    """Copy the first ``keep_fraction`` of ``src``'s bytes to ``dst`` (a truncated download)."""
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.write_bytes(data[: int(len(data) * keep_fraction)])
    return dst


def write_corrupt_header(src: str | Path, dst: str | Path, nbytes: int = 4096) -> Path:
    """Copy ``src`` with its first ``nbytes`` overwritten by seeded random bytes."""
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(0)
    n = min(nbytes, len(data))
    data[:n] = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    dst = Path(dst)
    dst.write_bytes(bytes(data))
    return dst


def write_zero_byte(path: str | Path) -> Path:
    path = Path(path)
    path.write_bytes(b"")
    return path


def write_wav_as_mp4(path: str | Path, sample_rate: int = 16000, duration: float = 1.0) -> Path:
    """A PCM WAV file saved under a .mp4 name (audio only, no video stream)."""
    path = Path(path)
    tmp = path.with_suffix(".tmp.wav")
    write_wav(tmp, sine(440.0, sample_rate, duration), sample_rate)
    shutil.move(tmp, path)
    return path


def write_avsbench_clip(
    root: str | Path,
    vid: str,
    *,
    num_frames: int = 5,
    height: int = 48,
    width: int = 64,
    sample_rate: int = 16000,
    freq: float = 440.0,
    duration: float = 5.0,
) -> tuple[Path, Path]:
    """AVSBench-style clip: ``visual_frames/<vid>/<vid>_<k>.png`` (k = 1..5) and
    ``audio_wav/<vid>.wav``."""
    from PIL import Image

    root = Path(root)
    frames_dir = root / "visual_frames" / vid
    frames_dir.mkdir(parents=True, exist_ok=True)
    for k in range(num_frames):
        Image.fromarray(make_frame(k, height, width)).save(frames_dir / f"{vid}_{k + 1}.png")
    wav_dir = root / "audio_wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    wav = write_wav(wav_dir / f"{vid}.wav", sine(freq, sample_rate, duration), sample_rate)
    return frames_dir, wav


def send_mpegts_udp(
    url: str,
    *,
    seconds: float = 3.0,
    fps: int = 25,
    height: int = 96,
    width: int = 128,
    audio_rate: int = 48000,
    freq: float = 440.0,
    start_delay: float = 1.0,
) -> int:
    """Encode indexed frames + a sine as H.264/AAC MPEG-TS and send them to ``url`` in real time.

    Returns the number of video frames sent. Meant to run in a subprocess (see ``__main__``).
    """
    time.sleep(start_delay)
    num_frames = round(seconds * fps)
    with av.open(url, "w", format="mpegts") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "ultrafast", "tune": "zerolatency", "g": str(fps // 2)}
        a_stream = out.add_stream("aac", rate=audio_rate, layout="mono")
        wave = sine(freq, audio_rate, seconds + 0.1)
        audio_pos = 0
        t0 = time.monotonic()
        for i in range(num_frames):
            due = t0 + i / fps
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            frame = av.VideoFrame.from_ndarray(make_frame(i, height, width), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
            # Audio up to the end of this frame's period, in 1024-sample AAC frames.
            while audio_pos + 1024 <= (i + 1) * audio_rate // fps + 1024:
                piece = np.ascontiguousarray(wave[:, audio_pos : audio_pos + 1024])
                af = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                af.sample_rate, af.pts, af.time_base = (
                    audio_rate,
                    audio_pos,
                    Fraction(1, audio_rate),
                )
                for packet in a_stream.encode(af):
                    out.mux(packet)
                audio_pos += 1024
        for packet in vs.encode(None):
            out.mux(packet)
        for packet in a_stream.encode(None):
            out.mux(packet)
    return num_frames


def free_udp_port() -> int:
    """A UDP port of 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_udp_sender(port: int, seconds: float, start_delay: float) -> subprocess.Popen[str]:
    """Run :func:`send_mpegts_udp` to ``udp://127.0.0.1:port`` in a subprocess (this file's
    ``__main__``); its stdout ends with ``sent N frames`` (see :func:`frames_sent`)."""
    url = f"udp://127.0.0.1:{port}?pkt_size=1316"
    return subprocess.Popen(
        [
            sys.executable,
            __file__,
            url,
            "--seconds",
            str(seconds),
            "--start-delay",
            str(start_delay),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def frames_sent(sender_stdout: str) -> int:
    """The frame count a :func:`start_udp_sender` subprocess printed."""
    return int(sender_stdout.split()[1])


def write_float_wav(path: str | Path, samples: np.ndarray, sample_rate: int) -> Path:
    """Write float32 [C, N] samples as IEEE-float WAV, unclipped (NaN/inf kept as they are)."""
    path = Path(path)
    channels = samples.shape[0]
    with av.open(str(path), "w", format="wav") as out:
        stream = out.add_stream(
            "pcm_f32le", rate=sample_rate, layout="mono" if channels == 1 else "stereo"
        )
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples.astype(np.float32).T.reshape(1, -1)),
            format="flt",
            layout=stream.layout.name,
        )
        frame.sample_rate = sample_rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Send a synthetic H.264/AAC MPEG-TS over UDP.")
    parser.add_argument("url", help="Destination, e.g. udp://127.0.0.1:5000?pkt_size=1316.")
    parser.add_argument("--seconds", type=float, default=3.0, help="Length of the stream.")
    parser.add_argument("--start-delay", type=float, default=1.0, help="Wait before sending.")
    args = parser.parse_args()
    sent = send_mpegts_udp(args.url, seconds=args.seconds, start_delay=args.start_delay)
    print(f"sent {sent} frames", flush=True)
