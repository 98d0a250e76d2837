"""Training data of AdaAV (DESIGN section 4): one image and the audio it came with, per item.

An item is ``(image, audio)``: uint8 [H, W, 3] RGB and float32 [T] mono at 16 kHz. Two sources:

* ``synth:N`` -> :class:`SynthTrainingSet`: scenes ``0 .. N-1`` of the ``s4`` split of the
  synthetic world (one sounding object each), the same items and ids (``synth:s4:<i>``) that
  ``python -m moca_rt.train.pairing --images synth:N`` pairs. Their sounding class is known, so
  the ground-truth ``class`` pairing (debugging only) is available.
* a folder -> :class:`FolderTrainingSet`: a VGGSound-style folder read by
  :class:`~moca_rt.datasets.VggsoundFolder` (videos with sound, or image/frame folders beside a
  WAV); the middle frame and the whole soundtrack (channel 0, resampled to 16 kHz).

:meth:`TrainingSet.model_inputs` turns items into what :class:`~moca_rt.modeling.moca.MocaModel`
takes: images through :func:`~moca_rt.preprocess.preprocess_images` (shorter side resized,
centre crop, CLIP normalisation) and audio through :func:`~moca_rt.preprocess.imagebind_audio`
(3 clips of 2 s spread over the audio, official aliasing). With ``audio_window_s`` the audio is
first cut to a window of that length centred on the image's time (zero-padded at the ends).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from moca_rt.datasets.synth import PARTITIONS
from moca_rt.preprocess import (
    SAMPLE_RATE,
    audio_windows,
    imagebind_audio,
    preprocess_images,
    resample,
)

__all__ = ["FolderTrainingSet", "SynthTrainingSet", "TrainingSet", "open_training_set"]


class TrainingSet:
    """Base class: N items of (image, audio, time of the image in the audio).

    Subclasses implement :meth:`__len__`, :meth:`item` and :meth:`item_id`, and set
    :attr:`source` (the string the set was opened from, recorded in checkpoints).
    """

    source: str = ""
    audio_window_s: float | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        """Item ``index``: uint8 [H, W, 3] RGB image, float32 [T] mono 16 kHz audio, and the
        time (s) in the audio that the image shows."""
        raise NotImplementedError

    def item_id(self, index: int) -> str:
        """A stable name of item ``index`` (pairing tables record these)."""
        raise NotImplementedError

    def class_ids(self) -> list[int] | None:
        """The sounding class of every item when the source knows it (synthetic world)."""
        return None

    def _check_index(self, index: int) -> int:
        n = len(self)
        if isinstance(index, bool) or not -n <= int(index) < n:
            raise IndexError(f"expected an item index in [-{n}, {n}), got {index}")
        return int(index) % n

    def item_ids(self) -> list[str]:
        return [self.item_id(i) for i in range(len(self))]

    def images(self) -> Iterator[np.ndarray]:
        """Every item's image in order (uint8 [H, W, 3]), e.g. for the DINO featuriser."""
        for i in range(len(self)):
            yield self.item(i)[0]

    def model_inputs(self, indices: Sequence[int], image_size: int) -> tuple[Tensor, Tensor]:
        """Preprocessed images and audio of some items, on the CPU.

        Args:
            indices: B item indices.
            image_size: side of the square model input (224 for ImageBind-Huge).

        Returns:
            images float32 [B, 3, image_size, image_size] (CLIP-normalised RGB) and fbank
            float32 [B, 3, 1, 128, 204] (ImageBind's normalised kaldi fbank clips).
        """
        if len(indices) == 0:
            raise ValueError("indices: expected at least one item index, got none")
        images: list[np.ndarray] = []
        clips: list[Tensor] = []
        for i in indices:
            image, audio, time_s = self.item(int(i))
            images.append(image)
            clips.append(self._fbank(audio, time_s))
        return preprocess_images(images, image_size), torch.stack(clips)

    def model_images(self, indices: Sequence[int], image_size: int) -> Tensor:
        """Preprocessed images only: float32 [B, 3, image_size, image_size] on the CPU."""
        if len(indices) == 0:
            raise ValueError("indices: expected at least one item index, got none")
        return preprocess_images([self.item(int(i))[0] for i in indices], image_size)

    def model_audio(self, indices: Sequence[int]) -> Tensor:
        """ImageBind audio input only: float32 [B, 3, 1, 128, 204] on the CPU."""
        if len(indices) == 0:
            raise ValueError("indices: expected at least one item index, got none")
        clips = []
        for i in indices:
            _, audio, time_s = self.item(int(i))
            clips.append(self._fbank(audio, time_s))
        return torch.stack(clips)

    def _fbank(self, audio: np.ndarray, time_s: float) -> Tensor:
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
        if self.audio_window_s is not None:
            wave = audio_windows(wave, [time_s], self.audio_window_s)[0]
        return imagebind_audio(wave, SAMPLE_RATE)


def _check_window(audio_window_s: float | None) -> float | None:
    if audio_window_s is not None and not audio_window_s > 0:
        raise ValueError(f"audio_window_s: expected None or > 0 seconds, got {audio_window_s}")
    return audio_window_s


