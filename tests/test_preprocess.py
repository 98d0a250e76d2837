"""moca_rt.preprocess against the official ImageBind preprocessing fixtures, plus properties.

Fixtures: tests/fixtures/preprocessing (copied from the reference set; produced by the original
imagebind/data.py with torchaudio's kaldi fbank and resample, and torchvision's PIL transforms).
"""

from __future__ import annotations

import json
import math
import time
import wave
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, requires_cuda
from numeric import compare
from PIL import Image
from safetensors.torch import load_file

from moca_rt import preprocess as P

PRE = FIXTURES / "preprocessing"
CASES = json.loads((PRE / "cases.json").read_text())
AUDIO_CASES = sorted(CASES["audio_cases"])
IMAGE_CASES = sorted(CASES["image_cases"])
PAD_VALUE = (0.0 - P.AUDIO_MEAN) / P.AUDIO_STD


def read_wav(path: Path) -> tuple[torch.Tensor, int]:
    """PCM16 WAV -> float32 [C, T] equal to int16 / 32768 (what torchaudio.load returns)."""
    with wave.open(str(path), "rb") as f:
        if f.getsampwidth() != 2:
            raise ValueError(f"{path}: expected 16-bit PCM, got {8 * f.getsampwidth()}-bit")
        channels, rate, n = f.getnchannels(), f.getframerate(), f.getnframes()
        data = np.frombuffer(f.readframes(n), dtype="<i2").reshape(n, channels)
    return torch.from_numpy(data.T.astype(np.float32) / np.float32(32768.0)), rate


@cache
def audio_ref() -> dict[str, torch.Tensor]:
    return load_file(str(PRE / "audio.safetensors"))


@cache
def vision_ref() -> dict[str, torch.Tensor]:
    return load_file(str(PRE / "vision.safetensors"))


