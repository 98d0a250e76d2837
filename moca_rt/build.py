"""Building a ready :class:`~moca_rt.pipeline.MocaPipeline` from settings: one library call.

``build_pipeline(BuildSettings(...))`` makes the MoCA trunk (torch, or the exported units on
onnxruntime or TensorRT), SAM and its proposal source, and the pipeline around them, and says
in notes what it had to choose (random weights, a fallback provider, ignored settings).
``python -m moca_rt.infer``, ``benchmarks/pipeline.py`` and the batch and serving entry points
all build through it, so they run the same thing.

Weights: :func:`resolve_weights` turns the settings into the checkpoint files to load. Today
these are the paths given; a part without one gets seeded random weights (noted). It is the one
place where shipped weights of the tiny presets are to be found once they exist.

Notes and errors name each setting by its command-line flag (``imagebind`` is
``--imagebind``), because the CLIs print them as they are.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Literal

import torch

from moca_rt.clustering import MatchMetric
from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.engines import names
from moca_rt.errors import CheckpointError, InputError, torch_out_of_memory
from moca_rt.export_cache import (
    EXPORT_RECORD,
    default_export_dir,
    export_record,
    forget,
    is_current,
    mark_current,
)
from moca_rt.pipeline import MocaPipeline, PipelineConfig
from moca_rt.precision import DTYPES, ONNX_PRECISIONS, Precision
from moca_rt.shipped import ShippedWeights, ShippedWeightsError, shipped_available, shipped_weights

__all__ = [
    "DEFAULT_PRESET",
    "ENGINES",
    "RANDOM_SAM_POINTS_PER_SIDE",
    "RANDOM_SAM_PRESET",
    "BuildSettings",
    "BuiltPipeline",
    "EngineName",
    "ProposalKind",
    "Weights",
    "build_pipeline",
    "resolve_engine",
    "resolve_weights",
]

EngineName = Literal["auto", "torch", "torch-compile", "onnxruntime", "tensorrt"]
ProposalKind = Literal["auto", "grid", "boxes", "none"]
ENGINES: tuple[EngineName, ...] = ("auto", "torch", "torch-compile", "onnxruntime", "tensorrt")
DEFAULT_PRESET = "moca_synth"  # the MoCA preset without ImageBind weights
RANDOM_SAM_PRESET = "sam_synth"  # the SAM built with seeded random weights
SHIPPED_SAM_PRESET = "sam_synth"  # the SAM size of the shipped tiny weights
RANDOM_SAM_POINTS_PER_SIDE = 4  # a random SAM's grid (16 with real weights)
SAM_POINTS_PER_SIDE = 16
_CONFIG_OVERRIDES = ("tau", "delta", "silence_dbfs", "num_clusters", "mpm_threshold", "mpm_metric")


@dataclass(frozen=True)
class BuildSettings:
    """What :func:`build_pipeline` builds: resolved settings, from a command line, a file or code.

    Attributes:
        preset: the MoCA size (``MOCA_PRESETS``); None: the preset whose ImageBind the
            ``imagebind`` checkpoint fits (from its keys and shapes; noted), else
            ``moca_synth`` (:data:`DEFAULT_PRESET`).
        imagebind, adapter, sam: checkpoint files; None with the tiny presets takes the shipped
            trained weights (``moca_rt.shipped``), otherwise seeded random weights (an
            untrained, zero-initialised adapter).
        random_weights: seeded random weights even where shipped weights exist (tests, speed
            measurements of an untrained model).
        sam_preset: the SAM size (``SAM_PRESETS``); None: read from the ``sam`` checkpoint, or
            :data:`RANDOM_SAM_PRESET` for a random SAM.
        proposals: ``"grid"`` or ``"boxes"``: SAM proposals (a seeded random SAM without ``sam``
            weights); ``"auto"``: SAM proposals when SAM weights are given, else none;
            ``"none"``: cluster masks only. Grid or boxes is decided per call by whether box
            prompts come with the frames.
        points_per_side: SAM's point grid; None: 16 with ``sam`` weights, 4 for a random SAM.
        engine: what runs the MoCA trunk (ImageBind audio + adapted vision) and, for
            ``torch-compile``, the SAM image encoder: ``torch`` (eager), ``torch-compile``
            (inductor, :mod:`moca_rt.engines.compiled`), ``onnxruntime`` / ``tensorrt`` (the
            exported units), or ``auto`` (:func:`resolve_engine`). SAM's decoder, k-means and
            mask matching run on torch.
        engine_dir: the exported units for ``onnxruntime`` / ``tensorrt`` (they hold the
            weights, so ``imagebind`` / ``adapter`` must be None).
        export_dir: ``onnxruntime`` without ``engine_dir``: export the trunk that the torch
            engine would build (same weights and seed) into this folder first (the demo does).
        device, precision: where and in which precision the models run (with an engine, the
            precision its units were exported in).
        seed: the seed of random weights and of the k-means++ draws.
        batch: frames per model call of the callers' stream (latency vs throughput).
        tau, delta, silence_dbfs, num_clusters, mpm_threshold, mpm_metric: overrides of
            :class:`~moca_rt.pipeline.PipelineConfig`; None keeps its default.
    """

    preset: str | None = None
    imagebind: Path | None = None
    adapter: Path | None = None
    sam: Path | None = None
    sam_preset: str | None = None
    proposals: ProposalKind = "auto"
    points_per_side: int | None = None
    engine: EngineName = "torch"
    engine_dir: Path | None = None
    export_dir: Path | None = None
    device: str = "cpu"
    precision: Precision = "fp32"
    seed: int = 0
    batch: int = 1
    tau: float | None = None
    delta: float | None = None
    silence_dbfs: float | None = None
    num_clusters: int | None = None
    mpm_threshold: float | None = None
    mpm_metric: MatchMetric | None = None
    random_weights: bool = False

    def pipeline_config(self, calibrated: dict[str, Any] | None = None) -> PipelineConfig:
        """The thresholds: PipelineConfig's defaults (or the ``calibrated`` values of the shipped
        models) with the overrides given and ``seed``.

        Raises ValueError for values out of range (the message names the field).
        """
        overrides: dict[str, Any] = dict(calibrated or {})
        for name in _CONFIG_OVERRIDES:
            value = getattr(self, name)
            if value is not None:
                overrides[name] = value
        return PipelineConfig(kmeans_seed=self.seed, **overrides)

    def usage_problem(self) -> str | None:
        """What is wrong with these settings before any file is read (named by flag), or None."""
        if self.batch < 1:
            return f"--batch: expected >= 1, got {self.batch}"
        if self.points_per_side is not None and self.points_per_side < 1:
            return f"--points-per-side: expected >= 1, got {self.points_per_side}"
        return self.engine_problem()

    def engine_problem(self) -> str | None:
        """What is wrong with the combination of engine settings, or None."""
        if self.engine not in ENGINES:
            return f"--engine: expected one of {list(ENGINES)}, got {self.engine!r}"
        if self.engine == "auto":
            return None
        if self.engine in ("torch", "torch-compile"):
            if self.engine_dir is not None:
                return (
                    f"--engine-dir is for --engine onnxruntime or tensorrt, got --engine "
                    f"{self.engine}"
                )
            return None
        if self.engine_dir is None and not (
            self.export_dir is not None and self.engine == "onnxruntime"
        ):
            how = (
                "python -m moca_rt.export.create_onnx --unit audio/vision"
                if self.engine == "onnxruntime"
                else "python -m moca_rt.export.build_trt"
            )
            demo = " or --demo" if self.engine == "onnxruntime" else ""
            return (
                f"--engine {self.engine}: expected --engine-dir DIR with the audio and vision "
                f"units ({how}){demo}, got no --engine-dir"
            )
        return None


@dataclass(frozen=True)
class Weights:
    """The checkpoint files to load; None: seeded random weights (an untrained adapter).

    ``shipped``: the shipped tiny models when they are used (their calibrated pipeline and
    proposal settings then replace the generic defaults).
    """

    imagebind: Path | None
    adapter: Path | None
    sam: Path | None
    shipped: ShippedWeights | None = None


def resolve_weights(settings: BuildSettings) -> Weights:
    """The checkpoints that ``settings`` ask for.

    The paths given; and for the tiny ``moca_synth`` preset without ``imagebind`` (and without
    engine files or ``random_weights``), the shipped trained weights: ImageBind, the adapter
    unless one is given, and SAM for proposals (``sam_synth``) unless one is given.
    """
    given = Weights(imagebind=settings.imagebind, adapter=settings.adapter, sam=settings.sam)
    tiny = settings.preset in (None, DEFAULT_PRESET) and settings.imagebind is None
    if (
        settings.random_weights
        or not tiny
        or settings.engine_dir is not None
        or not shipped_available()
    ):
        return given
    try:
        shipped = shipped_weights()
    except ShippedWeightsError as e:
        raise CheckpointError(str(e)) from e
    sam = settings.sam
    if (
        sam is None
        and settings.proposals != "none"
        and settings.sam_preset in (None, SHIPPED_SAM_PRESET)
    ):
        sam = shipped.sam
    adapter = settings.adapter if settings.adapter is not None else shipped.adapter
    return Weights(imagebind=shipped.imagebind, adapter=adapter, sam=sam, shipped=shipped)


def imagebind_preset_for(path: Path) -> str | None:
    """The MoCA preset whose ImageBind fits the checkpoint key for key and shape for shape."""
    from moca_rt.checkpoints import read_state_dict
    from moca_rt.modeling.imagebind import official_key_layout

    state = read_state_dict(path)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    for name, cfg in MOCA_PRESETS.items():
        layout = official_key_layout(cfg.imagebind)
        if all(shapes.get(k) == v for k, v in layout.items()):
            return name
    return None


@dataclass
class BuiltPipeline:
    """A ready pipeline and what building it chose.

    ``notes``: one line each (random weights, the provider an engine really got, settings that
    were ignored); ``points_per_side``: SAM's grid, 0 without SAM proposals.
    """

    pipeline: MocaPipeline
    notes: list[str] = field(default_factory=list)
    points_per_side: int = 0


def build_pipeline(settings: BuildSettings) -> BuiltPipeline:
    """Build the models, engines, SAM and the :class:`~moca_rt.pipeline.MocaPipeline`.

    Raises:
        InputError: settings out of range or that do not go together
            (:meth:`BuildSettings.usage_problem`), engine files or libraries that cannot be
            used, a SAM checkpoint of no known size.
        CheckpointError: a checkpoint that does not fit its model (the keys are named).
        FileNotFoundError: a checkpoint path that does not exist.
        OutOfMemoryError: the models do not fit on the device.
        ValueError: thresholds out of range (:meth:`BuildSettings.pipeline_config`).
    """
    problem = settings.usage_problem()
    if problem is not None:
        raise InputError(problem)
    notes: list[str] = []
    auto = settings.engine == "auto"
    if auto:
        engine, why = resolve_engine(settings)
        notes.append(f"--engine auto: {engine} ({why})")
        settings = replace(settings, engine=engine)
    weights = resolve_weights(settings)
    record: dict[str, Any] | None = None
    reuse_export = False
    if settings.engine == "onnxruntime" and settings.engine_dir is None:
        record = _export_record(settings, weights)
        if settings.export_dir is None and auto:
            settings = replace(settings, export_dir=default_export_dir(record))
        if settings.export_dir is not None:
            reuse_export = is_current(settings.export_dir, record)
            if reuse_export:
                notes.append(
                    f"reusing the ONNX export in {settings.export_dir} ({EXPORT_RECORD} matches: "
                    "the same checkpoint files, settings and code)"
                )
            else:
                forget(settings.export_dir)
    config = settings.pipeline_config(weights.shipped.pipeline if weights.shipped else None)
    if weights.shipped is not None:
        notes.append(
            f"shipped tiny models (moca_synth + sam_synth, trained on the synthetic world; "
            f"{weights.shipped.folder}) with their calibrated settings: K {config.num_clusters}, "
            f"tau {config.tau}, delta {config.delta}, "
            f"MPM {config.mpm_metric} > {config.mpm_threshold}"
        )
    dtype = DTYPES[settings.precision]
    with torch_out_of_memory():
        if settings.engine in ("torch", "torch-compile"):
            model: Any = _torch_trunk(settings, weights, torch.device(settings.device), notes)
            if dtype != torch.float32:
                model = model.to(dtype)
            if settings.engine == "torch-compile":
                model = _compiled_trunk(model, settings, notes)
        else:
            torch.manual_seed(settings.seed)  # a random SAM is seeded here as on the torch path
            model = _engine_trunk(settings, weights, notes, reuse_export)
        sam = _sam_model(settings, weights, notes)
        if sam is not None and dtype != torch.float32:
            sam = sam.to(dtype)
        proposals, points = _proposal_source(settings, weights, sam, notes)
        if proposals is not None and settings.engine == "torch-compile":
            from moca_rt.engines.compiled import CompiledEngine
            from moca_rt.export.wrappers import SamEncoderUnit

            proposals.encoder = CompiledEngine(
                SamEncoderUnit(sam),
                names.input_names("sam_encoder"),
                names.output_names("sam_encoder"),
                settings.device,
            )
        if proposals is not None and settings.engine == "onnxruntime":
            proposals.encoder = _onnxruntime_sam_encoder(settings, sam, notes, reuse_export)
            proposals.grid_backend = _onnxruntime_grid_backend(settings, sam, notes, reuse_export)
        pipeline = MocaPipeline(model, proposals, config, device=settings.device, dtype=dtype)
    if record is not None and settings.export_dir is not None and not reuse_export:
        mark_current(settings.export_dir, record)
    return BuiltPipeline(pipeline, notes, points)


def _torch_trunk(
    settings: BuildSettings, weights: Weights, device: torch.device, notes: list[str]
) -> Any:
    """The torch MocaModel, built from ``settings.seed`` (random parts) and the weights."""
    from moca_rt.modeling.moca import MocaModel

    preset = _trunk_preset(settings, notes)
    torch.manual_seed(settings.seed)
    model = MocaModel.from_config(
        MOCA_PRESETS[preset],
        device=device,
        imagebind_weights=weights.imagebind,
        adapter_weights=weights.adapter,
    )
    notes.extend(_trunk_weight_notes(settings, weights, preset))
    return model


def _trunk_preset(settings: BuildSettings, notes: list[str]) -> str:
    """The MoCA preset: ``settings.preset``, else the one the ``--imagebind`` checkpoint fits
    (noted), else :data:`DEFAULT_PRESET`."""
    if settings.preset is not None or settings.imagebind is None:
        return settings.preset or DEFAULT_PRESET
    fits = imagebind_preset_for(settings.imagebind)
    if fits is None:
        raise CheckpointError(
            f"--imagebind {settings.imagebind}: its keys and shapes fit no MoCA preset's "
            f"ImageBind ({', '.join(sorted(MOCA_PRESETS))}); is it an ImageBind checkpoint?"
        )
    notes.append(
        f"--preset {fits}: the --imagebind checkpoint's shapes fit this preset's ImageBind"
    )
    return fits


def _trunk_weight_notes(settings: BuildSettings, weights: Weights, preset: str) -> list[str]:
    """What the user should know about the trunk's weights (random, untrained, shipped)."""
    notes = []
    if weights.imagebind is None:
        why = (
            "--random-weights" if settings.random_weights else "no shipped weights for this preset"
        )
        notes.append(
            f"no --imagebind checkpoint: ImageBind ({preset}) has seeded random weights ({why}), "
            "so masks are not meaningful"
        )
    if weights.adapter is None:
        notes.append("no --adapter: AdaAV is untrained (zero-initialised), i.e. plain ImageBind")
    elif weights.shipped is not None and weights.adapter == weights.shipped.adapter:
        step = weights.shipped.manifest["stages"]["adaav"]["selected_step"]
        if step == 0:
            notes.append(
                "shipped adapter: validation selected the untrained (zero) adapter, i.e. plain "
                "ImageBind (no AdaAV step beat it on the synthetic world; docs/design.md)"
            )
    return notes