class SynthTrainingSet(TrainingSet):
    """Scenes ``0 .. count-1`` of the synthetic world's ``s4`` split in one partition.

    Args:
        count: number of items N (>= 2).
        seed: the world's seed.
        image_size: side of the rendered scenes in pixels (>= 32).
        audio_window_s: see the module docstring; None keeps each scene's whole audio (1-5 s).
        partition: the world's partition (one of the seeds of every scene; default the first of
            :attr:`partitions`, ``train``): ``train`` items have ids ``synth:s4:<i>``, other
            partitions ``synth:s4:<partition>:<i>``.
    """

    partitions: tuple[str, ...] = PARTITIONS  # those this set may read; the first is the default

    def __init__(
        self,
        count: int,
        seed: int = 0,
        image_size: int = 224,
        audio_window_s: float | None = None,
        partition: str | None = None,
    ) -> None:
        from moca_rt.datasets.synth import SynthWorld

        partition = self.partitions[0] if partition is None else partition
        if partition not in self.partitions:
            expected = " or ".join(repr(p) for p in self.partitions)
            raise ValueError(f"partition: expected {expected}, got {partition!r}")
        if isinstance(count, bool) or not isinstance(count, int) or count < 2:
            raise ValueError(f"count: expected an int >= 2 synthetic scenes, got {count!r}")
        self.world = SynthWorld(seed, image_size=image_size)
        self.count = count
        self.seed = seed
        self.audio_window_s = _check_window(audio_window_s)
        self.partition = partition
        tag = "" if partition == "train" else f":{partition}"
        self.source = f"synth:{count}{tag}"
        self._id_prefix = f"synth:s4{tag}:"
        self._classes: list[int] | None = None

    def __len__(self) -> int:
        return self.count

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        scene = self.world.sample("s4", self._check_index(index), self.partition)
        return scene.image, scene.audio, float(scene.frame_times[0])

    def item_id(self, index: int) -> str:
        return f"{self._id_prefix}{self._check_index(index)}"

    def class_ids(self) -> list[int]:
        """The one sounding class id of every scene (``s4`` has exactly one)."""
        if self._classes is None:
            self._classes = [
                self.world.sample("s4", i, self.partition).sounding_class_ids[0]
                for i in range(self.count)
            ]
        return list(self._classes)


class FolderTrainingSet(TrainingSet):
    """A VGGSound-style folder (:class:`~moca_rt.datasets.VggsoundFolder`), one frame per item.

    The audio is channel 0 of the soundtrack (what ImageBind's fbank sees), resampled to 16 kHz.

    Args:
        root: the folder.
        audio_window_s: see the module docstring; None keeps the whole soundtrack.
    """

    def __init__(self, root: str | Path, audio_window_s: float | None = None) -> None:
        from moca_rt.datasets.vggsound import VggsoundFolder

        self.folder = VggsoundFolder(root, num_frames=1)
        if len(self.folder) < 2:
            raise ValueError(
                f"expected at least 2 clips (videos with sound or image + WAV pairs) in {root}, "
                f"got {len(self.folder)}"
            )
        self.audio_window_s = _check_window(audio_window_s)
        self.source = str(root)

    def __len__(self) -> int:
        return len(self.folder)

    def item(self, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        clip = self.folder[self._check_index(index)]
        audio = torch.from_numpy(np.ascontiguousarray(clip.audio[0], dtype=np.float32))
        if clip.sample_rate != SAMPLE_RATE:
            audio = resample(audio, clip.sample_rate, SAMPLE_RATE)
        return clip.frames[0], audio.numpy(), float(clip.frame_times[0])

    def item_id(self, index: int) -> str:
        _, media, _ = self.folder.items[self._check_index(index)]
        return media.relative_to(self.folder.root).as_posix()


def add_data_arguments(parser: argparse.ArgumentParser, synth_image_size: int) -> None:
    """The input options both training CLIs share: ``--image-size`` (model input side; None
    keeps the preset's), ``--synth-image-size`` (rendered size of synthetic scenes, default
    ``synth_image_size``) and ``--audio-window`` (seconds around the image; None: whole clip)."""
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="Model input side in pixels; default the preset's (224).",
    )
    parser.add_argument(
        "--synth-image-size",
        type=int,
        default=synth_image_size,
        help="Rendered size of the synthetic scenes.",
    )
    parser.add_argument(
        "--audio-window",
        type=float,
        default=None,
        help="Cut the audio to this many seconds around the image's time first; "
        "default the whole clip.",
    )


def open_training_set(
    data: str, seed: int = 0, synth_image_size: int = 224, audio_window_s: float | None = None
) -> TrainingSet:
    """``synth:N`` -> :class:`SynthTrainingSet`; anything else is a folder path.

    Raises:
        ValueError: for a malformed ``synth:N``; FileNotFoundError for a missing folder.
    """
    if data.startswith("synth:"):
        count = data.split(":", 1)[1]
        if not count.isdigit():
            raise ValueError(f"data: expected synth:N with an integer N, got {data!r}")
        return SynthTrainingSet(int(count), seed, synth_image_size, audio_window_s)
    return FolderTrainingSet(data, audio_window_s)
