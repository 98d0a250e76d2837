"""Online segmentation on Ray Serve: ``serve run moca_rt.serve:app`` or ``python -m moca_rt.serve``.

HTTP API (JSON answers):

* ``GET /healthz`` -> ``{"status": "ok", "replica": ..., "max_batch_size": ..., ...}``.
* ``POST /segment`` with ``multipart/form-data``: an ``image`` part (PNG/JPEG) and an ``audio``
  part (WAV, or anything FFmpeg decodes; the frame is taken at the middle of the audio, as
  ``infer`` does for an image with a wav), or a ``clip`` part (a short video with sound, at most
  ``max_clip_frames`` frames). Answer: ``{"frames": [{"index", "pts", "mask" (COCO RLE,
  ``counts`` as str), "scores" (per cluster), "chosen", "silent", "level_dbfs", "batch_size"
  (frames in the model call that served this frame), "timings_ms"}], "timings_ms": {"decode",
  "segment", "total"}}``.

Bad input is a 4xx with ``{"error": message}``, never a 500 with a traceback: 400 (missing part,
not an image, undecodable audio or clip), 404 (unknown path), 405 (wrong method), 413 (body over
``max_body_bytes``, clip over ``max_clip_frames``), 415 (not multipart). An unexpected failure
is a 500 with the error's type and message only; running out of device memory a 503.

Dynamic batching: every frame of every request goes through one ``@serve.batch`` method, so
frames of concurrent requests share a model call (up to ``max_batch_size``, waiting at most
``batch_wait_timeout_s`` for a batch to fill). Decoding and the model run on worker threads, so
a replica decodes new requests while the model runs.

Configuration (:class:`ServeConfig`): replicas, CPUs/GPUs per replica, batching, limits and the
pipeline's :class:`~moca_rt.build.BuildSettings`; from code, from ``serve run
moca_rt.serve:build_app num_replicas=2 max_batch_size=16 device=cuda`` (``key=value`` pairs),
or from the flags of ``python -m moca_rt.serve``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from moca_rt.build import BuildSettings
from moca_rt.cli import flag_values
from moca_rt.errors import InputError, MediaError, OutOfMemoryError

__all__ = ["ServeConfig", "app", "build_app", "main", "start"]

ROUTE_SEGMENT = "/segment"
ROUTE_HEALTH = "/healthz"
_CLIP_SUFFIX = ".clip"
_SETTING_NAMES = {f.name for f in fields(BuildSettings)}


@dataclass(frozen=True)
class ServeConfig:
    """A deployment: scale, batching, request limits and the pipeline to build.

    Attributes:
        num_replicas: copies of the pipeline (one model load each).
        num_cpus_per_replica, num_gpus_per_replica: what each replica reserves; with GPUs set
            ``settings.device`` to ``cuda``.
        max_batch_size: frames per model call at most (1 turns dynamic batching off).
        batch_wait_timeout_s: how long a batch may wait to fill.
        max_ongoing_requests: requests a replica takes at once (more wait in the proxy).
        max_body_bytes: larger request bodies are refused with 413.
        max_clip_frames: longer clips are refused with 413.
        settings: the pipeline (``moca_rt.build.build_pipeline``).
    """

    num_replicas: int = 1
    num_cpus_per_replica: float = 1.0
    num_gpus_per_replica: float = 0.0
    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.01
    max_ongoing_requests: int = 64
    max_body_bytes: int = 16 * 2**20
    max_clip_frames: int = 64
    settings: BuildSettings = field(default_factory=BuildSettings)

    def __post_init__(self) -> None:
        if self.num_replicas < 1 or self.max_batch_size < 1 or self.max_ongoing_requests < 1:
            raise InputError(
                "num_replicas, max_batch_size, max_ongoing_requests: expected >= 1, got "
                f"{self.num_replicas}, {self.max_batch_size}, {self.max_ongoing_requests}"
            )
        if self.batch_wait_timeout_s < 0 or self.max_body_bytes < 1 or self.max_clip_frames < 1:
            raise InputError(
                "batch_wait_timeout_s >= 0, max_body_bytes >= 1, max_clip_frames >= 1 expected, "
                f"got {self.batch_wait_timeout_s}, {self.max_body_bytes}, {self.max_clip_frames}"
            )

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> ServeConfig:
        """From ``key=value`` pairs (``serve run moca_rt.serve:build_app key=value ...``): keys
        are this class's fields or :class:`BuildSettings` fields; text values are converted to
        the field's type."""
        own = {f.name: f for f in fields(cls) if f.name != "settings"}
        settings_fields = {f.name: f for f in fields(BuildSettings)}
        mine: dict[str, Any] = {}
        chosen: dict[str, Any] = {}
        for key, value in args.items():
            if key in own:
                mine[key] = _convert(key, value, own[key].type)
            elif key in settings_fields:
                chosen[key] = _convert(key, value, settings_fields[key].type)
            else:
                known = sorted([*own, *settings_fields])
                raise InputError(f"{key}: expected one of {known}, got an unknown key")
        return cls(**mine, settings=BuildSettings(**chosen))