def resolve_engine(settings: BuildSettings) -> tuple[EngineName, str]:
    """What ``--engine auto`` runs, and why (the rule of docs/design.md, "Engines").

    1. ``--engine-dir`` given: the engine its files are for: ``tensorrt`` for ``*.engine``
       files on a CUDA device, else ``onnxruntime`` (``*.onnx``).
    2. A CUDA device: ``torch-compile`` (inductor with CUDA graphs: DESIGN section 7's fastest
       path that can be verified on the lent GPUs).
    3. The CPU in fp32 with onnxruntime and the ONNX exporter installed (the ``onnx`` extra):
       ``onnxruntime``, on the units exported once into the export cache
       (:mod:`moca_rt.export_cache`; ``export_dir`` when given). Measured on the 2-core CPU
       (docs/design.md): onnxruntime ran the tiny units in 0.38-0.49x and the ViT-B SAM encoder
       in 0.30x of eager torch's time, the shipped pipeline at 0.66-0.70x, with the same masks.
    4. Otherwise the CPU: ``torch`` (eager; the compiled trunk was no faster on the CPU).
    """
    device = torch.device(settings.device)
    if settings.engine_dir is not None:
        folder = Path(settings.engine_dir)
        if device.type == "cuda" and any(folder.glob("*.engine")):
            return "tensorrt", f"TensorRT engines in {folder}"
        return "onnxruntime", f"exported units in {folder}"
    if device.type == "cuda":
        return "torch-compile", "a CUDA device: inductor with CUDA graphs"
    if settings.precision != "fp32":
        return "torch", f"the CPU in {settings.precision}: eager torch (docs/design.md, Engines)"
    missing = [m for m in ("onnxruntime", "onnx", "onnxscript") if find_spec(m) is None]
    if missing:
        return "torch", (
            f"the CPU: eager torch ({', '.join(missing)} not installed; pip install "
            "'moca-rt[onnx]' for onnxruntime, the faster CPU engine)"
        )
    where = settings.export_dir or "the export cache"
    return "onnxruntime", (
        f"the CPU: onnxruntime, on units exported once into {where} (docs/design.md, Engines)"
    )


