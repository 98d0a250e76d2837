"""``torch.compile`` (inductor) runner for the export units: ``--engine torch-compile``.

:class:`CompiledEngine` compiles an export wrapper (:mod:`moca_rt.export.wrappers`) and speaks
the :class:`~moca_rt.engines.Engine` interface, so the MoCA trunk runs on it through
:class:`~moca_rt.engines.moca_units.EngineMocaModel` exactly as on onnxruntime or TensorRT, and
the SAM image encoder through :class:`moca_rt.proposals.SamProposals` (``encoder=``).

* **Static shapes per batch bucket**: ``dynamic=False``, and the batch is padded up to the next
  bucket of :attr:`CompileOptions.batch_buckets` (rows repeated; every unit treats batch rows
  independently, and the padding rows are cut from the outputs), so a stream whose last batch
  is short does not recompile; each bucket compiles once.
* **Compile time apart**: the first call of a bucket is compile + run; its wall time is kept in
  :attr:`CompiledEngine.compile_seconds` and :meth:`CompiledEngine.warmup` runs the buckets a
  caller will use before it starts timing.
* **CUDA**: ``mode="max-autotune"`` (inductor's autotuned kernels with CUDA graphs) or
  ``"max-autotune-no-cudagraphs"`` (:attr:`CompileOptions.cuda_graphs`); each call starts a
  new CUDA-graph step (``torch.compiler.cudagraph_mark_step_begin``) and the outputs are cloned,
  since a graph replay reuses its output memory. On the CPU inductor's default mode (C++/OpenMP
  kernels; it needs a C++ compiler).
* **Cache across runs**: inductor's FX graph cache (on by default in torch 2.13) keeps compiled
  kernels on disk, under ``TORCHINDUCTOR_CACHE_DIR`` (set :attr:`CompileOptions.cache_dir` to
  choose the folder), so a second process compiles the same graph much faster.
* **Fallback**: when compiling or running the compiled graph raises (no C++ compiler, an
  unsupported op, out of memory in autotuning), the engine runs the module eagerly from then on
  and says why in :attr:`CompiledEngine.fallback_reason` (the build notes it).

Our custom kernels are registered ``torch.library`` ops with fake implementations, so they stay
single nodes of the compiled graph.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from moca_rt.engines import names
from moca_rt.engines.base import check_feeds

__all__ = [
    "DEFAULT_BUCKETS",
    "CompileOptions",
    "CompiledEngine",
    "bucket_for",
    "compiled_engines",
    "warmup_pipeline",
]

DEFAULT_BUCKETS: tuple[int, ...] = (1, 2, 4, 8, 16)
_CUDA_GRAPH_MODES = ("max-autotune", "reduce-overhead")  # inductor modes that capture graphs


@dataclass(frozen=True)
class CompileOptions:
    """How :class:`CompiledEngine` compiles.

    Attributes:
        mode: inductor mode; None picks ``"max-autotune"`` (or ``"max-autotune-no-cudagraphs"``
            without ``cuda_graphs``) on CUDA and the default mode on the CPU.
        cuda_graphs: CUDA only: capture CUDA graphs (``mode="max-autotune"``).
        batch_buckets: batch sizes compiled for; a batch is padded to the next one (a batch
            above the largest compiles for its own size).
        fullgraph: fail instead of splitting the graph at an unsupported construct.
        cache_dir: inductor's on-disk cache folder (``TORCHINDUCTOR_CACHE_DIR``); None keeps
            torch's default (a folder under the temp dir).
        freezing: inductor's ``freezing``: the weights become constants of the graph, folded
            and (on the CPU) prepacked for its matmul kernels; inference only, and the compiled
            graph no longer follows later changes to the weights.
    """

    mode: str | None = None
    cuda_graphs: bool = True
    batch_buckets: tuple[int, ...] = DEFAULT_BUCKETS
    fullgraph: bool = False
    cache_dir: str | None = None
    freezing: bool = False

    def __post_init__(self) -> None:
        if not self.batch_buckets or any(b < 1 for b in self.batch_buckets):
            raise ValueError(
                f"expected batch_buckets of sizes >= 1, got {list(self.batch_buckets)}"
            )

    def resolved_mode(self, device: torch.device) -> str | None:
        """The inductor mode for ``device`` (see :attr:`mode`)."""
        if self.mode is not None:
            return self.mode
        if device.type == "cuda":
            return "max-autotune" if self.cuda_graphs else "max-autotune-no-cudagraphs"
        return None


def bucket_for(batch: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``batch``, or ``batch`` itself above the largest bucket."""
    if batch < 1:
        raise ValueError(f"expected a batch >= 1, got {batch}")
    fitting = [b for b in sorted(buckets) if b >= batch]
    return fitting[0] if fitting else batch


