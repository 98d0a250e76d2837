"""AdaAV training loop: optimisation, audio routing, checkpoints/resume, prefix cache, errors.

Everything runs the tiny ``moca_test`` preset with random ImageBind weights on 64-pixel scenes
of the synthetic world fed to the model at 56 pixels (a 4 x 4 patch grid).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from moca_rt.config import MOCA_PRESETS
from moca_rt.kernels.pma import pma_cost
from moca_rt.modeling.moca import AudioFeatures, MocaModel
from moca_rt.train import adaav
from moca_rt.train.adaav import (
    AdaavTrainer,
    ClassPairing,
    TrainConfig,
    anchor_batch,
    build_pairing,
    main,
    run_training,
    triplet_loss,
)
from moca_rt.train.data import SynthTrainingSet, open_training_set
from moca_rt.train.pairing import PairingTable, save_table

BATCH = 4


def _config(tmp_path: Path, **kw: object) -> TrainConfig:
    base = TrainConfig(
        preset="moca_test",
        data="synth:16",
        pairing="class",
        out=str(tmp_path / "run"),
        iters=4,
        batch=BATCH,
        image_size=56,
        synth_image_size=64,
        save_every=2,
        log_every=1,
    )
    return replace(base, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def data() -> SynthTrainingSet:
    return SynthTrainingSet(16, seed=0, image_size=64)


@pytest.fixture(scope="module")
def pairing(data: SynthTrainingSet) -> ClassPairing:
    return ClassPairing(data.class_ids())


def _model(seed: int = 0) -> MocaModel:
    torch.manual_seed(seed)
    return MocaModel(MOCA_PRESETS["moca_test"])


def _trainer(tmp_path: Path, data: SynthTrainingSet, pairing: ClassPairing, **kw: object):
    return AdaavTrainer(_model(), data, pairing, _config(tmp_path, **kw))


def test_steps_on_a_fixed_batch_reduce_the_loss_and_touch_only_adapters(
    tmp_path: Path, data: SynthTrainingSet, pairing: ClassPairing
) -> None:
    trainer = _trainer(tmp_path, data, pairing, lr=3e-3, iters=1000)
    frozen = {k: v.clone() for k, v in trainer.model.imagebind.state_dict().items()}
    adapters = {k: v.clone() for k, v in trainer.model.adapter_state_dict().items()}
    batch = trainer.batch_indices(0)
    with torch.no_grad():
        before = float(trainer.loss_of(*batch))
    assert before > 0.05, "the hinge must be active on this batch for the check to mean anything"
    losses = [trainer.train_step(batch) for _ in range(8)]
    with torch.no_grad():
        after = float(trainer.loss_of(*batch))
    assert losses[0] == pytest.approx(before, rel=1e-5)
    assert after < 0.5 * before, (before, losses, after)
    assert trainer.step == 8
    for k, v in trainer.model.imagebind.state_dict().items():
        assert torch.equal(v, frozen[k]), f"frozen ImageBind tensor {k} changed"
    changed = [
        k for k, v in trainer.model.adapter_state_dict().items() if not torch.equal(v, adapters[k])
    ]
    assert len(changed) == len(adapters), sorted(set(adapters) - set(changed))
    assert all(not p.requires_grad for p in trainer.model.imagebind.parameters())


def test_anchor_audio_is_fused_into_anchor_positive_and_negative(
    tmp_path: Path, data: SynthTrainingSet, pairing: ClassPairing, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = _trainer(tmp_path, data, pairing)
    model = trainer.model
    calls: dict[str, list] = {"audio": [], "vision": []}
    encode_audio, encode_vision = model.encode_audio, model.encode_vision

    def spy_audio(fbank: torch.Tensor) -> AudioFeatures:
        out = encode_audio(fbank)
        calls["audio"].append((fbank, out))
        return out

    def spy_vision(images: torch.Tensor, audio: AudioFeatures | None):
        calls["vision"].append((images, audio))
        return encode_vision(images, audio)

    monkeypatch.setattr(model, "encode_audio", spy_audio)
    monkeypatch.setattr(model, "encode_vision", spy_vision)
    anchors, positives, negatives = trainer.batch_indices(3)
    assert len({*anchors.tolist()}) == BATCH
    trainer.train_step((anchors, positives, negatives))

    assert len(calls["audio"]) == 1 and len(calls["vision"]) == 1
    fbank, audio = calls["audio"][0]
    a_idx = anchors.tolist()
    assert torch.equal(fbank, data.model_audio(a_idx))
    images, fused = calls["vision"][0]
    order = a_idx + positives.tolist() + negatives.tolist()
    assert torch.equal(images, data.model_images(order, 56))
    assert fused is not None
    for part in range(3):  # anchors, positives, negatives
        rows = slice(part * BATCH, (part + 1) * BATCH)
        assert torch.equal(fused.embedding[rows], audio.embedding)
        for got, want in zip(fused.layer_inputs, audio.layer_inputs, strict=True):
            assert torch.equal(got[rows], want)
        for got, want in zip(fused.layer_post_attention, audio.layer_post_attention, strict=True):
            assert torch.equal(got[rows], want)
    # the windows differ between anchors, so routing the wrong one would be visible
    assert not torch.equal(audio.embedding[0], audio.embedding[1])


def test_loss_is_the_pma_triplet_of_the_three_feature_maps(
    data: SynthTrainingSet, pairing: ClassPairing
) -> None:
    model = _model()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    anchors = torch.tensor([0, 5, 9, 12])
    positives = pairing.positives(anchors, gen)
    negatives = pairing.negatives(anchors, gen)
    images = data.model_images(torch.cat([anchors, positives, negatives]).tolist(), 56)
    fbank = data.model_audio(anchors.tolist())
    with torch.no_grad():
        got = triplet_loss(model, fbank, images, max_disparity=0, alpha=0.3)
        audio = model.encode_audio(fbank)
        f = [
            model.encode_vision(images[i * 4 : (i + 1) * 4], audio).patch_features for i in range(3)
        ]
    assert f[0].shape == (4, 4, 4, MOCA_PRESETS["moca_test"].imagebind.vision.embed_dim)
    c_pos = pma_cost(f[0], f[1], max_disparity=0).cost
    c_neg = pma_cost(f[0], f[2], max_disparity=0).cost
    want = torch.clamp_min(c_pos - c_neg + 0.3, 0).mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_resume_restores_adapters_optimiser_and_step_bitwise(tmp_path: Path) -> None:
    full = run_training(_config(tmp_path / "a"), log=lambda _m: None)
    assert full.trainer.step == 4 and full.checkpoint is not None
    out = Path(_config(tmp_path / "a").out)
    meta = json.loads((out / "adaav_step000002.json").read_text())
    assert meta["step"] == 2 and meta["preset"] == "moca_test" and meta["data"] == "synth:16"
    assert meta["seed"] == 0 and "class" in meta["pairing"] and meta["iters"] == 4
    assert len(meta["loss"]["window_means"]) == 2 and meta["config"]["batch"] == BATCH
    # cosine decay to 0: lr after 2 of 4 steps is half the initial rate
    assert meta["lr"] == pytest.approx(0.5e-4)
    weights = load_file(out / "adaav_step000002.safetensors")
    assert all(k.startswith("adapters.") for k in weights)

    resumed_model = _model(123)  # a different init: everything must come from the checkpoint
    data = open_training_set("synth:16", 0, 64)
    resumed = AdaavTrainer(
        resumed_model, data, ClassPairing(data.class_ids()), _config(tmp_path / "b")
    )
    resumed.model.imagebind.load_state_dict(full.trainer.model.imagebind.state_dict())
    resumed.load(out / "adaav_step000002.safetensors")
    assert resumed.step == 2
    for k, v in resumed.model.adapter_state_dict().items():
        assert torch.equal(v, weights[k])
    state = torch.load(out / "adaav_step000002.train.pt", weights_only=True)
    for got, want in zip(
        resumed.optimizer.state_dict()["state"].values(),
        state["optimizer"]["state"].values(),
        strict=True,
    ):
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(got[name], want[name])
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(0.5e-4)
    while resumed.step < 4:
        resumed.train_step()
    final = full.trainer.model.adapter_state_dict()
    for k, v in resumed.model.adapter_state_dict().items():
        assert torch.equal(v, final[k]), f"{k} differs after resuming"

    # the same through run_training: the folder resumes from its latest step (4): nothing to do
    again = run_training(_config(tmp_path / "a"), resume=out, log=lambda _m: None)
    assert again.trainer.step == 4 and again.losses == []


def test_cache_prefix_gives_the_same_loss_and_step(
    tmp_path: Path, data: SynthTrainingSet, pairing: ClassPairing
) -> None:
    plain = _trainer(tmp_path, data, pairing)
    cached = _trainer(tmp_path, data, pairing, cache_prefix=True)
    batch = plain.batch_indices(1)
    for _ in range(2):
        a = plain.train_step(batch)
        b = cached.train_step(batch)
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert set(cached.prefix_cache) == {int(i) for i in torch.cat(batch)}
    for k, v in cached.model.adapter_state_dict().items():
        torch.testing.assert_close(v, plain.model.adapter_state_dict()[k], rtol=1e-4, atol=1e-6)


def test_activation_checkpointing_gives_the_same_gradients_and_bf16_runs(
    tmp_path: Path, data: SynthTrainingSet, pairing: ClassPairing
) -> None:
    grads = []
    for ckpt in (False, True):
        trainer = _trainer(tmp_path, data, pairing, activation_checkpointing=ckpt)
        with torch.no_grad():  # non-zero up-projections so every adapter weight gets a gradient
            for p in trainer.model.trainable_parameters():
                p.add_(0.05)
        trainer.loss_of(*trainer.batch_indices(0)).backward()
        grads.append([p.grad.clone() for p in trainer.model.trainable_parameters()])
    for g0, g1 in zip(*grads, strict=True):
        torch.testing.assert_close(g0, g1, rtol=1e-5, atol=1e-7)
    fp32 = _trainer(tmp_path, data, pairing)
    bf16 = _trainer(tmp_path, data, pairing, precision="bf16")
    batch = fp32.batch_indices(0)
    with torch.no_grad():
        l32, l16 = float(fp32.loss_of(*batch)), float(bf16.loss_of(*batch))
    assert abs(l16 - l32) < 0.05, (l32, l16)
    assert torch.isfinite(torch.tensor(bf16.train_step(batch)))


def test_anchor_batches_are_epoch_permutations_sharded_by_rank() -> None:
    n, b = 17, 4
    per_epoch = n // (2 * b)
    seen: list[int] = []
    for step in range(per_epoch):
        r0 = anchor_batch(step, n, b, seed=3, rank=0, world_size=2)
        r1 = anchor_batch(step, n, b, seed=3, rank=1, world_size=2)
        assert not set(r0.tolist()) & set(r1.tolist())
        seen += r0.tolist() + r1.tolist()
    assert len(seen) == len(set(seen)) == per_epoch * 2 * b
    assert torch.equal(anchor_batch(5, n, b, 3), anchor_batch(5, n, b, 3))
    assert not torch.equal(anchor_batch(0, n, b, 3), anchor_batch(0, n, b, 4))


def test_class_pairing_positives_share_the_class_and_negatives_do_not(
    data: SynthTrainingSet, pairing: ClassPairing
) -> None:
    classes = data.class_ids()
    gen = torch.Generator().manual_seed(1)
    for step in range(5):
        anchors = anchor_batch(step, len(data), BATCH, seed=0)
        pos, neg = pairing.positives(anchors, gen), pairing.negatives(anchors, gen)
        for a, p, q in zip(anchors.tolist(), pos.tolist(), neg.tolist(), strict=True):
            assert p != a and classes[p] == classes[a]
            assert classes[q] != classes[a]


def test_auto_pairing_builds_a_table_and_tables_must_fit_the_data(
    tmp_path: Path, data: SynthTrainingSet
) -> None:
    notes: list[str] = []
    knn = build_pairing("auto", data, tmp_path, k=3, dino_preset="dino_test", log=notes.append)
    assert any("random" in m for m in notes)
    assert knn.table.n == len(data) and knn.table.k == 3
    assert knn.table.item_ids == tuple(f"synth:s4:{i}" for i in range(len(data)))
    loaded = build_pairing(str(tmp_path / "pairing.safetensors"), data, tmp_path)
    assert torch.equal(loaded.table.indices, knn.table.indices)

    short = PairingTable.build(torch.randn(10, 8), k=2)
    save_table(short, tmp_path / "short.safetensors")
    with pytest.raises(ValueError, match="one row per training item"):
        build_pairing(str(tmp_path / "short.safetensors"), data, tmp_path)
    other = PairingTable.build(torch.randn(16, 8), k=2, item_ids=[f"x{i}" for i in range(16)])
    save_table(other, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="built for other data"):
        build_pairing(str(tmp_path / "other.safetensors"), data, tmp_path)
    with pytest.raises(FileNotFoundError, match="'auto' or 'class'"):
        build_pairing(str(tmp_path / "missing.safetensors"), data, tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"batch": 1}, "batch: expected >= 2"),
        ({"preset": "moca_tiny"}, "preset: expected one of"),
        ({"search": "full", "max_disparity": 2}, "max_disparity: expected None"),
        ({"max_disparity": -1}, "max_disparity: expected None or >= 0"),
        ({"precision": "fp8"}, "precision: expected"),
        ({"lr": 0.0}, "lr: expected"),
        ({"iters": 0}, "iters: expected a positive int"),
        ({"pairing": "class", "data": "/some/folder"}, "only with synth:N"),
    ],
)
def test_bad_configs_are_rejected(tmp_path: Path, change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _config(tmp_path, **change).validate()


def test_cli_errors_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    common = ["--preset", "moca_test", "--out", str(tmp_path / "o"), "--iters", "1"]
    assert main([*common, "--data", "synth:many"]) == 2
    assert "expected synth:N with an integer N" in capsys.readouterr().err
    assert main([*common, "--data", "synth:16", "--batch", "1", "--pairing", "class"]) == 2
    assert "batch: expected >= 2" in capsys.readouterr().err
    assert main([*common, "--data", "synth:2", "--batch", "4", "--pairing", "class"]) == 2
    assert "sounding class" in capsys.readouterr().err
    assert main([*common, "--data", str(tmp_path / "nope"), "--pairing", "auto"]) == 2
    assert "nope" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([*common, "--precision", "fp8"])
    assert exc.value.code == 2


def test_resume_rejects_another_schedule_and_missing_files(tmp_path: Path) -> None:
    cfg = _config(tmp_path, iters=2)
    run_training(cfg, log=lambda _m: None)
    ckpt = Path(cfg.out) / "adaav_step000002.json"
    with pytest.raises(ValueError, match="expected --iters 2"):
        run_training(replace(cfg, iters=6), resume=ckpt, log=lambda _m: None)
    with pytest.raises(ValueError, match=r"expected a checkpoint \.json"):
        adaav.checkpoint_stem(tmp_path / "weights.bin")
    (Path(cfg.out) / "adaav_step000002.train.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"train\.pt"):
        adaav.checkpoint_stem(ckpt)


def test_manifest_records_the_weights_sha256_and_a_tampered_file_is_refused(
    tmp_path: Path,
) -> None:
    cfg = _config(tmp_path, iters=2)
    result = run_training(cfg, log=lambda _m: None)
    assert result.checkpoint is not None
    meta = json.loads(result.checkpoint.read_text())
    weights = result.checkpoint.with_suffix(".safetensors")
    assert meta["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert meta["train_state"] == "adaav_step000002.train.pt"
    # one loss-history window per step (log_every 1), the last closed at the end
    assert [s for s, _ in meta["loss"]["window_means"]] == [1, 2]
    # a manifest written before the sha256 was recorded still resumes (nothing left to do)
    old = {k: v for k, v in meta.items() if k != "weights_sha256"}
    result.checkpoint.write_text(json.dumps(old))
    again = run_training(cfg, resume=result.checkpoint, log=lambda _m: None)
    assert again.trainer.step == 2 and again.losses == []
    result.checkpoint.write_text(json.dumps(meta))
    weights.write_bytes(weights.read_bytes()[:-1] + b" ")
    with pytest.raises(ValueError, match="match the sha256"):
        run_training(cfg, resume=result.checkpoint, log=lambda _m: None)


def test_torchrun_with_two_cpu_processes_averages_the_gradients(tmp_path: Path) -> None:
    """DDP path (gloo on CPU): Adam's first moment after one step is 0.1 x the mean of the two
    ranks' gradients, each rank on its own slice of the global batch."""
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "moca_rt.train.adaav",
        "--preset",
        "moca_test",
        "--data",
        "synth:16",
        "--synth-image-size",
        "64",
        "--image-size",
        "56",
        "--pairing",
        "class",
        "--iters",
        "1",
        "--batch",
        "2",
        "--alpha",
        "2.0",
        "--out",
        str(out),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: step 1") == 1  # only rank 0 reports

    config = _config(tmp_path, iters=1, batch=2, alpha=2.0)  # a large margin: hinge active
    torch.manual_seed(0)  # as run_training builds its model
    model = MocaModel.from_config(MOCA_PRESETS["moca_test"], device="cpu")
    data = open_training_set("synth:16", 0, 64)
    pairing = ClassPairing(data.class_ids())
    grads = []
    for rank in range(2):
        trainer = AdaavTrainer(model, data, pairing, config, rank=rank, world_size=2)
        model.zero_grad(set_to_none=True)
        trainer.loss_of(*trainer.batch_indices(0)).backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
    state = torch.load(out / "adaav_step000001.train.pt", weights_only=True)["optimizer"]
    moments = [state["state"][i]["exp_avg"] for i in range(len(grads[0]))]
    assert all(any(g.abs().max() > 0 for g in rank_grads) for rank_grads in grads)
    for m, g0, g1 in zip(moments, *grads, strict=True):
        torch.testing.assert_close(m, 0.1 * (g0 + g1) / 2, rtol=1e-5, atol=1e-12)
    assert any(not torch.allclose(g0, g1) for g0, g1 in zip(*grads, strict=True))