def _compiled_trunk(model: Any, settings: BuildSettings, notes: list[str]) -> Any:
    """The torch trunk's audio and vision export units under ``torch.compile``."""
    from moca_rt.engines.compiled import CompiledEngine, CompileOptions
    from moca_rt.engines.moca_units import EngineMocaModel
    from moca_rt.export.wrappers import AudioEncoderUnit, VisionUnit

    layers = len(model.adapters)
    options = CompileOptions()
    device = torch.device(settings.device)
    audio = CompiledEngine(
        AudioEncoderUnit(model),
        names.input_names("audio"),
        names.output_names("audio", layers),
        device,
        options,
    )
    vision = CompiledEngine(
        VisionUnit(model),
        names.input_names("vision", layers),
        names.output_names("vision", layers),
        device,
        options,
    )
    mode = options.resolved_mode(device) or "default"
    notes.append(
        f"--engine torch-compile: the MoCA trunk and SAM's image encoder compile with inductor "
        f"(mode {mode}, batch buckets {list(options.batch_buckets)}) on first use of each "
        "batch size; compile time is reported apart (warm up with "
        "moca_rt.engines.compiled.warmup_pipeline); SAM's decoder, k-means and matching run "
        "eagerly"
    )
    return EngineMocaModel(audio, vision, layers, device)


