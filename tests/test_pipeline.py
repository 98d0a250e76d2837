"""MocaPipeline unit tests with the tiny ``moca_test`` model (seeded random weights).

The masks of a random model mean nothing; these tests check the decisions around the model:
one result per frame at the frame's size, batch independence, the silence gate, the tau
threshold, mask-proposal matching against hand-made proposals, input validation and the
stream() record order.
"""

from __future__ import annotations

from collections.abc import Sequence

import media_factory as mf
import numpy as np
import pytest
import torch
from conftest import requires_cuda

from moca_rt.config import MOCA_PRESETS
from moca_rt.media import MediaFrame
from moca_rt.modeling.moca import MocaModel
from moca_rt.pipeline import WINDOW_SAMPLES, FrameResult, MocaPipeline, PipelineConfig


@pytest.fixture(scope="module")
def model() -> MocaModel:
    torch.manual_seed(0)
    return MocaModel.from_config(MOCA_PRESETS["moca_test"])


def _frames(
    n: int, sizes: Sequence[tuple[int, int]] | None = None, seed: int = 0
) -> list[np.ndarray]:
    return mf.block_frames(list(sizes or [(48, 64)] * n), seed)


def _audio(n: int, seed: int = 1, amplitude: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(WINDOW_SAMPLES) / 16000.0
    tones = [amplitude * np.sin(2 * np.pi * (300.0 + 100.0 * i) * t) for i in range(n)]
    noise = 0.01 * rng.standard_normal((n, WINDOW_SAMPLES))
    return (np.stack(tones) + noise).astype(np.float32)


class FakeProposals:
    """ProposalSource returning fixed low-resolution logits for every frame; counts its calls."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.calls = 0
        self.frames_seen = 0

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray | None] | None
    ) -> list[torch.Tensor]:
        self.calls += 1
        self.frames_seen += len(images)
        return [self.logits.clone() for _ in images]


def test_one_result_per_frame_at_frame_size(model: MocaModel) -> None:
    sizes = [(48, 64), (64, 48), (30, 90)]
    pipe = MocaPipeline(model, config=PipelineConfig(num_clusters=4, tau=-1.0, delta=0.1))
    results = pipe.segment_batch(_frames(3, sizes), _audio(3))
    assert len(results) == 3
    for res, (h, w) in zip(results, sizes, strict=True):
        assert isinstance(res, FrameResult)
        assert res.mask.shape == (h, w) and res.mask.dtype == np.bool_
        assert not res.silent and np.isfinite(res.level_dbfs) and res.level_dbfs > -30
        assert len(res.scores) == 4 and all(-1.0 <= s <= 1.0 for s in res.scores)
        # tau = -1: the best cluster is always chosen, and only clusters within delta of it
        assert res.chosen, "tau=-1 must choose at least the best cluster"
        best = max(res.scores)
        assert all(res.scores[k] >= best - 0.1 - 1e-6 for k in res.chosen)
        assert res.mask.any()
        assert 1 <= res.kmeans_iterations <= pipe.config.kmeans_iters
        assert res.used_fallback  # no proposal source: the coarse mask is the answer
        assert {"audio", "vision", "kmeans"} <= set(res.timings_ms)


def test_batch_size_does_not_change_masks(model: MocaModel) -> None:
    pipe = MocaPipeline(model, config=PipelineConfig(tau=-1.0, delta=0.05))
    frames, audio = _frames(3, seed=3), _audio(3, seed=4)
    batched = pipe.segment_batch(frames, audio)
    single = [pipe.segment(frames[i], audio[i]) for i in range(3)]
    for a, b in zip(batched, single, strict=True):
        assert np.array_equal(a.mask, b.mask)
        assert a.chosen == b.chosen
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-4)


def test_silent_window_is_gated(model: MocaModel) -> None:
    pipe = MocaPipeline(model, config=PipelineConfig(tau=-1.0, silence_dbfs=-60.0))
    audio = _audio(2)
    audio[1] = 0.0
    loud, quiet = pipe.segment_batch(_frames(2), audio)
    assert quiet.silent and quiet.level_dbfs < -100
    assert quiet.mask.shape == (48, 64) and not quiet.mask.any()
    assert quiet.scores == [] and quiet.chosen == []
    assert not loud.silent and loud.mask.any()
    # a quiet but not silent window (-40 dBFS) passes a -60 dBFS gate and fails a -30 dB one
    faint = np.full((1, WINDOW_SAMPLES), 0.01, np.float32)
    assert not pipe.segment_batch(_frames(1), faint)[0].silent
    strict = MocaPipeline(model, config=PipelineConfig(tau=-1.0, silence_dbfs=-30.0))
    assert strict.segment_batch(_frames(1), faint)[0].silent


def test_tau_above_every_score_gives_empty_mask(model: MocaModel) -> None:
    fake = FakeProposals(torch.full((1, 12, 16), 5.0))
    pipe = MocaPipeline(model, proposals=fake, config=PipelineConfig(tau=1.01))
    res = pipe.segment_batch(_frames(2), _audio(2))
    for r in res:
        assert not r.silent and len(r.scores) == pipe.config.num_clusters
        assert r.chosen == [] and not r.mask.any() and r.mask.shape == (48, 64)
    assert fake.calls == 0, "proposals must not be computed when no cluster sounds"


def _low_res_logits(masks: Sequence[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.where(m, 10.0, -10.0) for m in masks]).astype(np.float32))


def test_mpm_keeps_the_overlapping_proposal(model: MocaModel) -> None:
    # tau=-1, delta=2 chooses every cluster: the coarse mask M is the whole frame.
    cfg = PipelineConfig(tau=-1.0, delta=2.0)
    big = np.zeros((16, 16), bool)
    big[:, :12] = True  # IoU with the full frame 0.75 > 0.5
    small = np.zeros((16, 16), bool)
    small[:4, :4] = True  # IoU 1/16
    fake = FakeProposals(_low_res_logits([big, small]))
    pipe = MocaPipeline(model, proposals=fake, config=cfg)
    (res,) = pipe.segment_batch(_frames(1, [(64, 64)]), _audio(1))
    assert fake.calls == 1
    assert res.proposals == 2 and res.proposals_kept == 1 and not res.used_fallback
    expected = np.zeros((64, 64), bool)
    expected[:, :48] = True  # 12 of 16 low-res columns, upsampled x4
    assert np.array_equal(res.mask, expected)


def test_proposals_only_for_frames_with_a_sounding_cluster(model: MocaModel) -> None:
    big = np.zeros((12, 16), bool)
    big[:, :12] = True
    fake = FakeProposals(_low_res_logits([big]))
    pipe = MocaPipeline(model, proposals=fake, config=PipelineConfig(tau=-1.0, delta=2.0))
    audio = _audio(3)
    audio[1] = 0.0  # gated as silent: no cluster sounds, so SAM need not run on it
    loud0, quiet, loud2 = pipe.segment_batch(_frames(3), audio)
    assert fake.calls == 1 and fake.frames_seen == 2
    assert quiet.silent and quiet.proposals == 0 and not quiet.mask.any()
    assert loud0.proposals == 1 and loud2.proposals == 1


def test_mpm_falls_back_to_coarse_mask(model: MocaModel) -> None:
    cfg = PipelineConfig(tau=-1.0, delta=2.0)
    small = np.zeros((16, 16), bool)
    small[:4, :4] = True
    pipe = MocaPipeline(model, proposals=FakeProposals(_low_res_logits([small])), config=cfg)
    (res,) = pipe.segment_batch(_frames(1, [(64, 64)]), _audio(1))
    assert res.proposals == 1 and res.proposals_kept == 0 and res.used_fallback
    assert res.mask.all()  # M covers the frame (every cluster sounds)
    # zero proposals also fall back to M
    none = MocaPipeline(model, proposals=FakeProposals(torch.zeros(0, 16, 16)), config=cfg)
    (res0,) = none.segment_batch(_frames(1, [(64, 64)]), _audio(1))
    assert res0.proposals == 0 and res0.used_fallback and res0.mask.all()


def test_bad_audio_shape_is_rejected(model: MocaModel) -> None:
    pipe = MocaPipeline(model)
    with pytest.raises(ValueError, match=r"audio must be \[B, 32000\].*got \(2, 16000\)"):
        pipe.segment_batch(_frames(2), np.zeros((2, 16000), np.float32))
    with pytest.raises(ValueError, match=r"B=3 frames, got \(2, 32000\)"):
        pipe.segment_batch(_frames(3), _audio(2))


def test_nonfinite_audio_is_rejected(model: MocaModel) -> None:
    pipe = MocaPipeline(model)
    audio = _audio(1)
    audio[0, 100] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        pipe.segment_batch(_frames(1), audio)
    audio[0, 100] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        pipe.segment_batch(_frames(1), audio)


def test_bad_frames_are_rejected(model: MocaModel) -> None:
    pipe = MocaPipeline(model)
    frames = _frames(2)
    with pytest.raises(
        ValueError, match=r"frame 1: expected a uint8 \[H, W, 3\] RGB array, got float32"
    ):
        pipe.segment_batch([frames[0], frames[1].astype(np.float32)], _audio(2))
    with pytest.raises(ValueError, match=r"frame 0: expected a uint8.*got uint8 \(48, 64\)"):
        pipe.segment_batch([frames[0][..., 0]], _audio(1))
    with pytest.raises(ValueError, match=r"frame 0: expected a uint8.*got uint8 \(48, 64, 4\)"):
        pipe.segment_batch([np.zeros((48, 64, 4), np.uint8)], _audio(1))


def test_bad_config_values_are_rejected() -> None:
    with pytest.raises(ValueError, match="num_clusters"):
        PipelineConfig(num_clusters=1)
    with pytest.raises(ValueError, match="mpm_metric"):
        PipelineConfig(mpm_metric="dice")  # type: ignore[arg-type]


def test_stream_yields_every_record_in_order(model: MocaModel) -> None:
    frames, audio = _frames(5, seed=7), _audio(5, seed=8)
    records = [MediaFrame(index=i, pts=i / 25, image=frames[i], audio=audio[i]) for i in range(5)]
    records.insert(2, MediaFrame(index=99, pts=0.07, image=None, audio=None, dropped=True))
    pipe = MocaPipeline(model, config=PipelineConfig(tau=-1.0))
    with pytest.raises(ValueError, match="batch_size"):
        list(pipe.stream(records, batch_size=0))
    out = list(pipe.stream(records, batch_size=2))
    assert [f.index for f, _ in out] == [0, 1, 99, 2, 3, 4]
    assert out[2][1] is None
    direct = pipe.segment_batch(frames, audio)
    got = [r for _, r in out if r is not None]
    assert len(got) == 5
    for a, b in zip(got, direct, strict=True):
        assert np.array_equal(a.mask, b.mask)


def test_boxes_must_match_frames(model: MocaModel) -> None:
    pipe = MocaPipeline(model)
    with pytest.raises(ValueError, match=r"boxes: expected one entry .* per frame, 2, got 1"):
        pipe.segment_batch(_frames(2), _audio(2), boxes=[None])


@requires_cuda
def test_cuda_runs_the_same_decisions() -> None:
    """The same frames on CUDA (fp32, default kernels): same gate, one result per frame."""
    torch.manual_seed(0)
    gpu_model = MocaModel.from_config(MOCA_PRESETS["moca_test"])
    cfg = PipelineConfig(tau=-1.0)
    frames, audio = _frames(3, seed=11), _audio(3, seed=12)
    audio[2] = 0.0
    gpu = MocaPipeline(gpu_model, config=cfg, device="cuda").segment_batch(frames, audio)
    cpu = MocaPipeline(MocaModel.from_config(MOCA_PRESETS["moca_test"]), config=cfg).segment_batch(
        frames, audio
    )
    for a, b in zip(cpu, gpu, strict=True):
        assert a.silent == b.silent and a.mask.shape == b.mask.shape
        assert b.mask.dtype == np.bool_
        assert abs(a.level_dbfs - b.level_dbfs) < 1e-3 or a.silent
        if not b.silent:
            assert b.chosen and all(np.isfinite(b.scores))


@pytest.mark.parametrize("invariant", [True, False])
def test_kmeans_batches_only_where_the_backend_is_batch_invariant(
    monkeypatch: pytest.MonkeyPatch, invariant: bool
) -> None:
    import moca_rt.kernels as kernels
    import moca_rt.kernels.kmeans as km
    from moca_rt import pipeline

    calls: list[int] = []
    real = kernels.cosine_kmeans

    def recording(x: torch.Tensor, k: int, **kw: object) -> km.KMeansResult:
        calls.append(x.shape[0])
        return real(x, k, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(kernels, "cosine_kmeans", recording)
    monkeypatch.setattr(km, "batch_invariant", lambda x, k: invariant)
    x = torch.randn(3, 16, 8, generator=torch.Generator().manual_seed(5))
    labels, iters = pipeline._kmeans_per_frame(x, PipelineConfig(num_clusters=3))
    assert calls == ([3] if invariant else [1, 1, 1])
    assert labels.shape == (3, 16) and labels.dtype == torch.int64
    assert iters.shape == (3,) and iters.dtype == torch.int32
