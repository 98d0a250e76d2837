"""Datasets: the synthetic audio-visual world and readers/writers of real dataset layouts.

* :mod:`~moca_rt.datasets.synth`: :class:`SynthWorld`, seeded scenes with known ground truth.
* :mod:`~moca_rt.datasets.avsbench`: AVSBench S4 / MS3 / AVSS folders (writer + reader).
* :mod:`~moca_rt.datasets.vggsound`: unlabelled VGGSound-style training folders.
* :mod:`~moca_rt.datasets.video`: MP4 (H.264 + AAC) writer and reader.
* ``python -m moca_rt.datasets generate ...`` writes any synthetic split to disk.
"""

from moca_rt.datasets.avsbench import AvsbenchDataset, AvsbenchWriter, AvsClip, add_scene
from moca_rt.datasets.synth import CLASS_SPECS, SPLITS, Scene, SceneObject, SynthConfig, SynthWorld
from moca_rt.datasets.vggsound import VggItem, VggsoundFolder
from moca_rt.datasets.video import VideoData, read_video, write_mp4
from moca_rt.frame_files import avss_palette

__all__ = [
    "CLASS_SPECS",
    "SPLITS",
    "AvsClip",
    "AvsbenchDataset",
    "AvsbenchWriter",
    "Scene",
    "SceneObject",
    "SynthConfig",
    "SynthWorld",
    "VggItem",
    "VggsoundFolder",
    "VideoData",
    "add_scene",
    "avss_palette",
    "read_video",
    "write_mp4",
]