def _export_record(settings: BuildSettings, weights: Weights) -> dict[str, Any]:
    """What an export of ``settings`` depends on (:func:`moca_rt.export_cache.export_record`)."""
    shaping = {
        "preset": settings.preset,
        "sam_preset": settings.sam_preset,
        "proposals": settings.proposals,
        "precision": settings.precision,
        "seed": settings.seed,
        "random_weights": settings.random_weights,
        "device_type": torch.device(settings.device).type,
    }
    files = {"imagebind": weights.imagebind, "adapter": weights.adapter, "sam": weights.sam}
    return export_record(shaping, files)


def _engine_trunk(
    settings: BuildSettings, weights: Weights, notes: list[str], reuse_export: bool = False
) -> Any:
    """The MoCA trunk on onnxruntime or TensorRT (:class:`EngineMocaModel`).

    Checks that the engine files' input dtype is the precision's dtype, exports the trunk to
    ``export_dir`` for onnxruntime without ``engine_dir``, and notes which provider really runs
    it.
    """
    if settings.engine_dir is not None and (
        weights.imagebind is not None or weights.adapter is not None
    ):
        raise InputError(
            "--imagebind / --adapter: the engine files in --engine-dir already hold the weights; "
            "expected them at export time (python -m moca_rt.export.create_onnx --imagebind ... "
            "--adapter ...), got them at run time"
        )
    if settings.engine_dir is not None and settings.preset is not None:
        notes.append(f"--preset {settings.preset} ignored: the engine files fix the model size")
    if settings.engine == "onnxruntime":
        model = _onnxruntime_trunk(settings, weights, notes, reuse_export)
    else:
        model = _tensorrt_trunk(settings, notes)
    if model.clips is not None and model.clips > 1:
        notes.append(
            f"--engine-dir: the audio unit takes {model.clips} clips per window; the pipeline "
            f"computes one and repeats it (same result, {model.clips}x the audio work): export "
            "with python -m moca_rt.export.create_onnx --audio-clips 1 to avoid that"
        )
    want = DTYPES[settings.precision]
    if model.input_dtype is not None and model.input_dtype != want:
        raise InputError(
            f"--precision {settings.precision}: expected engine inputs in {want}, got "
            f"{model.input_dtype} in {settings.engine_dir} (use the matching --precision or "
            "export/build the units in this one)"
        )
    return model


