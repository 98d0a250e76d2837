"""Image and audio preprocessing of ImageBind, reproduced without torchaudio or torchvision.

Audio (``imagebind/data.py::load_and_transform_audio_data`` semantics):
resample to 16 kHz -> 3 evenly spaced clips of 2 s -> per-clip mean subtraction (over all
channels) -> kaldi fbank of channel 0 (128 mel, 25 ms / 10 ms, hanning, htk_compat, no dither)
-> zero pad / crop to 204 frames -> ``(x + 4.268) / 9.138`` -> ``[3, 1, 128, 204]``.

Images (the ImageBind vision transform): PIL bicubic resize of the shorter side to 224 ->
centre crop 224 -> ``/ 255`` -> CLIP mean/std -> ``[3, 224, 224]`` float32. The pipeline's
frames take :func:`frames_to_model_input` instead: the whole frame resized to 224 x 224 on the
pipeline's device (no crop, see docs/design.md), then the same normalisation.

Everything here is pure torch (plus PIL and numpy for images), batched, and device-agnostic:
constant tensors (window, mel matrix) are built once per device/dtype and cached.

Decisions:

* ``aliasing``: the original subtracts each clip's mean *in place on a view* of the waveform,
  so overlapping clips (2 s < duration < 6 s) see the previous clip's shift and differ by up to
  ~0.6 normalised units on the frames that straddle the overlap boundary. ``"official"``
  (default) reproduces that exactly, because ImageBind was trained and evaluated with it and the
  package promises the official preprocessing; ``"independent"`` copies each clip first (the
  bug-free variant). For the pipeline's 2 s windows the two differ by <= 5e-5.
* ``channels``: the official path subtracts the mean of *all* channels and computes the fbank
  on channel 0 only (``"official"``, default); ``"mean"`` averages the channels first.
* ``preprocess_images_torch`` re-implements Pillow's fixed-point bicubic resize (two separable
  passes with uint8 rounding in between, Pillow 13's pass-order rule) as float64 matmuls, so the
  on-device path equals the PIL path bit for bit; ``F.interpolate(bicubic, antialias=True)``
  was measured first and is not equivalent (up to 11 uint8 levels apart on a noise image,
  0.165 in normalised units; 1 level on a smooth one).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from moca_rt.config import SAMPLE_RATE

NUM_MEL_BINS = 128
TARGET_FRAMES = 204
CLIP_DURATION_S = 2
CLIPS_PER_VIDEO = 3
AUDIO_MEAN = -4.268
AUDIO_STD = 9.138
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
LOW_FREQ_HZ = 20.0

IMAGE_SIZE = 224
CLIP_IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)

Aliasing = Literal["official", "independent"]
ChannelMode = Literal["official", "mean"]
ImageLike = Image.Image | np.ndarray | torch.Tensor

__all__ = [
    "AUDIO_MEAN",
    "AUDIO_STD",
    "CLIP_IMAGE_MEAN",
    "CLIP_IMAGE_STD",
    "IMAGE_SIZE",
    "NUM_MEL_BINS",
    "SAMPLE_RATE",
    "TARGET_FRAMES",
    "audio_windows",
    "clip_sample_ranges",
    "fbank",
    "frames_to_model_input",
    "imagebind_audio",
    "imagebind_audio_batch",
    "mel_filterbank",
    "normalize_image",
    "preprocess_image",
    "preprocess_images",
    "preprocess_images_torch",
    "resample",
    "resample_kernel",
    "resize_center_crop",
    "to_mono",
]


# --------------------------------------------------------------------------------------------
# input checks


def _check_float_audio(x: torch.Tensor, name: str, dims: tuple[int, ...] | None) -> None:
    """dims: allowed ranks, or None for any rank >= 1."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if dims is None and x.dim() == 0:
        raise ValueError(f"{name}: expected a [..., T] tensor, got a 0-D tensor")
    if dims is not None and x.dim() not in dims:
        raise ValueError(
            f"{name}: expected {' or '.join(f'{d}-D' for d in dims)} tensor, "
            f"got shape {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got {x.dtype}")
    if x.shape[-1] == 0 or x.numel() == 0:
        raise ValueError(f"{name}: expected at least one sample, got shape {tuple(x.shape)}")
    # A finite sum means finite samples (NaN and inf propagate); the full check runs only when
    # the sum is not finite (also when finite samples overflow it), 20x cheaper on a 2 s clip.
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: expected finite samples, got NaN or inf")