def _convert(key: str, value: Any, kind: Any) -> Any:
    """``value`` (often text from a command line) as the field type named by ``kind`` (the
    annotation as text: ``"int"``, ``"float | None"``, ``"Path | None"``, ``"str"``, ...);
    ``none`` gives None for optional fields."""
    if not isinstance(value, str):
        return value
    kind = str(kind)
    if value.lower() == "none" and "None" in kind:
        return None
    base = kind.split("|")[0].strip()
    try:
        if base == "int":
            return int(value)
        if base == "float":
            return float(value)
        if base == "bool":
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        if base == "Path":
            return Path(value)
    except ValueError as e:
        raise InputError(f"{key}: expected {kind}, got {value!r}") from e
    return value


class _BadRequest(Exception):
    """A request that cannot be served: answered with ``status`` and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _frame_json(frame: Any, result: Any, batch_size: int) -> dict[str, Any]:
    from moca_rt.sinks import mask_to_rle

    return {
        "index": frame.index,
        "pts": round(float(frame.pts), 6),
        "mask": mask_to_rle(result.mask),
        "scores": result.scores,
        "chosen": result.chosen,
        "silent": result.silent,
        "level_dbfs": round(float(result.level_dbfs), 3),
        "batch_size": batch_size,
        "timings_ms": {k: round(v, 3) for k, v in result.timings_ms.items()},
    }


def _decode_upload(parts: Mapping[str, bytes], max_frames: int) -> list[Any]:
    """The frames of an upload (``image`` + ``audio``, or ``clip``), read through
    ``moca_rt.media.open_source`` from a temporary folder; _BadRequest for what is unusable."""
    from moca_rt.media import open_source

    with tempfile.TemporaryDirectory(prefix="moca_serve_") as tmp:
        folder = Path(tmp)
        if "clip" in parts:
            path = folder / f"upload{_CLIP_SUFFIX}"
            path.write_bytes(parts["clip"])
            spec, options = str(path), {}
        elif "image" in parts:
            if "audio" not in parts:
                raise _BadRequest(400, "expected an 'audio' part (WAV) with the 'image' part")
            image = _checked_image(parts["image"], folder)
            audio = folder / "audio.wav"
            audio.write_bytes(parts["audio"])
            spec, options = str(image), {"audio": str(audio)}
        else:
            got = sorted(parts) or "none"
            raise _BadRequest(400, f"expected form parts 'image' and 'audio', or 'clip'; got {got}")
        frames = []
        try:
            with open_source(spec, **options) as source:
                for frame in source:
                    if frame.image is None or frame.audio is None:
                        continue
                    frames.append(frame)
                    if len(frames) > max_frames:
                        raise _BadRequest(
                            413, f"clip: expected at most {max_frames} frames, got more"
                        )
        except (InputError, MediaError) as e:
            which = "clip" if "clip" in parts else "audio"
            raise _BadRequest(400, f"{which}: cannot be decoded: {e}") from e
        if not frames:
            raise _BadRequest(400, "clip: expected at least one video frame, got none")
        return frames


def _checked_image(data: bytes, folder: Path) -> Path:
    """Write a PNG/JPEG upload under its own suffix; _BadRequest when it is not one."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            kind = im.format
            im.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise _BadRequest(
            400, f"image: expected a PNG or JPEG file, got undecodable data ({e})"
        ) from e
    if kind not in ("PNG", "JPEG"):
        raise _BadRequest(415, f"image: expected PNG or JPEG, got {kind}")
    path = folder / ("image.png" if kind == "PNG" else "image.jpg")
    path.write_bytes(data)
    return path


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (by Content-Length before reading, or
    while reading a body sent without one)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadRequest(413, f"body: expected at most {limit} bytes, got {declared}")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _BadRequest(413, f"body: expected at most {limit} bytes, got more")
        chunks.append(chunk)
    return b"".join(chunks)


