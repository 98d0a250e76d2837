"""``python -m moca_rt.infer SOURCE``: segment the sounding objects of a video, stream or folder.

Outputs under ``--out``: ``masks/NNNNNN.png`` (one per processed frame, 0/255),
``records.jsonl`` (one record per input frame: index, pts, dropped, scores, chosen clusters,
COCO RLE mask, per-stage timings; flushed per record), optionally ``overlay.mp4`` (mask tinted
over the frames, original audio) and ``summary.json``.

``--engine`` picks what runs the MoCA trunk (ImageBind audio + adapted vision): ``torch`` (the
default), ``onnxruntime`` or ``tensorrt`` on the exported ``audio`` and ``vision`` units in
``--engine-dir`` (:class:`moca_rt.engines.moca_units.EngineMocaModel`). SAM proposals, k-means
and mask matching stay on torch. ``--demo --engine onnxruntime`` first exports the demo trunk
to ``OUT/onnx``.

Exit codes:

* 0  every input frame was processed;
* 1  the source broke part-way (corrupt or truncated): every decodable frame was processed and
     written, then the decode error was reported;
* 2  bad command line (argparse);
* 3  the input cannot be used: missing, empty, not a video, no audio stream (see
     ``--allow-silent``), bad box-prompt file;
* 4  a checkpoint does not fit the model it was given for (the message names the keys);
* 5  out of GPU memory (the message suggests a smaller ``--batch``);
* 130 interrupted (Ctrl-C): outputs written so far are flushed and closed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from moca_rt.config import MOCA_PRESETS, SAM_PRESETS, MocaConfig, SamConfig

EXIT_OK = 0
EXIT_DECODE_ERROR = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_BAD_CHECKPOINT = 4
EXIT_OUT_OF_MEMORY = 5
EXIT_INTERRUPTED = 130

DEMO_PRESET = "moca_synth"
DEMO_SAM_PRESET = "sam_synth"
DEMO_POINTS_PER_SIDE = 4
DEMO_SECONDS = 2.0
ENGINES = ("torch", "onnxruntime", "tensorrt")


@dataclass
class InferOptions:
    """Everything ``run_infer`` needs; the CLI flags map one to one onto these fields."""

    source: str | None
    out: Path
    audio: Path | None = None
    preset: str | None = None
    imagebind: Path | None = None
    adapter: Path | None = None
    sam: Path | None = None
    sam_preset: str | None = None
    proposals: str = "auto"
    boxes: Path | None = None
    points_per_side: int | None = None
    device: str = "cpu"
    precision: str = "fp32"
    batch: int = 1
    fps: float | None = None
    realtime: bool = False
    reconnect: int = 0
    overlay: bool = False
    allow_silent: bool = False
    tau: float | None = None
    delta: float | None = None
    silence_db: float | None = None
    clusters: int | None = None
    mpm_threshold: float | None = None
    mpm_metric: str | None = None
    seed: int = 0
    demo: bool = False
    progress: bool = True
    engine: str = "torch"
    engine_dir: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class InferSummary:
    """What a run did: counts, per-stage mean milliseconds per processed frame, outputs."""

    frames: int = 0
    processed: int = 0
    dropped: int = 0
    silent: int = 0
    empty: int = 0
    stage_ms: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0
    out: str = ""
    error: str | None = None
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)

    def timing_table(self) -> str:
        rows = [f"{'stage':<12} {'ms/frame':>10}"]
        for name, ms in self.stage_ms.items():
            rows.append(f"{name:<12} {ms:>10.2f}")
        total = sum(self.stage_ms.values())
        rows.append(f"{'total':<12} {total:>10.2f}")
        fps = self.processed / self.wall_s if self.wall_s > 0 else 0.0
        rows.append(f"{self.frames} frames ({self.processed} processed, {self.dropped} dropped, "
                    f"{self.silent} silent) in {self.wall_s:.2f} s = {fps:.2f} frames/s")
        return "\n".join(rows)


class InputError(Exception):
    """The input cannot be used (exit code 3)."""


def _sam_preset_for(state: dict[str, torch.Tensor]) -> str:
    from moca_rt.checkpoints import CheckpointMismatchError

    key = "image_encoder.patch_embed.proj.weight"
    if key not in state:
        found = sorted(state)
        shown = ", ".join(found[:8]) + (f", ... ({len(found) - 8} more)" if len(found) > 8 else "")
        raise CheckpointMismatchError(
            f"--sam: checkpoint does not fit SAM: missing key [{key}]; its keys are [{shown}]"
        )
    width = int(state[key].shape[0])
    for name, cfg in SAM_PRESETS.items():
        if cfg.encoder_embed_dim == width and name not in ("sam_test", "sam_synth"):
            return name
    raise InputError(f"--sam: no SAM preset has encoder width {width}")


def build_models(opts: InferOptions) -> tuple[Any, Any]:
    """The torch MocaModel and (optionally) SAM the options ask for; notes say what was random."""
    return _torch_moca(opts, torch.device(opts.device)), build_sam_for(opts)


def _torch_moca(opts: InferOptions, device: torch.device) -> Any:
    from moca_rt.modeling.moca import MocaModel

    preset = opts.preset or ("moca_huge" if opts.imagebind else DEMO_PRESET)
    moca_cfg: MocaConfig = MOCA_PRESETS[preset]
    torch.manual_seed(opts.seed)
    if opts.imagebind is None:
        opts.notes.append(
            f"no --imagebind checkpoint: ImageBind ({preset}) has seeded random weights "
            "(no trained tiny weights ship yet), so masks are not meaningful"
        )
    model = MocaModel.from_config(
        moca_cfg, device=device, imagebind_weights=opts.imagebind, adapter_weights=opts.adapter
    )
    if opts.adapter is None:
        opts.notes.append("no --adapter: AdaAV is untrained (zero-initialised), i.e. plain ImageBind")
    return model


def build_sam_for(opts: InferOptions) -> Any:
    """The SAM the options ask for (on ``opts.device``, always torch), or None."""
    from moca_rt.checkpoints import read_state_dict
    from moca_rt.modeling.sam import build_sam, load_sam

    device = torch.device(opts.device)
    if opts.proposals == "none":
        return None
    if opts.sam is not None:
        state = read_state_dict(opts.sam)
        sam_cfg: SamConfig = SAM_PRESETS[opts.sam_preset or _sam_preset_for(state)]
        return load_sam(state, sam_cfg, device=device)
    if opts.proposals in ("grid", "boxes") or opts.demo:
        sam_name = opts.sam_preset or DEMO_SAM_PRESET
        opts.notes.append(f"no --sam checkpoint: SAM ({sam_name}) has seeded random weights")
        return build_sam(SAM_PRESETS[sam_name], device=device).eval()
    return None


def engine_usage_problem(opts: InferOptions) -> str | None:
    """What is wrong with the combination of engine flags (before any file is read), or None."""
    if opts.engine not in ENGINES:
        return f"--engine: expected one of {list(ENGINES)}, got {opts.engine!r}"
    if opts.engine == "torch":
        if opts.engine_dir is not None:
            return "--engine-dir is for --engine onnxruntime or tensorrt, got --engine torch"
        return None
    if opts.engine_dir is None and not (opts.demo and opts.engine == "onnxruntime"):
        how = ("python -m moca_rt.export.create_onnx --unit audio/vision" if opts.engine ==
               "onnxruntime" else "python -m moca_rt.export.build_trt")  # fmt: skip
        demo = " or --demo" if opts.engine == "onnxruntime" else ""
        return (f"--engine {opts.engine}: expected --engine-dir DIR with the audio and vision "
                f"units ({how}){demo}, got no --engine-dir")  # fmt: skip
    return None


def build_engine_trunk(opts: InferOptions) -> Any:
    """The MoCA trunk on onnxruntime or TensorRT (:class:`EngineMocaModel`) for ``opts``.

    Checks that the engine files' input dtype is the ``--precision`` dtype, exports the demo
    trunk to ``OUT/onnx`` for ``--demo --engine onnxruntime`` without ``--engine-dir``, and
    notes which provider really runs the trunk.

    Raises:
        InputError: missing engine library, folder or files, names or precision that do not
            fit.
    """
    from moca_rt.pipeline import PRECISIONS

    problem = engine_usage_problem(opts)
    if problem is not None:
        raise InputError(problem)
    if opts.engine == "torch":
        raise InputError("--engine torch runs MocaModel, not an engine trunk")
    if opts.engine_dir is not None and (opts.imagebind is not None or opts.adapter is not None):
        raise InputError(
            "--imagebind / --adapter: the engine files in --engine-dir already hold the weights; "
            "expected them at export time (python -m moca_rt.export.create_onnx --imagebind ... "
            "--adapter ...), got them at run time"
        )
    if opts.engine_dir is not None and opts.preset is not None:
        opts.notes.append(f"--preset {opts.preset} ignored: the engine files fix the model size")
    model = _onnxruntime_trunk(opts) if opts.engine == "onnxruntime" else _tensorrt_trunk(opts)
    if model.clips is not None and model.clips > 1:
        opts.notes.append(
            f"--engine-dir: the audio unit takes {model.clips} clips per window; the pipeline "
            f"computes one and repeats it (same result, {model.clips}x the audio work): export "
            "with python -m moca_rt.export.create_onnx --audio-clips 1 to avoid that"
        )
    want = PRECISIONS[opts.precision]
    if model.input_dtype is not None and model.input_dtype != want:
        raise InputError(
            f"--precision {opts.precision}: expected engine inputs in {want}, got "
            f"{model.input_dtype} in {opts.engine_dir} (use the matching --precision or "
            "export/build the units in this one)"
        )
    return model


def _onnxruntime_trunk(opts: InferOptions) -> Any:
    import warnings

    try:
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise InputError(
            f"--engine onnxruntime needs onnxruntime ({e}): pip install 'moca-rt[onnx]' "
            "(onnxruntime-gpu for the CUDA provider)"
        ) from e
    from moca_rt.engines.moca_units import ONNX_PRECISIONS, EngineMocaModel, find_onnx_units

    device = torch.device(opts.device)
    if opts.engine_dir is None:
        opts.engine_dir = _export_demo_trunk(opts)
    folder = Path(opts.engine_dir)
    try:
        both = opts.precision in ONNX_PRECISIONS and all(
            (folder / f"{u}_{opts.precision}.onnx").is_file() for u in ("audio", "vision")
        )
        _, _, found = find_onnx_units(folder, opts.precision if both else None)
    except ValueError as e:
        raise InputError(f"--engine-dir {folder}: {e}") from e
    if found != opts.precision:
        raise InputError(
            f"--precision {opts.precision}: expected audio_{opts.precision}.onnx and "
            f"vision_{opts.precision}.onnx in {folder}, got the {found} pair (use --precision "
            f"{found}, or export with python -m moca_rt.export.create_onnx --precision "
            f"{opts.precision}; ONNX units come in {sorted(ONNX_PRECISIONS)})"
        )
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda":
        providers.insert(0, "CUDAExecutionProvider")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", RuntimeWarning)  # the fallback is reported as a note
        try:
            model = EngineMocaModel.from_onnx(folder, providers, precision=found, device=device)
        except ValueError as e:
            raise InputError(f"--engine-dir {folder}: {e}") from e
        except Exception as e:  # onnxruntime's own errors (corrupt file, ...) derive from Exception
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            raise InputError(f"--engine-dir {folder}: onnxruntime cannot load the units: {e}") from e
    engine = model.audio_engine
    got = list(getattr(engine, "providers", ()))
    opts.notes.append(
        f"--engine onnxruntime: the MoCA trunk ({folder}, {found}) runs on {got[0] if got else '?'} "
        f"(providers {got}); SAM proposals, k-means and mask matching stay on torch ({device})"
    )
    if getattr(engine, "fell_back", False):
        import onnxruntime as ort

        opts.notes.append(
            f"onnxruntime fell back: requested {providers[0]}, got {got} (available here: "
            f"{ort.get_available_providers()}; onnxruntime-gpu gives CUDAExecutionProvider), so "
            f"the trunk runs on the CPU and its outputs are copied to {device}"
        )
    return model


def _tensorrt_trunk(opts: InferOptions) -> Any:
    from moca_rt.engines.moca_units import EngineMocaModel
    from moca_rt.engines.trt import TENSORRT_MISSING, trt_available

    if not trt_available():
        raise InputError(f"--engine tensorrt: {TENSORRT_MISSING}")
    device = torch.device(opts.device)
    if device.type != "cuda":
        raise InputError(f"--engine tensorrt: expected a CUDA --device, got {opts.device}")
    try:
        model = EngineMocaModel.from_tensorrt(opts.engine_dir, device=device)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"--engine-dir {opts.engine_dir}: {e}") from e
    opts.notes.append(
        f"--engine tensorrt: the MoCA trunk ({opts.engine_dir}) runs on TensorRT on {model.device}; "
        "SAM proposals, k-means and mask matching stay on torch"
    )
    return model


def _export_demo_trunk(opts: InferOptions) -> Path:
    """Export the demo MoCA trunk (the torch demo's seeded weights) to ``OUT/onnx``."""
    from moca_rt.export.create_onnx import DTYPES, export_unit

    precision = next((p for p in DTYPES if p == opts.precision), None)
    if precision is None:
        raise InputError(
            f"--precision {opts.precision}: expected one of {list(DTYPES)} for an ONNX export, "
            f"got {opts.precision}"
        )
    started = time.perf_counter()
    model = _torch_moca(opts, torch.device("cpu"))  # same seed and weights as the torch demo
    model = model.to(DTYPES[precision]).eval()
    folder = Path(opts.out) / "onnx"
    for unit in ("audio", "vision"):
        # One clip per window: what the pipeline computes (the 3 official clips of a 2 s window
        # are the same samples), so the engine does not repeat it.
        export_unit(unit, model, folder / f"{unit}_{precision}.onnx", precision, audio_clips=1)
    opts.notes.append(
        f"demo: exported the MoCA trunk (audio + vision units, {opts.precision}) to {folder} in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return folder


def _pipeline_config(opts: InferOptions) -> Any:
    from moca_rt.pipeline import PipelineConfig

    overrides: dict[str, Any] = {}
    for flag, name in (
        ("tau", "tau"),
        ("delta", "delta"),
        ("silence_db", "silence_dbfs"),
        ("clusters", "num_clusters"),
        ("mpm_threshold", "mpm_threshold"),
        ("mpm_metric", "mpm_metric"),
    ):
        value = getattr(opts, flag)
        if value is not None:
            overrides[name] = value
    return PipelineConfig(kmeans_seed=opts.seed, **overrides)


def make_demo_clip(out_dir: Path, seed: int = 0) -> Path:
    """A synthetic-world video (moving objects, sounds switching on and off) as H.264 + AAC mp4."""
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4

    world = SynthWorld(seed, image_size=224, video_seconds=DEMO_SECONDS)
    scene = world.sample("video", 0)
    return write_mp4(out_dir / "demo_input.mp4", scene.frames, scene.audio, fps=25.0,
                     sample_rate=scene.sample_rate)


def build_pipeline(opts: InferOptions, use: str) -> tuple[Any, int]:
    """The MocaPipeline for ``opts`` with proposals from ``use`` ("grid", "boxes" or "none").

    Returns the pipeline and SAM's points per side (0 without SAM). Shared by the CLI and
    ``benchmarks/pipeline.py`` so both measure the same thing.
    """
    from moca_rt.pipeline import PRECISIONS, MocaPipeline, SamProposals
    from moca_rt.proposals import ProposalConfig

    dtype = PRECISIONS[opts.precision]
    if opts.engine == "torch" and opts.engine_dir is None:
        model, sam = build_models(opts)
        if dtype != torch.float32:
            model = model.to(dtype)
    else:
        torch.manual_seed(opts.seed)  # a random SAM is seeded here as on the torch path
        model, sam = build_engine_trunk(opts), build_sam_for(opts)
    if sam is not None and dtype != torch.float32:
        sam = sam.to(dtype)
    proposals = None
    points = 0
    if sam is not None and use != "none":
        points = opts.points_per_side or (DEMO_POINTS_PER_SIDE if opts.sam is None else 16)
        if opts.sam is None:
            # Without --sam, SAM has random weights (no trained tiny SAM ships yet, DESIGN 6).
            # A random SAM never passes the quality filters (predicted IoU 0.88, stability
            # 0.95), so MPM would never run; with them off the demo exercises every stage.
            # Once trained tiny weights ship, keep the filters for them.
            pcfg = ProposalConfig(points_per_side=points, pred_iou_thresh=0.0, stability_score_thresh=0.0)
            opts.notes.append("random SAM: proposal quality filters are off (no trained SAM to filter)")
        else:
            pcfg = ProposalConfig(points_per_side=points)
        proposals = SamProposals(sam, pcfg)
    if proposals is None and use != "none":
        opts.notes.append(f"--proposals {opts.proposals}: no SAM (give --sam, or --proposals grid for a "
                          "random one), so the masks are the cluster masks without proposal matching")
    return MocaPipeline(model, proposals, _pipeline_config(opts), device=opts.device, dtype=dtype), points


def run_infer(opts: InferOptions) -> InferSummary:
    """Run the whole job; raises on unusable input or checkpoints, returns the summary.

    A decode error part-way is not raised: it is stored in ``summary.error`` after every
    decodable frame was written. KeyboardInterrupt closes the outputs and sets
    ``summary.interrupted``.
    """
    from moca_rt.media import MediaError, NoAudioStreamError, open_source
    from moca_rt.proposals import load_box_prompts
    from moca_rt.sinks import JsonlWriter, MaskPngWriter, OverlayVideoWriter

    if opts.batch < 1:
        raise ValueError(f"--batch must be >= 1, is {opts.batch}")
    if opts.reconnect < 0:
        raise ValueError(f"--reconnect must be >= 0, is {opts.reconnect}")
    out = Path(opts.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: expected a folder that can be created, got {e}") from e
    source_spec = opts.source
    if opts.demo and source_spec is None:
        source_spec = str(make_demo_clip(out, opts.seed))
        opts.notes.append(f"demo: generated {source_spec} from the synthetic world (seed {opts.seed})")
    if source_spec is None:
        raise InputError("no SOURCE given (or use --demo)")
    box_prompts = None
    if opts.boxes is not None:
        try:
            box_prompts = load_box_prompts(opts.boxes)
        except (OSError, ValueError) as e:
            raise InputError(f"--boxes {opts.boxes}: {e}") from e
    use = opts.proposals if opts.proposals != "auto" else ("boxes" if box_prompts else "grid")
    if use == "boxes" and box_prompts is None:
        raise InputError("--proposals boxes needs --boxes FILE.json")
    pipeline, _ = build_pipeline(opts, use)

    try:
        source = open_source(source_spec, **_source_options(source_spec, opts))
    except NoAudioStreamError as e:
        raise InputError(f"{e} (on the command line: --allow-silent)") from e

    summary = InferSummary(out=str(out), notes=opts.notes)
    started = time.perf_counter()
    stage_totals: dict[str, float] = {}
    masks = MaskPngWriter(out / "masks")
    records = JsonlWriter(out / "records.jsonl")
    overlay = OverlayVideoWriter.for_source(out / "overlay.mp4", source) if opts.overlay else None
    progress = _progress(opts.progress, source)
    try:
        with source:
            frames = _raw_audio_tap(source, overlay)
            for frame, result in pipeline.stream(frames, opts.batch, box_prompts):
                summary.frames += 1
                progress.update(1)
                if result is None:
                    summary.dropped += 1
                    records.write_frame(frame.index, frame.pts, None, dropped=True)
                    continue
                summary.processed += 1
                summary.silent += int(result.silent)
                summary.empty += int(not result.mask.any())
                for name, ms in result.timings_ms.items():
                    stage_totals[name] = stage_totals.get(name, 0.0) + ms
                masks.write(frame.index, result.mask)
                records.write_frame(
                    frame.index,
                    frame.pts,
                    result.mask,
                    scores=result.scores,
                    chosen=result.chosen,
                    timings=result.timings_ms,
                    silent=result.silent,
                    level_dbfs=result.level_dbfs,
                    kmeans_iterations=result.kmeans_iterations,
                    proposals=result.proposals,
                    proposals_kept=result.proposals_kept,
                    fallback=result.used_fallback,
                    audio_missing=frame.audio_missing,
                )
                if overlay is not None and frame.image is not None:
                    overlay.write(frame.image, result.mask, frame.pts)
    except MediaError as e:
        summary.error = f"{type(e).__name__}: {e}"
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        progress.close()
        records.close()
        masks.close()
        if overlay is not None:
            if hasattr(source, "tail_audio"):
                overlay.write_audio(source.tail_audio())
            overlay.close()
        summary.wall_s = time.perf_counter() - started
        for line in getattr(source, "reconnect_log", ()):  # ReconnectingSource (--reconnect)
            opts.notes.append(f"stream: {line}")
        if summary.processed:
            summary.stage_ms = {k: v / summary.processed for k, v in stage_totals.items()}
        (out / "summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n")
    return summary


def _is_container(spec: str) -> bool:
    """Whether ``open_source`` decodes ``spec`` as a container (file or network stream)."""
    from moca_rt.media import IMAGE_SUFFIXES, is_network_url

    if is_network_url(spec):
        return True
    path = Path(spec[len("file://") :] if spec.startswith("file://") else spec)
    return not path.is_dir() and path.suffix.lower() not in IMAGE_SUFFIXES


def _source_options(spec: str, opts: InferOptions) -> dict[str, Any]:
    """The ``open_source`` options for this kind of source; flags that do not apply to it
    are either an input error (``--audio`` with a video) or noted and ignored."""
    from moca_rt.media import is_network_url

    source_opts: dict[str, Any] = {"fps": opts.fps, "allow_silent": opts.allow_silent}
    if _is_container(spec):
        if opts.audio is not None:
            raise InputError(f"--audio {opts.audio}: expected an image or a frame folder as "
                             f"SOURCE, got a video or stream ({spec}) that carries its own audio")
        if opts.realtime:
            source_opts["realtime"] = True
        if opts.overlay:
            source_opts["keep_raw_audio"] = True
        if opts.reconnect:
            if is_network_url(spec):
                source_opts["reconnect"] = opts.reconnect
            else:
                opts.notes.append(f"--reconnect ignored: {spec} is a file, not a live stream")
    else:
        if opts.reconnect:
            opts.notes.append("--reconnect ignored: an image or frame folder is not a live source")
        if opts.audio is not None:
            source_opts["audio"] = str(opts.audio)
        if opts.realtime:
            opts.notes.append("--realtime ignored: an image or frame folder is not a live source")
    return source_opts


def _raw_audio_tap(source: Any, overlay: Any) -> Any:
    """Pass frames through, handing each record's original audio (dropped ones too) to the overlay."""
    for frame in source:
        if overlay is not None and frame.raw_audio:
            overlay.write_audio(frame.raw_audio)
        yield frame


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(enabled: bool, source: Any) -> Any:
    if not enabled:
        return _NoProgress()
    from tqdm import tqdm

    return tqdm(desc="frames", unit="frame", file=sys.stderr, dynamic_ncols=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m moca_rt.infer",
        description="Segment the objects that make the sound in a video file, a live stream "
        "(http, rtsp, udp MPEG-TS), an AVSBench frame folder, or an image with a wav file.",
        epilog="Exit codes: 0 ok; 1 the source broke part-way (outputs kept); 2 bad arguments; "
        "3 unusable input; 4 checkpoint does not fit; 5 out of GPU memory; 130 interrupted.",
    )
    p.add_argument("source", nargs="?", help="The input: a file path, URL, AVSBench frame folder or image.")
    p.add_argument("--audio", type=Path, help="The wav file that goes with an image or frame folder.")
    p.add_argument("--out", type=Path, default=Path("moca_out"), help="The output folder (created if needed).")
    p.add_argument("--demo", action="store_true",
                   help="Segment a generated synthetic-world clip with the embedded default models.")
    models = p.add_argument_group("models")
    models.add_argument("--preset", choices=sorted(MOCA_PRESETS),
                        help="The MoCA model size; defaults to moca_huge with --imagebind, else the tiny moca_synth.")
    models.add_argument("--imagebind", type=Path, help="The official imagebind_huge.pth checkpoint.")
    models.add_argument("--adapter", type=Path, help="Trained AdaAV weights (.safetensors or .pt).")
    models.add_argument("--sam", type=Path, help="An official sam_vit_{h,l,b} checkpoint for mask proposals.")
    models.add_argument("--sam-preset", choices=sorted(SAM_PRESETS),
                        help="The SAM size; read from the checkpoint when not given.")
    run = p.add_argument_group("running")
    run.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                     help="The torch device to run on, such as cpu or cuda:0.")
    run.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                     help="The compute precision of the models; with an engine it must be the "
                     "precision the units were exported in (fp32 or fp16).")
    run.add_argument("--engine", choices=ENGINES, default="torch",
                     help="What runs the MoCA trunk (ImageBind audio and adapted vision): torch, or "
                     "the exported units on onnxruntime (CUDA provider with a cuda --device) or "
                     "TensorRT. SAM proposals, k-means and mask matching always run on torch.")
    run.add_argument("--engine-dir", type=Path,
                     help="The folder of exported units for --engine onnxruntime "
                     "(audio_<precision>.onnx and vision_<precision>.onnx from "
                     "python -m moca_rt.export.create_onnx) or tensorrt (one audio_*.engine and "
                     "one vision_*.engine from python -m moca_rt.export.build_trt). With --demo "
                     "and onnxruntime it may be left out: the demo trunk is exported to OUT/onnx.")
    run.add_argument("--batch", type=int, default=1, help="The number of frames per model call.")
    run.add_argument("--fps", type=float, help="Process this many frames per second of video (others are skipped).")
    run.add_argument("--realtime", action="store_true",
                     help="Drop frames when processing falls behind the stream and record them as dropped.")
    run.add_argument("--reconnect", type=int, default=0, metavar="N",
                     help="Live streams: reopen the URL up to N times in a row when it ends or breaks "
                          "(records go on with increasing indices and pts); 0 ends with the stream.")
    run.add_argument("--overlay", action="store_true", help="Also write overlay.mp4 with the masks and the original audio.")
    run.add_argument("--allow-silent", action="store_true",
                     help="Treat a video without an audio stream as silence instead of failing.")
    run.add_argument("--seed", type=int, default=0, help="The seed of k-means++ and of random demo weights.")
    run.add_argument("--no-progress", action="store_true", help="Do not show a progress bar.")
    th = p.add_argument_group("thresholds")
    th.add_argument("--tau", type=float, help="The minimum cosine score of a sounding cluster.")
    th.add_argument("--delta", type=float, help="Clusters within delta of the best score also sound.")
    th.add_argument("--silence-db", type=float, help="Windows quieter than this RMS level in dBFS give an empty mask.")
    th.add_argument("--clusters", type=int, help="The number of k-means clusters per frame (2 to 16).")
    th.add_argument("--proposals", choices=("auto", "grid", "boxes", "none"), default="auto",
                    help="Where mask proposals come from: a SAM point grid, user boxes, or none (cluster masks only).")
    th.add_argument("--boxes", type=Path, help='A JSON file of per-frame boxes: {"frames": {"0": [[x0, y0, x1, y1], ...]}}.')
    th.add_argument("--points-per-side", type=int,
                    help="The SAM point grid size for proposals (16 with a real --sam, 4 for the random demo SAM).")
    th.add_argument("--mpm-threshold", type=float, help="Keep proposals whose IoU with the cluster mask is above this.")
    th.add_argument("--mpm-metric", choices=("iou", "coverage"), help="How a proposal is matched to the cluster mask.")
    return p


def options_from_args(args: argparse.Namespace) -> InferOptions:
    source = args.source
    return InferOptions(
        source=source,
        out=args.out,
        audio=args.audio,
        preset=args.preset,
        imagebind=args.imagebind,
        adapter=args.adapter,
        sam=args.sam,
        sam_preset=args.sam_preset,
        proposals=args.proposals,
        boxes=args.boxes,
        points_per_side=args.points_per_side,
        device=args.device,
        precision=args.precision,
        batch=args.batch,
        fps=args.fps,
        realtime=args.realtime,
        reconnect=args.reconnect,
        overlay=args.overlay,
        allow_silent=args.allow_silent,
        tau=args.tau,
        delta=args.delta,
        silence_db=args.silence_db,
        clusters=args.clusters,
        mpm_threshold=args.mpm_threshold,
        mpm_metric=args.mpm_metric,
        seed=args.seed,
        demo=args.demo,
        progress=not args.no_progress,
        engine=args.engine,
        engine_dir=args.engine_dir,
    )


def _usage_problem(opts: InferOptions) -> str | None:
    """A message for option values argparse cannot check (ranges), or None."""
    if opts.batch < 1:
        return f"--batch: expected >= 1, got {opts.batch}"
    if opts.reconnect < 0:
        return f"--reconnect: expected >= 0, got {opts.reconnect}"
    if opts.points_per_side is not None and opts.points_per_side < 1:
        return f"--points-per-side: expected >= 1, got {opts.points_per_side}"
    if opts.fps is not None and not opts.fps > 0:
        return f"--fps: expected > 0, got {opts.fps}"
    engine = engine_usage_problem(opts)
    if engine is not None:
        return engine
    try:
        _pipeline_config(opts)
    except ValueError as e:
        return str(e)
    return None


def main(argv: Sequence[str] | None = None) -> int:
    from moca_rt.checkpoints import CheckpointMismatchError
    from moca_rt.media import MediaOpenError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source is None and not args.demo:
        parser.error("SOURCE is required unless --demo is given")
    opts = options_from_args(args)
    usage = _usage_problem(opts)
    if usage is not None:
        parser.error(usage)
    try:
        summary = run_infer(opts)
    except CheckpointMismatchError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CHECKPOINT
    except (InputError, MediaOpenError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except torch.OutOfMemoryError as e:
        print(f"error: out of GPU memory with --batch {opts.batch} ({e}); try a smaller --batch, "
              "--precision bf16, or --proposals none", file=sys.stderr)
        return EXIT_OUT_OF_MEMORY
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    for note in summary.notes:
        print(f"note: {note}", file=sys.stderr)
    print(summary.timing_table())
    print(f"outputs in {summary.out}")
    if summary.interrupted:
        print("interrupted: outputs so far are written", file=sys.stderr)
        return EXIT_INTERRUPTED
    if summary.error is not None:
        print(f"error: the source broke after {summary.frames} frames: {summary.error}", file=sys.stderr)
        return EXIT_DECODE_ERROR
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
