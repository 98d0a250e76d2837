"""Export the MoCA and SAM units to ONNX: ``python -m moca_rt.export.create_onnx``.

Units (names and dynamic axes in :mod:`moca_rt.engines.names`, wrappers in
:mod:`moca_rt.export.wrappers`):

* ``audio``: fbank [B, S, 1, 128, 204] -> per adapted layer X_a, Y_a [B, S*La, Da] + embedding.
* ``vision``: images [B, 3, 224, 224] + the audio tokens -> f^a, joint-space patches, CLS.
* ``sam_encoder``: [B, 3, 1024, 1024] normalised, padded -> [B, 256, 64, 64].
* ``sam_decoder``: image embedding [1, 256, 64, 64], points [N, P, 2], labels [N, P] ->
  low-res logits [N, 3, 256, 256] and IoU predictions [N, 3].

Which exporter each unit uses (:data:`EXPORTERS`) was decided by trying both with torch 2.13:
the dynamo exporter works for audio, vision and the decoder. For the SAM image encoder with a
dynamic batch its decomposition step fails ("Cannot view a tensor with shape [4*s, 64, 4, 24]
... as (4*s, 8, 8, 96)" at the window-attention reshape after SDPA), so that unit uses the
TorchScript exporter (``dynamo=False``). The example batch is 2, never 1 (a batch of 1 lets the
dynamo exporter specialise the batch axis to a constant); the decoder's example has 3 prompts of
2 points for the same reason.

Without ``--imagebind`` / ``--adapter`` / ``--sam`` the weights are random (seed ``--seed``):
that checks the graph, not the model. Each ONNX file gets a JSON sidecar naming the unit, preset,
precision, exporter, names and the ``trtexec`` command, which is also printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from moca_rt.config import MOCA_PRESETS, SAM_PRESETS
from moca_rt.engines import names
from moca_rt.export.wrappers import build_wrapper
from moca_rt.modeling.moca import MocaModel
from moca_rt.modeling.sam import Sam, build_sam, load_sam
from moca_rt.onnx_quiet import quiet_export
from moca_rt.precision import DTYPES, ONNX_PRECISIONS, OnnxPrecision

__all__ = [
    "EXPORTERS",
    "EXPORT_BATCH",
    "OPSET",
    "PROFILE",
    "ExportResult",
    "add_model_arguments",
    "build_model",
    "example_inputs",
    "export_unit",
    "main",
    "model_options",
    "num_layers_of",
    "run_create_onnx",
    "trtexec_command",
]

Exporter = Literal["dynamo", "torchscript"]

EXPORTERS: dict[names.Unit, Exporter] = {
    "audio": "dynamo",
    "vision": "dynamo",
    "sam_encoder": "torchscript",
    "sam_decoder": "dynamo",
}
OPSET = 18
EXPORT_BATCH = 2
EXPORT_PROMPTS = (3, 2)  # N prompts x P points of the decoder's example
AUDIO_CLIPS = 3  # S clips per window (official preprocessing); the pipeline needs 1
# TensorRT optimisation profile (min, opt, max) per symbolic axis.
PROFILE: dict[str, tuple[int, int, int]] = {
    names.BATCH: (1, 4, 16),
    names.NUM_PROMPTS: (1, 64, 256),
    names.NUM_POINTS: (1, 2, 8),
}


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_unit` wrote: the ONNX path and how it was made."""

    unit: str
    path: str
    precision: str
    exporter: str
    opset: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    trtexec: str
    audio_clips: int | None = None  # S of the MoCA units' fbank / audio tokens; None for SAM


def num_layers_of(model: MocaModel | Sam) -> int:
    """Number of adapted layers (0 for SAM): sizes the MoCA units' name lists."""
    return len(model.adapters) if isinstance(model, MocaModel) else 0


def input_dtype(name: str, precision: OnnxPrecision) -> torch.dtype:
    """dtype of input ``name``: the model precision, except SAM points/labels (always fp32)."""
    if name in (names.POINT_COORDS, names.POINT_LABELS):
        return torch.float32
    return DTYPES[precision]


