"""Tiny ImageBind pretraining: InfoNCE, retrieval accuracy, official-layout checkpoints, resume.

Everything runs the ``imagebind_test`` preset from random weights on 64-pixel scenes of the
synthetic world fed to the model at 28 pixels (a 2 x 2 patch grid), so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from moca_rt.checkpoints import CheckpointMismatchError
from moca_rt.config import IMAGEBIND_PRESETS, MOCA_PRESETS
from moca_rt.modeling.imagebind import load_imagebind, official_key_layout
from moca_rt.modeling.moca import MocaModel
from moca_rt.train.data import SynthTrainingSet
from moca_rt.train.pretrain_imagebind import (
    ContrastiveTemperature,
    HeldOutSynthSet,
    PretrainConfig,
    PretrainTrainer,
    checkpoint_stem,
    evaluate_retrieval,
    info_nce_loss,
    init_model,
    main,
    official_state_dict,
    retrieval_accuracy,
    run_pretraining,
)

PRESET = "imagebind_test"


def _config(tmp_path: Path, **kw: object) -> PretrainConfig:
    base = PretrainConfig(
        preset=PRESET,
        data="synth:8",
        out=str(tmp_path / "run"),
        iters=4,
        batch=4,
        lr=1e-3,
        warmup=1,
        image_size=28,
        synth_image_size=64,
        eval_items=0,
        save_every=2,
        log_every=1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> SynthTrainingSet:
    return SynthTrainingSet(8, seed=0, image_size=64)


# ---------------------------------------------------------------------------- loss and metric


def _info_nce_by_hand(v: torch.Tensor, a: torch.Tensor, scale: float) -> float:
    v = v.double() / v.double().norm(dim=1, keepdim=True)
    a = a.double() / a.double().norm(dim=1, keepdim=True)
    n = v.shape[0]
    total = 0.0
    for i in range(n):
        row = [scale * float(v[i] @ a[j]) for j in range(n)]
        col = [scale * float(v[j] @ a[i]) for j in range(n)]
        total += math.log(sum(math.exp(x) for x in row)) - row[i]
        total += math.log(sum(math.exp(x) for x in col)) - col[i]
    return total / (2 * n)


def test_info_nce_matches_the_formula_and_its_limits() -> None:
    gen = torch.Generator().manual_seed(3)
    v, a = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen) * 3
    got = float(info_nce_loss(v, a, 14.0))
    assert got == pytest.approx(_info_nce_by_hand(v, a, 14.0), rel=1e-5)
    # Scale 0: every logit equal -> log(B) in both directions.
    assert float(info_nce_loss(v, a, 0.0)) == pytest.approx(math.log(5), rel=1e-6)
    # Orthonormal matched pairs at a large scale: almost no loss.
    eye = torch.eye(6, 6)
    assert float(info_nce_loss(eye, 2 * eye, 100.0)) < 1e-6
    # Symmetric: swapping the modalities gives the same loss.
    assert float(info_nce_loss(a, v, 14.0)) == pytest.approx(got, rel=1e-6)


def test_temperature_init_and_clamp() -> None:
    t = ContrastiveTemperature(0.07, 0.01, 1.0)
    assert t.temperature == pytest.approx(0.07, rel=1e-6)
    with torch.no_grad():
        t.log_scale.fill_(10.0)  # temperature e^-10, below the clamp
    assert float(t().detach()) == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        t.log_scale.fill_(-3.0)
    assert float(t().detach()) == pytest.approx(1.0, rel=1e-6)
    with pytest.raises(ValueError, match="expected 0 < min_temperature"):
        ContrastiveTemperature(0.001, 0.01, 1.0)


def test_retrieval_accuracy_hand_made_cases() -> None:
    n = 6
    eye = torch.eye(n)
    assert retrieval_accuracy(eye, eye) == 1.0
    # Images shuffled by a permutation with exactly two fixed points (0 and 3): audio i finds
    # its own image only where perm[i] == i.
    perm = torch.tensor([0, 2, 1, 3, 5, 4])
    assert retrieval_accuracy(eye, eye[perm]) == pytest.approx(2 / n)
    # A derangement: nothing right.
    assert retrieval_accuracy(eye, eye[torch.roll(torch.arange(n), 1)]) == 0.0
    # Scale does not matter (cosine); ties go to the lowest index: every image identical ->
    # every audio retrieves image 0, so only audio 0 is right.
    assert retrieval_accuracy(3 * eye, eye) == 1.0
    same = torch.ones(n, 4)
    assert retrieval_accuracy(same, same) == pytest.approx(1 / n)
    with pytest.raises(ValueError, match=r"expected audio and vision embeddings"):
        retrieval_accuracy(eye, eye[:5])
    with pytest.raises(ValueError, match=r"expected vision and audio embeddings"):
        info_nce_loss(eye, eye[:, :5], 1.0)
    with pytest.raises(ValueError, match=r"expected B >= 2"):
        info_nce_loss(eye[:1], eye[:1], 1.0)


# ---------------------------------------------------------------------------- optimisation


def test_a_few_steps_on_a_fixed_batch_reduce_the_loss(
    tmp_path: Path, data: SynthTrainingSet
) -> None:
    config = _config(tmp_path, iters=100, warmup=0, lr=1e-3, batch=8)
    trainer = PretrainTrainer(init_model(config), data, config)
    batch = torch.arange(8)
    with torch.no_grad():
        before = float(trainer.loss_of(batch))
    assert before == pytest.approx(math.log(8), abs=0.5)  # random init: about chance
    params_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = [trainer.train_step(batch) for _ in range(8)]
    with torch.no_grad():
        after = float(trainer.loss_of(batch))
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert after < 0.75 * before, (before, losses, after)
    changed = [
        k for k, v in trainer.model.state_dict().items() if not torch.equal(v, params_before[k])
    ]
    assert any(k.startswith("vision.") for k in changed)
    assert any(k.startswith("audio.") for k in changed)
    # The audio postprocessor's fixed logit scale is a buffer, never trained.
    assert "audio.log_logit_scale" not in changed
    assert trainer.temperature.temperature != pytest.approx(0.07, rel=1e-9)


def test_schedule_warmup_then_cosine(tmp_path: Path, data: SynthTrainingSet) -> None:
    config = _config(tmp_path, iters=10, warmup=4, lr=1.0)
    trainer = PretrainTrainer(init_model(config), data, config)
    lrs = []
    for _ in range(10):
        lrs.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == pytest.approx([0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)])
    groups = trainer.optimizer.param_groups
    assert groups[0]["weight_decay"] == config.weight_decay and groups[1]["weight_decay"] == 0.0
    assert any(p is trainer.temperature.log_scale for p in groups[1]["params"])
    assert all(p.dim() >= 2 for p in groups[0]["params"])


def test_bf16_step_keeps_fp32_weights(tmp_path: Path, data: SynthTrainingSet) -> None:
    config = _config(tmp_path, precision="bf16")
    trainer = PretrainTrainer(init_model(config), data, config)
    loss = trainer.train_step()
    assert math.isfinite(loss)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_batches_are_seeded_by_seed_and_step(tmp_path: Path, data: SynthTrainingSet) -> None:
    config = _config(tmp_path)
    t = PretrainTrainer(init_model(config), data, config)
    assert torch.equal(t.batch_indices(3), t.batch_indices(3))
    # One epoch (8 items, batch 4) covers every item once.
    assert sorted(torch.cat([t.batch_indices(0), t.batch_indices(1)]).tolist()) == list(range(8))
    other = PretrainTrainer(init_model(config), data, replace(config, seed=1))
    assert not all(torch.equal(t.batch_indices(s), other.batch_indices(s)) for s in range(4))


# ---------------------------------------------------------------------------- checkpoints


def test_checkpoint_official_layout_loads_strictly_with_same_embeddings(
    tmp_path: Path, data: SynthTrainingSet
) -> None:
    config = _config(tmp_path, iters=2, eval_items=4)
    result = run_pretraining(config, log=lambda _m: None, command="pytest")
    assert result.manifest is not None
    stem = checkpoint_stem(result.manifest)
    weights = Path(str(stem) + ".safetensors")
    saved = load_file(str(weights))
    ib_config = IMAGEBIND_PRESETS[PRESET]
    layout = official_key_layout(ib_config)
    assert {k: tuple(v.shape) for k, v in saved.items()} == layout
    stem_key = "modality_preprocessors.vision.rgbt_stem.proj.1.weight"
    assert saved[stem_key].dim() == 5 and torch.equal(
        saved[stem_key][:, :, 0], saved[stem_key][:, :, 1]
    )

    loaded = load_imagebind(weights, ib_config)
    trained = result.trainer.model.eval()
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    images, fbank = data.model_inputs([0, 1, 2], 28)
    with torch.no_grad():
        v0, a0 = trained(images, fbank)
        v1, a1 = loaded(images, fbank)
    assert torch.equal(v0, v1) and torch.equal(a0, a1)

    moca = MocaModel.from_config(MOCA_PRESETS["moca_test"], imagebind_weights=weights)
    assert torch.equal(moca.imagebind.vision.stem.weight, trained.vision.stem.weight)

    # A checkpoint missing a key fails strictly, naming it.
    broken = dict(saved)
    del broken["modality_heads.audio.2.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"modality_heads\.audio\.2\.weight"):
        load_imagebind(broken, ib_config)


def test_manifest_records_the_run(tmp_path: Path) -> None:
    config = _config(tmp_path, iters=2, eval_items=4)
    result = run_pretraining(config, log=lambda _m: None, command="python -m x --iters 2")
    assert result.manifest is not None
    meta = json.loads(result.manifest.read_text())
    weights = result.manifest.with_name(meta["weights"])
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["command"] == "python -m x --iters 2"
    assert meta["seed"] == 0 and meta["step"] == 2 and meta["iters"] == 2
    assert meta["final_loss"] == pytest.approx(result.losses[-1])
    assert len(result.losses) == 2
    retrieval = meta["retrieval"]
    assert retrieval["num_items"] == 4 and retrieval["chance"] == pytest.approx(0.25)
    for key in ("accuracy", "class_accuracy"):
        assert 0.0 <= retrieval[key] <= 1.0
        assert retrieval[key] * 4 == pytest.approx(round(retrieval[key] * 4))  # k / N
    assert meta["retrieval_data"] == "synth:4:val"
    assert meta["config"]["preset"] == PRESET
    # The step-2 checkpoint is the run's end: one file set, named by its step.
    assert sorted(p.name for p in Path(config.out).iterdir()) == [
        "imagebind_step000002.json",
        "imagebind_step000002.safetensors",
        "imagebind_step000002.train.pt",
    ]


def test_resume_is_bitwise(tmp_path: Path) -> None:
    straight = _config(tmp_path, out=str(tmp_path / "straight"))
    run_pretraining(straight, log=lambda _m: None, command="a")
    resumed = _config(tmp_path, out=str(tmp_path / "resumed"))
    res = run_pretraining(
        resumed,
        resume=tmp_path / "straight" / "imagebind_step000002.json",
        log=lambda _m: None,
        command="a",
    )
    assert res.trainer.step == 4 and len(res.losses) == 2
    a = load_file(str(tmp_path / "straight" / "imagebind_step000004.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "imagebind_step000004.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = torch.load(tmp_path / "straight" / "imagebind_step000004.train.pt", weights_only=True)
    sb = torch.load(tmp_path / "resumed" / "imagebind_step000004.train.pt", weights_only=True)
    assert torch.equal(sa["log_scale"], sb["log_scale"])
    assert sa["history_windows"] == sb["history_windows"]
    ma = json.loads((tmp_path / "straight" / "imagebind_step000004.json").read_text())
    mb = json.loads((tmp_path / "resumed" / "imagebind_step000004.json").read_text())
    assert ma["weights_sha256"] == mb["weights_sha256"]
    assert ma["final_loss"] == mb["final_loss"]


def test_official_state_dict_round_trips_the_stem() -> None:
    config = PretrainConfig(preset=PRESET)
    model = init_model(config)
    sd = official_state_dict(model)
    back = load_imagebind(sd, IMAGEBIND_PRESETS[PRESET])
    assert torch.equal(back.vision.stem.weight, model.vision.stem.weight)
    assert torch.equal(back.audio.log_logit_scale, model.audio.log_logit_scale)


# ---------------------------------------------------------------------------- data and errors


def test_held_out_scenes_differ_from_training_scenes(data: SynthTrainingSet) -> None:
    held = HeldOutSynthSet(4, seed=0, image_size=64)
    for i in range(4):
        assert not (held.item(i)[0] == data.item(i)[0]).all()
    assert held.item_id(2) == "synth:s4:val:2"
    assert len(held.class_ids()) == 4
    with pytest.raises(ValueError, match="partition: expected 'val' or 'test'"):
        HeldOutSynthSet(4, partition="train")


def test_evaluate_retrieval_agrees_with_the_embeddings() -> None:
    config = PretrainConfig(preset=PRESET, image_size=28)
    model = init_model(config).eval()
    held = HeldOutSynthSet(5, seed=0, image_size=64)
    result = evaluate_retrieval(model, held, 28, batch=2)
    images, fbank = held.model_inputs(range(5), 28)  # type: ignore[arg-type]
    with torch.no_grad():
        v, a = model(images, fbank)
    sim = F.normalize(a, dim=-1) @ F.normalize(v, dim=-1).T
    expect = sum(int(sim[i].argmax()) == i for i in range(5)) / 5
    assert result.accuracy == pytest.approx(expect)
    assert result.num_items == 5 and result.chance == pytest.approx(0.2)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("preset", "imagebind_nope", "preset: expected one of"),
        ("batch", 1, "batch: expected >= 2"),
        ("iters", 0, "iters: expected a positive int"),
        ("warmup", 4, "warmup: expected fewer steps than iters"),
        ("lr", -1.0, "lr: expected a finite value > 0"),
        ("temperature", 2.0, "temperature: expected 0 < min_temperature"),
        ("precision", "fp16", "precision: expected 'fp32' or 'bf16'"),
        ("image_size", 8, "image_size: expected None or >= 14"),
        ("eval_items", 1, "eval_items: expected 0"),
        ("data", "/some/folder", "eval_items: expected 0 for folder data"),
    ],
)
def test_bad_config_is_rejected(tmp_path: Path, field: str, value: object, message: str) -> None:
    config = _config(tmp_path, **{"eval_items": 4, field: value})
    with pytest.raises(ValueError, match=message):
        config.validate()


def test_resume_refuses_another_schedule_or_a_tampered_file(tmp_path: Path) -> None:
    config = _config(tmp_path, iters=2)
    result = run_pretraining(config, log=lambda _m: None, command="a")
    assert result.manifest is not None
    with pytest.raises(ValueError, match="resume: expected --iters 2"):
        run_pretraining(replace(config, iters=6), resume=config.out, log=lambda _m: None)
    weights = result.manifest.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    with pytest.raises(ValueError, match="match the sha256"):
        run_pretraining(config, resume=result.manifest, log=lambda _m: None)
    with pytest.raises(FileNotFoundError, match="expected imagebind_step"):
        checkpoint_stem(tmp_path)


def test_cli_bad_arguments_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--preset", PRESET, "--batch", "1", "--out", str(tmp_path)]) == 2
    assert "batch: expected >= 2" in capsys.readouterr().err
    assert main(["--preset", PRESET, "--data", "synth:x", "--out", str(tmp_path)]) == 2
    assert "expected synth:N" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--preset", "nope"])
    assert exc.value.code == 2


def test_cli_runs_and_writes_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = [
        "--preset",
        PRESET,
        "--data",
        "synth:8",
        "--iters",
        "1",
        "--batch",
        "4",
        "--warmup",
        "0",
        "--image-size",
        "28",
        "--synth-image-size",
        "64",
        "--eval-items",
        "2",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    assert "done: step 1" in capsys.readouterr().out
    meta = json.loads((out / "imagebind_step000001.json").read_text())
    assert meta["command"].startswith("python -m moca_rt.train.pretrain_imagebind --preset")
    assert meta["retrieval"]["num_items"] == 2
