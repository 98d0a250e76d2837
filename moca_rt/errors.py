"""The errors moca_rt raises on purpose: one small hierarchy, mapped to exit codes by the CLIs.

::

    MocaError
    ├── InputError          the input cannot be used (also a ValueError): exit 3
    │   └── MediaOpenError  a source that cannot be opened (also a MediaError and an OSError)
    │       ├── MediaNotFoundError, NoVideoStreamError, NoAudioStreamError
    ├── CheckpointError     a checkpoint does not fit its model (also a ValueError): exit 4
    ├── DecodeError         a source broke part-way, after its decodable frames: exit 1
    │   └── MediaDecodeError  (also a MediaError)
    └── OutOfMemoryError    the device ran out of memory (also a RuntimeError): exit 5

The library raises these; only the command-line entry points (``moca_rt.infer``,
``moca_rt.evaluate``, the benchmarks) turn them into exit codes. ``MediaError`` is the common
base of the media errors. This module imports neither torch nor the rest of moca_rt (torch only
when :func:`torch_out_of_memory` runs), so every layer can raise these errors.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "CheckpointError",
    "DecodeError",
    "InputError",
    "MediaDecodeError",
    "MediaError",
    "MediaNotFoundError",
    "MediaOpenError",
    "MocaError",
    "NoAudioStreamError",
    "NoVideoStreamError",
    "OutOfMemoryError",
    "torch_out_of_memory",
]


class MocaError(Exception):
    """Base class of every error moca_rt raises on purpose."""


class InputError(MocaError, ValueError):
    """The input cannot be used: missing, empty, not a video, no audio stream, a bad prompt file,
    engine files that do not fit the run."""


class CheckpointError(MocaError, ValueError):
    """A checkpoint does not fit the model it was given for (the message names the keys)."""


class DecodeError(MocaError):
    """A source broke part-way; raised after every decodable frame was delivered."""


class OutOfMemoryError(MocaError, RuntimeError):
    """The device ran out of memory (the cause is torch's ``OutOfMemoryError``)."""


class MediaError(MocaError):
    """Base class of every media error."""


# OSError before InputError: OSError's constructor must run (errno, strerror, filename).
class MediaOpenError(MediaError, OSError, InputError):
    """A source that cannot be opened: missing, empty, unreadable or without the needed streams."""


class MediaNotFoundError(MediaOpenError, FileNotFoundError):
    """A local path that does not exist."""


class NoVideoStreamError(MediaOpenError):
    """The container opened but holds no video stream (e.g. a WAV file named .mp4)."""


class NoAudioStreamError(MediaOpenError):
    """The source has no audio and ``allow_silent=False``."""


class MediaDecodeError(MediaError, DecodeError):
    """Decoding failed part-way; raised after every decodable frame was yielded."""


@contextmanager
def torch_out_of_memory() -> Iterator[None]:
    """Raise torch's out-of-memory error inside the block as :class:`OutOfMemoryError`.

    The message is torch's; torch's error is the cause.
    """
    import torch

    try:
        yield
    except torch.OutOfMemoryError as e:
        raise OutOfMemoryError(str(e)) from e