# --------------------------------------------------------------------------------------------
# resampling and channels


@functools.lru_cache(maxsize=32)
def _sinc_kernel(
    orig: int, new: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, int]:
    """Polyphase windowed-sinc kernel [new, 1, 2*width + orig] (reduced rates, Hann window).

    Also imported by ``moca_rt.media.audio`` (keep the signature); new code: ``resample_kernel``.
    """
    lowpass_width = 6
    base = min(orig, new) * 0.99
    width = math.ceil(lowpass_width * orig / base)
    # Offsets of every input tap relative to every output phase, in input samples / orig.
    taps = torch.arange(-width, width + orig, dtype=dtype) / orig
    phases = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new
    t = (phases + taps[None, None]) * base
    t = t.clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    sinc = torch.where(t == 0, torch.ones((), dtype=dtype), t.sin() / t)
    kernel = sinc * (window * (base / orig))
    return kernel.to(device), width


def resample_kernel(
    orig_freq: int,
    new_freq: int = SAMPLE_RATE,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, int]:
    """The polyphase kernel ``resample`` uses, for streaming resamplers that must agree with it.

    Returns:
        ``(kernel, width)``: kernel [new / g, 1, 2 * width + orig / g] (g = gcd of the rates;
        row p is output phase p, column j multiplies input sample ``step * orig / g - width + j``
        of the zero-padded signal) and the half-width ``width`` in input samples.
    """
    for name, rate in (("orig_freq", orig_freq), ("new_freq", new_freq)):
        if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
            raise ValueError(f"{name}: expected a positive integer rate, got {rate!r}")
    g = math.gcd(int(orig_freq), int(new_freq))
    return _sinc_kernel(int(orig_freq) // g, int(new_freq) // g, torch.device(device), dtype)


def resample(waveform: torch.Tensor, orig_freq: int, new_freq: int = SAMPLE_RATE) -> torch.Tensor:
    """Band-limited resampling equal to ``torchaudio.functional.resample`` with its defaults.

    Windowed sinc (Hann window, 6 zero crossings, rolloff 0.99) on the gcd-reduced rates,
    applied as a strided polyphase convolution. Output length is ``ceil(T * new / orig)``.

    Args:
        waveform: float tensor [..., T], any device. Leading dims are independent signals.
        orig_freq: input rate in Hz (positive integer).
        new_freq: output rate in Hz (positive integer), default 16000.

    Returns:
        float tensor [..., ceil(T * new_freq / orig_freq)], same dtype and device. The input
        itself is returned when the rates are equal.
    """
    for name, rate in (("orig_freq", orig_freq), ("new_freq", new_freq)):
        if isinstance(rate, bool) or int(rate) != rate or rate <= 0:
            raise ValueError(f"{name}: expected a positive integer rate, got {rate!r}")
    _check_float_audio(waveform, "waveform", None)
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return waveform
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g
    # On CUDA, cuDNN may run float32 convolutions in TF32 (1e-3 relative); use float64 there.
    work = torch.float64 if waveform.is_cuda else waveform.dtype
    if work not in (torch.float32, torch.float64):
        work = torch.float32
    kernel, width = _sinc_kernel(orig, new, waveform.device, work)
    shape = waveform.shape
    x = waveform.reshape(-1, 1, shape[-1]).to(work)
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kernel, stride=orig)  # [N, new, steps]: phase-major per step
    y = y.transpose(1, 2).reshape(x.shape[0], -1)
    out_len = math.ceil(new * shape[-1] / orig)
    return y[:, :out_len].reshape(*shape[:-1], out_len).to(waveform.dtype)