def example_inputs(
    unit: names.Unit,
    model: MocaModel | Sam,
    batch: int = EXPORT_BATCH,
    num_points: int = EXPORT_PROMPTS[1],
    precision: OnnxPrecision = "fp32",
    seed: int = 0,
    audio_clips: int = AUDIO_CLIPS,
) -> dict[str, Tensor]:
    """Seeded random inputs of ``unit`` keyed by the input names, on the model's device.

    ``batch`` is B for the batched units and the number of prompts N for the decoder.
    ``audio_clips`` is S, the clips per audio window of the MoCA units (fixed in their graphs:
    the audio unit's fbank [B, S, 1, M, T], the vision unit's audio tokens [B, S * La, Da]). The
    vision unit's audio tokens are produced by running the model's audio encoder on random
    fbank (realistic token statistics). SAM point coords are uniform in the model-input frame;
    labels are drawn from {1, 0, -1}, the first point of each prompt always labelled 1.
    """
    if batch < 1 or num_points < 1:
        raise ValueError(f"expected batch >= 1 and num_points >= 1, got {batch} and {num_points}")
    if audio_clips < 1:
        raise ValueError(f"expected audio_clips >= 1, got {audio_clips}")
    gen = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    dtype = DTYPES[precision]
    out: dict[str, Tensor] = {}
    if unit in ("audio", "vision"):
        if not isinstance(model, MocaModel):
            raise ValueError(f"expected a MocaModel for unit {unit!r}, got {type(model).__name__}")
        a = model.config.imagebind.audio
        fbank = torch.randn(batch, audio_clips, 1, a.num_mel_bins, a.target_len, generator=gen)
        if unit == "audio":
            return {names.FBANK: fbank.to(device, dtype)}
        side = model.config.imagebind.vision.image_size
        out[names.IMAGES] = torch.randn(batch, 3, side, side, generator=gen).to(device, dtype)
        feats = model.encode_audio(fbank.to(device, next(model.parameters()).dtype))
        for i, (x_a, y_a) in enumerate(
            zip(feats.layer_inputs, feats.layer_post_attention, strict=True)
        ):
            out[names.audio_layer_input(i)] = x_a.to(dtype)
            out[names.audio_layer_post_attention(i)] = y_a.to(dtype)
        return out
    if not isinstance(model, Sam):
        raise ValueError(f"expected a Sam for unit {unit!r}, got {type(model).__name__}")
    cfg = model.config
    if unit == "sam_encoder":
        x = torch.randn(batch, 3, cfg.image_size, cfg.image_size, generator=gen)
        return {names.SAM_IMAGES: x.to(device, dtype)}
    if unit == "sam_decoder":
        grid = cfg.image_size // cfg.patch_size
        emb = torch.randn(1, cfg.prompt_embed_dim, grid, grid, generator=gen)
        coords = torch.rand(batch, num_points, 2, generator=gen) * cfg.image_size
        labels = torch.randint(-1, 2, (batch, num_points), generator=gen).float()
        labels[:, 0] = 1.0
        return {
            names.IMAGE_EMBEDDINGS: emb.to(device, dtype),
            names.POINT_COORDS: coords.to(device),
            names.POINT_LABELS: labels.to(device),
        }
    raise ValueError(f"expected a unit in {names.UNITS}, got {unit!r}")


def _dynamic_shapes(unit: names.Unit, num_layers: int) -> tuple[object, ...]:
    """The dynamo exporter's ``dynamic_shapes`` for the wrapper's positional arguments."""
    axes = names.dynamic_axes(unit, num_layers)
    dims: dict[str, torch.export.Dim] = {}

    def spec(name: str) -> dict[int, torch.export.Dim] | None:
        if name not in axes:
            return None
        return {ax: dims.setdefault(sym, torch.export.Dim(sym)) for ax, sym in axes[name].items()}

    ins = names.input_names(unit, num_layers)
    if unit == "vision":  # forward(images, *audio_tokens)
        return (spec(ins[0]), tuple(spec(n) for n in ins[1:]))
    return tuple(spec(n) for n in ins)