def _inference_tensor(x: Tensor) -> Tensor:
    """``x`` as an inference tensor (a copy only when it is not one already)."""
    return x if x.is_inference() else x.clone()


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """``x`` with its last row repeated up to ``rows`` rows along axis 0."""
    if x.shape[0] == rows:
        return x
    return torch.cat([x, x[-1:].expand(rows - x.shape[0], *x.shape[1:])])


class CompiledEngine:
    """An export wrapper under ``torch.compile`` behind the :class:`~moca_rt.engines.Engine`
    interface (inputs batched on axis 0, outputs batched on axis 0).

    Args:
        module: a wrapper whose ``forward`` takes the inputs positionally in ``input_names``
            order and returns a tensor or a tuple in ``output_names`` order.
        input_names, output_names: the constants of :mod:`moca_rt.engines.names`.
        device: where the module's weights live (decides the mode).
        options: see :class:`CompileOptions`.
    """

    def __init__(
        self,
        module: nn.Module,
        input_names: Sequence[str],
        output_names: Sequence[str],
        device: str | torch.device = "cpu",
        options: CompileOptions | None = None,
    ) -> None:
        self.module = module.eval()
        self.input_names = tuple(input_names)
        self.output_names = tuple(output_names)
        self.device = torch.device(device)
        self.options = options or CompileOptions()
        if self.options.cache_dir is not None:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = self.options.cache_dir
        self.mode = self.options.resolved_mode(self.device)
        self._cuda_graphs = self.device.type == "cuda" and self.mode in _CUDA_GRAPH_MODES
        if self.options.freezing:
            # As options (not a config patch): dynamo tells compiled graphs apart by backend
            # options, so a frozen and a plain engine of the same module class do not share one.
            from torch._inductor import list_mode_options

            config = {**(list_mode_options(self.mode) if self.mode else {}), "freezing": True}
            self.compiled: Any = torch.compile(
                self.module, options=config, dynamic=False, fullgraph=self.options.fullgraph
            )
        else:
            self.compiled = torch.compile(
                self.module, mode=self.mode, dynamic=False, fullgraph=self.options.fullgraph
            )
        self.compile_seconds: dict[int, float] = {}
        self.fallback_reason: str | None = None

    @property
    def fell_back(self) -> bool:
        """True once compiling failed and the module runs eagerly."""
        return self.fallback_reason is not None

    def _run(self, args: list[Tensor]) -> tuple[Tensor, ...]:
        if self.fallback_reason is None:
            try:
                if self._cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()
                out = self.compiled(*args)
            except Exception as exc:  # any compiler failure: fall back to eager
                self.fallback_reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                warnings.warn(
                    f"torch.compile failed, running eagerly from now on ({self.fallback_reason})",
                    RuntimeWarning,
                    stacklevel=3,
                )
                out = self.module(*args)
        else:
            out = self.module(*args)
        return (out,) if isinstance(out, Tensor) else tuple(out)

    def __call__(self, feeds: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Run on ``{input name: tensor}`` (padded to the batch bucket); outputs cut back."""
        check_feeds(feeds, self.input_names)
        batch = int(feeds[self.input_names[0]].shape[0])
        rows = bucket_for(batch, self.options.batch_buckets)
        first = rows not in self.compile_seconds
        start = time.perf_counter()
        # Inference mode, on inference tensors only: dynamo's guards check the inputs' dispatch
        # keys, so a warm-up on ordinary tensors compiled graphs that the pipeline's first call
        # (inference mode) compiled again, inside the timed run (seconds per bucket).
        with torch.inference_mode():
            args = [_inference_tensor(_pad_rows(feeds[n], rows)) for n in self.input_names]
            outs = self._run(args)
        if first:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.compile_seconds[rows] = time.perf_counter() - start
        if len(outs) != len(self.output_names):
            raise ValueError(f"expected {len(self.output_names)} outputs, got {len(outs)}")
        cut = [o[:batch] for o in outs]
        if self._cuda_graphs:
            cut = [o.clone() for o in cut]
        return dict(zip(self.output_names, cut, strict=True))

    def warmup(self, feeds: Mapping[str, Tensor], batches: Sequence[int] | None = None) -> dict:
        """Compile the buckets of ``batches`` (default: all buckets) now, from example ``feeds``
        of any batch (rows are repeated or cut to each size). Returns :attr:`compile_seconds`.
        """
        for b in batches or self.options.batch_buckets:
            rows = bucket_for(b, self.options.batch_buckets)
            if rows in self.compile_seconds:
                continue
            self({n: _pad_rows(feeds[n][:rows], rows) for n in self.input_names})
        return dict(self.compile_seconds)


def compiled_engines(pipeline: Any) -> dict[str, CompiledEngine]:
    """``{"audio", "vision", "sam_encoder": engine}``: the compiled engines of a pipeline."""
    found: dict[str, CompiledEngine] = {}
    model = getattr(pipeline, "model", None)
    for unit, attr in (("audio", "audio_engine"), ("vision", "vision_engine")):
        engine = getattr(model, attr, None)
        if isinstance(engine, CompiledEngine):
            found[unit] = engine
    encoder = getattr(getattr(pipeline, "proposals", None), "encoder", None)
    if isinstance(encoder, CompiledEngine):
        found["sam_encoder"] = encoder
    return found


def warmup_pipeline(
    pipeline: Any, batches: Sequence[int], frame_size: tuple[int, int] = (224, 224)
) -> dict[str, dict[int, float]]:
    """Compile what a run with these batch sizes will use, before timing starts.

    Runs ``pipeline.segment_batch`` once per batch size on seeded noise frames and audio (the
    MoCA trunk's buckets), and the SAM encoder engine on zero images of each size (the frames'
    clusters may not ask for proposals), every bucket up to the encoder's batch. Works for every
    engine (eager: first-call initialisation only).

    Returns:
        ``{unit: {bucket: seconds of its first call (compile + one run)}}`` of the compiled
        engines; ``{}`` for a pipeline without any.
    """
    gen = np.random.default_rng(0)
    h, w = frame_size
    for b in batches:
        images = [gen.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(b)]
        audio = (0.1 * gen.standard_normal((b, 32000))).astype(np.float32)
        pipeline.segment_batch(images, audio)
    engines = compiled_engines(pipeline)
    encoder = engines.get("sam_encoder")
    if encoder is not None:
        sam = pipeline.proposals.sam
        s = sam.image_size
        dtype = sam.image_encoder.pos_embed.dtype
        device = sam.pixel_mean.device
        example = torch.zeros(1, 3, s, s, dtype=dtype, device=device)
        # Only the frames whose clusters ask for proposals reach the encoder, so a call may
        # hold any count up to the encoder's batch: every bucket up to it (not only its own).
        largest = max(min(b, pipeline_encoder_batch(pipeline)) for b in batches)
        encoder.warmup({names.SAM_IMAGES: example}, range(1, largest + 1))
    return {unit: dict(e.compile_seconds) for unit, e in engines.items()}


def pipeline_encoder_batch(pipeline: Any) -> int:
    """Frames per SAM encoder call of the pipeline's proposal source (4 if it does not say)."""
    return int(getattr(getattr(pipeline, "proposals", None), "encoder_batch", 4))