def to_mono(waveform: torch.Tensor, mode: ChannelMode = "official") -> torch.Tensor:
    """Down-mix [C, T] to [T].

    ``"official"`` returns channel 0, which is what ImageBind's fbank sees for multi-channel
    audio (the official path subtracts the all-channel mean, a constant that the per-frame DC
    removal of the fbank cancels). ``"mean"`` averages the channels.
    """
    _check_float_audio(waveform, "waveform", (2,))
    if mode == "official":
        return waveform[0]
    if mode == "mean":
        return waveform.mean(dim=0)
    raise ValueError(f"mode: expected 'official' or 'mean', got {mode!r}")


# --------------------------------------------------------------------------------------------
# kaldi fbank


def _mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


def mel_filterbank(
    num_mel_bins: int = NUM_MEL_BINS, n_fft: int = 512, sample_rate: int = SAMPLE_RATE
) -> torch.Tensor:
    """Kaldi/HTK triangular mel filters as float32 [num_mel_bins, n_fft // 2 + 1].

    Triangles are linear in mel = 1127 ln(1 + f / 700) between 20 Hz and Nyquist, evaluated on
    FFT bins 0 .. n_fft/2 - 1; the Nyquist bin (last column) is zero, as in kaldi.
    Computed in float32 in the same order as the reference so the values agree bit for bit.
    """
    n_bins = n_fft // 2
    mel_lo = _mel(LOW_FREQ_HZ)
    mel_hi = _mel(0.5 * sample_rate)
    delta = (mel_hi - mel_lo) / (num_mel_bins + 1)
    idx = torch.arange(num_mel_bins)[:, None]
    left = mel_lo + idx * delta
    centre = mel_lo + (idx + 1.0) * delta
    right = mel_lo + (idx + 2.0) * delta
    fft_mel = 1127.0 * (1.0 + (sample_rate / n_fft) * torch.arange(float(n_bins)) / 700.0).log()
    up = (fft_mel[None] - left) / (centre - left)
    down = (right - fft_mel[None]) / (right - centre)
    banks = torch.clamp(torch.minimum(up, down), min=0.0)
    return F.pad(banks, (0, 1))


@functools.lru_cache(maxsize=16)
def _fbank_constants(
    num_mel_bins: int, sample_rate: int, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, int, int, int]:
    win = int(sample_rate * FRAME_LENGTH_MS * 0.001)
    shift = int(sample_rate * FRAME_SHIFT_MS * 0.001)
    n_fft = 1 << (win - 1).bit_length()
    window = torch.hann_window(win, periodic=False, dtype=dtype).to(device)
    banks_t = mel_filterbank(num_mel_bins, n_fft, sample_rate).to(device=device, dtype=dtype).T
    return window, banks_t.contiguous(), win, shift, n_fft


