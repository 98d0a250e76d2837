"""Which source reads an input, decided once: :func:`source_kind`, then :func:`open_source`.

This module sits above the sources it opens (:mod:`moca_rt.media.sources`,
:mod:`moca_rt.media.reconnect`); callers that need to know the kind before opening (a CLI
choosing options) ask :func:`source_kind`, which is what :func:`open_source` itself goes by.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Literal

from moca_rt.media.reconnect import ReconnectingSource
from moca_rt.media.sources import (
    ContainerSource,
    ImageSequenceSource,
    MediaSource,
    is_network_url,
    open_avsbench,
    open_image_audio,
    url_scheme,
)
from moca_rt.media.types import IMAGE_SUFFIXES

__all__ = ["SourceKind", "open_source", "source_kind"]

SourceKind = Literal["stream", "file", "folder", "image"]


def _local_text(spec: str | Path) -> str:
    """``spec`` as text, a ``file://`` URL as its path."""
    text = str(spec)
    return text[len("file://") :] if url_scheme(text) == "file" else text


def source_kind(spec: str | Path) -> SourceKind:
    """How :func:`open_source` reads ``spec``.

    * ``"stream"``: a URL with a network scheme (http(s), rtsp, rtmp, udp, ...): a live or remote
      container, decoded on a background thread, that can reconnect;
    * ``"folder"``: a directory of images: an AVSBench clip;
    * ``"image"``: an image file (by its suffix), with its audio from a separate file;
    * ``"file"``: anything else, read as a video container file.

    Streams and files carry their own audio; folders and images take it from ``audio=``.
    """
    text = _local_text(spec)
    if is_network_url(text):
        return "stream"
    path = Path(text)
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return "image"
    return "file"


def open_source(spec: str | Path, **opts: Any) -> MediaSource:
    """Open any supported input by its :func:`source_kind`.

    * ``"stream"`` or ``"file"`` -> :class:`~moca_rt.media.sources.ContainerSource` (a
      background decoder thread);
    * ``"folder"`` -> an AVSBench clip (:func:`~moca_rt.media.sources.open_avsbench`;
      ``audio=`` overrides the wav lookup);
    * ``"image"`` -> :func:`~moca_rt.media.sources.open_image_audio` with ``audio=`` (required
      unless ``allow_silent=True``).

    Options are those of the chosen source (``fps``, ``window_s``, ``allow_silent``,
    ``timeout``, ``options``, ``resampler``, ...). Network sources also take ``reconnect=N``
    (reopen the URL up to N times in a row when the stream ends or breaks:
    :class:`~moca_rt.media.reconnect.ReconnectingSource`) and ``retry_delay_s``.

    Raises:
        MediaNotFoundError / MediaOpenError / NoVideoStreamError / NoAudioStreamError.
        ValueError: an option that the chosen source does not take.
    """
    text = _local_text(spec)
    kind = source_kind(spec)
    reconnect = opts.pop("reconnect", 0)
    retry_delay_s = opts.pop("retry_delay_s", None)
    if kind == "stream":
        _check_options(opts, ContainerSource.__init__, what=f"a network source ({text})")
        if reconnect:
            delay = {} if retry_delay_s is None else {"retry_delay_s": retry_delay_s}
            return ReconnectingSource(text, reconnects=reconnect, **delay, **opts)
        return ContainerSource(text, **opts)
    if reconnect or retry_delay_s is not None:
        raise ValueError(f"reconnect: expected a network source (a URL), got {text}")
    path = Path(text)
    if kind == "folder":
        _check_options(
            opts, open_avsbench, ImageSequenceSource.__init__, what=f"a frame folder ({text})"
        )
        return open_avsbench(path, **opts)
    if kind == "image":
        _check_options(
            opts, open_image_audio, ImageSequenceSource.__init__, what=f"an image ({text})"
        )
        audio = opts.pop("audio", None)
        return open_image_audio(path, audio, **opts)
    _check_options(opts, ContainerSource.__init__, what=f"a container file ({text})")
    return ContainerSource(path, **opts)


def _check_options(opts: dict[str, Any], *targets: Any, what: str) -> None:
    """ValueError naming the options that none of ``targets`` accepts."""
    allowed: set[str] = set()
    for target in targets:
        params = inspect.signature(target).parameters
        allowed |= {
            n
            for n, p in params.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
            or (p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and n != "self")
        }
    allowed -= {"spec", "images", "times", "frames_dir", "image"}
    unknown = sorted(set(opts) - allowed)
    if unknown:
        raise ValueError(f"options {unknown}: expected options of {what}: {sorted(allowed)}")
