"""Media sources: files of every common form, AVSBench folders, image + wav, bad inputs."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import av
import media_factory as mf
import numpy as np
import pytest
import torch
from conftest import FIXTURES
from safetensors.numpy import load_file

from moca_rt import media
from moca_rt.media import (
    ContainerSource,
    MediaDecodeError,
    MediaNotFoundError,
    MediaOpenError,
    NoAudioStreamError,
    NoVideoStreamError,
    load_audio_16k,
    open_source,
)
from moca_rt.media.audio import _AudioAssembler
from moca_rt.media.sources import mpegts_cut_packet

SR = media.SAMPLE_RATE
N_WIN = 32000


@pytest.fixture(scope="module")
def mdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


def _peak_hz(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    k = int(np.argmax(spec))
    # parabolic interpolation of the peak bin
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / len(x)


def _onset_s(window: np.ndarray, pts: float, level: float) -> float:
    """Time (container clock) where the 2 ms RMS envelope first reaches half of ``level``."""
    env = np.sqrt(np.convolve(window.astype(np.float64) ** 2, np.ones(32) / 32, mode="same"))
    i = int(np.argmax(env >= 0.5 * level))
    return pts - 1.0 + i / SR


# (suffix, audio rate, channels): H.264+AAC mp4/mov/mkv, VP9+Opus webm
FORMATS = [(".mp4", 48000, 1), (".mkv", 44100, 2), (".mov", 8000, 1), (".webm", 48000, 2)]


@pytest.mark.parametrize(("suffix", "rate", "channels"), FORMATS)
def test_file_frames_and_windows(mdir: Path, suffix: str, rate: int, channels: int) -> None:
    path = mf.write_video(
        mdir / f"fmt_{rate}_{channels}{suffix}",
        num_frames=25,
        audio_rate=rate,
        audio_channels=channels,
        onset=0.3,
        audio_duration=1.0,
    )
    with open_source(path) as src:
        assert src.has_audio and src.audio_sample_rate == rate and src.audio_channels == channels
        frames = list(src)
    assert src.error is None
    assert [f.index for f in frames] == list(range(25))
    for f in frames:
        assert f.image is not None and f.image.dtype == np.uint8 and f.image.shape == (64, 64, 3)
        assert mf.read_index(f.image) == f.index % 12
        assert abs(f.pts - f.index / 25) < 1e-3
        assert f.audio is not None and f.audio.dtype == np.float32 and f.audio.shape == (N_WIN,)
        assert not (f.audio_missing or f.audio_incomplete or f.dropped)
    # frame 10 at 0.4 s: window [-0.6, 1.4) s; the tone lives in [0.3, 1.0) s
    f = frames[10]
    assert np.abs(f.audio[: int(0.8 * SR)]).max() < 0.02  # silence before t = 0.2 s
    assert np.abs(f.audio[int(1.65 * SR) :]).max() < 0.02  # nothing after the audio ended
    tone = f.audio[int(1.0 * SR) : int(1.55 * SR)]  # 0.4 .. 0.95 s
    assert abs(_peak_hz(tone) - 440.0) < 2.0
    assert abs(np.sqrt(np.mean(tone.astype(np.float64) ** 2)) - 0.5 / np.sqrt(2)) < 0.03
    onset = _onset_s(f.audio, f.pts, 0.5 / np.sqrt(2))
    assert abs(onset - 0.3) < 0.010, f"tone onset at {onset:.4f} s, expected 0.300 s"
    assert np.isfinite(f.audio).all()


def test_streamed_resampling_equals_whole_signal(mdir: Path) -> None:
    """The block-wise sinc resampler of the source matches one whole-signal resample."""
    from moca_rt.preprocess import resample

    path = mf.write_video(
        mdir / "long44.mkv", num_frames=50, audio_rate=44100, audio_channels=2, freq=1234.5
    )
    decoded = []
    with av.open(str(path)) as c:
        for fr in c.decode(audio=0):
            decoded.append(media.audio_frame_to_float(fr))
    mono = np.concatenate(decoded, axis=1).mean(axis=0)
    whole = resample(torch.from_numpy(mono), 44100, SR).numpy()
    with open_source(path) as src:
        frames = list(src)
    for f in frames[::7]:
        start = round(f.pts * SR) - N_WIN // 2
        ref = np.zeros(N_WIN, np.float32)
        lo, hi = max(start, 0), min(start + N_WIN, len(whole))
        ref[lo - start : hi - start] = whole[lo:hi]
        assert np.abs(f.audio - ref).max() < 1e-5  # float64 blocks vs a float32 whole pass


def test_resampled_wav_matches_reference_fixture() -> None:
    """44.1 kHz stereo PCM16 -> 16 kHz mono equals the mean of torchaudio's per-channel resample
    stored by the reference (``wav_stereo_44k1_2p5s.resampled_16k``)."""
    ref = load_file(str(FIXTURES / "media" / "wav_stereo_44k1_2p5s_resampled_16k.safetensors"))
    expected = ref["resampled_16k"].astype(np.float64).mean(axis=0)
    ring = load_audio_16k(FIXTURES / "media" / "wav_stereo_44k1_2p5s.wav")
    got = ring.window(0, len(expected))
    assert ring.start == 0 and ring.end == len(expected)
    err = np.abs(got - expected).max()
    assert err < 1e-5, f"max abs {err:.2e}"


def test_swr_resampler_option_close_to_sinc(mdir: Path) -> None:
    path = mf.write_video(mdir / "swr.mp4", num_frames=25, audio_rate=44100, onset=0.3)
    with open_source(path, resampler="swr") as a, open_source(path) as b:
        fa, fb = list(a), list(b)
    x, y = fa[12].audio, fb[12].audio
    assert x is not None and y is not None
    tone = slice(int(1.0 * SR), int(1.4 * SR))
    assert abs(_peak_hz(x[tone]) - 440.0) < 2.0
    assert np.abs(x - y).max() < 0.05
    assert abs(_onset_s(x, fa[12].pts, 0.354) - 0.3) < 0.010


def test_no_audio_stream(mdir: Path) -> None:
    path = mf.write_video(mdir / "silent.mp4", num_frames=5, audio_rate=None)
    with pytest.raises(NoAudioStreamError, match=r"no audio stream.*allow_silent"):
        open_source(path)
    with open_source(path, allow_silent=True) as src:
        frames = list(src)
    assert len(frames) == 5
    assert all(f.audio_missing and f.audio is not None and not f.audio.any() for f in frames)


def test_missing_empty_and_wrong_files(mdir: Path) -> None:
    missing = mdir / "nope.mp4"
    with pytest.raises(MediaNotFoundError, match=r"nope\.mp4") as exc:
        open_source(missing)
    assert isinstance(exc.value, FileNotFoundError)
    with pytest.raises(MediaOpenError, match="empty"):
        open_source(mf.write_zero_byte(mdir / "zero.mp4"))
    with pytest.raises(NoVideoStreamError, match="no video stream"):
        open_source(mf.write_wav_as_mp4(mdir / "audio_only.mp4"))
    good = mf.write_video(mdir / "good.mp4", num_frames=10)
    with pytest.raises(MediaOpenError, match=r"corrupt\.mp4"):
        open_source(mf.write_corrupt_header(good, mdir / "corrupt.mp4"))
    with pytest.raises(ValueError, match="fps"):
        open_source(good, fps=0)
    with pytest.raises(ValueError, match="audio"):
        open_source(good, audio="x.wav")


def test_truncated_file_yields_frames_then_error(mdir: Path) -> None:
    full = mf.write_video(mdir / "full.mkv", num_frames=50, audio_rate=44100)
    cut = mf.write_truncated(full, mdir / "cut.mkv", 0.6)
    got: list[int] = []
    with open_source(cut) as src, pytest.raises(MediaDecodeError, match="truncated"):
        for f in src:
            got.append(f.index)
    assert 10 < len(got) < 50 and got == list(range(len(got)))
    assert src.error is not None
    with open_source(cut, raise_on_error=False) as src2:
        n = sum(1 for _ in src2)
    assert n == len(got) and isinstance(src2.error, MediaDecodeError)


def test_truncated_mpegts_is_reported(mdir: Path) -> None:
    full = mf.write_video(mdir / "full.ts", num_frames=50, audio_rate=44100)
    with open_source(full) as src:
        assert sum(1 for _ in src) == 50 and src.error is None
    cut = mf.write_truncated(full, mdir / "cut.ts", 0.6)
    assert cut.stat().st_size % 188  # the cut falls inside a packet
    got = 0
    with open_source(cut) as src, pytest.raises(MediaDecodeError, match="bytes into a 188-byte"):
        for _ in src:
            got += 1
    assert 10 < got < 50
    # A cut on a packet boundary cannot be told from a clean end (the docstring says so).
    whole = mdir / "whole.ts"
    whole.write_bytes(full.read_bytes()[: 188 * (cut.stat().st_size // 188)])
    assert mpegts_cut_packet(whole) is None


def test_mpegts_packet_layouts(tmp_path: Path) -> None:
    for packet, sync in ((188, 0), (192, 4), (204, 0)):
        data = bytearray(packet * 10)
        for k in range(10):
            data[sync + k * packet] = 0x47
        path = tmp_path / f"p{packet}.ts"
        path.write_bytes(bytes(data))
        assert mpegts_cut_packet(path) is None, packet
        path.write_bytes(bytes(data[:-7]))
        assert f"{packet - 7} bytes into a {packet}-byte" in (mpegts_cut_packet(path) or ""), packet
    path = tmp_path / "not_ts.ts"
    path.write_bytes(b"\x00" * 1000)
    assert mpegts_cut_packet(path) is None  # no layout fits: not judged


def test_one_frame_and_4k(mdir: Path) -> None:
    with open_source(mf.write_video(mdir / "one.mp4", num_frames=1)) as src:
        frames = list(src)
    assert len(frames) == 1 and frames[0].index == 0
    big = mf.write_video(mdir / "uhd.mp4", num_frames=1, height=2160, width=3840, audio_rate=16000)
    with open_source(big) as src:
        frames = list(src)
    assert len(frames) == 1 and frames[0].image is not None
    assert frames[0].image.shape == (2160, 3840, 3) and src.width == 3840
    assert mf.read_index(frames[0].image) == 0


def test_fps_selection_skips_frames(mdir: Path) -> None:
    path = mf.write_video(mdir / "fps.mp4", num_frames=25)
    with open_source(path, fps=5) as src:
        frames = list(src)
    assert [f.index for f in frames] == [0, 5, 10, 15, 20]
    assert src.stats.frames_skipped == 20 and src.stats.frames_decoded == 25
    assert all(mf.read_index(f.image) == f.index % 12 for f in frames if f.image is not None)


def test_avsbench_folder(mdir: Path) -> None:
    frames_dir, _wav = mf.write_avsbench_clip(mdir / "avs", "clipA")
    expected = mf.sine(440.0, SR, 5.0)[0]
    expected = np.round(expected * 32767) / 32768
    with open_source(frames_dir) as src:
        frames = list(src)
    assert [f.pts for f in frames] == [0.5, 1.5, 2.5, 3.5, 4.5]
    for k, f in enumerate(frames):
        assert f.image is not None and mf.read_index(f.image) == k
        start = round(f.pts * SR) - N_WIN // 2
        ref = np.zeros(N_WIN)
        lo, hi = max(start, 0), min(start + N_WIN, len(expected))
        ref[lo - start : hi - start] = expected[lo:hi]
        assert f.audio is not None and np.abs(f.audio - ref).max() < 1e-6
    assert not frames[0].audio[:8000].any()  # window starts at -0.5 s


def test_image_wav_pair_and_nonfinite_audio(mdir: Path) -> None:
    from PIL import Image

    img = mdir / "still.png"
    Image.fromarray(mf.make_frame(3, 40, 50)).save(img)
    wav = mdir / "nan.wav"
    samples = mf.sine(440.0, SR, 2.0)
    samples[0, 100:110] = np.nan
    samples[0, 200] = np.inf
    with av.open(str(wav), "w", format="wav") as out:
        st = out.add_stream("pcm_f32le", rate=SR, layout="mono")
        fr = av.AudioFrame.from_ndarray(samples, format="flt", layout="mono")
        fr.sample_rate, fr.pts = SR, 0
        for p in st.encode(fr):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        src = open_source(img, audio=wav)
    assert any("NaN" in str(w.message) for w in caught)
    assert src.stats.nonfinite_samples == 11
    frames = list(src)
    assert len(frames) == 1 and frames[0].pts == pytest.approx(1.0)
    a = frames[0].audio
    assert a is not None and np.isfinite(a).all()
    assert not a[100:110].any() and a[200] == 0.0
    np.testing.assert_allclose(a[300:], samples[0, 300:], atol=1e-7)
    with pytest.raises(NoAudioStreamError):
        open_source(img)


def test_assembler_places_audio_by_pts_not_sample_count() -> None:
    stats = media.SourceStats()
    asm = _AudioAssembler("sinc", stats)
    ones = np.ones((1, 1600), np.float32)
    asm.push(ones, SR, 0.5)  # [0.5, 0.6)
    asm.push(2 * ones, SR, 0.7)  # gap of 0.1 s, then [0.7, 0.8)
    asm.push(3 * ones, SR, 0.75)  # overlaps by 0.05 s: the overlap is dropped
    asm.finish()
    w = asm.window(1.0, 2.0)  # [0, 2) s
    assert not w[:8000].any() and (w[8000:9600] == 1).all()
    assert not w[9600:11200].any() and (w[11200:12800] == 2).all()
    assert (w[12800:13600] == 3).all() and not w[13600:].any()
    assert stats.audio_gaps == 1 and stats.audio_overlaps == 1


def test_realtime_slow_consumer_records_every_frame(mdir: Path) -> None:
    path = mf.write_video(mdir / "rt.mp4", num_frames=40)
    with ContainerSource(path, realtime=True, queue_size=2) as src:
        frames = []
        for f in src:
            frames.append(f)
            time.sleep(0.02)
    assert [f.index for f in frames] == list(range(40))
    dropped = [f for f in frames if f.dropped]
    assert dropped and all(f.image is None and f.audio is None for f in dropped)
    assert src.stats.frames_dropped == len(dropped)
    kept = [f for f in frames if not f.dropped]
    assert kept and all(mf.read_index(f.image) == f.index % 12 for f in kept)


def test_close_mid_stream_stops_decoder(mdir: Path) -> None:
    path = mf.write_video(mdir / "stop.mp4", num_frames=60)
    src = ContainerSource(path, queue_size=1)
    it = iter(src)
    next(it)
    src.close()
    assert not src._thread.is_alive()
    assert all(
        t.name != "moca-media-decoder" or not t.is_alive()
        for t in threading.enumerate()
        if t is src._thread
    )
    with pytest.raises(RuntimeError, match="single-pass"):
        iter(src).__next__()


def test_decode_throughput_224(mdir: Path) -> None:
    path = mf.write_video(mdir / "tp.mp4", num_frames=100, height=224, width=224)
    with open_source(path) as src:
        next(iter(src))  # warm-up: torch import, first resample kernel
    t0 = time.perf_counter()
    with open_source(path) as src:
        n = sum(1 for _ in src)
    fps = n / (time.perf_counter() - t0)
    print(f"decode throughput 224x224 H.264+AAC 48 kHz: {fps:.0f} frames/s")
    assert n == 100 and fps > 25, "slower than real time at 25 fps"


def test_channel_mix_mean_or_first(mdir: Path) -> None:
    from PIL import Image

    img = mdir / "mix.png"
    Image.fromarray(mf.make_frame(0, 16, 16)).save(img)
    left = mf.sine(440.0, SR, 2.0)[0]
    wav = mf.write_wav(mdir / "mix.wav", np.stack([left, np.zeros_like(left)]), SR)
    pcm = np.round(left * 32767) / 32768
    with open_source(img, audio=wav) as mean_src, open_source(img, audio=wav, mix="first") as first:
        a, b = next(iter(mean_src)).audio, next(iter(first)).audio
    assert a is not None and b is not None
    np.testing.assert_allclose(a, pcm / 2, atol=1e-7)
    np.testing.assert_allclose(b, pcm, atol=1e-7)
    with pytest.raises(ValueError, match="mix"):
        open_source(img, audio=wav, mix="left")


def test_unknown_option_is_a_value_error(mdir: Path) -> None:
    good = mf.write_video(mdir / "opts.mp4", num_frames=2)
    with pytest.raises(ValueError, match=r"options \['frame_rate'\]"):
        open_source(good, frame_rate=5)
    frames_dir, _ = mf.write_avsbench_clip(mdir / "avs_opts", "clipB", num_frames=2, duration=2.0)
    with pytest.raises(ValueError, match="timeout"):
        open_source(frames_dir, timeout=3.0)
    with open_source(frames_dir, fps=0.5, window_s=1.0) as src:
        frames = list(src)
    assert [f.index for f in frames] == [0] and frames[0].audio is not None  # 1 per 2 s
    assert frames[0].audio.shape == (SR,)