async def _form_parts(request: Request, body: bytes) -> dict[str, bytes]:
    """The file (and text) parts of a ``multipart/form-data`` body, by name."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise _BadRequest(
            415,
            "expected a multipart/form-data body with parts 'image' + 'audio' or 'clip', got "
            f"content type {kind or 'none'}",
        )

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form()
    except Exception as e:  # malformed multipart
        raise _BadRequest(400, f"body: malformed multipart/form-data ({e})") from e
    parts: dict[str, bytes] = {}
    for name, value in form.multi_items():
        parts[name] = await value.read() if hasattr(value, "read") else str(value).encode()
    return parts


@serve.deployment
class MocaSegmenter:
    """A replica: one pipeline, frames of concurrent requests batched into its model calls."""

    def __init__(self, config: ServeConfig) -> None:
        from moca_rt.build import build_pipeline

        self.config = config
        started = time.perf_counter()
        built = build_pipeline(config.settings)
        self.load_s = time.perf_counter() - started
        self.pipeline = built.pipeline
        self.notes = built.notes
        # serve.batch's wrapper carries these setters; its type hints do not say so.
        batched: Any = self.segment_frames
        batched.set_max_batch_size(config.max_batch_size)
        batched.set_batch_wait_timeout_s(config.batch_wait_timeout_s)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def segment_frames(self, frames: list[Any]) -> list[tuple[Any, int]]:
        """One model call for the frames of whichever requests are waiting."""
        images = [f.image for f in frames]
        audio = np.stack([f.audio for f in frames])
        results = await asyncio.to_thread(self.pipeline.segment_batch, images, audio)
        return [(r, len(frames)) for r in results]

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except _BadRequest as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except OutOfMemoryError as e:
            return JSONResponse({"error": f"out of device memory: {e}"}, status_code=503)
        except Exception as e:  # never a traceback to the client; the log keeps it
            import logging

            logging.getLogger("ray.serve").exception("moca_rt.serve: request failed")
            return JSONResponse({"error": f"internal error: {type(e).__name__}: {e}"}, 500)

    async def _route(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path == ROUTE_HEALTH:
            if request.method != "GET":
                raise _BadRequest(405, f"{ROUTE_HEALTH}: expected GET, got {request.method}")
            return JSONResponse(self._health())
        if path != ROUTE_SEGMENT:
            raise _BadRequest(404, f"{path}: expected {ROUTE_SEGMENT} or {ROUTE_HEALTH}")
        if request.method != "POST":
            raise _BadRequest(405, f"{ROUTE_SEGMENT}: expected POST, got {request.method}")
        started = time.perf_counter()
        body = await _read_body(request, self.config.max_body_bytes)
        parts = await _form_parts(request, body)
        frames = await asyncio.to_thread(_decode_upload, parts, self.config.max_clip_frames)
        decoded = time.perf_counter()
        answers = await asyncio.gather(*(self.segment_frames(f) for f in frames))
        done = time.perf_counter()
        return JSONResponse(
            {
                "frames": [
                    _frame_json(f, result, size)
                    for f, (result, size) in zip(frames, answers, strict=True)
                ],
                "timings_ms": {
                    "decode": round(1000 * (decoded - started), 3),
                    "segment": round(1000 * (done - decoded), 3),
                    "total": round(1000 * (done - started), 3),
                },
            }
        )

    def _health(self) -> dict[str, Any]:
        return {
            "status": "ok",
            "pid": os.getpid(),
            "device": str(self.pipeline.device),
            "max_batch_size": self.config.max_batch_size,
            "batch_wait_timeout_s": self.config.batch_wait_timeout_s,
            "model_load_s": round(self.load_s, 3),
            "notes": self.notes,
        }


def build_app(args: Mapping[str, Any] | ServeConfig | None = None) -> Any:
    """The Serve application of a config (or of ``key=value`` args, :meth:`ServeConfig.from_args`):
    ``serve run moca_rt.serve:build_app max_batch_size=16``."""
    config = args if isinstance(args, ServeConfig) else ServeConfig.from_args(args or {})
    return MocaSegmenter.options(  # type: ignore[attr-defined]
        num_replicas=config.num_replicas,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": config.num_cpus_per_replica,
            "num_gpus": config.num_gpus_per_replica,
        },
    ).bind(config)


app = build_app()  # ``serve run moca_rt.serve:app``: the defaults (shipped tiny models, CPU)


def start(
    config: ServeConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    name: str = "moca_rt",
    blocking: bool = False,
) -> Any:
    """Start Serve's HTTP proxy on ``host:port`` and deploy ``config`` at ``/``; returns the
    deployment handle. Ray is started here when it is not running yet."""
    import ray

    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": host, "port": port})
    return serve.run(build_app(config), name=name, route_prefix="/", blocking=blocking)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m moca_rt.serve",
        description="Serve moca_rt over HTTP on Ray Serve: POST /segment (image + audio, or a "
        "clip) answers masks as COCO RLE; GET /healthz.",
    )
    p.add_argument("--host", default="127.0.0.1", help="The address the HTTP proxy listens on.")
    p.add_argument("--port", type=int, default=8000, help="The HTTP port.")
    p.add_argument("--replicas", type=int, default=1, help="Copies of the pipeline.")
    p.add_argument("--num-cpus-per-replica", type=float, default=1.0, help="CPUs per replica.")
    p.add_argument("--num-gpus-per-replica", type=float, default=0.0, help="GPUs per replica.")
    p.add_argument("--max-batch-size", type=int, default=8, help="Frames per model call.")
    p.add_argument(
        "--batch-wait-timeout-s",
        type=float,
        default=0.01,
        help="How long a batch waits for more frames, in seconds.",
    )
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=16 * 2**20,
        help="Request bodies larger than this are refused (413).",
    )
    p.add_argument(
        "--max-clip-frames", type=int, default=64, help="Clips with more frames are refused (413)."
    )
    p.add_argument(
        "--setting",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="A pipeline setting (a BuildSettings field: device=cuda, proposals=none, "
        "sam=PATH, ...); repeat for more.",
    )
    return p


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The deployment of a parsed command line: the ``--setting`` pairs build the pipeline
    settings, the other flags set the :class:`ServeConfig` field of their name (``--replicas``:
    ``num_replicas``)."""
    pairs: dict[str, Any] = {}
    for item in args.setting:
        key, sep, value = item.partition("=")
        if not sep or key not in _SETTING_NAMES:
            raise InputError(
                f"--setting {item}: expected KEY=VALUE with KEY in {sorted(_SETTING_NAMES)}"
            )
        pairs[key] = value
    config = ServeConfig.from_args(pairs)
    return replace(config, **flag_values(ServeConfig, vars(args)), num_replicas=args.replicas)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except InputError as e:
        parser.error(str(e))
    print(
        f"serving on http://{args.host}:{args.port}{ROUTE_SEGMENT} "
        f"({json.dumps({'replicas': config.num_replicas, 'max_batch': config.max_batch_size})})",
        file=sys.stderr,
    )
    start(config, host=args.host, port=args.port, blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