def _onnxruntime_trunk(
    settings: BuildSettings, weights: Weights, notes: list[str], reuse_export: bool
) -> Any:
    try:
        import onnxruntime
    except ImportError as e:
        raise InputError(
            f"--engine onnxruntime needs onnxruntime ({e}): pip install 'moca-rt[onnx]' "
            "(onnxruntime-gpu for the CUDA provider)"
        ) from e
    from moca_rt.engines.moca_units import EngineMocaModel, find_onnx_units
    from moca_rt.threads import configured_threads

    device = torch.device(settings.device)
    if settings.engine_dir is not None:
        folder = Path(settings.engine_dir)
    elif reuse_export and settings.export_dir is not None:
        folder = Path(settings.export_dir)  # exported from these weights: the same notes
        notes.extend(_trunk_weight_notes(settings, weights, _trunk_preset(settings, notes)))
    else:
        folder = _export_trunk(settings, weights, notes)
    precision = settings.precision
    try:
        both = precision in ONNX_PRECISIONS and all(
            (folder / f"{u}_{precision}.onnx").is_file() for u in ("audio", "vision")
        )
        _, _, found = find_onnx_units(folder, precision if both else None)
    except ValueError as e:
        raise InputError(f"--engine-dir {folder}: {e}") from e
    if found != precision:
        raise InputError(
            f"--precision {precision}: expected audio_{precision}.onnx and "
            f"vision_{precision}.onnx in {folder}, got the {found} pair (use --precision "
            f"{found}, or export with python -m moca_rt.export.create_onnx --precision "
            f"{precision}; ONNX units come in {sorted(ONNX_PRECISIONS)})"
        )
    providers = _ort_providers(device)
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", RuntimeWarning)  # the fallback is reported as a note
        try:
            model = EngineMocaModel.from_onnx(
                folder,
                providers,
                precision=found,
                device=device,
                intra_op_threads=configured_threads(),  # the process's policy (moca_rt.threads)
            )
        except ValueError as e:  # InputError too: a file onnxruntime cannot load
            raise InputError(f"--engine-dir {folder}: {e}") from e
    engine = model.audio_engine
    got = list(getattr(engine, "providers", ()))
    notes.append(
        f"--engine onnxruntime: the MoCA trunk ({folder}, {found}) "
        f"runs on {got[0] if got else '?'} "
        f"(providers {got}); k-means and mask matching stay on torch ({device})"
    )
    if getattr(engine, "fell_back", False):
        notes.append(
            f"onnxruntime fell back: requested {providers[0]}, got {got} (available here: "
            f"{onnxruntime.get_available_providers()}; onnxruntime-gpu gives "
            f"CUDAExecutionProvider), so the trunk runs on the CPU and its outputs are copied to "
            f"{device}"
        )
    return model


