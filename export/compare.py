"""onnxruntime vs torch for one export unit: ``python -m moca_rt.export.compare``.

Per output: ``max_abs = max|ort - torch|``, ``rel = max_abs / max|torch|`` and the flat cosine,
all in float64 (the metrics of the reference fixtures' README). An output passes when
``rel <= tol.rel`` and ``cosine >= tol.cosine`` for the precision (:data:`TOLERANCES`) and all
its values are finite. The report names the first failing output in output order and the
execution provider the onnxruntime session really used (a CUDA request can silently run on
the CPU).

The comparison runs at a batch (decoder: prompt count) different from the export example, so a
batch axis that the exporter fixed to a constant shows up as a failure.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from moca_rt.engines import names
from moca_rt.engines.base import TorchEngine
from moca_rt.engines.ort import OrtEngine
from moca_rt.export.create_onnx import (
    add_model_arguments,
    build_model,
    example_inputs,
    model_options,
    num_layers_of,
)
from moca_rt.export.wrappers import build_wrapper
from moca_rt.modeling.moca import MocaModel
from moca_rt.modeling.sam import Sam
from moca_rt.precision import OnnxPrecision

__all__ = [
    "COMPARE_BATCH",
    "TOLERANCES",
    "CompareReport",
    "OutputComparison",
    "Tolerance",
    "compare_outputs",
    "compare_unit",
    "main",
]

COMPARE_BATCH = 3  # differs from create_onnx.EXPORT_BATCH (2) on purpose


@dataclass(frozen=True)
class Tolerance:
    """Gate of one precision: ``rel <= rel`` and ``cosine >= cosine``."""

    rel: float
    cosine: float


TOLERANCES: dict[OnnxPrecision, Tolerance] = {
    # The fixtures' gate for trunks and SAM outputs (reference README, "How to compare").
    "fp32": Tolerance(rel=1e-4, cosine=0.99999),
    # fp16 has a 2^-11 unit roundoff; errors grow over the depth of the network.
    "fp16": Tolerance(rel=2e-2, cosine=0.999),
}


@dataclass(frozen=True)
class OutputComparison:
    """Metrics of one output; ``note`` says why it failed beyond the numbers (shape, NaN)."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    rel: float
    cosine: float
    passed: bool
    note: str = ""

    def __str__(self) -> str:
        status = "ok  " if self.passed else "FAIL"
        extra = f" ({self.note})" if self.note else ""
        return (
            f"{status} {self.name} {list(self.shape)}: max_abs={self.max_abs:.3e} "
            f"rel={self.rel:.3e} cos={self.cosine:.8f}{extra}"
        )


@dataclass(frozen=True)
class CompareReport:
    """Per-output comparisons plus the provider actually used."""

    outputs: tuple[OutputComparison, ...]
    precision: str
    tolerance: Tolerance
    requested_provider: str = ""
    providers_used: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    @property
    def first_failure(self) -> OutputComparison | None:
        """The first output (in output order) that fails its gate, or None."""
        return next((o for o in self.outputs if not o.passed), None)

    def __str__(self) -> str:
        lines = [
            f"precision {self.precision}: gate rel <= {self.tolerance.rel:g}, "
            f"cos >= {self.tolerance.cosine:g}"
        ]
        if self.providers_used:
            got = self.providers_used[0]
            same = "as requested" if got == self.requested_provider else "NOT the one requested"
            lines.append(
                f"onnxruntime provider: requested {self.requested_provider}, got {got} ({same}; "
                f"session providers {list(self.providers_used)})"
            )
        lines += [str(o) for o in self.outputs]
        bad = self.first_failure
        lines.append("all outputs pass" if bad is None else f"first failing output: {bad.name}")
        return "\n".join(lines)


def _compare_one(name: str, ref: Tensor, got: Tensor, tol: Tolerance) -> OutputComparison:
    shape = tuple(ref.shape)
    if tuple(got.shape) != shape:
        return OutputComparison(
            name,
            shape,
            math.inf,
            math.inf,
            0.0,
            False,
            f"shape {list(got.shape)}, expected {list(shape)}",
        )
    a = got.detach().to(torch.float64).cpu().flatten()
    b = ref.detach().to(torch.float64).cpu().flatten()
    if a.numel() == 0:
        return OutputComparison(name, shape, 0.0, 0.0, 1.0, True, "empty")
    finite = bool(torch.isfinite(a).all())
    if not finite:
        bad = int((~torch.isfinite(a)).sum())
        return OutputComparison(name, shape, math.inf, math.inf, 0.0, False, f"{bad} non-finite")
    diff = (a - b).abs()
    max_abs = float(diff.max())
    rel = max_abs / max(float(b.abs().max()), 1e-30)
    cos = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    passed = rel <= tol.rel and cos >= tol.cosine
    note = "" if passed else f"worst flat index {int(diff.argmax())}"
    return OutputComparison(name, shape, max_abs, rel, cos, passed, note)


