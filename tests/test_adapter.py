"""AdaAV: placement pairs, zero-initialised identity, parameter count, attention semantics."""

from __future__ import annotations

import pytest
import torch

from moca_rt.config import AdapterConfig
from moca_rt.modeling.adapter import AdaAV, adapter_pairs


def test_last_k_default_pairs_huge() -> None:
    pairs = adapter_pairs("last-k", 6, 32, 12)
    assert pairs == [(26, 6), (27, 7), (28, 8), (29, 9), (30, 10), (31, 11)]


def test_first_k_pairs() -> None:
    assert adapter_pairs("first-k", 4, 32, 12) == [(0, 0), (1, 1), (2, 2), (3, 3)]


def test_interleaved_every_second_block_of_twelve() -> None:
    assert adapter_pairs("interleaved", 6, 12, 12) == [
        (1, 1),
        (3, 3),
        (5, 5),
        (7, 7),
        (9, 9),
        (11, 11),
    ]


@pytest.mark.parametrize("placement", ["last-k", "first-k", "interleaved"])
@pytest.mark.parametrize(
    ("k", "nv", "na"), [(6, 32, 12), (1, 32, 12), (5, 7, 5), (3, 3, 9), (0, 4, 4)]
)
def test_pairs_are_valid(placement: str, k: int, nv: int, na: int) -> None:
    pairs = adapter_pairs(placement, k, nv, na)
    assert len(pairs) == k
    vis = [v for v, _ in pairs]
    aud = [a for _, a in pairs]
    assert all(0 <= v < nv for v in vis) and all(0 <= a < na for a in aud)
    assert vis == sorted(set(vis)) and aud == sorted(set(aud))
    if k and placement != "first-k":
        assert pairs[-1] == (nv - 1, na - 1)
    if k and placement == "first-k":
        assert pairs[0] == (0, 0)


def test_pairs_reject_bad_arguments() -> None:
    with pytest.raises(ValueError, match="placement"):
        adapter_pairs("middle", 2, 32, 12)
    with pytest.raises(ValueError, match="k <= 12"):
        adapter_pairs("last-k", 13, 32, 12)
    with pytest.raises(ValueError, match="k"):
        adapter_pairs("last-k", -1, 32, 12)


CFG = AdapterConfig(num_layers=1, num_latents=4, bottleneck=16, num_heads=2)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3 * 23, 24, generator=g) * 5, torch.randn(2, 17, 40, generator=g) * 5


def _randomise(adapter: AdaAV, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)


def test_untrained_adapter_adds_exact_zero() -> None:
    adapter = AdaAV(24, 40, CFG)
    audio, vision = _inputs()
    out = adapter(audio, vision)
    assert out.shape == vision.shape
    assert torch.count_nonzero(out) == 0
    assert torch.equal(vision + out, vision)


def test_trained_adapter_depends_on_audio_but_not_its_order() -> None:
    adapter = AdaAV(24, 40, CFG)
    _randomise(adapter)
    audio, vision = _inputs()
    out = adapter(audio, vision)
    assert out.abs().max() > 1e-2
    other_audio, _ = _inputs(seed=5)
    assert (adapter(other_audio, vision) - out).abs().max() > 1e-3
    # The latents pool the audio tokens by attention: a permutation of them changes nothing.
    perm = torch.randperm(audio.shape[1], generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(adapter(audio[:, perm], vision), out, rtol=1e-5, atol=1e-5)
    # Each batch row uses only its own audio.
    swapped = adapter(audio.flip(0), vision)
    assert not torch.allclose(swapped, out)
    torch.testing.assert_close(adapter(audio[:1], vision[:1]), out[:1], rtol=1e-5, atol=1e-5)


def test_parameter_count_formula() -> None:
    da, dv, m, r = 768, 1280, 8, 64
    with torch.device("meta"):
        adapter = AdaAV(da, dv, AdapterConfig(num_latents=m, bottleneck=r, num_heads=4))
    latents = m * r
    input_norms = 2 * (da + dv)
    down = (da * r + r) + (dv * r + r)
    attentions = 2 * 4 * (r * r + r)  # two cross-attentions with q, k, v, out projections
    up = r * dv + dv
    expected = latents + input_norms + down + attentions + up
    assert sum(p.numel() for p in adapter.parameters()) == expected


def test_adapter_rejects_bad_shapes() -> None:
    adapter = AdaAV(24, 40, CFG)
    audio, vision = _inputs()
    with pytest.raises(ValueError, match="same B"):
        adapter(audio[:1], vision)
    with pytest.raises(ValueError, match="expected audio"):
        adapter(audio[0], vision)
    with pytest.raises(ValueError, match="divisible"):
        AdaAV(24, 40, AdapterConfig(bottleneck=10, num_heads=4))
