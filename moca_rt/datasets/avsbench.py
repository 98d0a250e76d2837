"""AVSBench folder layouts (S4, MS3, AVSS): one writer and one reader for real and synthetic data.

Where the facts come from: the official AVSBench repository (``OpenNLPLab/AVSBench``), files
``avs_scripts/avs_s4/{config,dataloader}.py``, ``avs_scripts/avs_ms3/{config,dataloader}.py``,
``preprocess_scripts/preprocess_{s4,ms3}.py`` and ``avs_scripts/avss/{config,color_dataloader}.py``.
The reader accepts exactly what those loaders read, so a real download and a folder written
here go through the same code.

S4 (``subset="s4"``; ``root`` is AVSBench's ``Single-source`` folder)::

    root/s4_meta_data.csv                 columns by position: 0 video id, 1 start time,
                                          2 category, 3 split (header row; the official code
                                          reads 'category' and 'split' by name, the rest by
                                          position; we write ``name,start_time,category,split``)
    root/s4_data/visual_frames/<split>/<category>/<vid>/<vid>_<k>.png     k = 1..5, RGB
    root/s4_data/audio_wav/<split>/<category>/<vid>.wav                   16 kHz (moviepy's
                                          default stereo in the real data; mono PCM16 here)
    root/s4_data/gt_masks/<split>/<category>/<vid>/<vid>_<k>.png          real train split:
                                          only k = 1; val/test (and everything we write): 1..5

MS3 (``subset="ms3"``; ``root`` is ``Multi-sources``)::

    root/ms3_meta_data.csv                columns by position: 0 video id, 1 split (``name,split``)
    root/ms3_data/visual_frames/<vid>/<vid>.mp4_<k>.png                   no split level; the
                                          ".mp4" is part of the official frame names
    root/ms3_data/audio_wav/<split>/<vid>.wav
    root/ms3_data/gt_masks/<split>/<vid>/<vid>_<k>.png                    k = 1..5

AVSS / AVSBench-semantic (``subset="avss"``; ``root`` is the released folder)::

    root/metadata.csv                     needs columns 'uid', 'label' (v1s, v1m or v2: the
                                          sub-folder) and 'split'; we write ``vid,uid,label,split``
    root/label2idx.json                   {class name: index}; index 0 = "background"
    root/<label>/<uid>/frames/<i>.jpg     i = 0..F-1, JPEG as released. We write JPEG too by
                                          default (quality 100, no chroma subsampling: a few
                                          grey levels of error), because tools that take every
                                          PNG under a video folder as ground truth (AVSBench
                                          style, ``moca_rt.evaluate``) must not meet frames;
                                          ``frame_format="png"`` writes lossless ``<i>.png``
                                          instead. The reader takes either.
    root/<label>/<uid>/audio.wav
    root/<label>/<uid>/labels_rgb/<i>.png RGB colour masks; the colour of class j is entry j of
                                          AVSBench's palette (``frame_files.avss_palette``, the
                                          PASCAL-VOC bit pattern over 71 entries, class 0 black)

Ground truth our writer produces (for ``moca_rt.evaluate``): S4/MS3 masks are single-channel
8-bit PNGs with values **0 and 255** (255 = sounding object) at the paths above (frame numbers
start at 1, like AVSBench); AVSS label maps are RGB PNGs in the palette colours above (frame
numbers start at 0). Synthetic class id c is written as AVSS class c + 1 with
``label2idx.json`` listing ``background`` plus the world's class names. Frames are PNG (RGB),
audio is PCM16 mono WAV at the world's rate (16 kHz).

Reading a mask: {0, 255} and {0, 1} PNGs are read exactly; other values are binarised as the
official loaders' ``convert("1")`` does (threshold 128 with dithering), by the evaluator's
reader (:func:`moca_rt.frame_files.read_binary_mask` with ``avsbench_fallback``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from moca_rt.datasets.io import LazySequence, read_rgb, read_wav, write_png, write_wav
from moca_rt.frame_files import (
    AVSS_NUM_CLASSES,
    avss_palette,
    colour_mask_to_labels,
    read_binary_mask,
)

Subset = Literal["s4", "ms3", "avss"]
SUBSETS: tuple[Subset, ...] = ("s4", "ms3", "avss")
_CSV_NAME = {"s4": "s4_meta_data.csv", "ms3": "ms3_meta_data.csv", "avss": "metadata.csv"}


@dataclass(frozen=True, eq=False)
class AvsClip:
    """One video of an AVSBench-format folder.

    * ``frames``: uint8 [F, H, W, 3] RGB, in frame order.
    * ``audio``: float32 [C, T] at ``sample_rate`` (native rate; PCM16 is ``int16 / 32768``).
    * ``masks``: bool [M, H, W], the frames that have ground truth (``mask_frames`` gives their
      0-based frame indices; real S4 train has only frame 0).
    * ``labels``: int64 [M, H, W] class indices (AVSS only, 0 = background), else None.
    """

    subset: str
    video_id: str
    split: str
    category: str
    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    masks: np.ndarray
    labels: np.ndarray | None
    mask_frames: tuple[int, ...]
    frame_paths: tuple[Path, ...]
    mask_paths: tuple[Path, ...]
    audio_path: Path


def _paths(
    root: Path,
    subset: str,
    vid: str,
    split: str,
    category: str,
    num_frames: int,
    frame_ext: str = ".png",
) -> tuple[list[Path], Path, list[Path]]:
    """(frame paths, audio path, mask paths) of one video, all ``num_frames`` of them."""
    if subset == "s4":
        base = root / "s4_data"
        frames = [
            base / "visual_frames" / split / category / vid / f"{vid}_{k}.png"
            for k in range(1, num_frames + 1)
        ]
        audio = base / "audio_wav" / split / category / f"{vid}.wav"
        masks = [
            base / "gt_masks" / split / category / vid / f"{vid}_{k}.png"
            for k in range(1, num_frames + 1)
        ]
    elif subset == "ms3":
        base = root / "ms3_data"
        frames = [
            base / "visual_frames" / vid / f"{vid}.mp4_{k}.png" for k in range(1, num_frames + 1)
        ]
        audio = base / "audio_wav" / split / f"{vid}.wav"
        masks = [
            base / "gt_masks" / split / vid / f"{vid}_{k}.png" for k in range(1, num_frames + 1)
        ]
    elif subset == "avss":
        base = root / category / vid
        frames = [base / "frames" / f"{i}{frame_ext}" for i in range(num_frames)]
        audio = base / "audio.wav"
        masks = [base / "labels_rgb" / f"{i}.png" for i in range(num_frames)]
    else:
        raise ValueError(f"expected subset in {list(SUBSETS)}, got {subset!r}")
    return frames, audio, masks


class AvsbenchWriter:
    """Writes clips into an AVSBench-format folder; the index CSV is written on :meth:`close`.

    Args:
        root: the folder (created); see the module docstring for what goes where.
        subset: ``"s4"``, ``"ms3"`` or ``"avss"``.
        class_names: AVSS only: names of classes 1.. (index 0 is "background"); written to
            ``label2idx.json``. Must have at most 70 entries.
        frame_format: AVSS frame files: ``"jpg"`` (as released; default) or ``"png"``
            (lossless, but then the video folders hold PNGs that are not ground truth).
    """

    def __init__(
        self,
        root: str | Path,
        subset: str,
        class_names: Sequence[str] | None = None,
        frame_format: str = "jpg",
    ) -> None:
        if subset not in SUBSETS:
            raise ValueError(f"expected subset in {list(SUBSETS)}, got {subset!r}")
        if frame_format not in ("png", "jpg"):
            raise ValueError(f"expected frame_format 'png' or 'jpg', got {frame_format!r}")
        if subset == "avss":
            if class_names is None:
                raise ValueError("expected class_names for subset 'avss', got None")
            if len(class_names) > AVSS_NUM_CLASSES - 1:
                raise ValueError(
                    f"expected at most {AVSS_NUM_CLASSES - 1} class names, got {len(class_names)}"
                )
        self.root = Path(root)
        self.subset = subset
        self.class_names = tuple(class_names or ())
        self.frame_format = frame_format
        self.rows: list[dict[str, str]] = []
        self._ids: set[str] = set()
        self.root.mkdir(parents=True, exist_ok=True)

    def add(
        self,
        video_id: str,
        split: str,
        frames: np.ndarray,
        audio: np.ndarray,
        sample_rate: int,
        masks: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        category: str = "",
        start_time: float = 0.0,
    ) -> list[Path]:
        """Write one video; returns the files written.

        Args:
            video_id: file-name-safe id, unique in this folder.
            split: ``train``/``val``/``test`` (the CSV's split column).
            frames: uint8 [F, H, W, 3] RGB.
            audio: float [T] or [C, T] in [-1, 1], written as PCM16.
            masks: bool [F, H, W] (S4/MS3; required there).
            labels: uint8/int [F, H, W] class indices 0..70 (AVSS; required there).
            category: S4 category folder (e.g. the sounding class name); AVSS: the label set
                folder (``v1s``/``v1m``/``v2``; default ``v1m`` for 5 frames, ``v2`` otherwise).
        """
        if not video_id or "/" in video_id or video_id in self._ids:
            raise ValueError(f"expected a new, non-empty video id without '/', got {video_id!r}")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise ValueError(
                f"expected uint8 frames [F, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        num = frames.shape[0]
        if self.subset == "avss":
            if labels is None or np.asarray(labels).shape != frames.shape[:3]:
                got = None if labels is None else np.asarray(labels).shape
                raise ValueError(f"expected labels of shape {frames.shape[:3]}, got {got}")
            category = category or ("v1m" if num == 5 else "v2")
        else:
            if masks is None or np.asarray(masks).shape != frames.shape[:3]:
                got = None if masks is None else np.asarray(masks).shape
                raise ValueError(f"expected masks of shape {frames.shape[:3]}, got {got}")
            if self.subset == "s4" and not category:
                raise ValueError("expected a category for subset 's4', got ''")
        ext = "." + self.frame_format if self.subset == "avss" else ".png"
        frame_paths, audio_path, mask_paths = _paths(
            self.root, self.subset, video_id, split, category, num, ext
        )
        for f, path in enumerate(frame_paths):
            if ext == ".jpg":
                from PIL import Image

                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(frames[f]).save(path, quality=100, subsampling=0)
            else:
                write_png(path, frames[f])
        write_wav(audio_path, audio, sample_rate)
        if self.subset == "avss":
            palette = avss_palette()
            lab = np.asarray(labels)
            if lab.min(initial=0) < 0 or lab.max(initial=0) >= AVSS_NUM_CLASSES:
                raise ValueError(
                    f"expected labels in [0, {AVSS_NUM_CLASSES - 1}], "
                    f"got [{lab.min()}, {lab.max()}]"
                )
            for f, path in enumerate(mask_paths):
                write_png(path, palette[lab[f].astype(np.int64)])
        else:
            mk = np.asarray(masks).astype(bool)
            for f, path in enumerate(mask_paths):
                write_png(path, mk[f].astype(np.uint8) * np.uint8(255))
        self._ids.add(video_id)
        if self.subset == "s4":
            self.rows.append(
                {
                    "name": video_id,
                    "start_time": f"{start_time:g}",
                    "category": category,
                    "split": split,
                }
            )
        elif self.subset == "ms3":
            self.rows.append({"name": video_id, "split": split})
        else:
            self.rows.append({"vid": video_id, "uid": video_id, "label": category, "split": split})
        return [*frame_paths, audio_path, *mask_paths]

    def close(self) -> Path:
        """Write the index CSV (and ``label2idx.json`` for AVSS); returns the CSV path."""
        path = self.root / _CSV_NAME[self.subset]
        fields = {
            "s4": ["name", "start_time", "category", "split"],
            "ms3": ["name", "split"],
            "avss": ["vid", "uid", "label", "split"],
        }[self.subset]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)
        if self.subset == "avss":
            names = ["background", *self.class_names]
            (self.root / "label2idx.json").write_text(
                json.dumps({n: i for i, n in enumerate(names)}, indent=1) + "\n"
            )
        return path

    def __enter__(self) -> AvsbenchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class _Row:
    video_id: str
    split: str
    category: str


class AvsbenchDataset(LazySequence[AvsClip]):
    """Reads an AVSBench-format folder (real or written by :class:`AvsbenchWriter`).

    Args:
        root: the subset's folder (``Single-source``, ``Multi-sources`` or the AVSS release).
        subset: ``"s4"``, ``"ms3"`` or ``"avss"``.
        split: keep only rows of this split (``train``/``val``/``test``); None keeps all.
        label_set: AVSS only: keep rows whose ``label`` is this (``v1s``/``v1m``/``v2``).

    Items are :class:`AvsClip` loaded on access. Frames and masks are found by their
    AVSBench names: consecutive k (or i) from the first until a file is missing.
    """

    def __init__(
        self, root: str | Path, subset: str, split: str | None = None, label_set: str | None = None
    ) -> None:
        if subset not in SUBSETS:
            raise ValueError(f"expected subset in {list(SUBSETS)}, got {subset!r}")
        self.root = Path(root)
        self.subset = subset
        csv_path = self.root / _CSV_NAME[subset]
        if not csv_path.is_file():
            raise FileNotFoundError(
                f"expected the index {csv_path} for subset {subset!r}; it does not exist"
            )
        with csv_path.open(newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            table = [r for r in reader if r]
        col = {name.strip(): i for i, name in enumerate(header)}
        rows: list[_Row] = []
        for r in table:
            if subset == "s4":
                row = _Row(r[0], r[col.get("split", 3)], r[col.get("category", 2)])
            elif subset == "ms3":
                row = _Row(r[0], r[col.get("split", 1)], "")
            else:
                missing = {"uid", "label", "split"} - set(col)
                if missing:
                    raise ValueError(
                        f"expected columns uid, label, split in {csv_path}, got {header}"
                    )
                row = _Row(r[col["uid"]], r[col["split"]], r[col["label"]])
                if label_set is not None and row.category != label_set:
                    continue
            if split is None or row.split == split:
                rows.append(row)
        self.rows = rows
        self.classes: tuple[str, ...] = ()
        if subset == "avss":
            label_path = self.root / "label2idx.json"
            if label_path.is_file():
                mapping = json.loads(label_path.read_text())
                self.classes = tuple(sorted(mapping, key=lambda k: mapping[k]))

    @property
    def video_ids(self) -> list[str]:
        return [r.video_id for r in self.rows]

    def __len__(self) -> int:
        return len(self.rows)

    def _item(self, index: int) -> AvsClip:
        return self._load(self.rows[index])

    def __iter__(self) -> Iterator[AvsClip]:
        for row in self.rows:
            yield self._load(row)

    def _load(self, row: _Row) -> AvsClip:
        limit = 16
        while True:  # grow the candidate list until a frame is missing (AVSBench: 5 or 10)
            frame_paths, audio_path, mask_paths = _paths(
                self.root, self.subset, row.video_id, row.split, row.category, limit
            )
            if self.subset == "avss":
                frame_paths = [p if p.is_file() else p.with_suffix(".jpg") for p in frame_paths]
            frame_paths = _leading_existing(frame_paths)
            if len(frame_paths) < limit:
                break
            limit *= 4
        if not frame_paths:
            example = _paths(self.root, self.subset, row.video_id, row.split, row.category, 1)[0][0]
            raise FileNotFoundError(
                f"no frames for video {row.video_id!r} under {self.root} (expected e.g. {example})"
            )
        frames = np.stack([read_rgb(p) for p in frame_paths])
        audio, rate = read_wav(audio_path)
        present = [(i, p) for i, p in enumerate(mask_paths[: len(frame_paths)]) if p.is_file()]
        labels: np.ndarray | None = None
        if self.subset == "avss":
            palette = avss_palette()
            labels_list = [colour_mask_to_labels(read_rgb(p), palette) for _, p in present]
            labels = (
                np.stack(labels_list)
                if labels_list
                else np.zeros((0, *frames.shape[1:3]), np.int64)
            )
            masks = labels > 0
        else:
            masks_list = [read_binary_mask(p, avsbench_fallback=True) for _, p in present]
            masks = np.stack(masks_list) if masks_list else np.zeros((0, *frames.shape[1:3]), bool)
        return AvsClip(
            subset=self.subset,
            video_id=row.video_id,
            split=row.split,
            category=row.category,
            frames=frames,
            audio=audio,
            sample_rate=rate,
            masks=masks,
            labels=labels,
            mask_frames=tuple(i for i, _ in present),
            frame_paths=tuple(frame_paths),
            mask_paths=tuple(p for _, p in present),
            audio_path=audio_path,
        )


def _leading_existing(paths: list[Path]) -> list[Path]:
    out = []
    for p in paths:
        if not p.is_file():
            break
        out.append(p)
    return out


def add_scene(writer: AvsbenchWriter, scene: object, video_id: str) -> list[Path]:
    """Write a synthetic :class:`~moca_rt.datasets.synth.Scene` as one video of ``writer``.

    S4: the category is the sounding object's class name (``"silent"`` when nothing sounds);
    AVSS: labels are the scene's ``class_id + 1`` maps; the split column is the scene's
    partition.
    """
    from moca_rt.datasets.synth import Scene

    if not isinstance(scene, Scene):
        raise ValueError(f"expected a synth.Scene, got {type(scene).__name__}")
    names = scene.sounding_class_ids
    category = scene.class_names[names[0]] if names else "silent"
    if writer.subset != "s4":
        category = ""
    return writer.add(
        video_id,
        scene.partition,
        scene.frames,
        scene.audio,
        scene.sample_rate,
        masks=scene.masks,
        labels=scene.labels,
        category=category,
    )


# --------------------------------------------------------------------------------------------
# a whole split as inference input: its videos, and where their ground truth lies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AvsVideo:
    """One video of a split to segment: its frame folder and wav, and where its masks go.

    ``mask_dir`` is the video's ground-truth folder relative to the split's ground-truth root
    (``AvsSplit.gt_root``), POSIX style; ``mask_names`` the ground-truth file name of each
    frame (AVSBench names: S4 ``<vid>_<k>.png``, MS3 ``<vid>_<k>.png``, AVSS ``<i>.png``), so
    masks written at ``OUT/masks/<mask_dir>/<name>`` mirror the ground truth file for file.
    """

    video_id: str
    frames_dir: Path
    audio: Path | None
    mask_dir: str
    frames: tuple[Path, ...]
    mask_names: tuple[str, ...]


@dataclass(frozen=True)
class AvsSplit:
    """The videos of an AVSBench split root (the CSV index) or of a folder tree of videos.

    ``subset``: ``"s4"``, ``"ms3"``, ``"avss"`` or ``"tree"`` (folders of frames without an
    index: every folder holding images is a video, its masks mirror the tree under the root);
    ``gt_root``: the folder that ``moca_rt.evaluate --gt`` takes (None for a tree).
    """

    root: Path
    subset: str
    gt_root: Path | None
    videos: tuple[AvsVideo, ...]


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _frame_files(folder: Path) -> list[Path]:
    from moca_rt.frame_files import natural_key

    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.stem))


def _gt_name(frame: Path) -> str:
    return frame.stem.replace(".mp4_", "_") + ".png"


def is_split_root(path: str | Path) -> bool:
    """Whether ``path`` is a split to segment video by video: an index CSV of S4/MS3/AVSS, a
    folder holding one, or a folder without images of its own whose sub-folders hold them."""
    path = Path(path)
    if path.is_file():
        return path.name in _CSV_NAME.values()
    if not path.is_dir():
        return False
    if any((path / name).is_file() for name in _CSV_NAME.values()):
        return True
    if _frame_files(path):
        return False
    return any(_frame_files(d) for d in path.rglob("*") if d.is_dir())


def split_videos(path: str | Path, split: str | None = None) -> AvsSplit:
    """The videos of the split at ``path`` (see :func:`is_split_root`), in index order.

    With an index, ``split`` keeps the rows of one split (``train``/``val``/``test``). A video
    whose frame folder is missing or empty is still listed (with no frames): segmenting it
    fails, and the caller records that and goes on.

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: it is not a split root.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    root = path.parent if path.is_file() else path
    subset = next((s for s in SUBSETS if (root / _CSV_NAME[s]).is_file()), None)
    if path.is_file():
        subset = next((s for s in SUBSETS if _CSV_NAME[s] == path.name), None)
    if subset is None:
        return _tree_split(path)
    dataset = AvsbenchDataset(root, subset, split)
    videos = []
    for row in dataset.rows:
        frame_paths, audio, _ = _paths(root, subset, row.video_id, row.split, row.category, 1)
        frames_dir = frame_paths[0].parent
        if subset == "s4":
            mask_dir = f"{row.split}/{row.category}/{row.video_id}"
        elif subset == "ms3":
            mask_dir = f"{row.split}/{row.video_id}"
        else:
            mask_dir = f"{row.category}/{row.video_id}/labels_rgb"
        frames = _frame_files(frames_dir)
        videos.append(
            AvsVideo(
                video_id=row.video_id,
                frames_dir=frames_dir,
                audio=audio if audio.is_file() else None,
                mask_dir=mask_dir,
                frames=tuple(frames),
                mask_names=tuple(_gt_name(p) for p in frames),
            )
        )
    gt_root = root if subset == "avss" else root / f"{subset}_data" / "gt_masks"
    return AvsSplit(root, subset, gt_root, tuple(videos))


def _tree_split(root: Path) -> AvsSplit:
    from moca_rt.frame_files import natural_key

    folders = sorted(
        (d for d in root.rglob("*") if d.is_dir() and _frame_files(d)),
        key=lambda d: natural_key(d.relative_to(root).as_posix()),
    )
    if not folders:
        raise ValueError(f"{root}: expected an AVSBench index CSV or folders of frames, got none")
    videos = []
    for folder in folders:
        frames = _frame_files(folder)
        videos.append(
            AvsVideo(
                video_id=folder.name,
                frames_dir=folder,
                audio=None,
                mask_dir=folder.relative_to(root).as_posix(),
                frames=tuple(frames),
                mask_names=tuple(_gt_name(p) for p in frames),
            )
        )
    return AvsSplit(root, "tree", None, tuple(videos))