def fbank(
    waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE, num_mel_bins: int = NUM_MEL_BINS
) -> torch.Tensor:
    """Log mel filterbank, equal to ``torchaudio.compliance.kaldi.fbank`` as ImageBind calls it.

    Settings: ``htk_compat=True, use_energy=False, window_type="hanning", dither=0``,
    25 ms frames every 10 ms with ``snip_edges`` (F = 1 + (T - 400) // 160 at 16 kHz),
    per-frame DC removal, pre-emphasis 0.97 (a frame's first sample is its own predecessor),
    symmetric Hann window, zero pad to 512, ``|rfft|^2``, mel filters (``mel_filterbank``),
    ``log(max(x, float32 eps))``.

    Args:
        waveform: float32/float64 [T] or [N, T] (N independent clips), amplitude in [-1, 1]
            units (int16 / 32768), any device. T must be at least one frame (25 ms).
        sample_rate: Hz. num_mel_bins: number of mel filters.

    Returns:
        [F, num_mel_bins] or [N, F, num_mel_bins] on the input's device, time-major like kaldi;
        float64 for float64 input, float32 otherwise (half inputs are computed in float32).
    """
    _check_float_audio(waveform, "waveform", (1, 2))
    if waveform.dtype not in (torch.float32, torch.float64):
        waveform = waveform.float()
    window, banks_t, win, shift, n_fft = _fbank_constants(
        num_mel_bins, int(sample_rate), waveform.device, waveform.dtype
    )
    if waveform.shape[-1] < win:
        raise ValueError(
            f"waveform: expected at least {win} samples (one {FRAME_LENGTH_MS:g} ms frame), "
            f"got {waveform.shape[-1]}"
        )
    frames = waveform.unfold(-1, win, shift)  # [..., F, win], a strided view
    frames = frames - frames.mean(dim=-1, keepdim=True)
    previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = (frames - PREEMPHASIS * previous) * window
    spectrum = torch.fft.rfft(frames, n=n_fft)
    # |X|^2 as re^2 + im^2: kaldi's abs().pow(2) takes a square root to square it again (4x
    # slower on the CPU); the two differ by rounding only.
    power = spectrum.real.square() + spectrum.imag.square()
    mel = torch.matmul(power, banks_t)
    eps = torch.finfo(torch.float32).eps
    return mel.clamp(min=eps).log()


# --------------------------------------------------------------------------------------------
# ImageBind clips


