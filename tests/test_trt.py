"""TensorRT path: optimisation profiles, the engine cache key, clear errors without TensorRT.

Everything up to the TensorRT calls runs here on real ONNX files exported from tiny models
(TorchScript exporter for speed: ~1 s per unit instead of ~7 s with dynamo; the profile only
reads the graph inputs, which both exporters name the same way). The real build + run +
comparison against the torch wrapper runs only where the real ``tensorrt`` module and a CUDA
GPU exist (skipped with the reason otherwise; TensorRT is installable on neither this machine
nor the lent GPU machine).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
import torch

from moca_rt.engines import names
from moca_rt.engines.base import TorchEngine
from moca_rt.engines.trt import (
    TENSORRT_MISSING,
    TRT_DTYPES,
    TrtEngine,
    check_input_shape,
    torch_dtype,
    trt_available,
)
from moca_rt.export import build_trt
from moca_rt.export.build_trt import (
    build_engine,
    engine_cache_key,
    external_data_files,
    infer_num_layers,
    optimization_profile,
)
from moca_rt.export.compare import COMPARE_BATCH, compare_outputs
from moca_rt.export.create_onnx import (
    EXPORTERS,
    PROFILE,
    build_model,
    example_inputs,
    export_unit,
    num_layers_of,
    trtexec_command,
)
from moca_rt.export.wrappers import build_wrapper
from moca_rt.modeling.moca import MocaModel
from moca_rt.modeling.sam import Sam

REAL_TRT = pytest.mark.skipif(
    not trt_available() or not torch.cuda.is_available(),
    reason="needs the real tensorrt module (pip install 'moca-rt[trt]' with NVIDIA's libraries) "
    "and a CUDA GPU",
)
NO_TRT = pytest.mark.skipif(trt_available(), reason="TensorRT is installed here")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[MocaModel | Sam, Path]]:
    """vision (moca_test, 2 adapted layers), sam_encoder and sam_decoder (sam_synth) as ONNX."""
    out = tmp_path_factory.mktemp("trt_onnx")
    moca = build_model("vision", preset="moca_test")
    sam = build_model("sam_encoder", sam_preset="sam_synth")
    files: dict[str, tuple[MocaModel | Sam, Path]] = {}
    for unit, model in (("vision", moca), ("sam_encoder", sam), ("sam_decoder", sam)):
        path = out / f"{unit}.onnx"
        export_unit(unit, model, path, exporter="torchscript")
        files[unit] = (model, path)
    return files


def _expected_profile(unit: names.Unit, model: MocaModel | Sam) -> dict[str, list[tuple]]:
    """(min, opt, max) built from the torch example shapes, the dynamic axes and PROFILE."""
    layers = num_layers_of(model)
    shapes = {k: tuple(v.shape) for k, v in example_inputs(unit, model).items()}
    axes = names.dynamic_axes(unit, layers)
    expected = {}
    for name, shape in shapes.items():
        ranges = []
        for k in range(3):
            s = list(shape)
            for ax, sym in axes.get(name, {}).items():
                s[ax] = PROFILE[sym][k]
            ranges.append(tuple(s))
        expected[name] = ranges
    return expected


@pytest.mark.parametrize("unit", ["vision", "sam_encoder", "sam_decoder"])
def test_profile_from_onnx_matches_dynamic_axes_and_profile(
    exported: dict, unit: names.Unit
) -> None:
    model, path = exported[unit]
    profile = optimization_profile(unit, path)
    assert list(profile) == list(names.input_names(unit, num_layers_of(model)))
    assert {k: list(v) for k, v in profile.items()} == _expected_profile(unit, model)
    # The same numbers as the trtexec line create_onnx prints for the file.
    shapes = {k: tuple(v.shape) for k, v in example_inputs(unit, model).items()}
    line = trtexec_command(unit, path, shapes, num_layers=num_layers_of(model))
    for which, k in (("min", 0), ("opt", 1), ("max", 2)):
        for name, ranges in profile.items():
            if names.dynamic_axes(unit, num_layers_of(model)).get(name):
                text = f"{name}:{'x'.join(map(str, ranges[k]))}"
                assert text in line.split(f"--{which}Shapes=")[1].split()[0], (text, line)
    # From example shapes instead of the file: the same profile.
    assert optimization_profile(unit, shapes, num_layers_of(model)) == profile


def test_profile_values_spelled_out(exported: dict) -> None:
    dec = optimization_profile("sam_decoder", exported["sam_decoder"][1])
    assert dec[names.POINT_COORDS] == ((1, 1, 2), (64, 2, 2), (256, 8, 2))
    assert dec[names.POINT_LABELS] == ((1, 1), (64, 2), (256, 8))
    assert dec[names.IMAGE_EMBEDDINGS] == ((1, 128, 16, 16),) * 3  # sam_synth: 128 x 16 x 16
    vision = optimization_profile("vision", exported["vision"][1])
    assert infer_num_layers("vision", vision) == 2
    assert vision[names.IMAGES] == ((1, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))
    tokens = vision[names.audio_layer_post_attention(1)]
    assert [r[0] for r in tokens] == [1, 4, 16] and tokens[0][1:] == tokens[2][1:]
    assert infer_num_layers("sam_encoder", vision) == 0


def test_profile_rejects_mismatched_graphs(exported: dict, tmp_path: Path) -> None:
    vision = exported["vision"][1]
    with pytest.raises(ValueError, match=r"missing \[\], unexpected \['audio_layer1_input'"):
        optimization_profile("vision", vision, num_layers=1)
    with pytest.raises(ValueError, match=r"expected inputs \['fbank'\]"):
        optimization_profile("audio", vision)
    with pytest.raises(ValueError, match="expected a unit"):
        optimization_profile("text", vision)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected an ONNX file"):
        optimization_profile("vision", tmp_path / "missing.onnx")
    # A batch axis the exporter fixed to a constant cannot get a profile.
    model = onnx.load(str(exported["sam_encoder"][1]))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 2
    fixed = tmp_path / "fixed.onnx"
    onnx.save(model, str(fixed))
    with pytest.raises(ValueError, match=r"expected a symbolic axis 0 \(batch\) for sam_images"):
        optimization_profile("sam_encoder", fixed)
    with pytest.raises(ValueError, match="expected a static size for axis 1 of sam_images"):
        optimization_profile("sam_encoder", {names.SAM_IMAGES: (2, -1, 256, 256)})


@pytest.fixture()
def external_copy(exported: dict, tmp_path: Path) -> Path:
    """The encoder with its weights in an external file whose name is not ``<onnx>.data``."""
    model = onnx.load(str(exported["sam_encoder"][1]))
    path = tmp_path / "enc.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="sam_weights.bin",
        size_threshold=0,
    )
    return path


def test_external_data_files_come_from_the_graph(external_copy: Path) -> None:
    assert external_data_files(external_copy) == [external_copy.parent / "sam_weights.bin"]
    (external_copy.parent / "sam_weights.bin").unlink()
    with pytest.raises(ValueError, match=r"sam_weights\.bin"):
        external_data_files(external_copy)


def test_cache_key_changes_with_each_component(external_copy: Path, tmp_path: Path) -> None:
    profile = optimization_profile("sam_encoder", external_copy)
    base = dict(
        profile=profile,
        precision="fp16",
        device_name="NVIDIA H100 80GB HBM3",
        compute_capability=(9, 0),
        trt_version="10.13.0.35",
    )
    key = engine_cache_key(external_copy, **base)  # type: ignore[arg-type]
    assert len(key) == 64 and int(key, 16) >= 0
    assert engine_cache_key(external_copy, **base) == key  # type: ignore[arg-type]
    # Content-addressed: the same files in another folder give the same key.
    other = tmp_path / "moved"
    other.mkdir()
    shutil.copy(external_copy, other / "enc.onnx")
    shutil.copy(external_copy.parent / "sam_weights.bin", other / "sam_weights.bin")
    assert engine_cache_key(other / "enc.onnx", **base) == key  # type: ignore[arg-type]
    wider = dict(profile)
    lo, opt, hi = wider[names.SAM_IMAGES]
    wider[names.SAM_IMAGES] = (lo, opt, (32, *hi[1:]))
    changes = {
        "profile": wider,
        "precision": "bf16",
        "device_name": "NVIDIA H200",
        "compute_capability": (8, 9),
        "trt_version": "10.14.1",
    }
    keys = {key}
    for field, value in changes.items():
        changed = engine_cache_key(external_copy, **{**base, field: value})  # type: ignore[arg-type]
        assert changed not in keys, field
        keys.add(changed)
    typed = engine_cache_key(external_copy, **base, strongly_typed=True)  # type: ignore[arg-type]
    assert typed not in keys
    # A file the graph does not reference does not count; one byte of the weights does.
    (external_copy.parent / "enc.onnx.data").write_bytes(b"not referenced")
    assert engine_cache_key(external_copy, **base) == key  # type: ignore[arg-type]
    weights = external_copy.parent / "sam_weights.bin"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2] ^= 0x01
    weights.write_bytes(bytes(blob))
    assert engine_cache_key(external_copy, **base) not in keys  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected precision"):
        engine_cache_key(external_copy, **{**base, "precision": "int8"})  # type: ignore[arg-type]


def test_dtype_table_and_shape_check() -> None:
    assert torch_dtype("FLOAT") == torch.float32
    assert torch_dtype("HALF") == torch.float16
    assert torch_dtype("BF16") == torch.bfloat16
    assert torch_dtype("INT64") == torch.int64 and torch_dtype("BOOL") == torch.bool
    with pytest.raises(ValueError, match=r"expected a TensorRT data type in .*, got 'FP4'"):
        torch_dtype("FP4")
    if trt_available():
        import tensorrt as trt

        assert set(TRT_DTYPES) <= set(trt.DataType.__members__)
    check_input_shape("x", (4, 3), (1, 3), (16, 3))
    check_input_shape("x", (16, 3), (1, 3), (16, 3))
    with pytest.raises(
        ValueError, match=r"expected x shape within \[1, 3\]..\[16, 3\], got \[17, 3\]"
    ):
        check_input_shape("x", (17, 3), (1, 3), (16, 3))
    with pytest.raises(ValueError, match="got \\[4, 3, 1\\]"):
        check_input_shape("x", (4, 3, 1), (1, 3), (16, 3))
    with pytest.raises(ValueError, match="got \\[4, 2\\]"):
        check_input_shape("x", (4, 2), (1, 3), (16, 3))


@NO_TRT
def test_missing_tensorrt_is_a_clear_error(exported: dict, tmp_path: Path) -> None:
    # The stubs package makes `import tensorrt` succeed as an empty namespace here; the
    # availability check must still say no.
    if importlib.util.find_spec("tensorrt") is not None:
        import tensorrt

        assert not hasattr(tensorrt, "Builder")
    assert not trt_available()
    path = exported["sam_encoder"][1]
    with pytest.raises(
        RuntimeError, match=r"install tensorrt>=10 \(pip install 'moca-rt\[trt\]'\)"
    ):
        build_engine(path, "sam_encoder", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-written
    fake = tmp_path / "x.engine"
    fake.write_bytes(b"\0" * 16)
    with pytest.raises(RuntimeError, match="TensorRT is not available"):
        TrtEngine(fake)


def test_argument_errors_come_before_tensorrt(exported: dict, tmp_path: Path) -> None:
    path = exported["sam_encoder"][1]
    with pytest.raises(ValueError, match="expected a unit"):
        build_engine(path, "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"expected precision in \('fp32', 'fp16', 'bf16'\)"):
        build_engine(path, "sam_encoder", precision="int8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected an ONNX file"):
        build_engine(tmp_path / "missing.onnx", "sam_encoder")
    with pytest.raises(ValueError, match="expected workspace_gib > 0"):
        build_engine(path, "sam_encoder", workspace_gib=0)
    with pytest.raises(ValueError, match="expected precision 'fp32' with strongly_typed"):
        build_engine(path, "sam_encoder", precision="fp16", strongly_typed=True)
    with pytest.raises(ValueError, match=r"expected inputs \['fbank'\]"):
        build_engine(path, "audio")
    with pytest.raises(ValueError, match="expected a TensorRT engine file"):
        TrtEngine(tmp_path / "missing.engine")


@NO_TRT
def test_cli_exits_2_without_tensorrt(exported: dict, capsys: pytest.CaptureFixture) -> None:
    path = str(exported["sam_encoder"][1])
    assert build_trt.main(["--onnx", path, "--unit", "sam_encoder", "--precision", "fp32"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == TENSORRT_MISSING and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        build_trt.main(["--onnx", path, "--unit", "sam_encoder", "--precision", "int8"])
    assert exc.value.code == 2 and "invalid choice: 'int8'" in capsys.readouterr().err
    # The module entry point itself, as a user runs it.
    proc = subprocess.run(
        [sys.executable, "-m", "moca_rt.export.build_trt", "--onnx", path, "--unit", "sam_encoder"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [TENSORRT_MISSING]


@REAL_TRT
@pytest.mark.parametrize("unit", ["sam_encoder", "sam_decoder"])
def test_real_build_run_and_compare(tmp_path: Path, unit: names.Unit) -> None:
    sam = build_model(unit, sam_preset="sam_synth")
    path = tmp_path / f"{unit}.onnx"
    export_unit(unit, sam, path, exporter=EXPORTERS[unit])
    engine_path = build_engine(path, unit, precision="fp32", cache_dir=tmp_path / "cache")
    sidecar = json.loads(engine_path.with_suffix(".engine.json").read_text())
    assert sidecar["components"]["precision"] == "fp32" and sidecar["build_seconds"] > 0
    # Second call: the cached file, not a rebuild.
    mtime = engine_path.stat().st_mtime_ns
    assert build_engine(path, unit, precision="fp32", cache_dir=tmp_path / "cache") == engine_path
    assert engine_path.stat().st_mtime_ns == mtime
    ins, outs = names.input_names(unit), names.output_names(unit)
    engine = TrtEngine(engine_path, ins, outs)
    reference = TorchEngine(build_wrapper(unit, sam), ins, outs)
    feeds = example_inputs(unit, sam, batch=COMPARE_BATCH, num_points=3, seed=1)
    got = engine({k: v.cuda() for k, v in feeds.items()})
    torch.cuda.synchronize()
    report = compare_outputs(reference(feeds), {k: v.cpu() for k, v in got.items()}, "fp32", outs)
    print(report)
    assert report.passed, str(report)
    hi = engine.profile[ins[-1]][2]
    bad = dict(feeds)
    bad[ins[-1]] = torch.zeros((hi[0] + 1, *hi[1:]), dtype=feeds[ins[-1]].dtype)
    with pytest.raises(ValueError, match="shape within"):
        engine(bad)
    with pytest.raises(ValueError, match="expected engine inputs"):
        TrtEngine(engine_path, ("images",), outs)


class _FakeTrt:
    """A stand-in ``tensorrt`` module that records what build_engine asks of it.

    It tests build_engine's own logic (profile, flags, cache hits, atomic files, error
    reports), not TensorRT: the real build is :func:`test_real_build_run_and_compare`.
    """

    __version__ = "10.99.0-fake"

    def __init__(self) -> None:
        self.builds = 0
        self.network_flags: list[int] = []
        self.shapes: dict[str, tuple] = {}
        self.flags: dict[str, bool] = {}
        self.pool: dict[str, int] = {}
        self.timing_in: list[bytes] = []
        self.parse_fail = False
        self.build_none = False
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, severity: int = 2) -> None:
                self.severity = severity

        class Error:
            def node(self) -> int:
                return 3

            def node_name(self) -> str:
                return "/blocks.0/attn/Reshape"

            def node_operator(self) -> str:
                return "Reshape"

            def desc(self) -> str:
                return "unsupported dynamic reshape"

            def code(self) -> str:
                return "UNSUPPORTED_NODE"

        class Tensor:
            def __init__(self, value: onnx.ValueInfoProto) -> None:
                self.name = value.name
                dims = value.type.tensor_type.shape.dim
                self.shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]

        class Network:
            def __init__(self) -> None:
                self.inputs: list[Tensor] = []

            @property
            def num_inputs(self) -> int:
                return len(self.inputs)

            def get_input(self, i: int) -> Tensor:
                return self.inputs[i]

        class OnnxParser:
            def __init__(self, network: Network, logger: object) -> None:
                self.network = network
                self.num_errors = 0

            def parse_from_file(self, path: str) -> bool:
                graph = onnx.load(path, load_external_data=False).graph
                self.network.inputs = [Tensor(v) for v in graph.input]
                self.num_errors = 1 if fake.parse_fail else 0
                return not fake.parse_fail

            def get_error(self, i: int) -> Error:
                return Error()

        class TimingCache:
            def __init__(self, blob: bytes) -> None:
                fake.timing_in.append(bytes(blob))
                self.blob = bytes(blob)

            def serialize(self) -> bytes:
                return self.blob + b"+"

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.pool[pool] = size

            def set_flag(self, flag: str) -> None:
                fake.flags[flag] = True

            def clear_flag(self, flag: str) -> None:
                fake.flags[flag] = False

            def add_optimization_profile(self, profile: object) -> int:
                return 0

            def create_timing_cache(self, blob: bytes) -> TimingCache:
                return TimingCache(blob)

            def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
                return not cache.blob.startswith(b"other-gpu")

        class Profile:
            def set_shape(self, name: str, lo: list, opt: list, hi: list) -> None:
                fake.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

        class Builder:
            def __init__(self, logger: object) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                fake.network_flags.append(flags)
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: object, config: Config) -> bytes | None:
                fake.builds += 1
                return None if fake.build_none else b"ENGINE-%d" % fake.builds

        class Enum:
            STRONGLY_TYPED = 1
            WORKSPACE = "WORKSPACE"
            FP16, BF16, TF32 = "FP16", "BF16", "TF32"

        self.module = type(sys)("tensorrt")
        for name, value in {
            "__version__": self.__version__,
            "Logger": Logger,
            "OnnxParser": OnnxParser,
            "Builder": Builder,
            "Dims": list,
            "NetworkDefinitionCreationFlag": Enum,
            "MemoryPoolType": Enum,
            "BuilderFlag": Enum,
        }.items():
            setattr(self.module, name, value)


@pytest.fixture()
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> _FakeTrt:
    import contextlib

    fake = _FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    monkeypatch.setattr(build_trt, "require_cuda", lambda device=0: torch.device("cuda", 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    return fake


def test_build_engine_logic_with_a_fake_tensorrt(
    fake_trt: _FakeTrt,
    exported: dict,
    external_copy: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    cache = tmp_path / "cache"
    timing = tmp_path / "timing.cache"
    profile = optimization_profile("sam_encoder", external_copy)
    kwargs: dict = dict(cache_dir=cache, workspace_gib=2, timing_cache=timing)
    path = build_engine(external_copy, "sam_encoder", **kwargs)
    assert fake_trt.builds == 1 and path.read_bytes() == b"ENGINE-1"
    assert fake_trt.shapes == profile  # the profile went to set_shape unchanged
    assert fake_trt.flags == {"FP16": True} and fake_trt.network_flags == [0]
    assert fake_trt.pool == {"WORKSPACE": 2 << 30}
    assert fake_trt.timing_in == [b""] and timing.read_bytes() == b"+"
    sidecar = json.loads(path.with_suffix(".engine.json").read_text())
    key = engine_cache_key(external_copy, profile, "fp16", "Fake GPU", (9, 0), "10.99.0-fake")
    assert sidecar["key"] == key and path.name.endswith(f"_fp16_{key[:24]}.engine")
    assert sidecar["components"]["external_data"].keys() == {"sam_weights.bin"}
    assert sidecar["tensorrt"] == "10.99.0-fake" and sidecar["build_seconds"] >= 0
    # Cache hit: same path, no build; force rebuilds and reuses the timing cache.
    assert build_engine(external_copy, "sam_encoder", **kwargs) == path and fake_trt.builds == 1
    assert build_engine(external_copy, "sam_encoder", force=True, **kwargs) == path
    assert fake_trt.builds == 2 and path.read_bytes() == b"ENGINE-2"
    assert fake_trt.timing_in[-1] == b"+" and timing.read_bytes() == b"++"
    # A timing cache from elsewhere is replaced by a new one, with a warning.
    timing.write_bytes(b"other-gpu")
    with pytest.warns(RuntimeWarning, match="does not match this GPU"):
        build_engine(external_copy, "sam_encoder", force=True, **kwargs)
    assert fake_trt.timing_in[-2:] == [b"other-gpu", b""] and timing.read_bytes() == b"+"
    # A sidecar whose key does not match (e.g. a hand-copied engine) is not trusted.
    sidecar["key"] = "0" * 64
    path.with_suffix(".engine.json").write_text(json.dumps(sidecar))
    assert build_engine(external_copy, "sam_encoder", **kwargs) == path and fake_trt.builds == 4
    # fp32 clears TF32; strongly typed sets the network flag and no precision flag.
    fake_trt.flags.clear()
    fp32 = build_engine(external_copy, "sam_encoder", precision="fp32", cache_dir=cache)
    assert fp32 != path and fake_trt.flags == {"TF32": False}
    fake_trt.flags.clear()
    typed = build_engine(
        external_copy, "sam_encoder", precision="fp32", strongly_typed=True, cache_dir=cache
    )
    assert typed not in (path, fp32) and fake_trt.flags == {} and fake_trt.network_flags[-1] == 2
    # Changed weights: another key, another engine file.
    weights = external_copy.parent / "sam_weights.bin"
    weights.write_bytes(weights.read_bytes()[::-1])
    assert build_engine(external_copy, "sam_encoder", **kwargs) not in (path, fp32, typed)
    builds = fake_trt.builds
    # Parse errors name the node; a build returning None is an error; no files are left.
    before = sorted(p.name for p in cache.iterdir())
    fake_trt.parse_fail = True
    with pytest.raises(RuntimeError, match=r"node 3 \(/blocks.0/attn/Reshape, op Reshape\)"):
        build_engine(external_copy, "sam_encoder", force=True, **kwargs)
    fake_trt.parse_fail, fake_trt.build_none = False, True
    with pytest.raises(RuntimeError, match="returned None"):
        build_engine(external_copy, "sam_encoder", precision="bf16", cache_dir=cache)
    assert fake_trt.builds == builds + 1
    assert sorted(p.name for p in cache.iterdir()) == before  # no temp or half files
    fake_trt.build_none = False
    # Only inputs with dynamic dimensions get profile shapes (the decoder's image embedding
    # is static).
    fake_trt.shapes.clear()
    build_engine(exported["sam_decoder"][1], "sam_decoder", cache_dir=cache)
    dec = optimization_profile("sam_decoder", exported["sam_decoder"][1])
    assert fake_trt.shapes == {k: v for k, v in dec.items() if k != names.IMAGE_EMBEDDINGS}
    assert set(fake_trt.shapes) == {names.POINT_COORDS, names.POINT_LABELS}
    # The CLI prints the equivalent trtexec line and the engine path, exit 0.
    argv = ["--onnx", str(external_copy), "--unit", "sam_encoder", "--cache", str(cache)]
    assert build_trt.main([*argv, "--precision", "bf16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"equivalent: trtexec --onnx={external_copy}")
    assert "--minShapes=sam_images:1x3x256x256" in out[0] and out[0].endswith("--bf16")
    assert Path(out[1]).is_file() and "_bf16_" in out[1]