def compare_outputs(
    reference: Mapping[str, Tensor],
    candidate: Mapping[str, Tensor],
    precision: OnnxPrecision = "fp32",
    order: Sequence[str] | None = None,
    requested_provider: str = "",
    providers_used: Sequence[str] = (),
) -> CompareReport:
    """Compare ``candidate`` (e.g. onnxruntime) against ``reference`` (torch) output by output.

    Args:
        reference, candidate: ``{output name: tensor}``; every reference name must be present
            in the candidate (``ValueError`` otherwise).
        precision: picks the gate in :data:`TOLERANCES`.
        order: output order for the report and "first failing"; default the reference's order.
        requested_provider, providers_used: recorded in the report (from :class:`OrtEngine`).
    """
    if precision not in TOLERANCES:
        raise ValueError(f"expected precision in {tuple(TOLERANCES)}, got {precision!r}")
    order = tuple(order) if order is not None else tuple(reference)
    missing = [n for n in order if n not in candidate or n not in reference]
    if missing:
        raise ValueError(
            f"expected outputs {list(order)} in both, got reference {sorted(reference)} and "
            f"candidate {sorted(candidate)}"
        )
    tol = TOLERANCES[precision]
    rows = tuple(_compare_one(n, reference[n], candidate[n], tol) for n in order)
    return CompareReport(rows, precision, tol, requested_provider, tuple(providers_used))


def compare_unit(
    unit: names.Unit,
    model: MocaModel | Sam,
    onnx_path: str | Path,
    precision: OnnxPrecision = "fp32",
    batch: int = COMPARE_BATCH,
    num_points: int = 3,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    seed: int = 1,
    strict_provider: bool = False,
) -> CompareReport:
    """Run the wrapper of ``unit`` in torch and the ONNX file in onnxruntime on the same inputs.

    ``model`` must be the one the file was exported from (same weights, same dtype). Inputs are
    :func:`~moca_rt.export.create_onnx.example_inputs` at ``batch`` (decoder: ``batch`` prompts
    of ``num_points`` points) with ``seed``. The ONNX graph's names must equal the constants.
    With ``strict_provider`` a session that did not get ``providers[0]`` raises ``RuntimeError``
    (otherwise it warns and the report says which provider ran).
    """
    num_layers = num_layers_of(model)
    ins = names.input_names(unit, num_layers)
    outs = names.output_names(unit, num_layers)
    engine = OrtEngine(
        onnx_path, providers, input_names=ins, output_names=outs, strict_provider=strict_provider
    )
    reference = TorchEngine(build_wrapper(unit, model), ins, outs)
    feeds = example_inputs(unit, model, batch, num_points, precision, seed)
    return compare_outputs(
        reference(feeds), engine(feeds), precision, outs, providers[0], engine.providers
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: exit 0 when every output passes, 1 when one fails, 2 on bad arguments, 3 when
    ``--strict-provider`` is given and onnxruntime did not get the first requested provider."""
    parser = argparse.ArgumentParser(
        prog="python -m moca_rt.export.compare",
        description="Compare an exported ONNX unit run by onnxruntime with the torch model "
        "rebuilt from the values it was exported with (preset, precision, weights, seed).",
    )
    parser.add_argument("--unit", choices=names.UNITS, required=True, help="The exported unit.")
    parser.add_argument("--onnx", required=True, help="The ONNX file written by create_onnx.")
    add_model_arguments(parser)  # as exported; --precision also picks the tolerance
    parser.add_argument(
        "--batch",
        type=int,
        default=COMPARE_BATCH,
        help="Batch (decoder: number of prompts) to compare at.",
    )
    parser.add_argument(
        "--provider",
        action="append",
        default=None,
        help="onnxruntime execution provider, repeatable, in priority order "
        "(default CPUExecutionProvider).",
    )
    parser.add_argument(
        "--strict-provider",
        action="store_true",
        help="Fail (exit 3) when onnxruntime falls back from the first provider.",
    )
    args = parser.parse_args(argv)
    model = build_model(args.unit, **model_options(args))
    providers = args.provider or ["CPUExecutionProvider"]
    try:
        report = compare_unit(
            args.unit,
            model,
            args.onnx,
            args.precision,
            args.batch,
            providers=providers,
            strict_provider=args.strict_provider,
        )
    except RuntimeError as exc:
        print(f"provider check failed: {exc}", file=sys.stderr)
        return 3
    print(report)
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