def clip_sample_ranges(
    num_samples: int,
    sample_rate: int = SAMPLE_RATE,
    clip_duration: float = CLIP_DURATION_S,
    clips_per_video: int = CLIPS_PER_VIDEO,
) -> list[tuple[int, int]]:
    """Sample ranges [start, end) of ImageBind's evenly spaced clips.

    As pytorchvideo's ``ConstantClipsPerVideoSampler``: duration = num_samples / rate (float),
    step = Fraction(max(duration - clip_duration, 0)) / (clips - 1), clip k = [k step,
    k step + clip_duration] s, indices ``int(t * rate)`` (exact truncation). ``end`` is clamped
    to ``num_samples``, so audio of ``clip_duration`` or less gives the whole waveform each time.
    E.g. 52800 samples (3.3 s) -> [(0, 32000), (10399, 42399), (20799, 52799)].
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples: expected a positive count, got {num_samples}")
    if clips_per_video < 1:
        raise ValueError(f"clips_per_video: expected >= 1, got {clips_per_video}")
    duration = num_samples / sample_rate
    span = Fraction(max(duration - clip_duration, 0))
    step = span / max(clips_per_video - 1, 1)
    ranges = []
    for k in range(clips_per_video):
        start = step * k
        end = start + Fraction(clip_duration)
        ranges.append((int(start * sample_rate), min(int(end * sample_rate), num_samples)))
    return ranges


def _pad_crop_normalise(feats: torch.Tensor, target_frames: int) -> torch.Tensor:
    """[N, F, M] log-mel -> [N, 1, M, target] normalised; pad with zeros *before* normalising."""
    x = feats.transpose(-1, -2)
    n_frames = x.shape[-1]
    if n_frames < target_frames:
        x = F.pad(x, (0, target_frames - n_frames))
    else:
        x = x[..., :target_frames]
    x = (x - AUDIO_MEAN) / AUDIO_STD
    return x.unsqueeze(1).contiguous()


def imagebind_audio_batch(
    windows: torch.Tensor,
    *,
    aliasing: Aliasing = "official",
    channels: ChannelMode = "official",
    num_mel_bins: int = NUM_MEL_BINS,
    target_frames: int = TARGET_FRAMES,
    clips_per_video: int = CLIPS_PER_VIDEO,
    clip_duration: float = CLIP_DURATION_S,
) -> torch.Tensor:
    """ImageBind audio input for B equal-length 16 kHz waveforms at once.

    Args:
        windows: float [B, T] (mono) or [B, C, T] at 16 kHz, any device; e.g. the 2 s windows
            centred on video frames (``audio_windows``). Not modified.
        aliasing: ``"official"`` reproduces the original's in-place clip mean subtraction on a
            shared waveform (overlapping clips see earlier shifts); ``"independent"`` subtracts
            each clip's own mean from a copy.
        channels: ``"official"``: subtract the mean over all channels, fbank of channel 0;
            ``"mean"``: average the channels first.

    Returns:
        [B, clips, 1, num_mel_bins, target_frames] normalised with mean -4.268, std 9.138
        (the model's ``audio`` input) on the input's device; float64 for float64 input,
        float32 otherwise. With ``"official"`` the clips of a <= 2 s window differ only by the
        re-subtracted residual mean (<= 5e-5); ``"independent"`` computes one fbank per window
        (3x less work) and repeats it.
    """
    _check_float_audio(windows, "windows", (2, 3))
    if aliasing not in ("official", "independent"):
        raise ValueError(f"aliasing: expected 'official' or 'independent', got {aliasing!r}")
    if channels not in ("official", "mean"):
        raise ValueError(f"channels: expected 'official' or 'mean', got {channels!r}")
    x = windows if windows.dim() == 3 else windows[:, None]
    if channels == "mean":
        x = x.mean(dim=1, keepdim=True)
    b, n_samples = x.shape[0], x.shape[-1]
    ranges = clip_sample_ranges(n_samples, SAMPLE_RATE, clip_duration, clips_per_video)
    if aliasing == "independent" and len(set(ranges)) == 1:
        s, e = ranges[0]
        clip = x[..., s:e]
        clip = clip - clip.mean(dim=(1, 2), keepdim=True)
        feats = fbank(clip[:, 0], SAMPLE_RATE, num_mel_bins)
        out = _pad_crop_normalise(feats, target_frames)
        return out[:, None].expand(b, clips_per_video, *out.shape[1:]).contiguous()
    shared = x.clone() if aliasing == "official" else x
    clips = []
    for s, e in ranges:
        view = shared[..., s:e]
        if aliasing == "official":
            view -= view.mean(dim=(1, 2), keepdim=True)  # in place: later clips see this
            clips.append(view[:, 0].clone())
        else:
            clips.append((view - view.mean(dim=(1, 2), keepdim=True))[:, 0])
    feats = fbank(
        torch.stack(clips, dim=1).reshape(-1, clips[0].shape[-1]), SAMPLE_RATE, num_mel_bins
    )
    out = _pad_crop_normalise(feats, target_frames)
    return out.reshape(b, clips_per_video, *out.shape[1:])


def imagebind_audio(
    waveform: torch.Tensor,
    sample_rate: int = SAMPLE_RATE,
    *,
    aliasing: Aliasing = "official",
    channels: ChannelMode = "official",
) -> torch.Tensor:
    """``load_and_transform_audio_data`` for one decoded waveform.

    Args:
        waveform: float [C, T] (or [T]) in [-1, 1] units, any rate, any device.
        sample_rate: its rate in Hz; resampled to 16 kHz with ``resample`` first.
        aliasing, channels: see ``imagebind_audio_batch``.

    Returns:
        float [3, 1, 128, 204] normalised fbank clips.
    """
    _check_float_audio(waveform, "waveform", (1, 2))
    x = waveform if waveform.dim() == 2 else waveform[None]
    if sample_rate != SAMPLE_RATE:
        x = resample(x, sample_rate, SAMPLE_RATE)
    return imagebind_audio_batch(x[None], aliasing=aliasing, channels=channels)[0]


def audio_windows(
    waveform: torch.Tensor,
    centres_s: Sequence[float] | torch.Tensor,
    window_s: float = 2.0,
    sample_rate: int = SAMPLE_RATE,
) -> torch.Tensor:
    """Cut windows of ``window_s`` seconds centred on given times, zero-padded at the ends.

    Args:
        waveform: float [T] or [C, T], time 0 at sample 0, any device.
        centres_s: B centre times in seconds (e.g. frame presentation times).

    Returns:
        float [B, round(window_s * rate)] or [B, C, round(window_s * rate)]; window b starts at
        sample ``round(centre_b * rate) - length // 2``.
    """
    _check_float_audio(waveform, "waveform", (1, 2))
    length = round(window_s * sample_rate)
    if length <= 0:
        raise ValueError(f"window_s: expected > 0, got {window_s}")
    centres = torch.as_tensor(centres_s, dtype=torch.float64).reshape(-1).cpu()
    if centres.numel() == 0 or not bool(torch.isfinite(centres).all()):
        raise ValueError(f"centres_s: expected at least one finite time, got {centres.tolist()}")
    starts = torch.round(centres * sample_rate).long() - length // 2
    x = waveform if waveform.dim() == 2 else waveform[None]
    n = x.shape[-1]
    pad_left = max(0, -int(starts.min()))
    pad_right = max(0, int(starts.max()) + length - n)
    padded = F.pad(x, (pad_left, pad_right))
    idx = (starts + pad_left)[:, None] + torch.arange(length)
    out = padded[:, idx.to(x.device)].transpose(0, 1)  # [B, C, L]
    return out if waveform.dim() == 2 else out[:, 0]


# --------------------------------------------------------------------------------------------
# images


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(
            f"image: expected uint8 HxWx3 RGB, got dtype {arr.dtype} shape {tuple(arr.shape)}"
        )
    return Image.fromarray(np.ascontiguousarray(arr), mode="RGB")


def _resized_size(h: int, w: int, size: int) -> tuple[int, int]:
    if h <= w:
        return size, int(size * w / h)
    return int(size * h / w), size


def resize_center_crop(image: ImageLike, size: int = IMAGE_SIZE) -> np.ndarray:
    """``Resize(size, BICUBIC)`` on PIL then ``CenterCrop(size)``, exactly as torchvision.

    The shorter side becomes ``size``, the longer ``int(size * long / short)``; the crop's
    top-left is ``(round((H' - size) / 2), round((W' - size) / 2))`` (Python rounding).

    Args:
        image: PIL image (converted to RGB) or uint8 [H, W, 3] RGB numpy array / CPU tensor.

    Returns:
        uint8 [size, size, 3] RGB numpy array.
    """
    pil = _to_pil(image)
    w, h = pil.size
    if min(w, h) == 0:
        raise ValueError(f"image: expected a non-empty image, got {h}x{w}")
    nh, nw = _resized_size(h, w, size)
    pil = pil.resize((nw, nh), Image.Resampling.BICUBIC)
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
    return np.asarray(pil.crop((left, top, left + size, top + size)))


def normalize_image(crop: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [H, W, 3] RGB -> float32 [3, H, W]: ``/ 255``, minus CLIP mean, over CLIP std."""
    t = crop if isinstance(crop, torch.Tensor) else torch.from_numpy(np.array(crop, copy=True))
    if t.dtype != torch.uint8 or t.dim() != 3 or t.shape[2] != 3:
        raise ValueError(f"crop: expected uint8 HxWx3, got dtype {t.dtype} shape {tuple(t.shape)}")
    x = t.permute(2, 0, 1).to(torch.float32).div(255)
    mean = torch.tensor(CLIP_IMAGE_MEAN, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(CLIP_IMAGE_STD, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - mean) / std


def preprocess_image(image: ImageLike, size: int = IMAGE_SIZE) -> torch.Tensor:
    """ImageBind vision input for one image: float32 [3, size, size] (RGB, CLIP-normalised)."""
    return normalize_image(resize_center_crop(image, size))


def preprocess_images(images: Sequence[ImageLike], size: int = IMAGE_SIZE) -> torch.Tensor:
    """``preprocess_image`` for a list of frames (sizes may differ) -> [B, 3, size, size]."""
    if len(images) == 0:
        raise ValueError("images: expected at least one image, got an empty sequence")
    return torch.stack([preprocess_image(im, size) for im in images])


_PIL_PRECISION_BITS = 22  # Pillow's 8-bit resampling: 32 - 8 - 2 fractional bits


def _cubic(d: float) -> float:
    """Keys cubic with a = -0.5 (Pillow's bicubic) at distance d >= 0."""
    if d < 1.0:
        return (1.5 * d - 2.5) * d * d + 1.0
    if d < 2.0:
        return (((d - 5.0) * d + 8.0) * d - 4.0) * -0.5
    return 0.0


@functools.lru_cache(maxsize=64)
def _pil_bicubic_matrix(in_size: int, out_size: int, first: int, count: int) -> np.ndarray:
    """Pillow's fixed-point bicubic weights as a float64 [count, in_size] matrix.

    Rows are output pixels ``first .. first + count - 1`` of an ``in_size -> out_size`` resize.
    Each row holds the integer coefficients (scaled by 2**22) that Pillow derives from the
    a = -0.5 cubic: support 2 * max(in/out, 1), normalised to sum 1 in double, then rounded
    half away from zero. Integer-valued float64 keeps every product and sum exact.
    """
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    inv = 1.0 / filterscale
    one = float(1 << _PIL_PRECISION_BITS)
    mat = np.zeros((count, in_size), dtype=np.float64)
    for row, xx in enumerate(range(first, first + count)):
        centre = (xx + 0.5) * scale
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        # Plain Python doubles, summed in order, so the rounding matches Pillow's C code.
        w = [_cubic(abs((x - centre + 0.5) * inv)) for x in range(lo, hi)]
        total = 0.0
        for v in w:
            total += v
        for i, v in enumerate(w):
            k = (v / total if total != 0.0 else v) * one
            mat[row, lo + i] = math.trunc(k - 0.5) if k < 0 else math.trunc(k + 0.5)
    return mat


def _pil_pass(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One separable Pillow pass along the last dim: float64 uint8 levels in and out."""
    acc = torch.matmul(x, weights.T) + float(1 << (_PIL_PRECISION_BITS - 1))
    return torch.floor(acc / float(1 << _PIL_PRECISION_BITS)).clamp(0.0, 255.0)


def _pil_vertical_first(h: int, w: int, nh: int, nw: int) -> bool:
    """Pass order of the installed Pillow for an (h, w) -> (nh, nw) two-pass resize.

    Pillow resizes horizontally first, except (since Pillow 13, PR 9549) when the height
    shrinks by more than twice as many pixels as the width: ``nh < h and h - nh > 2 (w - nw)``
    (found by matching 300 random resizes against Pillow 13.0). Whether the installed Pillow
    has that rule is probed once on a small image.
    """
    return nh < h and (h - nh) > 2 * (w - nw) and _pillow_has_vertical_first()


@functools.cache
def _pillow_has_vertical_first() -> bool:
    rng = np.random.default_rng(0)
    im = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
    pil = np.asarray(Image.fromarray(im, mode="RGB").resize((18, 10), Image.Resampling.BICUBIC))
    x = torch.from_numpy(im).permute(2, 0, 1).to(torch.float64)
    wx = torch.from_numpy(_pil_bicubic_matrix(20, 18, 0, 18))
    wy = torch.from_numpy(_pil_bicubic_matrix(40, 10, 0, 10))
    v_first = _pil_pass(_pil_pass(x.transpose(-1, -2), wy).transpose(-1, -2), wx)
    return bool(np.array_equal(v_first.permute(1, 2, 0).numpy().astype(np.uint8), pil))


def preprocess_images_torch(frames: torch.Tensor, size: int = IMAGE_SIZE) -> torch.Tensor:
    """On-device ``preprocess_images`` for a batch of equal-size frames, bit-exact with PIL.

    Re-implements Pillow's bicubic resize (horizontal pass, rounding to uint8, vertical pass,
    fixed-point coefficients) as two float64 matmuls restricted to the centre-crop rows and
    columns, then the CLIP normalisation. The result equals ``preprocess_images`` bit for bit
    (tested on the reference images and random ones). float64 matmuls are fast on data-centre
    GPUs; on CPU the PIL path (``preprocess_images``) is faster.

    Args:
        frames: uint8 [B, H, W, 3] RGB, any device.

    Returns:
        float32 [B, 3, size, size] on the frames' device.
    """
    if not isinstance(frames, torch.Tensor) or frames.dtype != torch.uint8:
        got = frames.dtype if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"frames: expected a uint8 torch.Tensor, got {got}")
    if frames.dim() != 4 or frames.shape[-1] != 3 or min(frames.shape[1:3]) == 0:
        raise ValueError(f"frames: expected [B, H, W, 3] with H, W > 0, got {tuple(frames.shape)}")
    h, w = int(frames.shape[1]), int(frames.shape[2])
    nh, nw = _resized_size(h, w, size)
    top, left = round((nh - size) / 2.0), round((nw - size) / 2.0)
    dev = frames.device
    wx = torch.from_numpy(_pil_bicubic_matrix(w, nw, left, size)).to(dev)
    wy = torch.from_numpy(_pil_bicubic_matrix(h, nh, top, size)).to(dev)
    x = frames.permute(0, 3, 1, 2).to(torch.float64)  # [B, 3, H, W]
    if nw == w:
        x = x[..., left : left + size]
    if nh == h:
        x = x[..., top : top + size, :]
    vertical_first = nw != w and nh != h and _pil_vertical_first(h, w, nh, nw)
    if nh != h and vertical_first:
        x = _pil_pass(x.transpose(-1, -2), wy).transpose(-1, -2)
    if nw != w:
        x = _pil_pass(x, wx)
    if nh != h and not vertical_first:
        x = _pil_pass(x.transpose(-1, -2), wy).transpose(-1, -2)
    x = x.to(torch.float32).div(255)
    mean = torch.tensor(CLIP_IMAGE_MEAN, dtype=torch.float32, device=dev)[:, None, None]
    std = torch.tensor(CLIP_IMAGE_STD, dtype=torch.float32, device=dev)[:, None, None]
    return (x - mean) / std


def frames_to_model_input(
    images: Sequence[np.ndarray], size: int, device: torch.device
) -> torch.Tensor:
    """uint8 HWC RGB frames (any sizes) -> [B, 3, size, size] CLIP-normalised float32.

    The pipeline's vision input: the whole frame (no crop) resized with torch's bicubic and
    antialiasing on ``device``, clamped to [0, 255], ``/ 255``, CLIP mean/std.
    """
    batch = []
    for i, img in enumerate(images):
        if (
            not isinstance(img, np.ndarray)
            or img.dtype != np.uint8
            or img.ndim != 3
            or img.shape[2] != 3
        ):
            got = f"{img.dtype} {img.shape}" if isinstance(img, np.ndarray) else type(img).__name__
            raise ValueError(f"frame {i}: expected a uint8 [H, W, 3] RGB array, got {got}")
        t = torch.from_numpy(np.ascontiguousarray(img)).to(device).permute(2, 0, 1)[None].float()
        t = F.interpolate(t, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        batch.append(t.clamp_(0.0, 255.0) / 255.0)
    x = torch.cat(batch)
    mean = torch.tensor(CLIP_IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD, device=device).view(1, 3, 1, 1)
    return (x - mean) / std
