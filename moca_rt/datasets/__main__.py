"""``python -m moca_rt.datasets generate``: write a split of the synthetic world to disk.

Layouts (one split per output folder):

* ``s4`` and ``silent``: AVSBench S4 (``s4_meta_data.csv`` + ``s4_data/...``); silent clips
  use the category ``silent`` and all-zero masks.
* ``ms3``: AVSBench MS3 (``ms3_meta_data.csv`` + ``ms3_data/...``).
* ``avss``: AVSBench-semantic (``metadata.csv``, ``label2idx.json``, ``<label>/<uid>/...``);
  frames are JPEG like the release unless ``--avss-frame-format png``.
* ``video``: ``videos/<id>.mp4`` (H.264 + AAC), ``audio_wav/<id>.wav`` (the lossless
  soundtrack), ``gt_masks/<id>/<id>_<k>.png`` (0/255, k = 1..F, frame k at ``(k-1)/fps`` s)
  and ``videos.json`` (fps, class names, per-frame sounding flags of every object).

Every folder also gets ``synth_manifest.json`` (command arguments, world config, versions).
Exit codes: 0 success, 2 bad command line, 3 invalid argument value or unwritable output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from moca_rt.cli import flag_values
from moca_rt.datasets.avsbench import AvsbenchWriter, add_scene
from moca_rt.datasets.io import write_png, write_wav
from moca_rt.datasets.synth import PARTITIONS, SPLITS, SynthWorld
from moca_rt.datasets.video import write_mp4

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3


def run_generate(
    out: str | Path,
    split: str,
    num: int,
    seed: int = 0,
    size: int = 224,
    partition: str = "test",
    frames: int = 5,
    num_classes: int = 8,
    video_seconds: float = 4.0,
    start_index: int = 0,
    progress: bool = True,
    avss_frame_format: str = "jpg",
) -> Path:
    """Write scenes ``start_index .. start_index + num - 1`` of ``split`` under ``out``.

    ``frames`` is the number of frames per AVSBench-style clip (one per second of audio; the
    ``video`` split uses 25 fps and ``video_seconds`` instead). Returns ``out`` as a Path.
    """
    if split not in SPLITS:
        raise ValueError(f"expected split in {list(SPLITS)}, got {split!r}")
    if partition not in PARTITIONS:
        raise ValueError(f"expected partition in {list(PARTITIONS)}, got {partition!r}")
    if num < 0 or start_index < 0:
        raise ValueError(f"expected num >= 0 and start_index >= 0, got {num} and {start_index}")
    if size % 2:
        raise ValueError(f"expected an even --size (H.264 needs it), got {size}")
    world = SynthWorld(
        seed,
        image_size=size,
        num_classes=num_classes,
        frames_per_clip=frames,
        video_seconds=video_seconds,
    )
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    indices = range(start_index, start_index + num)
    bar = tqdm(indices, desc=f"generate {split}", unit="clip", disable=not progress)
    if split == "video":
        records = []
        for index in bar:
            scene = world.sample("video", index, partition)
            vid = f"synth_video_{partition}_{index:06d}"
            write_mp4(
                root / "videos" / f"{vid}.mp4",
                scene.frames,
                scene.audio,
                world.config.video_fps,
                scene.sample_rate,
            )
            write_wav(root / "audio_wav" / f"{vid}.wav", scene.audio, scene.sample_rate)
            for f in range(scene.num_frames):
                write_png(
                    root / "gt_masks" / vid / f"{vid}_{f + 1}.png",
                    scene.masks[f].astype(np.uint8) * np.uint8(255),
                )
            records.append(
                {
                    "video_id": vid,
                    "num_frames": scene.num_frames,
                    "class_ids": scene.class_ids.tolist(),
                    "sounding": scene.sounding.astype(int).tolist(),
                }
            )
        meta = {
            "fps": world.config.video_fps,
            "sample_rate": world.config.sample_rate,
            "class_names": list(world.class_names),
            "videos": records,
        }
        (root / "videos.json").write_text(json.dumps(meta) + "\n")
    else:
        subset = {"s4": "s4", "silent": "s4", "ms3": "ms3", "avss": "avss"}[split]
        with AvsbenchWriter(
            root, subset, class_names=world.class_names, frame_format=avss_frame_format
        ) as writer:
            for index in bar:
                scene = world.sample(split, index, partition)
                add_scene(writer, scene, f"synth_{split}_{partition}_{index:06d}")
    manifest = {
        "command": "generate",
        "split": split,
        "partition": partition,
        "num": num,
        "start_index": start_index,
        "seed": seed,
        "config": dataclasses.asdict(world.config),
        "class_names": list(world.class_names),
        "numpy": np.__version__,
    }
    (root / "synth_manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m moca_rt.datasets",
        description="Tools for the datasets of moca_rt. Use the 'generate' command to write the "
        "synthetic audio-visual world to disk.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser(
        "generate",
        help="Write a split of the synthetic world in AVSBench format (or MP4 videos for the video"
        " split).",
        description="Write scenes of the seeded synthetic world. The same seed, split, partition "
        "and index always give byte-identical files.",
    )
    gen.add_argument(
        "--out",
        required=True,
        type=Path,
        help="The folder to write into; it is created if needed. Use one folder per split.",
    )
    gen.add_argument(
        "--split",
        required=True,
        choices=SPLITS,
        help="Which split to write: s4 (one sounding object), ms3 (one to three), avss (class "
        "labels), silent (nothing sounds) or video (25 fps clips with sounds switching on and"
        " off).",
    )
    gen.add_argument("--num", required=True, type=int, help="How many clips to write.")
    gen.add_argument(
        "--seed",
        type=int,
        default=0,
        help="The world seed; together with split, partition and index it fixes every byte. "
        "Default: 0.",
    )
    gen.add_argument(
        "--size",
        type=int,
        default=224,
        help="Frame height and width in pixels; must be even. Default: 224.",
    )
    gen.add_argument(
        "--partition",
        choices=PARTITIONS,
        default="test",
        help="The AVSBench split column (train, val or test); each partition is a different set of"
        " scenes. Default: test.",
    )
    gen.add_argument(
        "--frames",
        type=int,
        default=5,
        help="Frames per AVSBench-style clip, one per second of audio (AVSBench uses 5). Ignored "
        "by the video split. Default: 5.",
    )
    gen.add_argument(
        "--num-classes",
        type=int,
        default=8,
        help="Number of object classes in the world, between 2 and 16. Default: 8.",
    )
    gen.add_argument(
        "--video-seconds",
        type=float,
        default=4.0,
        help="Length of each clip of the video split in seconds. Default: 4.",
    )
    gen.add_argument(
        "--start-index",
        type=int,
        default=0,
        help="Index of the first scene to write, so that large sets can be written in parallel "
        "chunks. Default: 0.",
    )
    gen.add_argument(
        "--avss-frame-format",
        choices=["jpg", "png"],
        default="jpg",
        help="File format of the avss split's frames: jpg as in the AVSBench-semantic release, or "
        "png to keep them lossless. Default: jpg.",
    )
    gen.add_argument("--no-progress", action="store_true", help="Do not show the progress bar.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        root = run_generate(**flag_values(run_generate, vars(args)), progress=not args.no_progress)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"wrote {args.num} {args.split} clips to {root}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