def mel_banks_numpy(rate: int = 16000, n_mels: int = 128, n_fft: int = 512) -> np.ndarray:
    """HTK-mel triangles in float64, from the description (20 Hz..Nyquist, zero last bin)."""

    def mel(f: np.ndarray | float) -> np.ndarray:
        return 1127.0 * np.log(1.0 + np.asarray(f) / 700.0)

    lo, hi = mel(20.0), mel(rate / 2)
    edges = lo + np.arange(n_mels + 2) * (hi - lo) / (n_mels + 1)
    bins = mel(np.arange(n_fft // 2) * rate / n_fft)
    banks = np.zeros((n_mels, n_fft // 2 + 1))
    for m in range(n_mels):
        left, centre, right = edges[m], edges[m + 1], edges[m + 2]
        rise = (bins - left) / (centre - left)
        fall = (right - bins) / (right - centre)
        banks[m, : n_fft // 2] = np.maximum(0.0, np.minimum(rise, fall))
    return banks


def fbank_numpy_reference(x: np.ndarray, rate: int = 16000, n_mels: int = 128) -> np.ndarray:
    """Independent float64 kaldi fbank written from the algorithm's description, frame by frame."""
    win, shift, n_fft = int(rate * 0.025), int(rate * 0.010), 512
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / (win - 1))
    banks = mel_banks_numpy(rate, n_mels, n_fft)
    out = []
    for start in range(0, len(x) - win + 1, shift):
        frame = x[start : start + win].astype(np.float64)
        frame = frame - frame.mean()
        frame = frame - 0.97 * np.concatenate([frame[:1], frame[:-1]])
        spec = np.abs(np.fft.rfft(frame * hann, n=n_fft)) ** 2
        out.append(np.log(np.maximum(banks @ spec, np.finfo(np.float32).eps)))
    return np.stack(out)


# ------------------------------------------------------------------------------------------
# fixtures: audio


@pytest.mark.parametrize("case", AUDIO_CASES)
def test_audio_fixture_official_and_noalias(case: str) -> None:
    wav, rate = read_wav(PRE / f"{case}.wav")
    info = CASES["media"][case]
    assert (rate, wav.shape[0], wav.shape[1]) == (
        info["sample_rate"],
        info["channels"],
        info["samples"],
    )
    ref = audio_ref()
    checked = 0
    for aliasing, suffix in (("official", "official"), ("independent", "noalias")):
        key = f"{case}.{suffix}"
        if key not in ref:
            continue
        ours = P.imagebind_audio(wav, rate, aliasing=aliasing)  # type: ignore[arg-type]
        c = compare(ours, ref[key])
        print(f"{key}: {c}")
        assert ours.shape == ref[key].shape == (3, 1, 128, 204)
        assert c.max_abs <= 1e-4, f"{key}: {c}"
        checked += 1
    assert checked >= 1
    if f"{case}.noalias" not in ref:  # stored only where it differs materially from official
        ind = P.imagebind_audio(wav, rate, aliasing="independent")
        c = compare(ind, ref[f"{case}.official"])
        print(f"{case}: independent vs official fixture: {c}")
        assert c.max_abs <= 1e-4


@pytest.mark.parametrize("case", AUDIO_CASES)
def test_clip_ranges_match_cases_json(case: str) -> None:
    info = CASES["audio_cases"][case]
    n = info["waveform_samples_16k"]
    expected = [
        (s, min(e, n)) for s, e in info["clip_sample_ranges_16k"]
    ]  # cases.json keeps the unclamped end
    assert P.clip_sample_ranges(n) == expected
    frames = [1 + (e - s - 400) // 160 for s, e in expected]
    assert frames == info["fbank_frames_before_pad_or_crop"]


@pytest.mark.parametrize("case", ["wav_5s_16k", "wav_stereo_44k1_2p5s"])
def test_aliasing_changes_exactly_the_listed_frames(case: str) -> None:
    wav, rate = read_wav(PRE / f"{case}.wav")
    off = P.imagebind_audio(wav, rate, aliasing="official")
    ind = P.imagebind_audio(wav, rate, aliasing="independent")
    changed = ((off - ind).abs() > 1e-3).any(dim=2)[:, 0]  # [3, 204] frames
    listed = CASES["audio_cases"][case]["frames_changed_gt_1e-3_by_aliasing"]
    assert [torch.nonzero(c).flatten().tolist() for c in changed] == listed


def test_resampled_stereo_fixture() -> None:
    wav, rate = read_wav(PRE / "wav_stereo_44k1_2p5s.wav")
    ref = audio_ref()["wav_stereo_44k1_2p5s.resampled_16k"]
    ours = P.resample(wav, rate, 16000)
    c = compare(ours, ref)
    print(f"resampled_16k 44100->16000: {c}")
    assert ours.shape == ref.shape == (2, 40000)
    assert c.max_abs <= 1e-6, c


# ------------------------------------------------------------------------------------------
# fixtures: images


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_image_fixture(case: str) -> None:
    image = Image.open(PRE / f"{case}.png")
    crop = P.resize_center_crop(image)
    expected = np.asarray(Image.open(PRE / f"{case}_resized_cropped_224.png").convert("RGB"))
    assert crop.shape == (224, 224, 3) and crop.dtype == np.uint8
    assert np.array_equal(crop, expected), f"{case}: {np.abs(crop.astype(int) - expected).max()}"
    ref = vision_ref()[f"{case}.official"]
    for name, ours in (
        ("pil", P.preprocess_image(image)),
        ("numpy", P.preprocess_images([np.asarray(image.convert("RGB"))])[0]),
        (
            "torch",
            P.preprocess_images_torch(torch.from_numpy(np.array(image.convert("RGB")))[None])[0],
        ),
    ):
        c = compare(ours, ref)
        print(f"{case} [{name}]: {c}")
        assert c.max_abs <= 1e-6, f"{case} [{name}]: {c}"


@pytest.mark.parametrize(
    "hw", [(37, 91), (120, 77), (240, 60), (225, 224), (300, 224), (224, 301), (500, 640)]
)
def test_torch_image_path_is_bit_exact_with_pil(hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    frames = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    ref = P.preprocess_images(list(frames))
    ours = P.preprocess_images_torch(torch.from_numpy(frames))
    assert ours.shape == (2, 3, 224, 224)
    assert torch.equal(ours, ref), f"{hw}: max diff {(ours - ref).abs().max().item()}"


def test_resize_size_rule() -> None:
    img = np.zeros((480, 640, 3), np.uint8)
    img[:, 37] = 255  # a column left of the crop (left offset is (298 - 224) / 2 = 37 px)
    crop = P.resize_center_crop(img)
    assert crop.shape == (224, 224, 3)
    tall = P.resize_center_crop(np.zeros((700, 100, 3), np.uint8))
    assert tall.shape == (224, 224, 3)


# ------------------------------------------------------------------------------------------
# properties: clip sampling, durations


def test_clip_ranges_other_durations() -> None:
    assert P.clip_sample_ranges(8000) == [(0, 8000)] * 3  # 0.5 s: whole waveform thrice
    assert P.clip_sample_ranges(32000) == [(0, 32000)] * 3
    assert P.clip_sample_ranges(52800) == [(0, 32000), (10399, 42399), (20799, 52799)]  # 3.3 s
    assert P.clip_sample_ranges(112000) == [(0, 32000), (40000, 72000), (80000, 112000)]  # 7 s


def test_short_audio_is_padded_after_log() -> None:
    wav = torch.randn(1, 8000, generator=torch.Generator().manual_seed(0)) * 0.1
    out = P.imagebind_audio(wav, 16000)
    n_frames = 1 + (8000 - 400) // 160
    assert out.shape == (3, 1, 128, 204)
    assert torch.allclose(out[..., n_frames:], torch.tensor(PAD_VALUE), atol=1e-6, rtol=0)
    assert not torch.isclose(out[..., :n_frames], torch.tensor(PAD_VALUE), atol=1e-6).any()
    # the three clips are the same waveform: equal up to the re-subtracted residual mean
    assert (out[1] - out[0]).abs().max() < 1e-3


def test_3p3s_clips_use_truncated_starts() -> None:
    wav = torch.randn(1, 52800, generator=torch.Generator().manual_seed(1)) * 0.2
    out = P.imagebind_audio(wav, 16000, aliasing="independent")
    for k, (s, e) in enumerate([(0, 32000), (10399, 42399), (20799, 52799)]):
        clip = wav[0, s:e] - wav[0, s:e].mean()
        feats = torch.nn.functional.pad(P.fbank(clip).T, (0, 204 - 198))  # zeros, then normalise
        expected = (feats - P.AUDIO_MEAN) / P.AUDIO_STD
        assert torch.allclose(out[k, 0], expected, atol=1e-5), k


def test_7s_clips_are_disjoint_so_aliasing_has_no_effect() -> None:
    wav = torch.randn(1, 112000, generator=torch.Generator().manual_seed(2)) * 0.3 + 0.05
    off = P.imagebind_audio(wav, 16000, aliasing="official")
    ind = P.imagebind_audio(wav, 16000, aliasing="independent")
    assert (off - ind).abs().max() < 1e-4
    # a 2 s clip has 198 frames: frames 198..203 are the zero padding, the others are not
    is_pad = torch.isclose(off, torch.tensor(PAD_VALUE), atol=1e-6).all(dim=2)[:, 0]  # [3, 204]
    assert is_pad[:, 198:].all() and not is_pad[:, :198].any()


def test_silence_is_finite() -> None:
    out = P.imagebind_audio(torch.zeros(2, 40000), 16000)
    assert torch.isfinite(out).all()
    floor = (math.log(torch.finfo(torch.float32).eps) - P.AUDIO_MEAN) / P.AUDIO_STD
    assert torch.allclose(out[..., :198], torch.full_like(out[..., :198], floor), atol=1e-5)
    assert torch.allclose(out[..., 198:], torch.tensor(PAD_VALUE), atol=1e-6)
    assert torch.isfinite(P.preprocess_images([np.zeros((50, 60, 3), np.uint8)])).all()


# ------------------------------------------------------------------------------------------
# properties: fbank


def test_fbank_matches_independent_float64_reference() -> None:
    g = torch.Generator().manual_seed(3)
    t = torch.arange(9000) / 16000
    x = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.05 * torch.randn(9000, generator=g) + 0.1
    ours = P.fbank(x.to(torch.float32))
    ref = fbank_numpy_reference(x.double().numpy())
    assert ours.shape == ref.shape == (1 + (9000 - 400) // 160, 128)
    err = np.abs(ours.double().numpy() - ref).max()
    print(f"fbank float32 vs float64 numpy reference: max_abs {err:.3e} (log-mel units)")
    assert err < 2e-3
    # float64 input: only the mel matrix stays float32-derived, as in the reference
    err64 = np.abs(P.fbank(x.to(torch.float64)).numpy() - ref).max()
    print(f"fbank float64 vs float64 numpy reference: max_abs {err64:.3e}")
    assert err64 < 2e-4


def test_mel_filterbank_matches_float64_description() -> None:
    banks = P.mel_filterbank()
    ref = mel_banks_numpy()
    assert banks.shape == ref.shape == (128, 257) and banks.dtype == torch.float32
    assert np.abs(banks.double().numpy() - ref).max() < 5e-5  # float32 mel values ~2800
    assert torch.all(banks >= 0) and torch.all(banks[:, -1] == 0)
    # 128 filters on 256 bins: some of the lowest are narrower than a bin and catch none
    assert torch.equal(banks.sum(dim=1) == 0, torch.from_numpy(ref.sum(axis=1) == 0))
    assert bool((banks.sum(dim=1) == 0).any())


def test_fbank_batched_equals_loop_and_frame_count() -> None:
    x = torch.randn(4, 16123, generator=torch.Generator().manual_seed(4)) * 0.2
    batched = P.fbank(x)
    assert batched.shape == (4, 1 + (16123 - 400) // 160, 128)
    for i in range(4):
        assert torch.allclose(batched[i], P.fbank(x[i]), atol=1e-5, rtol=0)
    assert P.fbank(torch.randn(400)).shape == (1, 128)


def test_batch_windows_equal_single_calls() -> None:
    g = torch.Generator().manual_seed(5)
    for n in (32000, 40000, 20000):
        windows = torch.randn(3, n, generator=g) * 0.2 + 0.01
        for aliasing in ("official", "independent"):
            batched = P.imagebind_audio_batch(windows, aliasing=aliasing)  # type: ignore[arg-type]
            assert batched.shape == (3, 3, 1, 128, 204)
            for b in range(3):
                single = P.imagebind_audio(windows[b], 16000, aliasing=aliasing)  # type: ignore[arg-type]
                assert torch.allclose(batched[b], single, atol=1e-5, rtol=0), (n, aliasing, b)
    stereo = torch.randn(2, 2, 32000, generator=g) * 0.2
    mono = P.imagebind_audio_batch(stereo, channels="mean")
    assert torch.allclose(mono, P.imagebind_audio_batch(stereo.mean(dim=1)), atol=1e-5)


def test_batch_does_not_modify_input() -> None:
    windows = torch.randn(2, 80000, generator=torch.Generator().manual_seed(6)) + 0.5
    before = windows.clone()
    P.imagebind_audio_batch(windows, aliasing="official")
    assert torch.equal(windows, before)


def test_audio_windows_centred_and_zero_padded() -> None:
    wav = torch.arange(1, 48001, dtype=torch.float32)  # 3 s, no zeros inside
    win = P.audio_windows(wav, [0.0, 1.5, 2.9])
    assert win.shape == (3, 32000)
    assert torch.all(win[0, :16000] == 0) and torch.equal(win[0, 16000:], wav[:16000])
    assert torch.equal(win[1], wav[24000 - 16000 : 24000 + 16000])
    assert torch.equal(win[2, : 48000 - 30400], wav[30400:]) and torch.all(
        win[2, 48000 - 30400 :] == 0
    )
    stereo = torch.stack([wav, -wav])
    assert P.audio_windows(stereo, [1.0]).shape == (1, 2, 32000)
    assert P.imagebind_audio_batch(win).shape == (3, 3, 1, 128, 204)
    with pytest.raises(ValueError, match="at least one finite time"):
        P.audio_windows(wav, [])
    with pytest.raises(ValueError, match="at least one finite time"):
        P.audio_windows(wav, [float("nan")])


def test_half_precision_input_is_computed_in_float32() -> None:
    x = torch.randn(2, 4000, generator=torch.Generator().manual_seed(11)) * 0.2
    half = P.fbank(x.to(torch.bfloat16))
    assert half.dtype == torch.float32
    assert torch.allclose(half, P.fbank(x.to(torch.bfloat16).float()))


def test_fbank_speed_three_2s_clips() -> None:
    x = torch.randn(3, 32000, generator=torch.Generator().manual_seed(7)) * 0.1
    P.fbank(x)  # warm the constant cache
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        P.fbank(x)
        runs.append(time.perf_counter() - t0)
    ms = 1e3 * float(np.median(runs))
    print(f"fbank 3 x 2 s on CPU ({torch.get_num_threads()} threads): median {ms:.2f} ms")
    assert ms < 1000.0  # generous: the CPU here is shared; typical is a few ms


# ------------------------------------------------------------------------------------------
# properties: resampling and channels


@pytest.mark.parametrize("orig", [8000, 22050, 48000, 44100])
def test_resample_length_and_accuracy(orig: int) -> None:
    n = int(orig * 0.37) + 3
    t = torch.arange(n, dtype=torch.float64) / orig
    x = torch.sin(2 * math.pi * 1000.0 * t).to(torch.float32)
    y = P.resample(x, orig, 16000)
    assert y.shape == (math.ceil(n * 16000 / orig),)
    t_out = torch.arange(y.shape[0], dtype=torch.float64) / 16000
    expected = torch.sin(2 * math.pi * 1000.0 * t_out)
    inner = slice(200, y.shape[0] - 200)  # away from the zero-padded edges
    err = (y.double()[inner] - expected[inner]).abs().max().item()
    print(f"resample {orig}->16000 of a 1 kHz sine: max_abs {err:.2e}")
    assert err < 2e-3


def test_resample_leading_dims_and_identity() -> None:
    x = torch.randn(2, 3, 4410, generator=torch.Generator().manual_seed(8))
    y = P.resample(x, 44100, 16000)
    assert y.shape == (2, 3, 1600)
    assert torch.allclose(y[1, 2], P.resample(x[1, 2], 44100, 16000), atol=1e-6)
    assert P.resample(x, 16000, 16000) is x
    up = P.resample(torch.randn(100), 8000, 16000)
    assert up.shape == (200,)


def test_resample_kernel_applied_by_hand_equals_resample() -> None:
    x = torch.randn(3000, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    kernel, width = P.resample_kernel(22050, 16000)  # gcd 50 -> 441 in, 320 out per step
    assert kernel.shape == (320, 1, 2 * width + 441) and kernel.dtype == torch.float64
    padded = torch.nn.functional.pad(x, (width, width + 441))
    steps = [padded[s * 441 : s * 441 + kernel.shape[-1]] @ kernel[:, 0].T for s in range(7)]
    by_hand = torch.cat(steps)[: math.ceil(3000 * 16000 / 22050)]
    assert torch.allclose(by_hand, P.resample(x, 22050, 16000), atol=1e-12)
    # row sums of a low-pass interpolator are ~1 (DC gain), away from rounding of the window
    assert torch.allclose(kernel.sum(dim=-1), torch.ones(320, 1, dtype=torch.float64), atol=2e-2)


def test_to_mono() -> None:
    x = torch.stack([torch.ones(10), 3 * torch.ones(10)])
    assert torch.equal(P.to_mono(x), torch.ones(10))
    assert torch.equal(P.to_mono(x, mode="mean"), 2 * torch.ones(10))
    with pytest.raises(ValueError, match="expected 'official' or 'mean'"):
        P.to_mono(x, mode="left")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# bad input


def test_bad_audio_input_raises() -> None:
    with pytest.raises(ValueError, match="expected 1-D or 2-D"):
        P.fbank(torch.zeros(1, 2, 1000))
    with pytest.raises(ValueError, match="at least 400 samples"):
        P.fbank(torch.zeros(399))
    with pytest.raises(ValueError, match="finite"):
        P.fbank(torch.tensor([0.0, float("nan")] * 300))
    with pytest.raises(ValueError, match="finite"):
        P.imagebind_audio(torch.full((1, 32000), float("inf")), 16000)
    with pytest.raises(ValueError, match="at least one sample"):
        P.imagebind_audio(torch.zeros(1, 0), 16000)
    with pytest.raises(ValueError, match="floating-point"):
        P.imagebind_audio(torch.zeros(1, 32000, dtype=torch.int16), 16000)
    with pytest.raises(ValueError, match="expected 2-D or 3-D"):
        P.imagebind_audio_batch(torch.zeros(32000))
    with pytest.raises(ValueError, match="aliasing"):
        P.imagebind_audio_batch(torch.zeros(1, 32000), aliasing="copy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="positive integer rate"):
        P.resample(torch.zeros(100), 0, 16000)
    with pytest.raises(ValueError, match="positive integer rate"):
        P.resample(torch.zeros(100), 22050.5, 16000)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="0-D"):
        P.resample(torch.tensor(1.0), 8000)
    with pytest.raises(ValueError, match=r"torch\.Tensor"):
        P.fbank(np.zeros(1000))  # type: ignore[arg-type]


def test_bad_image_input_raises() -> None:
    with pytest.raises(ValueError, match="expected uint8 HxWx3"):
        P.preprocess_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match="expected uint8 HxWx3"):
        P.preprocess_image(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match="empty"):
        P.preprocess_images([])
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        P.preprocess_images_torch(torch.zeros(3, 10, 10, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        P.preprocess_images_torch(torch.zeros(1, 10, 10, 3))


# ------------------------------------------------------------------------------------------
# CUDA


@requires_cuda
def test_cuda_matches_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    wav, rate = read_wav(PRE / "wav_stereo_44k1_2p5s.wav")
    cpu = P.imagebind_audio(wav, rate)
    gpu = P.imagebind_audio(wav.cuda(), rate)
    assert gpu.is_cuda
    c = compare(gpu.cpu(), cpu)
    print(f"imagebind_audio CUDA vs CPU: {c}")
    assert c.max_abs <= 1e-4
    x = torch.randn(5, 32000, generator=torch.Generator().manual_seed(9)) * 0.1
    assert (P.fbank(x.cuda()).cpu() - P.fbank(x)).abs().max() < 1e-3
    frames = torch.from_numpy(
        np.random.default_rng(10).integers(0, 256, (2, 300, 410, 3), dtype=np.uint8)
    )
    on_gpu = P.preprocess_images_torch(frames.cuda())
    assert on_gpu.is_cuda
    assert torch.equal(on_gpu.cpu(), P.preprocess_images(list(frames.numpy())))