def _shape_string(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def trtexec_command(
    unit: names.Unit,
    onnx_path: str | Path,
    input_shapes: dict[str, tuple[int, ...]],
    precision: OnnxPrecision = "fp32",
    num_layers: int = 0,
) -> str:
    """The ``trtexec`` line that builds a TensorRT engine for ``unit`` (string only).

    Args:
        input_shapes: one example shape per input name (from :func:`example_inputs`); the
            dynamic axes are replaced by the (min, opt, max) of :data:`PROFILE`.
    """
    axes = names.dynamic_axes(unit, num_layers)
    profile: list[list[str]] = [[], [], []]
    for name in names.input_names(unit, num_layers):
        if name not in input_shapes:
            raise ValueError(f"expected a shape for input {name!r}, got {sorted(input_shapes)}")
        if name not in axes:
            continue
        for k in range(3):
            shape = list(input_shapes[name])
            for ax, sym in axes[name].items():
                shape[ax] = PROFILE[sym][k]
            profile[k].append(f"{name}:{_shape_string(shape)}")
    path = Path(onnx_path)
    parts = [f"trtexec --onnx={path}", f"--saveEngine={path.with_suffix('.engine')}"]
    if profile[0]:
        parts += [
            f"--{which}Shapes={','.join(p)}"
            for which, p in zip(("min", "opt", "max"), profile, strict=True)
        ]
    if precision == "fp16":
        parts.append("--fp16")
    return " ".join(parts)


def export_unit(
    unit: names.Unit,
    model: MocaModel | Sam,
    out_path: str | Path,
    precision: OnnxPrecision = "fp32",
    exporter: Exporter | None = None,
    audio_clips: int = AUDIO_CLIPS,
) -> ExportResult:
    """Export ``unit`` of ``model`` (already in the wanted dtype, eval mode) to ``out_path``.

    The example has batch :data:`EXPORT_BATCH` (decoder: 3 prompts of 2 points); the axes of
    :func:`moca_rt.engines.names.dynamic_axes` stay symbolic. The MoCA units fix ``audio_clips``
    clips per window (3: the official preprocessing; 1: what the pipeline computes for its 2 s
    windows, a third of the audio work); export both units with the same value. The dynamo
    exporter may write weights to ``<out_path>.data`` beside the file. A JSON sidecar
    ``<out_path>.json`` holds the :class:`ExportResult`.
    """
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"expected precision in {ONNX_PRECISIONS}, got {precision!r}")
    exporter = exporter if exporter is not None else EXPORTERS[unit]
    num_layers = num_layers_of(model)
    wrapper = build_wrapper(unit, model).eval()
    feeds = example_inputs(unit, model, precision=precision, audio_clips=audio_clips)
    args = tuple(feeds.values())
    ins = names.input_names(unit, num_layers)
    outs = names.output_names(unit, num_layers)
    if tuple(feeds) != ins:
        raise ValueError(f"expected example inputs {ins}, got {tuple(feeds)}")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_export():
        if exporter == "dynamo":
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                input_names=list(ins),
                output_names=list(outs),
                dynamic_shapes=_dynamic_shapes(unit, num_layers),
                opset_version=OPSET,
                dynamo=True,
                verbose=False,
            )
        else:
            torch.onnx.export(
                wrapper,
                args,
                str(path),
                input_names=list(ins),
                output_names=list(outs),
                dynamic_axes=cast(dict, names.dynamic_axes(unit, num_layers)),
                opset_version=17,
                dynamo=False,
            )
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    result = ExportResult(
        unit=unit,
        path=str(path),
        precision=precision,
        exporter=exporter,
        opset=OPSET if exporter == "dynamo" else 17,
        input_names=ins,
        output_names=outs,
        trtexec=trtexec_command(unit, path, shapes, precision, num_layers),
        audio_clips=audio_clips if unit in ("audio", "vision") else None,
    )
    path.with_suffix(path.suffix + ".json").write_text(json.dumps(asdict(result), indent=2))
    return result


def build_model(
    unit: names.Unit,
    preset: str = "moca_huge",
    sam_preset: str = "sam_vit_h",
    precision: OnnxPrecision = "fp32",
    imagebind: str | Path | None = None,
    adapter: str | Path | None = None,
    sam: str | Path | None = None,
    seed: int = 0,
) -> MocaModel | Sam:
    """The model a unit exports, in eval mode and the precision's dtype, on the CPU.

    MoCA units: :class:`MocaModel` of ``preset`` with official ImageBind weights from
    ``imagebind`` and adapter weights from ``adapter`` when given. Without adapter weights the
    adapters are filled with seeded random values (an untrained, zero-initialised adapter would
    not show whether the audio tokens reach the vision graph). SAM units: :class:`Sam` of
    ``sam_preset``, official weights from ``sam`` when given, else seeded random.
    """
    if precision not in ONNX_PRECISIONS:
        raise ValueError(f"expected precision in {ONNX_PRECISIONS}, got {precision!r}")
    torch.manual_seed(seed)
    model: MocaModel | Sam
    if unit in ("audio", "vision"):
        if preset not in MOCA_PRESETS:
            raise ValueError(f"expected a preset in {sorted(MOCA_PRESETS)}, got {preset!r}")
        model = MocaModel.from_config(
            MOCA_PRESETS[preset], imagebind_weights=imagebind, adapter_weights=adapter
        )
        if adapter is None:
            with torch.no_grad():
                for p in model.adapters.parameters():
                    p.normal_(0.0, 0.05)
    elif unit in ("sam_encoder", "sam_decoder"):
        if sam_preset not in SAM_PRESETS:
            raise ValueError(f"expected a SAM preset in {sorted(SAM_PRESETS)}, got {sam_preset!r}")
        cfg = SAM_PRESETS[sam_preset]
        model = load_sam(sam, cfg) if sam is not None else build_sam(cfg)
    else:
        raise ValueError(f"expected a unit in {names.UNITS}, got {unit!r}")
    return cast(nn.Module, model).to(DTYPES[precision]).eval()  # type: ignore[return-value]


