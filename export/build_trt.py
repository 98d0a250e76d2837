"""Build a TensorRT engine from an exported unit: ``python -m moca_rt.export.build_trt``.

One stage per script (``create_onnx`` -> ``build_trt`` -> ``compare``). The optimisation
profile comes from :func:`moca_rt.engines.names.dynamic_axes` and
:data:`moca_rt.export.create_onnx.PROFILE` (batch 1/4/16; prompts 1/64/256 and points 1/2/8);
every other axis is the static size the ONNX graph declares.

Engines are cached under a key (:func:`engine_cache_key`) that hashes everything a serialised
engine depends on: the ONNX bytes and every external-data file the graph references, the
profile, the precision flags, the GPU name and compute capability and the TensorRT version. A
changed weight file, another GPU or another TensorRT therefore builds a new engine instead of
loading one that would fail to deserialise or compute something else. Engine and JSON sidecar
are written to a temporary file and renamed, so a crashed build never leaves a half engine.

Precisions: ``fp32`` clears TensorRT's default TF32 flag, so "fp32" means IEEE fp32 (the
comparison gate of :mod:`moca_rt.export.compare` assumes it); ``fp16`` / ``bf16`` set the
builder flag that lets TensorRT choose half-precision kernels. ``strongly_typed`` builds a
strongly typed network instead, where the ONNX graph's own types decide (an fp16 export then
runs in fp16 without any flag).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch

from moca_rt.engines import names
from moca_rt.engines.base import name_mismatch
from moca_rt.engines.trt import TENSORRT_MISSING, require_cuda, require_tensorrt, trt_available
from moca_rt.export.create_onnx import PROFILE, trtexec_command
from moca_rt.precision import PRECISIONS, Precision
from moca_rt.provenance import sha256_file

if TYPE_CHECKING:
    import onnx
    import tensorrt

__all__ = [
    "DEFAULT_WORKSPACE_GIB",
    "PRECISIONS",
    "Profile",
    "ShapeRange",
    "build_engine",
    "cache_key_components",
    "default_cache_dir",
    "engine_cache_key",
    "external_data_files",
    "infer_num_layers",
    "main",
    "optimization_profile",
    "run_build_trt",
]

ShapeRange = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
Profile = dict[str, ShapeRange]
DEFAULT_WORKSPACE_GIB = 4.0
CACHE_ENV = "MOCA_RT_ENGINE_CACHE"


def _load_graph(onnx_path: str | Path) -> onnx.ModelProto:
    """The ONNX model without its external weights (``ValueError`` if the file is missing)."""
    path = Path(onnx_path)
    if not path.is_file():
        raise ValueError(f"expected an ONNX file, got {str(path)!r} (not found)")
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading ONNX files needs onnx: pip install 'moca-rt[onnx]'") from exc
    return onnx.load(str(path), load_external_data=False)


def _check_unit(unit: str) -> names.Unit:
    if unit not in names.UNITS:
        raise ValueError(f"expected a unit in {names.UNITS}, got {unit!r}")
    return cast(names.Unit, unit)


def infer_num_layers(unit: names.Unit, tensor_names: Iterable[str]) -> int:
    """Adapted-layer count of a MoCA unit from its tensor names (0 for the SAM units).

    Counts ``audio_layer{i}_input`` for i = 0, 1, ... while present in ``tensor_names``.
    """
    _check_unit(unit)
    if unit not in ("audio", "vision"):
        return 0
    present = set(tensor_names)
    count = 0
    while names.audio_layer_input(count) in present:
        count += 1
    return count


def _graph_input_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | str, ...]]:
    """``{input name: dims}``: an int per static axis, the symbol (or "?") per dynamic axis."""
    out: dict[str, tuple[int | str, ...]] = {}
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        out[value.name] = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims
        )
    return out


def optimization_profile(
    unit: names.Unit,
    source: str | Path | Mapping[str, Sequence[int]],
    num_layers: int | None = None,
) -> Profile:
    """``{input name: (min, opt, max)}`` shapes of ``unit`` for a TensorRT optimisation profile.

    The axes in :func:`moca_rt.engines.names.dynamic_axes` get the (min, opt, max) of
    :data:`moca_rt.export.create_onnx.PROFILE` for their symbol; every other axis keeps its
    static size, so min == opt == max there (and for inputs without a dynamic axis, such as
    the decoder's image embedding [1, 256, 64, 64]).

    Args:
        unit: one of :data:`moca_rt.engines.names.UNITS`.
        source: an ONNX file (static sizes read from its graph inputs; a dynamic axis must be
            symbolic there and every other axis static) or ``{input name: example shape}``
            (e.g. the shapes of :func:`~moca_rt.export.create_onnx.example_inputs`).
        num_layers: adapted layers of a MoCA unit; None infers it from the input names.

    Raises:
        ValueError: unknown unit, missing file, input names that differ from
            :func:`~moca_rt.engines.names.input_names`, or an axis whose static/dynamic kind in
            the graph disagrees with the dynamic axes.
    """
    unit = _check_unit(unit)
    from_graph = isinstance(source, str | Path)
    if from_graph:
        shapes: Mapping[str, Sequence[int | str]] = _graph_input_shapes(
            _load_graph(cast(str | Path, source))
        )
    else:
        shapes = cast(Mapping[str, Sequence[int]], source)
    layers = infer_num_layers(unit, shapes) if num_layers is None else num_layers
    expected = names.input_names(unit, layers)
    problem = name_mismatch("inputs", expected, sorted(shapes))
    if problem is not None:
        raise ValueError(f"{problem} for unit {unit!r} with {layers} adapted layers")
    axes = names.dynamic_axes(unit, layers)
    profile: Profile = {}
    for name in expected:
        dims = list(shapes[name])
        dynamic = axes.get(name, {})
        ranges: list[list[int]] = [[], [], []]
        for ax, dim in enumerate(dims):
            if ax in dynamic:
                if from_graph and isinstance(dim, int):
                    raise ValueError(
                        f"expected a symbolic axis {ax} ({dynamic[ax]}) for {name}, got the "
                        f"static size {dim} (was the ONNX exported without dynamic axes?)"
                    )
                for k in range(3):
                    ranges[k].append(PROFILE[dynamic[ax]][k])
            else:
                if not isinstance(dim, int) or dim <= 0:
                    raise ValueError(f"expected a static size for axis {ax} of {name}, got {dim!r}")
                for k in range(3):
                    ranges[k].append(dim)
        profile[name] = (tuple(ranges[0]), tuple(ranges[1]), tuple(ranges[2]))
    return profile


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto of the model: initializers, sparse ones, node attributes, subgraphs,
    functions (where external data can be referenced)."""

    def from_nodes(nodes: Iterable[onnx.NodeProto]) -> Iterator[onnx.TensorProto]:
        for node in nodes:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                if attr.HasField("sparse_tensor"):
                    yield attr.sparse_tensor.values
                    yield attr.sparse_tensor.indices
                if attr.HasField("g"):
                    yield from from_graph(attr.g)
                for g in attr.graphs:
                    yield from from_graph(g)

    def from_graph(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield sparse.values
            yield sparse.indices
        yield from from_nodes(graph.node)

    yield from from_graph(model.graph)
    for function in model.functions:
        yield from from_nodes(function.node)


def external_data_files(onnx_path: str | Path) -> list[Path]:
    """The files the graph's tensors store their data in, resolved beside the ONNX file.

    Read from each tensor's external-data info (its ``location``), not guessed from names;
    sorted, without duplicates. ``ValueError`` when a referenced file does not exist.
    """
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(onnx_path)
    model = _load_graph(path)
    locations = sorted(
        {ExternalDataInfo(t).location for t in _all_tensors(model) if uses_external_data(t)}
    )
    files = [path.parent / loc for loc in locations]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ValueError(
            f"expected the external data files of {path} beside it, got {missing} missing"
        )
    return files


def cache_key_components(
    onnx_path: str | Path,
    profile: Mapping[str, ShapeRange],
    precision: str,
    device_name: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    strongly_typed: bool = False,
) -> dict[str, object]:
    """What a cached engine depends on, as a JSON-ready dict (hashed by :func:`engine_cache_key`).

    ``onnx`` is the sha256 of the ONNX file and ``external_data`` maps each referenced file's
    location (relative to the ONNX file) to its sha256.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision in {PRECISIONS}, got {precision!r}")
    path = Path(onnx_path)
    if not path.is_file():
        raise ValueError(f"expected an ONNX file, got {str(path)!r} (not found)")
    return {
        "onnx": sha256_file(path),
        "external_data": {
            f.relative_to(path.parent).as_posix(): sha256_file(f) for f in external_data_files(path)
        },
        "profile": {
            name: [list(shape) for shape in ranges] for name, ranges in sorted(profile.items())
        },
        "precision": precision,
        "strongly_typed": bool(strongly_typed),
        "device_name": device_name,
        "compute_capability": f"{compute_capability[0]}.{compute_capability[1]}",
        "tensorrt": trt_version,
    }


def engine_cache_key(
    onnx_path: str | Path,
    profile: Mapping[str, ShapeRange],
    precision: str,
    device_name: str,
    compute_capability: tuple[int, int],
    trt_version: str,
    strongly_typed: bool = False,
) -> str:
    """sha256 (hex) of :func:`cache_key_components` serialised as canonical JSON.

    The same file contents, profile, precision, GPU and TensorRT version give the same key
    (the file's path and modification time do not enter); a change in any of them, including
    one byte of a ``.data`` weight file, gives another key.
    """
    components = cache_key_components(
        onnx_path,
        profile,
        precision,
        device_name,
        compute_capability,
        trt_version,
        strongly_typed,
    )
    return _key_of(components)


def _key_of(components: Mapping[str, object]) -> str:
    text = json.dumps(components, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def default_cache_dir() -> Path:
    """``$MOCA_RT_ENGINE_CACHE``, else ``$XDG_CACHE_HOME/moca_rt/engines`` (``~/.cache``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "moca_rt" / "engines"


def _atomic_write(path: Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file in ``path``'s folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parse_errors(parser: tensorrt.OnnxParser) -> str:
    lines = []
    for i in range(parser.num_errors):
        err: tensorrt.ParserError = parser.get_error(i)
        lines.append(
            f"  node {err.node()} ({err.node_name() or 'unnamed'}, op {err.node_operator() or '?'})"
            f": {err.desc()} [{err.code()}]"
        )
    return "\n".join(lines)


def _network_inputs(network: tensorrt.INetworkDefinition) -> dict[str, tuple[int, ...]]:
    """``{name: dims}`` of the parsed network's inputs (-1 marks a dynamic dimension)."""
    out: dict[str, tuple[int, ...]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        dims = tensor.shape
        out[tensor.name] = tuple(int(dims[j]) for j in range(len(dims)))
    return out


def _set_precision(
    config: tensorrt.IBuilderConfig, precision: Precision, strongly_typed: bool
) -> None:
    import tensorrt as trt

    if strongly_typed:
        return  # the graph's types decide; precision flags are not allowed on such a network
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    elif precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    else:
        config.set_flag(trt.BuilderFlag.BF16)


def build_engine(
    onnx_path: str | Path,
    unit: names.Unit,
    *,
    precision: Precision = "fp16",
    cache_dir: str | Path | None = None,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | Path | None = None,
    num_layers: int | None = None,
    strongly_typed: bool = False,
    force: bool = False,
    device: int = 0,
    logger: tensorrt.ILogger | None = None,
) -> Path:
    """Build (or find in the cache) the TensorRT engine of an exported unit; returns its path.

    Engines live in ``cache_dir`` (default :func:`default_cache_dir`) as
    ``<onnx stem>_<precision>_<key[:24]>.engine`` with a ``.json`` sidecar holding the full
    key, its components, the build time in seconds and the TensorRT version. A cached engine
    is used only when its sidecar's key equals the key of the current inputs; ``force``
    rebuilds anyway.

    Args:
        onnx_path: file written by :mod:`moca_rt.export.create_onnx` (``.data`` beside it).
        unit: the unit it holds; sizes the profile (:func:`optimization_profile`).
        precision: ``fp32`` (TF32 off), ``fp16`` or ``bf16`` builder flags.
        workspace_gib: limit of TensorRT's workspace memory pool in GiB.
        timing_cache: file of TensorRT's layer timing cache, read when it exists and
            rewritten after the build (speeds up rebuilds on the same GPU and TensorRT).
        num_layers: adapted layers of a MoCA unit; None infers it from the ONNX input names.
        strongly_typed: build a strongly typed network (precision must be ``fp32``: the ONNX
            types decide).
        device: CUDA device index the engine is built for.
        logger: a ``tensorrt.ILogger``; default ``tensorrt.Logger(WARNING)``.

    Raises:
        ValueError: bad unit, precision, workspace, missing ONNX or external data file,
            input names or axes that do not match the unit.
        RuntimeError: TensorRT missing, no CUDA GPU, ONNX parse errors (each with its node),
            or a build that returned nothing.
    """
    unit = _check_unit(unit)
    if precision not in PRECISIONS:
        raise ValueError(f"expected precision in {PRECISIONS}, got {precision!r}")
    if strongly_typed and precision != "fp32":
        raise ValueError(
            f"expected precision 'fp32' with strongly_typed (the ONNX types decide), got "
            f"{precision!r}"
        )
    if not workspace_gib > 0:
        raise ValueError(f"expected workspace_gib > 0, got {workspace_gib}")
    path = Path(onnx_path)
    profile = optimization_profile(unit, path, num_layers)  # ValueError on a missing file
    require_tensorrt()
    import tensorrt as trt

    dev = require_cuda(device)
    device_name = torch.cuda.get_device_name(dev)
    capability = torch.cuda.get_device_capability(dev)
    components = cache_key_components(
        path, profile, precision, device_name, capability, trt.__version__, strongly_typed
    )
    key = _key_of(components)
    out_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    engine_path = out_dir / f"{path.stem}_{precision}_{key[:24]}.engine"
    sidecar = engine_path.with_suffix(".engine.json")
    if not force and engine_path.is_file() and sidecar.is_file():
        try:
            if json.loads(sidecar.read_text()).get("key") == key:
                return engine_path
        except (OSError, json.JSONDecodeError):
            pass  # unreadable sidecar: rebuild

    logger = logger if logger is not None else trt.Logger(trt.Logger.WARNING)
    start = time.perf_counter()
    with torch.cuda.device(dev):
        builder = trt.Builder(logger)
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        # parse_from_file resolves external data relative to the file's folder.
        if not parser.parse_from_file(str(path)):
            raise RuntimeError(f"TensorRT could not parse {path}:\n{_parse_errors(parser)}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
        _set_precision(config, precision, strongly_typed)
        network_inputs = _network_inputs(network)
        if set(network_inputs) != set(profile):
            raise RuntimeError(
                f"expected the parsed network's inputs {sorted(profile)}, got "
                f"{sorted(network_inputs)}"
            )
        opt = builder.create_optimization_profile()
        for name, (lo, mid, hi) in profile.items():
            # TensorRT wants profile shapes for inputs with dynamic (-1) dimensions only.
            if any(d < 0 for d in network_inputs[name]):
                opt.set_shape(name, trt.Dims(list(lo)), trt.Dims(list(mid)), trt.Dims(list(hi)))
        if config.add_optimization_profile(opt) < 0:
            raise RuntimeError(f"TensorRT rejected the optimisation profile {profile}")
        cache_file = Path(timing_cache) if timing_cache is not None else None
        cache = None
        if cache_file is not None:
            blob = cache_file.read_bytes() if cache_file.is_file() else b""
            cache = config.create_timing_cache(blob)
            if not config.set_timing_cache(cache, False):
                # A cache from another GPU or TensorRT version: start an empty one.
                warnings.warn(
                    f"timing cache {cache_file} does not match this GPU / TensorRT; "
                    "starting a new one",
                    RuntimeWarning,
                    stacklevel=2,
                )
                cache = config.create_timing_cache(b"")
                config.set_timing_cache(cache, False)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise RuntimeError(
                f"TensorRT build of {path} returned None (precision {precision}, profile "
                f"{profile}); the TensorRT log above says why"
            )
        seconds = time.perf_counter() - start
        _atomic_write(engine_path, memoryview(serialized))
        if cache is not None and cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write(cache_file, memoryview(cache.serialize()))
    record = {
        "key": key,
        "components": components,
        "unit": unit,
        "onnx_path": str(path),
        "workspace_gib": workspace_gib,
        "build_seconds": round(seconds, 3),
        "tensorrt": trt.__version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _atomic_write(sidecar, json.dumps(record, indent=2).encode())
    return engine_path


def _trtexec_line(unit: names.Unit, onnx_path: Path, profile: Profile, precision: str) -> str:
    shapes = {name: ranges[1] for name, ranges in profile.items()}
    layers = infer_num_layers(unit, profile)
    line = trtexec_command(
        unit, onnx_path, shapes, "fp16" if precision == "fp16" else "fp32", layers
    )
    return line + (" --bf16" if precision == "bf16" else "")


def run_build_trt(
    onnx_path: str | Path,
    unit: names.Unit,
    precision: Precision = "fp16",
    cache_dir: str | Path | None = None,
    num_layers: int | None = None,
    force: bool = False,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
    timing_cache: str | Path | None = None,
    strongly_typed: bool = False,
) -> Path:
    """:func:`build_engine` with the CLI's arguments (same errors); returns the engine path."""
    return build_engine(
        onnx_path,
        unit,
        precision=precision,
        cache_dir=cache_dir,
        num_layers=num_layers,
        force=force,
        workspace_gib=workspace_gib,
        timing_cache=timing_cache,
        strongly_typed=strongly_typed,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: exit 0 with the engine path printed, 1 on a build or argument error, 2 when
    TensorRT is not available (argparse also exits 2 on unknown flags)."""
    parser = argparse.ArgumentParser(
        prog="python -m moca_rt.export.build_trt",
        description="Build (or reuse from the cache) a TensorRT engine of an exported unit.",
    )
    parser.add_argument("--onnx", required=True, help="The ONNX file written by create_onnx.")
    parser.add_argument(
        "--unit",
        choices=names.UNITS,
        required=True,
        help="The unit the ONNX file holds; sizes the optimisation profile.",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp16",
        help="fp32 (TF32 off), fp16 or bf16 kernels.",
    )
    parser.add_argument(
        "--cache",
        default=None,
        help=f"Engine cache folder (default ${CACHE_ENV} or ~/.cache/moca_rt/engines).",
    )
    parser.add_argument(
        "--num-layers",
        type=int,
        default=None,
        help="Adapted layers of a MoCA unit (read from the ONNX names when omitted).",
    )
    parser.add_argument(
        "--workspace-gib",
        type=float,
        default=DEFAULT_WORKSPACE_GIB,
        help="Limit of TensorRT's workspace memory pool in GiB.",
    )
    parser.add_argument(
        "--timing-cache",
        default=None,
        help="TensorRT timing-cache file, read if present and updated.",
    )
    parser.add_argument(
        "--strongly-typed",
        action="store_true",
        help="Build a strongly typed network (the ONNX types decide; needs --precision fp32).",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="Rebuild even when the cache holds an engine for this key.",
    )
    args = parser.parse_args(argv)
    if not trt_available():
        print(TENSORRT_MISSING, file=sys.stderr)
        return 2
    try:
        profile = optimization_profile(args.unit, args.onnx, args.num_layers)
        print(f"equivalent: {_trtexec_line(args.unit, Path(args.onnx), profile, args.precision)}")
        engine = run_build_trt(
            args.onnx,
            args.unit,
            args.precision,
            args.cache,
            args.num_layers,
            args.force,
            args.workspace_gib,
            args.timing_cache,
            args.strongly_typed,
        )
    except (ValueError, RuntimeError) as exc:
        print(f"build failed: {exc}", file=sys.stderr)
        return 1
    print(engine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