def test_folder_items_are_channel_0_resampled_to_16k(tmp_path: Path) -> None:
    from moca_rt.datasets.io import write_png, write_wav

    rng = np.random.default_rng(0)
    images = []
    for i in range(3):
        image = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
        images.append(image)
        write_png(tmp_path / "clips" / f"c{i}.png", image)
        t = np.arange(22050) / 22050
        stereo = np.stack(
            [0.5 * np.sin(2 * np.pi * (300 + 100 * i) * t), 0.1 * rng.standard_normal(22050)]
        )
        write_wav(tmp_path / "clips" / f"c{i}.wav", stereo, 22050)
    data = open_training_set(str(tmp_path / "clips"))
    assert len(data) == 3 and data.item_ids() == ["c0.png", "c1.png", "c2.png"]
    assert data.class_ids() is None
    image, audio, time_s = data.item(1)
    assert np.array_equal(image, images[1]) and time_s == pytest.approx(0.5)
    assert audio.dtype == np.float32 and audio.shape == (16000,)
    # channel 0 (a 400 Hz tone) survives, channel 1 (noise) does not: compare spectra
    spectrum = np.abs(np.fft.rfft(audio))
    assert abs(int(spectrum.argmax()) - 400) <= 1
    imgs, fbank = data.model_inputs([0, 2], 56)
    assert imgs.shape == (2, 3, 56, 56) and fbank.shape == (2, 3, 1, 128, 204)
    with pytest.raises(ValueError, match="class"):
        build_pairing("class", data, tmp_path)
    with pytest.raises(ValueError, match="audio_window_s"):
        open_training_set(str(tmp_path / "clips"), audio_window_s=0.0)