def _ort_providers(device: torch.device) -> list[str]:
    """onnxruntime's providers for ``device``: CUDA first on a CUDA device, the CPU always."""
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if device.type == "cuda"
        else ["CPUExecutionProvider"]
    )


def _onnxruntime_sam_encoder(
    settings: BuildSettings, sam: Any, notes: list[str], reuse_export: bool
) -> Any:
    """SAM's image encoder on onnxruntime: ``sam_encoder_<precision>.onnx`` from
    ``engine_dir``, or exported from ``sam`` into ``export_dir`` (the demo; reused when
    ``reuse_export``); None (torch) when ``engine_dir`` has no such file (noted)."""
    from moca_rt.engines.ort import OrtEngine

    precision = settings.precision
    file = f"sam_encoder_{precision}.onnx"
    if settings.engine_dir is not None:
        path = Path(settings.engine_dir) / file
        if not path.is_file():
            notes.append(
                f"--engine onnxruntime: no {file} in {settings.engine_dir}, so SAM's image "
                "encoder runs on torch (python -m moca_rt.export.create_onnx --unit sam_encoder)"
            )
            return None
    else:
        from moca_rt.export.create_onnx import export_unit

        if settings.export_dir is None or precision not in ONNX_PRECISIONS:
            return None
        path = Path(settings.export_dir) / file
        if not reuse_export:
            started = time.perf_counter()
            export_unit("sam_encoder", sam.to("cpu").eval(), path, precision)
            sam.to(settings.device)
            notes.append(
                f"exported SAM's image encoder ({precision}) to {path} in "
                f"{time.perf_counter() - started:.1f} s"
            )
    providers = _ort_providers(torch.device(settings.device))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always", RuntimeWarning)
        try:
            engine = OrtEngine(
                path, providers, names.input_names("sam_encoder"), names.output_names("sam_encoder")
            )
        except ValueError as e:
            raise InputError(f"--engine-dir: {path}: {e}") from e
    notes.append(
        f"--engine onnxruntime: SAM's image encoder ({path.name}) runs on {engine.provider}; "
        "k-means and matching on torch"
    )
    return engine


