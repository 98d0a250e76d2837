"""VGGSound-style training folders: unlabelled clips as videos with sound, or frame + WAV pairs.

A folder (searched recursively, sorted by relative path) may hold:

* video files (``.mp4 .mkv .webm .avi .mov``) with an audio stream: the VGGSound release is
  10 s YouTube clips like this;
* ``<stem>.wav`` beside an image ``<stem>.png|.jpg|.jpeg`` (one frame), or beside a folder
  ``<stem>/`` of images (frames in natural name order; their times are spread evenly over the
  audio, frame i at ``(i + 0.5) / n`` of its length).

Labels are not read (MoCA trains without them). Each item is ``(frames, audio, sample_rate)``:
uint8 [F, H, W, 3] RGB, float32 [C, T] at the file's native rate, int. Resampling and the
audio window around a frame are the preprocessing's job.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moca_rt.datasets.io import LazySequence, read_rgb, read_wav
from moca_rt.frame_files import natural_key

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True, eq=False)
class VggItem:
    """One training clip: ``frames`` uint8 [F, H, W, 3], ``frame_times`` float64 [F] (s),
    ``audio`` float32 [C, T] at ``sample_rate``, and the file it came from."""

    frames: np.ndarray
    frame_times: np.ndarray
    audio: np.ndarray
    sample_rate: int
    path: Path

    def __iter__(self) -> Iterator[object]:
        """Unpacks as ``frames, audio, sample_rate``."""
        return iter((self.frames, self.audio, self.sample_rate))


class VggsoundFolder(LazySequence[VggItem]):
    """Indexes a VGGSound-style folder (see the module docstring).

    Args:
        root: the folder.
        num_frames: frames per item, evenly spaced in time (the i-th of n at ``(i + 0.5) / n``
            of the clip); None keeps every frame.
    """

    def __init__(self, root: str | Path, num_frames: int | None = 1) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"expected a folder at {self.root}; it does not exist")
        if num_frames is not None and num_frames < 1:
            raise ValueError(f"expected num_frames >= 1 or None, got {num_frames}")
        self.num_frames = num_frames
        items: list[tuple[str, Path, Path | None]] = []  # (kind, media, wav)
        for path in sorted(self.root.rglob("*")):
            suffix = path.suffix.lower()
            if path.is_file() and suffix in VIDEO_EXTENSIONS:
                items.append(("video", path, None))
            elif path.is_file() and suffix == ".wav":
                stem = path.with_suffix("")
                if stem.is_dir():
                    items.append(("frames", stem, path))
                    continue
                for ext in IMAGE_EXTENSIONS:
                    for cand in (stem.with_suffix(ext), stem.with_suffix(ext.upper())):
                        if cand.is_file():
                            items.append(("image", cand, path))
                            break
                    else:
                        continue
                    break
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def _item(self, index: int) -> VggItem:
        kind, media, wav = self.items[index]
        if kind == "video":
            return self._load_video(media)
        assert wav is not None
        audio, rate = read_wav(wav)
        duration = audio.shape[1] / rate if rate else 0.0
        if kind == "image":
            return VggItem(read_rgb(media)[None], np.array([duration / 2]), audio, rate, media)
        paths = sorted(
            (p for p in media.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS),
            key=lambda p: natural_key(p.name),
        )
        if not paths:
            raise FileNotFoundError(f"expected image files in {media}, found none")
        times = (np.arange(len(paths)) + 0.5) / len(paths) * duration
        keep = self._pick(times, duration)
        frames = np.stack([read_rgb(paths[i]) for i in keep])
        return VggItem(frames, times[keep], audio, rate, media)

    def _pick(self, times: np.ndarray, duration: float) -> np.ndarray:
        """Indices of the frames nearest to the evenly spaced target times."""
        if self.num_frames is None or len(times) == 0:
            return np.arange(len(times))
        targets = (np.arange(self.num_frames) + 0.5) / self.num_frames * duration
        return np.abs(times[None, :] - targets[:, None]).argmin(axis=1)

    def _load_video(self, path: Path) -> VggItem:
        """Decode once, keeping only the frames nearest the target times (bounded memory)."""
        import av

        from moca_rt.datasets.io import read_audio_av

        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise ValueError(f"expected an audio stream in {path}, got none")
            if not container.streams.video:
                raise ValueError(f"expected a video stream in {path}, got none")
            vstream = container.streams.video[0]
            duration = float(container.duration) / 1e6 if container.duration else 0.0
            targets = None
            if self.num_frames is not None and duration > 0:
                targets = (np.arange(self.num_frames) + 0.5) / self.num_frames * duration
            best: dict[int, tuple[float, float, np.ndarray]] = {}
            kept: list[tuple[float, np.ndarray]] = []
            for frame in container.decode(vstream):
                t = float(frame.time) if frame.time is not None else 0.0
                if targets is None:
                    kept.append((t, frame.to_ndarray(format="rgb24")))
                    continue
                for j, target in enumerate(targets):
                    err = abs(t - target)
                    if j not in best or err < best[j][0]:
                        best[j] = (err, t, frame.to_ndarray(format="rgb24"))
            if targets is not None:
                kept = [(best[j][1], best[j][2]) for j in sorted(best)]
        if not kept:
            raise ValueError(f"expected decodable video frames in {path}, got none")
        audio, rate = read_audio_av(path)
        start = _first_audio_time(path)
        if start > 0:  # put audio sample 0 at time 0, where the frame clock starts
            pad = round(start * rate)
            audio = np.concatenate([np.zeros((audio.shape[0], pad), np.float32), audio], axis=1)
        elif start < 0:
            audio = audio[:, round(-start * rate) :]
        frames = np.stack([f for _, f in kept])
        return VggItem(frames, np.array([t for t, _ in kept]), audio, rate, path)

    def __iter__(self) -> Iterator[VggItem]:
        for i in range(len(self)):
            yield self[i]


def _first_audio_time(path: Path) -> float:
    import av

    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.audio[0]):
            return float(frame.time) if frame.time is not None else 0.0
    return 0.0