def run_create_onnx(
    units: Sequence[names.Unit],
    out_dir: str | Path,
    preset: str = "moca_huge",
    sam_preset: str = "sam_vit_h",
    precision: OnnxPrecision = "fp32",
    imagebind: str | Path | None = None,
    adapter: str | Path | None = None,
    sam: str | Path | None = None,
    seed: int = 0,
    audio_clips: int = AUDIO_CLIPS,
) -> list[ExportResult]:
    """Export ``units`` to ``out_dir/<unit>_<precision>.onnx``; returns one result per unit.

    ``audio_clips``: clips per audio window of the MoCA units (see :func:`export_unit`)."""
    results: list[ExportResult] = []
    models: dict[str, MocaModel | Sam] = {}
    for unit in units:
        key = "moca" if unit in ("audio", "vision") else "sam"
        if key not in models:
            models[key] = build_model(
                unit, preset, sam_preset, precision, imagebind, adapter, sam, seed
            )
        path = Path(out_dir) / f"{unit}_{precision}.onnx"
        results.append(export_unit(unit, models[key], path, precision, audio_clips=audio_clips))
    return results


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that name the model of the units: ``create_onnx`` exports it, ``compare``
    rebuilds it from the same values to check a file against it."""
    parser.add_argument(
        "--preset",
        choices=sorted(MOCA_PRESETS),
        default="moca_huge",
        help="MoCA preset (sizes of ImageBind and the adapters).",
    )
    parser.add_argument(
        "--sam-preset",
        choices=sorted(SAM_PRESETS),
        default="sam_vit_h",
        help="SAM preset for the sam_encoder and sam_decoder units.",
    )
    parser.add_argument(
        "--precision",
        choices=ONNX_PRECISIONS,
        default="fp32",
        help="Weights and float inputs in fp32 or fp16.",
    )
    parser.add_argument(
        "--imagebind",
        default=None,
        help="Official ImageBind checkpoint (random weights when omitted).",
    )
    parser.add_argument(
        "--adapter",
        default=None,
        help="Trained AdaAV weights (seeded random adapters when omitted).",
    )
    parser.add_argument(
        "--sam", default=None, help="Official SAM checkpoint (random weights when omitted)."
    )
    parser.add_argument("--seed", type=int, default=0, help="Seed of the random weights.")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The values of the :func:`add_model_arguments` flags, as keywords of :func:`build_model`
    (and :func:`run_create_onnx`)."""
    names_ = ("preset", "sam_preset", "precision", "imagebind", "adapter", "sam", "seed")
    return {name: getattr(args, name) for name in names_}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns 0 when every unit exported, 1 on an export error."""
    parser = argparse.ArgumentParser(
        prog="python -m moca_rt.export.create_onnx",
        description="Export MoCA / SAM units to ONNX and print the trtexec command for each.",
    )
    parser.add_argument(
        "--unit",
        choices=[*names.UNITS, "all"],
        default="all",
        help="Which unit to export; 'all' exports the four units.",
    )
    parser.add_argument("--out", required=True, help="Folder that receives the ONNX files.")
    add_model_arguments(parser)
    parser.add_argument(
        "--audio-clips",
        type=int,
        default=AUDIO_CLIPS,
        help="Clips per 2 s audio window fixed in the audio and vision units: 3 "
        "(official preprocessing) or 1 (what python -m moca_rt.infer "
        "computes; a third of the audio work).",
    )
    args = parser.parse_args(argv)
    if args.audio_clips < 1:
        parser.error(f"--audio-clips: expected >= 1, got {args.audio_clips}")
    units = names.UNITS if args.unit == "all" else (args.unit,)
    try:
        results = run_create_onnx(
            units, args.out, **model_options(args), audio_clips=args.audio_clips
        )
    except Exception as exc:  # report and exit non-zero; the traceback is in the message chain
        print(f"export failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    for r in results:
        print(f"{r.unit}: {r.path} ({r.exporter} exporter, opset {r.opset}, {r.precision})")
        print(f"  {r.trtexec}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