def _onnxruntime_grid_backend(
    settings: BuildSettings, sam: Any, notes: list[str], reuse_export: bool
) -> Any:
    """The factored grid decoder on onnxruntime (:class:`~moca_rt.grid_decoder.OrtGridBackend`):
    its two graphs from ``engine_dir``, or exported from ``sam`` into ``export_dir``; None (torch)
    on a CUDA device, in another precision than fp32, or when ``engine_dir`` lacks them (noted)."""
    from moca_rt import grid_decoder
    from moca_rt.threads import configured_threads

    files = (grid_decoder.GRID_TOKENS_FILE, grid_decoder.GRID_UPSCALE_FILE)
    if torch.device(settings.device).type != "cpu" or settings.precision != "fp32":
        notes.append("--engine onnxruntime: SAM's grid decoder runs on torch (CPU fp32 only)")
        return None
    if settings.engine_dir is not None:
        folder = Path(settings.engine_dir)
        if not all((folder / f).is_file() for f in files):
            notes.append(
                f"--engine onnxruntime: no {' / '.join(files)} in {folder}, so SAM's grid decoder "
                "runs on torch (moca_rt.grid_decoder.export_grid_decoder writes them)"
            )
            return None
    elif settings.export_dir is not None:
        folder = Path(settings.export_dir)
        if not reuse_export:
            started = time.perf_counter()
            grid_decoder.export_grid_decoder(sam, folder)
            notes.append(
                f"exported SAM's grid decoder (tokens + upscaling, fp32) to {folder} in "
                f"{time.perf_counter() - started:.1f} s"
            )
    else:
        return None
    try:
        backend = grid_decoder.OrtGridBackend(folder, intra_op_threads=configured_threads())
    except ValueError as e:
        raise InputError(f"--engine-dir {folder}: {e}") from e
    notes.append(f"--engine onnxruntime: SAM's grid decoder runs on {backend.provider}")
    return backend


def _tensorrt_trunk(settings: BuildSettings, notes: list[str]) -> Any:
    from moca_rt.engines.moca_units import EngineMocaModel
    from moca_rt.engines.trt import TENSORRT_MISSING, trt_available

    if not trt_available():
        raise InputError(f"--engine tensorrt: {TENSORRT_MISSING}")
    device = torch.device(settings.device)
    if device.type != "cuda":
        raise InputError(f"--engine tensorrt: expected a CUDA --device, got {settings.device}")
    try:
        model = EngineMocaModel.from_tensorrt(settings.engine_dir, device=device)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"--engine-dir {settings.engine_dir}: {e}") from e
    notes.append(
        f"--engine tensorrt: the MoCA trunk ({settings.engine_dir}) runs on TensorRT on "
        f"{model.device}; SAM proposals, k-means and mask matching stay on torch"
    )
    return model


