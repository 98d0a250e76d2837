"""MocaModel: exact identity when untrained, audio plumbing, gradients, adapter checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import FIXTURES, requires_cuda
from numeric import compare
from safetensors.torch import load_file, save_file

from moca_rt.checkpoints import CheckpointMismatchError
from moca_rt.config import MOCA_PRESETS, AdapterConfig, MocaConfig
from moca_rt.modeling.imagebind import config_from_official_kwargs, load_imagebind
from moca_rt.modeling.moca import AudioFeatures, MocaModel, VisionFeatures

IB = FIXTURES / "imagebind"
PRE = FIXTURES / "preprocessing"
FIELDS = ("patch_features", "patch_embeddings", "cls_embedding")


def _config() -> MocaConfig:
    kwargs = json.loads((IB / "config.json").read_text())["kwargs"]
    imagebind = config_from_official_kwargs(kwargs)
    n = min(imagebind.vision.num_blocks, imagebind.audio.num_blocks)
    return MocaConfig(
        imagebind=imagebind,
        adapter=AdapterConfig(num_layers=n, num_latents=4, bottleneck=16, num_heads=2),
    )


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    vision = load_file(PRE / "vision.safetensors")
    audio = load_file(PRE / "audio.safetensors")
    images = torch.stack(
        [vision["image_gradient_480x640.official"], vision["image_random_300x400.official"]]
    )
    fbank = torch.stack([audio["wav_5s_16k.official"], audio["wav_stereo_44k1_2p5s.official"]])
    return images, fbank


def _model() -> MocaModel:
    return MocaModel.from_config(_config(), imagebind_weights=IB / "weights.safetensors")


def _randomise_adapters(model: MocaModel, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def _equal(a: VisionFeatures, b: VisionFeatures) -> bool:
    return all(torch.equal(getattr(a, f), getattr(b, f)) for f in FIELDS)


def test_untrained_model_is_exactly_frozen_imagebind(inputs: tuple) -> None:
    images, fbank = inputs
    model = _model()
    with torch.no_grad():
        adapted, audio = model(images, fbank)
        plain = model.encode_vision(images, None)
        stages = model.imagebind.vision.forward_stages(images)
        audio_ref = model.imagebind.audio(fbank)
    assert _equal(adapted, plain)
    b, d = images.shape[0], model.config.imagebind.vision.embed_dim
    assert adapted.patch_features.shape == (b, 16, 16, d)
    assert adapted.patch_embeddings.shape == (b, 16, 16, model.config.imagebind.out_embed_dim)
    assert torch.equal(adapted.patch_features.reshape(b, 256, d), stages["head_ln_tokens"][:, 1:])
    assert torch.equal(adapted.cls_embedding, stages["embedding"])
    assert torch.equal(audio.embedding, audio_ref)


def test_model_output_matches_reference_embeddings() -> None:
    model = _model()
    outputs = load_file(IB / "outputs.safetensors")
    image = load_file(PRE / "vision.safetensors")["image_gradient_480x640.official"][None]
    fbank = load_file(PRE / "audio.safetensors")["wav_5s_16k.official"][None]
    with torch.no_grad():
        vis, audio = model(image, fbank)
    torch.testing.assert_close(vis.cls_embedding, outputs["vision_embedding"], rtol=0, atol=1e-5)
    torch.testing.assert_close(audio.embedding, outputs["audio_embedding"], rtol=0, atol=1e-4)
    ref_tokens = outputs["vision.head_ln_tokens"][:, 1:].reshape(vis.patch_features.shape)
    assert (vis.patch_features - ref_tokens).abs().max() <= 1e-4 * ref_tokens.abs().max()


def test_audio_features_are_the_paired_blocks_tokens(inputs: tuple) -> None:
    _, fbank = inputs
    model = _model()
    audio = model.encode_audio(fbank)
    stages = model.imagebind.audio.forward_stages(fbank)
    b, s = fbank.shape[:2]
    for i, (_, a) in enumerate(model.pairs):
        before = stages["tokens_in"] if a == 0 else stages[f"block{a - 1:02d}"]
        tokens, dim = before.shape[1], before.shape[2]
        assert audio.layer_inputs[i].shape == (b, s * tokens, dim)
        assert torch.equal(audio.layer_inputs[i], before.reshape(b, s * tokens, dim))
        block = model.imagebind.audio.blocks[a]
        with torch.no_grad():
            expected_post = block.attention_residual(before)
        assert torch.equal(audio.layer_post_attention[i], expected_post.reshape(b, s * tokens, dim))
    assert not audio.embedding.requires_grad


def test_random_adapters_change_features_per_sample(inputs: tuple) -> None:
    images, fbank = inputs
    model = _model()
    _randomise_adapters(model)
    with torch.no_grad():
        audio = model.encode_audio(fbank)
        adapted = model.encode_vision(images, audio)
        plain = model.encode_vision(images, None)
        swapped = model.encode_vision(images, model.encode_audio(fbank.flip(0)))
        single = model.encode_vision(images[:1], model.encode_audio(fbank[:1]))
    for f in FIELDS:
        assert not torch.allclose(getattr(adapted, f), getattr(plain, f), atol=1e-3), f
    # Row b of the images meets row b of the audio only.
    assert not torch.allclose(swapped.patch_features, adapted.patch_features, atol=1e-3)
    torch.testing.assert_close(single.patch_features, adapted.patch_features[:1])
    torch.testing.assert_close(adapted.cls_embedding.norm(dim=-1), torch.ones(2))


def test_gradients_reach_only_the_adapters(inputs: tuple) -> None:
    images, fbank = inputs
    model = _model().train()
    assert not model.imagebind.training
    _randomise_adapters(model, seed=1)
    feats, _ = model(images, fbank)
    loss = feats.patch_features.square().mean() + feats.patch_embeddings.mean()
    loss.backward()
    for name, p in model.imagebind.named_parameters():
        assert not p.requires_grad and p.grad is None, name
    for name, p in model.adapters.named_parameters():
        assert p.grad is not None and torch.count_nonzero(p.grad) > 0, name
    ids = {id(p) for p in model.trainable_parameters()}
    assert ids == {id(p) for p in model.parameters() if p.requires_grad}


def test_zero_initialised_up_projection_still_receives_gradient(inputs: tuple) -> None:
    images, fbank = inputs
    model = _model()
    feats, _ = model(images, fbank)
    feats.patch_features.square().mean().backward()
    for adapter in model.adapters:
        assert adapter.up.weight.grad is not None
        assert torch.count_nonzero(adapter.up.weight.grad) > 0


def test_huge_preset_trainable_parameter_count() -> None:
    model = MocaModel.from_config(MOCA_PRESETS["moca_huge"], device="meta")
    n = sum(p.numel() for p in model.trainable_parameters())
    frozen = sum(p.numel() for p in model.imagebind.parameters())
    print(
        f"\nmoca_huge: {n:,} trainable adapter parameters ({len(model.adapters)} layers, "
        f"pairs {model.pairs}); frozen ImageBind vision+audio {frozen:,}"
    )
    assert 1_000_000 <= n <= 2_000_000
    assert model.pairs == [(26, 6), (27, 7), (28, 8), (29, 9), (30, 10), (31, 11)]


def test_adapter_state_dict_round_trip(inputs: tuple, tmp_path) -> None:
    images, fbank = inputs
    model = _model()
    _randomise_adapters(model, seed=2)
    path = tmp_path / "adapters.safetensors"
    save_file({k: v.contiguous() for k, v in model.adapter_state_dict().items()}, str(path))
    assert all(k.startswith("adapters.") for k in model.adapter_state_dict())
    fresh = MocaModel.from_config(
        _config(), imagebind_weights=IB / "weights.safetensors", adapter_weights=path
    )
    with torch.no_grad():
        a = model(images, fbank)[0]
        b = fresh(images, fbank)[0]
    assert _equal(a, b)
    assert all(p.requires_grad for p in fresh.trainable_parameters())

    state = model.adapter_state_dict()
    missing = "adapters.0.up.weight"
    extra = "adapters.9.latents"
    del state[missing]
    state[extra] = torch.zeros(1, 4, 16)
    with pytest.raises(CheckpointMismatchError) as err:
        fresh.load_adapter_state_dict(state)
    assert missing in str(err.value) and extra in str(err.value)


def test_imagebind_passed_in_and_from_config_agree(inputs: tuple) -> None:
    images, fbank = inputs
    cfg = _config()
    imagebind = load_imagebind(IB / "weights.safetensors", cfg.imagebind)
    a = MocaModel(cfg, imagebind=imagebind)
    b = _model()
    with torch.no_grad():
        assert _equal(a(images, fbank)[0], b(images, fbank)[0])
    with pytest.raises(ValueError, match="expected an ImageBind"):
        MocaModel(MOCA_PRESETS["moca_synth"], imagebind=imagebind)


def test_other_placements_and_small_images(inputs: tuple) -> None:
    images, fbank = inputs
    cfg = _config()
    small = torch.nn.functional.interpolate(images, size=(112, 112), mode="bilinear")
    for placement in ("first-k", "interleaved"):
        adapter = AdapterConfig(num_layers=1, num_latents=4, bottleneck=16, placement=placement)
        model = MocaModel.from_config(
            MocaConfig(imagebind=cfg.imagebind, adapter=adapter),
            imagebind_weights=IB / "weights.safetensors",
        )
        _randomise_adapters(model)
        with torch.no_grad():
            feats, audio = model(small, fbank)
        assert isinstance(audio, AudioFeatures) and len(audio.layer_inputs) == 1
        assert feats.patch_features.shape[:3] == (2, 8, 8)
        assert torch.isfinite(feats.patch_embeddings).all()


def test_bad_inputs(inputs: tuple) -> None:
    images, fbank = inputs
    model = _model()
    with pytest.raises(ValueError, match="same B"):
        model(images[:1], fbank)
    audio = model.encode_audio(fbank[:1])
    with pytest.raises(ValueError, match="audio windows"):
        model.encode_vision(images, audio)
    short = AudioFeatures(audio.layer_inputs[:1], audio.layer_post_attention[:1], audio.embedding)
    with pytest.raises(ValueError, match="adapted layers"):
        model.encode_vision(images[:1], short)
    with pytest.raises(ValueError, match="square"):
        model.encode_vision(images[..., :112], None)


@requires_cuda
def test_cuda_matches_reference_and_bf16_stays_close(inputs: tuple) -> None:
    images, fbank = inputs
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        _check_cuda(images, fbank)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _check_cuda(images: torch.Tensor, fbank: torch.Tensor) -> None:
    cpu = _model()
    _randomise_adapters(cpu, seed=3)
    gpu = MocaModel.from_config(_config(), imagebind_weights=IB / "weights.safetensors")
    gpu.load_adapter_state_dict(cpu.adapter_state_dict())
    gpu = gpu.cuda()
    with torch.no_grad():
        ref = cpu(images, fbank)[0]
        out = gpu(images.cuda(), fbank.cuda())[0]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gpu(images.cuda(), fbank.cuda())[0]
    for f in FIELDS:
        c = compare(getattr(out, f), getattr(ref, f))
        assert c.rel <= 1e-4 and c.cosine >= 0.99999, f"{f} fp32 cuda: {c}"
        c = compare(getattr(half, f).float(), getattr(ref, f))
        print(f"\n  {f} bf16 autocast vs fp32 cpu: {c}")
        assert c.cosine >= 0.999, f"{f} bf16: {c}"


def test_cached_prefix_and_activation_checkpointing_give_the_same_result(inputs: tuple) -> None:
    images, fbank = inputs
    cfg = _config()
    adapter = AdapterConfig(num_layers=1, num_latents=4, bottleneck=16, num_heads=2)
    model = MocaModel.from_config(
        MocaConfig(imagebind=cfg.imagebind, adapter=adapter),
        imagebind_weights=IB / "weights.safetensors",
    )
    _randomise_adapters(model, seed=4)
    assert model.prefix_depth == model.pairs[0][0] > 0
    audio = model.encode_audio(fbank)
    prefix = model.encode_vision_prefix(images)
    assert not prefix.requires_grad
    full = model.encode_vision(images, audio)
    cached = model.encode_vision_from_prefix(prefix, audio)
    assert _equal(full, cached)

    grads = []
    for flag in (False, True):
        model.zero_grad(set_to_none=True)
        model.activation_checkpointing = flag
        feats = model.encode_vision_from_prefix(prefix, audio)
        feats.patch_features.square().mean().backward()
        grads.append([p.grad.clone() for p in model.trainable_parameters()])
    for plain, recomputed in zip(*grads, strict=True):
        torch.testing.assert_close(recomputed, plain)
