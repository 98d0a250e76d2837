"""ONNX export of the four units: graph validity, names, dynamic axes, onnxruntime vs torch.

Gates (fp32, the reference README's trunk/SAM gate): rel <= 1e-4 and cosine >= 0.99999 per
output. Files are exported once per module with batch 2 (decoder: 3 prompts of 2 points) and
compared at batch 3 (decoder: other prompt counts), which fails if the exporter fixed an axis.
MoCA units use the reference ImageBind test weights (moca_test); the SAM decoder the reference
SAM test weights (sam_test, 256 x 64 x 64 embedding); the SAM encoder a random sam_synth
(256-pixel input) to stay fast.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
from conftest import FIXTURES

from moca_rt.config import SAM_PRESETS
from moca_rt.engines import Engine, OrtEngine, TorchEngine, names
from moca_rt.export.compare import (
    COMPARE_BATCH,
    TOLERANCES,
    compare_outputs,
    compare_unit,
    main as compare_main,
)
from moca_rt.export.create_onnx import (
    EXPORT_BATCH,
    EXPORTERS,
    ExportResult,
    build_model,
    example_inputs,
    export_unit,
    main as create_main,
    num_layers_of,
)
from moca_rt.export.wrappers import SamDecoderUnit, build_wrapper
from moca_rt.modeling.moca import MocaModel
from moca_rt.modeling.sam import Sam

IMAGEBIND_WEIGHTS = FIXTURES / "imagebind" / "weights.safetensors"
SAM_WEIGHTS = FIXTURES / "sam" / "weights.safetensors"
CPU = "CPUExecutionProvider"


def _model(unit: names.Unit) -> MocaModel | Sam:
    if unit in ("audio", "vision"):
        return build_model(unit, preset="moca_test", imagebind=IMAGEBIND_WEIGHTS)
    if unit == "sam_decoder":
        return build_model(unit, sam_preset="sam_test", sam=SAM_WEIGHTS)
    return build_model(unit, sam_preset="sam_synth")


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, tuple[MocaModel | Sam, ExportResult]]:
    out = tmp_path_factory.mktemp("onnx")
    models = {"moca": _model("audio"), "sam_encoder": _model("sam_encoder")}
    models["sam_decoder"] = _model("sam_decoder")
    result: dict[str, tuple[MocaModel | Sam, ExportResult]] = {}
    for unit in names.UNITS:
        model = models["moca"] if unit in ("audio", "vision") else models[unit]
        result[unit] = (model, export_unit(unit, model, out / f"{unit}.onnx"))
    return result


@pytest.mark.parametrize("unit", names.UNITS)
def test_graph_is_valid_and_uses_the_names(exported: dict, unit: names.Unit) -> None:
    model, res = exported[unit]
    onnx.checker.check_model(res.path, full_check=True)
    graph = onnx.load(res.path, load_external_data=False).graph
    layers = num_layers_of(model)
    ins, outs = names.input_names(unit, layers), names.output_names(unit, layers)
    assert tuple(i.name for i in graph.input) == ins
    assert tuple(o.name for o in graph.output) == outs
    assert res.input_names == ins and res.output_names == outs
    assert res.exporter == EXPORTERS[unit]
    sidecar = json.loads(Path(res.path + ".json").read_text())
    assert sidecar["exporter"] == EXPORTERS[unit] and sidecar["unit"] == unit
    axes = names.dynamic_axes(unit, layers)
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        for ax, sym in axes.get(value.name, {}).items():
            # Symbolic, not the example's size: the axis stayed dynamic.
            assert dims[ax].dim_param != "", (value.name, ax, dims[ax])
            if value.name in ins:
                assert dims[ax].dim_param == sym, (value.name, ax, dims[ax].dim_param)
        for ax, d in enumerate(dims):
            # Inputs are static off the dynamic axes (TorchScript leaves output sizes symbolic).
            if value.name in ins and ax not in axes.get(value.name, {}):
                assert d.dim_value > 0, (value.name, ax, d)
    if unit == "sam_decoder":
        emb = next(i for i in graph.input if i.name == names.IMAGE_EMBEDDINGS)
        shape = [d.dim_value for d in emb.type.tensor_type.shape.dim]
        assert shape == [1, 256, 64, 64]
    print(f"{unit}: {res.exporter} exporter\n  {res.trtexec}")


@pytest.mark.parametrize("unit", names.UNITS)
def test_onnxruntime_matches_torch_at_another_batch(exported: dict, unit: names.Unit) -> None:
    model, res = exported[unit]
    assert COMPARE_BATCH != EXPORT_BATCH
    report = compare_unit(unit, model, res.path, "fp32", batch=COMPARE_BATCH)
    print(report)
    assert report.providers_used[0] == CPU and report.requested_provider == CPU
    assert report.passed, str(report)
    assert report.tolerance == TOLERANCES["fp32"]
    for row in report.outputs:
        assert row.shape[0] == COMPARE_BATCH
        assert row.rel <= 1e-4 and row.cosine >= 0.99999


@pytest.mark.parametrize(("prompts", "points"), [(1, 1), (5, 4)])
def test_decoder_with_other_prompt_counts(exported: dict, prompts: int, points: int) -> None:
    model, res = exported["sam_decoder"]
    report = compare_unit("sam_decoder", model, res.path, "fp32", prompts, points, seed=7)
    assert report.passed, str(report)
    masks = report.outputs[0]
    assert masks.name == names.LOW_RES_MASKS and masks.shape == (prompts, 3, 256, 256)


def test_decoder_wrapper_equals_sam_decode() -> None:
    sam = _model("sam_decoder")
    assert isinstance(sam, Sam)
    feeds = example_inputs("sam_decoder", sam, batch=4, num_points=3, seed=3)
    with torch.no_grad():
        masks, iou = SamDecoderUnit(sam)(*feeds.values())
        ref_masks, ref_iou = sam.decode(
            feeds[names.IMAGE_EMBEDDINGS],
            feeds[names.POINT_COORDS],
            feeds[names.POINT_LABELS].long(),
            multimask_output=True,
        )
    torch.testing.assert_close(masks, ref_masks, rtol=0, atol=1e-6)
    torch.testing.assert_close(iou, ref_iou, rtol=0, atol=1e-6)


def test_audio_engine_output_feeds_the_vision_engine(exported: dict) -> None:
    model, audio_res = exported["audio"]
    _, vision_res = exported["vision"]
    layers = num_layers_of(model)
    audio = OrtEngine(audio_res.path, (CPU,), names.input_names("audio", layers))
    vision = OrtEngine(vision_res.path, (CPU,), names.input_names("vision", layers))
    assert isinstance(audio, Engine) and isinstance(vision, Engine)
    gen = torch.Generator().manual_seed(5)
    fbank = torch.randn(3, 3, 1, 128, 204, generator=gen)
    images = torch.randn(3, 3, 224, 224, generator=gen)
    tokens = audio({names.FBANK: fbank})
    feeds = {names.IMAGES: images, **{k: tokens[k] for k in names.audio_token_names(layers)}}
    got = vision(feeds)
    assert isinstance(model, MocaModel)
    with torch.no_grad():
        feats = model.encode_audio(fbank)
        ref = model.encode_vision(images, feats)
    report = compare_outputs(
        {
            names.AUDIO_EMBEDDING: feats.embedding,
            names.PATCH_FEATURES: ref.patch_features,
            names.PATCH_EMBEDDINGS: ref.patch_embeddings,
            names.CLS_EMBEDDING: ref.cls_embedding,
        },
        {**got, names.AUDIO_EMBEDDING: tokens[names.AUDIO_EMBEDDING]},
    )
    assert report.passed, str(report)
    # The adapters are not zero, so the audio really changes the vision outputs.
    with torch.no_grad():
        plain = model.encode_vision(images, None).patch_features
    assert (plain - ref.patch_features).abs().max() > 1e-3


def test_compare_names_the_perturbed_output(exported: dict) -> None:
    model, res = exported["vision"]
    layers = num_layers_of(model)
    outs = names.output_names("vision", layers)
    feeds = example_inputs("vision", model, batch=2, seed=11)
    ref = TorchEngine(build_wrapper("vision", model), names.input_names("vision", layers), outs)(
        feeds
    )
    engine = OrtEngine(res.path)
    got = engine(feeds)
    assert compare_outputs(ref, got, "fp32", outs).passed
    bad = dict(got)
    bad[names.PATCH_EMBEDDINGS] = got[names.PATCH_EMBEDDINGS].clone()
    bad[names.PATCH_EMBEDDINGS][1, 3, 4, 5] += 0.01 * got[names.PATCH_EMBEDDINGS].abs().max()
    bad[names.CLS_EMBEDDING] = got[names.CLS_EMBEDDING] * 1.001
    report = compare_outputs(ref, bad, "fp32", outs, CPU, engine.providers)
    assert not report.passed
    first = report.first_failure
    assert first is not None and first.name == names.PATCH_EMBEDDINGS
    assert 9e-3 < first.rel < 1.1e-2
    assert [o.name for o in report.outputs if not o.passed] == [
        names.PATCH_EMBEDDINGS,
        names.CLS_EMBEDDING,
    ]
    text = str(report)
    assert f"first failing output: {names.PATCH_EMBEDDINGS}" in text
    assert "got CPUExecutionProvider (as requested" in text
    # The same perturbation passes the looser fp16 gate, a NaN fails any gate.
    assert compare_outputs(ref, bad, "fp16", outs).passed
    nan = dict(got)
    nan[names.CLS_EMBEDDING] = got[names.CLS_EMBEDDING].clone()
    nan[names.CLS_EMBEDDING][0, 0] = float("nan")
    nan_report = compare_outputs(ref, nan, "fp16", outs)
    assert nan_report.first_failure is not None
    assert nan_report.first_failure.name == names.CLS_EMBEDDING
    assert "non-finite" in nan_report.first_failure.note
    short = dict(got)
    short[names.PATCH_FEATURES] = got[names.PATCH_FEATURES][:1]
    assert "shape" in compare_outputs(ref, short, "fp32", outs).outputs[0].note
    with pytest.raises(ValueError, match="expected outputs"):
        compare_outputs(ref, {names.PATCH_FEATURES: got[names.PATCH_FEATURES]})
    with pytest.raises(ValueError, match="expected precision"):
        compare_outputs(ref, got, "int8")  # type: ignore[arg-type]


def test_ort_engine_checks_names_feeds_and_provider(exported: dict) -> None:
    _, res = exported["sam_encoder"]
    with pytest.raises(ValueError, match="expected graph inputs"):
        OrtEngine(res.path, input_names=("images",))
    with pytest.raises(ValueError, match="expected graph outputs"):
        OrtEngine(res.path, output_names=(names.LOW_RES_MASKS,))
    with pytest.raises(ValueError, match="expected an ONNX file"):
        OrtEngine(Path(res.path).with_name("missing.onnx"))
    engine = OrtEngine(res.path)
    assert engine.input_names == (names.SAM_IMAGES,)
    assert engine.output_names == (names.IMAGE_EMBEDDINGS,)
    assert engine.provider == CPU and not engine.fell_back
    with pytest.raises(ValueError, match=r"expected inputs \['sam_images'\]"):
        engine({"images": torch.zeros(1, 3, 256, 256)})
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime has the CUDA provider here; the fallback case cannot happen")
    with pytest.warns(RuntimeWarning, match="requested CUDAExecutionProvider, got"):
        fallback = OrtEngine(res.path, ("CUDAExecutionProvider", CPU))
    assert fallback.fell_back and fallback.provider == CPU
    with pytest.raises(RuntimeError, match="requested CUDAExecutionProvider"):
        OrtEngine(res.path, ("CUDAExecutionProvider",), strict_provider=True)


def test_trtexec_commands(exported: dict) -> None:
    for unit in names.UNITS:
        cmd = exported[unit][1].trtexec
        print(cmd)
        assert cmd.startswith(f"trtexec --onnx={exported[unit][1].path}")
        assert "--fp16" not in cmd
    enc = exported["sam_encoder"][1].trtexec
    assert "--minShapes=sam_images:1x3x256x256" in enc
    assert "--maxShapes=sam_images:16x3x256x256" in enc
    dec = exported["sam_decoder"][1].trtexec
    assert "--optShapes=point_coords:64x2x2,point_labels:64x2" in dec
    assert names.IMAGE_EMBEDDINGS not in dec.split("--minShapes=")[1]
    vision = exported["vision"][1].trtexec
    assert "audio_layer1_post_attention:4x" in vision.split("--optShapes=")[1]


def test_clis_export_and_compare_fp16(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--unit", "sam_encoder", "--sam-preset", "sam_synth", "--out", str(tmp_path)]
    assert create_main([*argv, "--precision", "fp16"]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "sam_encoder_fp16.onnx"
    assert f"sam_encoder: {path} (torchscript exporter" in out and "--fp16" in out
    graph = onnx.load(str(path), load_external_data=False).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    cmp = ["--unit", "sam_encoder", "--sam-preset", "sam_synth", "--onnx", str(path)]
    assert compare_main([*cmp, "--precision", "fp16"]) == 0
    assert "all outputs pass" in capsys.readouterr().out
    # Different weights (another seed) than the file: the comparison must fail, exit 1.
    assert compare_main([*cmp, "--precision", "fp16", "--seed", "1"]) == 1
    assert "first failing output: image_embeddings" in capsys.readouterr().out
    assert create_main([*argv, "--sam", str(tmp_path / "nope.pth")]) == 1
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        strict = [*cmp, "--precision", "fp16", "--provider", "CUDAExecutionProvider"]
        assert compare_main([*strict, "--strict-provider"]) == 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="expected a unit"):
        names.input_names("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a SAM preset"):
        build_model("sam_encoder", sam_preset="sam_vit_x")
    sam = build_model("sam_encoder", sam_preset="sam_synth")
    with pytest.raises(ValueError, match="expected a MocaModel"):
        build_wrapper("audio", sam)
    with pytest.raises(ValueError, match="expected batch >= 1"):
        example_inputs("sam_encoder", sam, batch=0)
    with pytest.raises(ValueError, match="expected precision"):
        export_unit("sam_encoder", sam, "x.onnx", "int8")  # type: ignore[arg-type]
    moca = build_model("audio", preset="moca_test")
    assert isinstance(moca, MocaModel)
    with pytest.raises(ValueError, match="expected audio_clips >= 1, got 0"):
        example_inputs("audio", moca, audio_clips=0)
    one = example_inputs("vision", moca, audio_clips=1)
    three = example_inputs("vision", moca)
    tokens = names.audio_layer_input(0)
    assert one[tokens].shape[1] * 3 == three[tokens].shape[1]  # [B, S * La, Da]
    with pytest.raises(SystemExit):
        create_main(["--unit", "audio", "--out", "x", "--audio-clips", "0"])
    assert names.audio_token_names(2) == (
        "audio_layer0_input",
        "audio_layer0_post_attention",
        "audio_layer1_input",
        "audio_layer1_post_attention",
    )
    assert SAM_PRESETS["sam_synth"].image_size == 256