def _export_trunk(settings: BuildSettings, weights: Weights, notes: list[str]) -> Path:
    """Export the torch trunk of ``settings`` (same seed and weights) to ``export_dir``."""
    from moca_rt.export.create_onnx import export_unit

    precision = settings.precision
    if precision not in ONNX_PRECISIONS:
        raise InputError(
            f"--precision {precision}: expected one of {list(ONNX_PRECISIONS)} for an ONNX "
            f"export, got {precision}"
        )
    if settings.export_dir is None:
        raise InputError(
            "--engine onnxruntime: expected --engine-dir or an export folder, got neither"
        )
    started = time.perf_counter()
    model = _torch_trunk(settings, weights, torch.device("cpu"), notes)
    model = model.to(DTYPES[precision]).eval()
    folder = Path(settings.export_dir)
    for unit in ("audio", "vision"):
        # One clip per window: what the pipeline computes (the 3 official clips of a 2 s window
        # are the same samples), so the engine does not repeat it.
        export_unit(unit, model, folder / f"{unit}_{precision}.onnx", precision, audio_clips=1)
    notes.append(
        f"exported the MoCA trunk (audio + vision units, {precision}) to {folder} in "
        f"{time.perf_counter() - started:.1f} s"
    )
    return folder


def _sam_preset_for(state: dict[str, torch.Tensor]) -> str:
    """The SAM preset whose encoder width the checkpoint has (the official sizes only)."""
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
        if cfg.encoder_embed_dim == width and name != "sam_test":
            return name
    raise InputError(f"--sam: no SAM preset has encoder width {width}")


def _sam_model(settings: BuildSettings, weights: Weights, notes: list[str]) -> Any:
    """The SAM the settings ask for (on the device, always torch), or None."""
    from moca_rt.checkpoints import read_state_dict
    from moca_rt.modeling.sam import build_sam, load_sam

    device = torch.device(settings.device)
    ignored = f"--sam-preset {settings.sam_preset} ignored"
    if settings.proposals == "none":
        if settings.sam_preset is not None:
            notes.append(f"{ignored}: --proposals none runs no SAM")
        return None
    if weights.sam is not None:
        state = read_state_dict(weights.sam)
        preset = settings.sam_preset or _sam_preset_for(state)
        return load_sam(state, SAM_PRESETS[preset], device=device)
    if settings.proposals in ("grid", "boxes"):
        name = settings.sam_preset or RANDOM_SAM_PRESET
        notes.append(f"no --sam checkpoint: SAM ({name}) has seeded random weights")
        return build_sam(SAM_PRESETS[name], device=device).eval()
    if settings.sam_preset is not None:
        notes.append(
            f"{ignored}: no SAM runs without --sam weights (add --proposals grid for a "
            "seeded random SAM of that size)"
        )
    return None


def _proposal_source(
    settings: BuildSettings, weights: Weights, sam: Any, notes: list[str]
) -> tuple[Any, int]:
    """SAM's proposal source and its points per side, or (None, 0) without SAM."""
    from moca_rt.proposals import ProposalConfig, SamProposals

    if sam is None:
        if settings.proposals != "none":
            notes.append(
                f"--proposals {settings.proposals}: no SAM (give --sam, or --proposals grid "
                "for a random one), so the masks are the cluster masks without proposal "
                "matching"
            )
        return None, 0
    random_sam = weights.sam is None
    points = settings.points_per_side or (
        RANDOM_SAM_POINTS_PER_SIDE if random_sam else SAM_POINTS_PER_SIDE
    )
    if random_sam:
        # A random SAM (no trained tiny SAM ships yet, DESIGN 6) never passes the quality
        # filters (predicted IoU 0.88, stability 0.95), so MPM would never run; with them off
        # the demo exercises every stage. Once trained tiny weights ship, keep the filters.
        config = ProposalConfig(
            points_per_side=points, pred_iou_thresh=0.0, stability_score_thresh=0.0
        )
        notes.append("random SAM: proposal quality filters are off (no trained SAM to filter)")
    elif weights.shipped is not None and weights.sam == weights.shipped.sam:
        # The shipped tiny SAM's IoU head is not confident enough for SAM's usual filters
        # (0.88 / 0.95 keep almost nothing); its calibrated settings say which ones it keeps.
        config = ProposalConfig(**{**weights.shipped.proposals, "points_per_side": points})
        notes.append(
            f"shipped tiny SAM: proposal filters predicted IoU > {config.pred_iou_thresh}, "
            f"stability >= {config.stability_score_thresh} (SAM's 0.88 / 0.95 keep almost "
            f"nothing of it), NMS {config.box_nms_thresh}"
        )
    else:
        config = ProposalConfig(points_per_side=points)
    return SamProposals(sam, config), points
