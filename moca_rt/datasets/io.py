"""Small file helpers shared by the dataset writers and readers: WAV (PCM16) and PNG.

Mask PNGs are read by :func:`moca_rt.frame_files.read_binary_mask`, the evaluator's reader.

Audio arrays follow the reference fixtures' convention: float32 [channels, samples] equal to
``int16 / 32768`` for PCM16 input. Writing clips to [-1, 32767/32768] and rounds to the nearest
code, so a write/read round trip changes a sample by at most 0.5/32768.
"""

from __future__ import annotations

import wave
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar, overload

import numpy as np
from PIL import Image

from moca_rt.av_audio import audio_frame_to_float

T = TypeVar("T")


class LazySequence(Sequence[T]):
    """A Sequence whose items are read from disk on access (the dataset readers).

    Subclasses give ``__len__`` and ``_item(index)``; indexing checks the range (negative
    indices count from the end) and a slice gives a list.
    """

    @overload
    def __getitem__(self, index: int) -> T: ...

    @overload
    def __getitem__(self, index: slice) -> list[T]: ...

    def __getitem__(self, index: int | slice) -> T | list[T]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"expected an index in [-{len(self)}, {len(self)}), got {index}")
        return self._item(index)

    def _item(self, index: int) -> T:
        """Item ``index`` (in range, possibly negative)."""
        raise NotImplementedError


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write PCM16 WAV. ``audio``: float [T] (mono) or [C, T], nominally in [-1, 1]."""
    data = np.asarray(audio)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"expected audio of shape [T] or [C, T], got {np.asarray(audio).shape}")
    if sample_rate <= 0:
        raise ValueError(f"expected a positive sample_rate, got {sample_rate}")
    pcm = np.clip(np.rint(data.astype(np.float64) * 32768.0), -32768, 32767).astype("<i2")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(pcm.shape[0])
        f.setsampwidth(2)
        f.setframerate(int(sample_rate))
        f.writeframes(np.ascontiguousarray(pcm.T).tobytes())


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a WAV file at its native rate: (float32 [C, T], sample_rate).

    PCM16 is read with the stdlib (exactly ``int16 / 32768``); other encodings (24/32-bit,
    float, compressed) go through PyAV and come back as float32 in [-1, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no audio file at {path}")
    try:
        with wave.open(str(path), "rb") as f:
            if f.getsampwidth() == 2 and f.getcomptype() == "NONE":
                channels, rate = f.getnchannels(), f.getframerate()
                raw = np.frombuffer(f.readframes(f.getnframes()), dtype="<i2")
                pcm = raw.reshape(-1, channels).T
                return (pcm.astype(np.float32) / np.float32(32768.0)), rate
    except wave.Error:
        pass
    return read_audio_av(path)


def read_audio_av(path: str | Path, stream_index: int = 0) -> tuple[np.ndarray, int]:
    """Decode an audio stream of any container PyAV opens: (float32 [C, T], sample_rate)."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise ValueError(f"expected an audio stream in {path}, got none")
        stream = container.streams.audio[stream_index]
        rate = int(stream.codec_context.sample_rate or stream.sample_rate)
        chunks = []
        for frame in container.decode(stream):
            chunks.append(audio_frame_to_float(frame))
    if not chunks:
        return np.zeros((1, 0), np.float32), rate
    return np.concatenate(chunks, axis=1), rate


def write_png(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write uint8 [H, W, 3] (RGB), [H, W] (grey) or, with ``palette`` (uint8 [K, 3]), mode P."""
    data = np.asarray(array)
    if data.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {data.dtype}")
    if not (data.ndim == 2 or (data.ndim == 3 and data.shape[2] == 3)):
        raise ValueError(f"expected an [H, W] or [H, W, 3] image, got shape {data.shape}")
    image = Image.fromarray(data)
    if palette is not None:
        if data.ndim != 2:
            raise ValueError(f"expected an [H, W] index map with a palette, got shape {data.shape}")
        image = image.convert("P") if image.mode != "P" else image
        image.putpalette(np.asarray(palette, np.uint8).reshape(-1).tolist())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, compress_level=1)


def read_rgb(path: str | Path) -> np.ndarray:
    """uint8 [H, W, 3] RGB from any image file PIL reads."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
