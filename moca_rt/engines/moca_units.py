"""The MoCA trunk (audio unit + vision unit) on engines, behind the interface the pipeline uses.

:class:`MocaTrunk` is what :class:`~moca_rt.pipeline.MocaPipeline` needs from a model:
``encode_audio(fbank) -> AudioFeatures``, ``encode_vision(images, audio) -> VisionFeatures``,
``to(device)`` and ``eval()``. The torch :class:`~moca_rt.modeling.moca.MocaModel` satisfies it;
:class:`EngineMocaModel` satisfies it with two engines (:class:`~moca_rt.engines.Engine`) that
run the exported ``audio`` and ``vision`` units (:mod:`moca_rt.export.wrappers`), e.g.
onnxruntime (:meth:`EngineMocaModel.from_onnx`) or TensorRT
(:meth:`EngineMocaModel.from_tensorrt`).

The audio engine's per-layer token outputs carry the names of the vision engine's audio inputs
(:mod:`moca_rt.engines.names`), so :class:`AudioFeatures` is rebuilt from the audio outputs and
taken apart again, by name, into the vision feeds. SAM mask proposals are not part of the trunk:
they stay on torch.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from moca_rt.engines import names
from moca_rt.engines.base import Engine, name_mismatch
from moca_rt.modeling.moca import AudioFeatures, VisionFeatures
from moca_rt.precision import ONNX_PRECISIONS

__all__ = [
    "EngineMocaModel",
    "MocaTrunk",
    "count_adapted_layers",
    "engine_input_dtypes",
    "engine_input_shapes",
    "find_onnx_units",
]

_ORT_TYPES: dict[str, torch.dtype] = {
    "tensor(float)": torch.float32,
    "tensor(float16)": torch.float16,
    "tensor(double)": torch.float64,
}
_LAYER_INPUT = re.compile(r"^audio_layer(\d+)_input$")


class MocaTrunk(Protocol):
    """What the pipeline calls on a MoCA model (``MocaModel`` or :class:`EngineMocaModel`)."""

    def encode_audio(self, fbank: Tensor) -> AudioFeatures:
        """fbank [B, S, 1, 128, 204] -> per-layer audio tokens and the embedding [B, E]."""
        ...

    def encode_vision(self, images: Tensor, audio: AudioFeatures) -> VisionFeatures:
        """images [B, 3, H, W] CLIP-normalised + their audio -> f^a and joint-space patches."""
        ...

    def to(self, device: torch.device) -> MocaTrunk:
        """Move (or, for engines, return outputs on) ``device``; returns the trunk."""
        ...

    def eval(self) -> MocaTrunk:
        """Inference mode; returns the trunk."""
        ...


def count_adapted_layers(tensor_names: Sequence[str]) -> int:
    """Number of adapted layers L named by ``audio_layer{i}_input`` among ``tensor_names``.

    ``ValueError`` when the indices are not exactly 0 .. L-1 (a graph from another model or a
    hand-edited one).
    """
    found = sorted(int(m.group(1)) for n in tensor_names if (m := _LAYER_INPUT.match(n)))
    if found != list(range(len(found))):
        raise ValueError(f"expected audio layer inputs numbered 0..{len(found) - 1}, got {found}")
    return len(found)


def engine_input_dtypes(engine: Engine) -> dict[str, torch.dtype] | None:
    """``{input name: dtype}`` the engine's graph declares, or None when it does not say.

    Knows :class:`~moca_rt.engines.ort.OrtEngine` (the session's input types) and
    :class:`~moca_rt.engines.trt.TrtEngine` (``input_dtypes``); a
    :class:`~moca_rt.engines.base.TorchEngine` takes what it is given (None).
    """
    from moca_rt.engines.ort import OrtEngine
    from moca_rt.engines.trt import TrtEngine

    if isinstance(engine, TrtEngine):
        return dict(engine.input_dtypes)
    if isinstance(engine, OrtEngine):
        out: dict[str, torch.dtype] = {}
        for arg in engine.session.get_inputs():
            if arg.type not in _ORT_TYPES:
                raise ValueError(f"expected a float input for {arg.name}, got {arg.type}")
            out[arg.name] = _ORT_TYPES[arg.type]
        return out
    return None


def engine_input_shapes(engine: Engine) -> dict[str, tuple[int | None, ...]] | None:
    """``{input name: shape}`` with None on dynamic axes, or None when the engine does not say.

    onnxruntime: the graph's input shapes (symbolic axes -> None). TensorRT: optimisation
    profile 0, an axis whose min and max differ -> None.
    """
    from moca_rt.engines.ort import OrtEngine
    from moca_rt.engines.trt import TrtEngine

    if isinstance(engine, TrtEngine):
        return {
            n: tuple(lo if lo == hi else None for lo, hi in zip(p[0], p[2], strict=True))
            for n, p in engine.profile.items()
        }
    if isinstance(engine, OrtEngine):
        return {
            arg.name: tuple(d if isinstance(d, int) else None for d in arg.shape)
            for arg in engine.session.get_inputs()
        }
    return None


def find_onnx_units(onnx_dir: str | Path, precision: str | None = None) -> tuple[Path, Path, str]:
    """The audio and vision ONNX files ``create_onnx`` wrote into ``onnx_dir``, and their precision.

    Files are named ``audio_<precision>.onnx`` / ``vision_<precision>.onnx``
    (:func:`moca_rt.export.create_onnx.run_create_onnx`). With ``precision`` None the one
    precision for which both files exist is taken.

    Raises:
        ValueError: the folder is missing, a file is missing (named), or both fp32 and fp16
            pairs exist and ``precision`` is None.
    """
    folder = Path(onnx_dir)
    if not folder.is_dir():
        raise ValueError(f"expected a folder of ONNX files, got {str(folder)!r} (not a folder)")
    if precision is not None and precision not in ONNX_PRECISIONS:
        raise ValueError(
            f"expected an ONNX precision in {sorted(ONNX_PRECISIONS)}, got {precision!r}"
        )
    candidates = [precision] if precision is not None else list(ONNX_PRECISIONS)
    complete = []
    for p in candidates:
        pair = (folder / f"audio_{p}.onnx", folder / f"vision_{p}.onnx")
        if all(f.is_file() for f in pair):
            complete.append((pair[0], pair[1], p))
    if len(complete) == 1:
        return complete[0]
    if complete:
        raise ValueError(
            f"{folder} holds audio + vision ONNX files in {[c[2] for c in complete]}: expected "
            "one precision, pass it explicitly"
        )
    wanted = [f"{u}_{p}.onnx" for p in candidates for u in ("audio", "vision")]
    missing = [w for w in wanted if not (folder / w).is_file()]
    present = sorted(f.name for f in folder.glob("*.onnx"))
    raise ValueError(
        f"expected audio_<precision>.onnx and vision_<precision>.onnx (python -m "
        f"moca_rt.export.create_onnx --unit audio / --unit vision) in {folder}, missing "
        f"{missing}; found {present}"
    )


def _find_engine(folder: Path, unit: str) -> Path:
    found = sorted(folder.glob(f"{unit}_*.engine"))
    if len(found) == 1:
        return found[0]
    if not found:
        present = sorted(f.name for f in folder.glob("*.engine"))
        raise ValueError(
            f"expected a {unit}_*.engine file (python -m moca_rt.export.build_trt) in {folder}, "
            f"got none; found {present}"
        )
    raise ValueError(
        f"expected one {unit}_*.engine in {folder}, got {[f.name for f in found]}: pass the "
        f"{unit} engine path explicitly"
    )


class EngineMocaModel:
    """The MoCA trunk on two engines: the ``audio`` unit and the ``vision`` unit.

    Implements :class:`MocaTrunk`, so :class:`~moca_rt.pipeline.MocaPipeline` runs on it as on
    the torch ``MocaModel``. Inputs are cast to the dtype the engine's graph declares (torch
    bfloat16 has no numpy type, so casting is also needed before onnxruntime); outputs are
    moved to :attr:`device`. An onnxruntime engine returns CPU tensors whatever its provider,
    so with the CUDA provider every call copies through the host (no IO binding yet).

    Args:
        audio: runs the audio unit: ``{"fbank": [B, S, 1, 128, 204]}`` ->
            ``audio_layer{i}_input``, ``audio_layer{i}_post_attention`` [B, S * La, Da] for
            i < ``num_layers``, and ``audio_embedding`` [B, E].
        vision: runs the vision unit: ``images`` [B, 3, H, W] + the audio token tensors ->
            ``patch_features`` [B, H/14, W/14, Dv], ``patch_embeddings`` [B, H/14, W/14, E],
            ``cls_embedding`` [B, E].
        num_layers: adapted layers L of the exported model.
        device: where :meth:`encode_audio` / :meth:`encode_vision` return their tensors.

    Raises:
        ValueError: the engines' names are not those of the two units with ``num_layers``.
    """

    def __init__(
        self, audio: Engine, vision: Engine, num_layers: int, device: str | torch.device = "cpu"
    ) -> None:
        if num_layers < 1:
            raise ValueError(
                f"expected num_layers >= 1 (MoCA adapts at least one layer), got {num_layers}"
            )
        checks = (
            ("audio engine inputs", names.input_names("audio", num_layers), audio.input_names),
            ("audio engine outputs", names.output_names("audio", num_layers), audio.output_names),
            ("vision engine inputs", names.input_names("vision", num_layers), vision.input_names),
            (
                "vision engine outputs",
                names.output_names("vision", num_layers),
                vision.output_names,
            ),
        )
        for what, expected, got in checks:
            problem = name_mismatch(what, expected, got)
            if problem is not None:
                raise ValueError(f"{problem} for a MoCA trunk with {num_layers} adapted layers")
        self.audio_engine = audio
        self.vision_engine = vision
        self.num_layers = num_layers
        self.device = torch.device(device)
        self._audio_dtypes = engine_input_dtypes(audio)
        self._vision_dtypes = engine_input_dtypes(vision)
        shapes = engine_input_shapes(audio)
        fbank_shape = None if shapes is None else shapes.get(names.FBANK)
        self.clips: int | None = None
        if fbank_shape is not None:
            if len(fbank_shape) != 5:
                raise ValueError(
                    f"expected the fbank input [B, S, 1, M, T], got {list(fbank_shape)}"
                )
            self.clips = fbank_shape[1]

    # --- constructors

    @classmethod
    def from_onnx(
        cls,
        onnx_dir: str | Path,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        num_layers: int | None = None,
        precision: str | None = None,
        device: str | torch.device = "cpu",
        strict_provider: bool = False,
        intra_op_threads: int = 0,
    ) -> EngineMocaModel:
        """Two :class:`~moca_rt.engines.ort.OrtEngine` on the files of :func:`find_onnx_units`.

        Args:
            onnx_dir: folder with ``audio_<precision>.onnx`` and ``vision_<precision>.onnx``.
            providers: onnxruntime execution providers in priority order; check
                :attr:`providers` for the ones really used (onnxruntime falls back to the CPU
                with a ``RuntimeWarning``, or ``RuntimeError`` with ``strict_provider``).
            num_layers: adapted layers; None reads it from the vision graph's input names.
            precision: ``fp32`` / ``fp16`` file pair; None takes the one pair present.
            device: where outputs are returned.

        Raises:
            ValueError: missing folder or files (named), ambiguous precision, graph names that
                do not match the units (or ``num_layers``); an InputError (a ValueError) for a
                file onnxruntime cannot load.
            ImportError: onnxruntime is not installed (``pip install 'moca-rt[onnx]'``).
        """
        from moca_rt.engines.ort import OrtEngine

        audio_path, vision_path, _ = find_onnx_units(onnx_dir, precision)
        with warnings.catch_warnings():
            # One fallback warning (from the first session) is enough; both share the providers.
            vision = OrtEngine(
                vision_path,
                providers,
                None,
                names.output_names("vision"),
                strict_provider,
                intra_op_threads,
            )
            warnings.simplefilter("ignore", RuntimeWarning)
            layers = count_adapted_layers(vision.input_names) if num_layers is None else num_layers
            audio = OrtEngine(
                audio_path,
                providers,
                names.input_names("audio"),
                names.output_names("audio", layers),
                strict_provider,
                intra_op_threads,
            )
        return cls(audio, vision, layers, device)

    @classmethod
    def from_tensorrt(
        cls,
        engine_dir: str | Path | None = None,
        audio_path: str | Path | None = None,
        vision_path: str | Path | None = None,
        num_layers: int | None = None,
        device: int | str | torch.device = 0,
    ) -> EngineMocaModel:
        """Two :class:`~moca_rt.engines.trt.TrtEngine` (serialised engines of the two units).

        Args:
            engine_dir: folder holding exactly one ``audio_*.engine`` and one
                ``vision_*.engine`` (``build_trt`` names them ``<onnx stem>_<precision>_<key>``);
                ignored for a unit whose path is given.
            audio_path, vision_path: the engine files, overriding the folder search.
            num_layers: adapted layers; None reads it from the vision engine's input names.
            device: the CUDA device the engines run on; outputs are returned there too.

        Raises:
            ValueError: no folder and no paths, missing or ambiguous engine files, names that
                do not match the units.
            RuntimeError: TensorRT or a CUDA GPU is missing.
        """
        from moca_rt.engines.trt import TrtEngine, require_cuda, require_tensorrt

        paths: dict[str, Path] = {}
        for unit, given in (("audio", audio_path), ("vision", vision_path)):
            if given is not None:
                paths[unit] = Path(given)
            elif engine_dir is not None:
                folder = Path(engine_dir)
                if not folder.is_dir():
                    raise ValueError(f"expected a folder of TensorRT engines, got {str(folder)!r}")
                paths[unit] = _find_engine(folder, unit)
            else:
                raise ValueError(f"expected engine_dir or {unit}_path, got neither")
        for unit, path in paths.items():
            if not path.is_file():
                raise ValueError(f"expected the {unit} engine file, got {str(path)!r} (not found)")
        require_tensorrt()
        dev = require_cuda(device)
        vision = TrtEngine(paths["vision"], None, names.output_names("vision"), dev)
        layers = count_adapted_layers(vision.input_names) if num_layers is None else num_layers
        audio = TrtEngine(
            paths["audio"], names.input_names("audio"), names.output_names("audio", layers), dev
        )
        return cls(audio, vision, layers, dev)

    # --- what the engines report

    @property
    def input_dtype(self) -> torch.dtype | None:
        """dtype of the audio graph's ``fbank`` input (the export precision), None if unknown."""
        return None if self._audio_dtypes is None else self._audio_dtypes.get(names.FBANK)

    @property
    def providers(self) -> dict[str, tuple[str, ...]]:
        """``{"audio": ..., "vision": ...}`` onnxruntime providers really in use (empty if none)."""
        out: dict[str, tuple[str, ...]] = {}
        for unit, engine in (("audio", self.audio_engine), ("vision", self.vision_engine)):
            got = getattr(engine, "providers", None)
            if isinstance(got, tuple):
                out[unit] = got
        return out

    # --- MocaTrunk

    def to(self, device: str | torch.device) -> EngineMocaModel:
        """Return outputs on ``device`` from now on (the engines stay where they were built)."""
        self.device = torch.device(device)
        return self

    def eval(self) -> EngineMocaModel:
        """No-op (engines have no training mode); returns self."""
        return self

    def _feed(self, dtypes: Mapping[str, torch.dtype] | None, name: str, x: Tensor) -> Tensor:
        if dtypes is not None and name in dtypes and x.dtype != dtypes[name]:
            return x.to(dtypes[name])
        return x

    def encode_audio(self, fbank: Tensor) -> AudioFeatures:
        """Run the audio engine on fbank [B, S, 1, 128, 204] (normalised kaldi fbank clips).

        The units are exported with a fixed clip count (:attr:`clips`: 3 from ``create_onnx`` by
        default, 1 with ``--audio-clips 1`` and in the CLI's demo export). One clip (S = 1, what
        the pipeline sends for a 2 s window) is repeated to that count: ImageBind's clips of a
        2 s window are the same samples, and attention over repeated copies of the tokens, like
        the mean of equal embeddings, gives the one-clip result up to rounding, at S times the
        audio work (a one-clip export avoids it).

        Returns:
            :class:`AudioFeatures` on :attr:`device` in the engine's output dtype: L layer
            inputs and post-attention states [B, clips * La, Da], embedding [B, E].
        """
        if not isinstance(fbank, Tensor) or fbank.dim() != 5:
            got = tuple(fbank.shape) if isinstance(fbank, Tensor) else type(fbank).__name__
            raise ValueError(f"expected fbank [B, S, 1, 128, 204], got {got}")
        if self.clips is not None and fbank.shape[1] != self.clips:
            if fbank.shape[1] != 1:
                raise ValueError(
                    f"expected fbank with {self.clips} clips (or 1, repeated), got "
                    f"{fbank.shape[1]} in {tuple(fbank.shape)}"
                )
            fbank = fbank.expand(-1, self.clips, -1, -1, -1)
        out = self.audio_engine({names.FBANK: self._feed(self._audio_dtypes, names.FBANK, fbank)})
        dev = self.device
        return AudioFeatures(
            layer_inputs=tuple(
                out[names.audio_layer_input(i)].to(dev) for i in range(self.num_layers)
            ),
            layer_post_attention=tuple(
                out[names.audio_layer_post_attention(i)].to(dev) for i in range(self.num_layers)
            ),
            embedding=out[names.AUDIO_EMBEDDING].to(dev),
        )

    def encode_vision(self, images: Tensor, audio: AudioFeatures) -> VisionFeatures:
        """Run the vision engine on images [B, 3, H, W] (CLIP-normalised) and their audio.

        ``audio`` must hold L layers for the same B (from :meth:`encode_audio`, or a torch
        ``MocaModel.encode_audio``); plain ImageBind without audio (None) is not exported.

        Returns:
            :class:`VisionFeatures` on :attr:`device` in the engine's output dtype: f^a
            [B, H/14, W/14, Dv], joint-space patches [B, H/14, W/14, E], unit-norm CLS [B, E].
        """
        if not isinstance(images, Tensor) or images.dim() != 4:
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"expected images [B, 3, H, W], got {got}")
        if not isinstance(audio, AudioFeatures):
            raise ValueError(
                f"expected AudioFeatures (the exported vision unit needs audio), got "
                f"{type(audio).__name__}"
            )
        n = self.num_layers
        if len(audio.layer_inputs) != n or len(audio.layer_post_attention) != n:
            raise ValueError(
                f"expected audio features for {n} adapted layers, got "
                f"{len(audio.layer_inputs)} and {len(audio.layer_post_attention)}"
            )
        if audio.layer_inputs[0].shape[0] != images.shape[0]:
            raise ValueError(
                f"expected as many audio windows as images ({images.shape[0]}), got "
                f"{audio.layer_inputs[0].shape[0]}"
            )
        feeds = {names.IMAGES: images}
        for i in range(n):
            feeds[names.audio_layer_input(i)] = audio.layer_inputs[i]
            feeds[names.audio_layer_post_attention(i)] = audio.layer_post_attention[i]
        feeds = {k: self._feed(self._vision_dtypes, k, v) for k, v in feeds.items()}
        out = self.vision_engine(feeds)
        dev = self.device
        return VisionFeatures(
            patch_features=out[names.PATCH_FEATURES].to(dev),
            patch_embeddings=out[names.PATCH_EMBEDDINGS].to(dev),
            cls_embedding=out[names.CLS_EMBEDDING].to(dev),
        )

    def __repr__(self) -> str:
        kinds = f"{type(self.audio_engine).__name__}/{type(self.vision_engine).__name__}"
        return f"EngineMocaModel({kinds}, num_layers={self.num_layers}, device={self.device})"
