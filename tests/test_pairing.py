"""kNN pairing table: exact top-K in tiles, sampling rules, save/load, featurisers, CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, requires_cuda
from PIL import Image

from moca_rt.config import DINO_PRESETS
from moca_rt.modeling.dino import load_dino, preprocess_dino
from moca_rt.train.pairing import (
    DinoFeaturiser,
    PairingTable,
    compute_features,
    knn_table,
    load_table,
    main,
    sample_negatives,
    sample_positive,
    save_table,
)


def _brute_force(features: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 full matrix; order by (cosine desc, index asc), self excluded."""
    f = features.double()
    f = f / f.norm(dim=1, keepdim=True)
    sim = (f @ f.T).numpy()
    n = sim.shape[0]
    idx = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        others = np.array([j for j in range(n) if j != i])
        order = np.lexsort((others, -sim[i, others]))[:k]
        idx[i] = others[order]
    return torch.from_numpy(idx), torch.from_numpy(np.take_along_axis(sim, idx, 1))


def _assert_same_topk(ours: tuple[torch.Tensor, torch.Tensor], features: torch.Tensor, k: int):
    idx, sims = ours
    ref_idx, ref_sims = _brute_force(features, k)
    n = features.shape[0]
    assert idx.shape == (n, k) and idx.dtype == torch.int64 and sims.dtype == torch.float32
    assert not (idx == torch.arange(n)[:, None]).any()
    torch.testing.assert_close(sims.double(), ref_sims, rtol=0, atol=2e-6)
    differ = idx != ref_idx
    # Only rows whose float32 cosines tie within rounding may order differently.
    if differ.any():
        f = torch.nn.functional.normalize(features.double(), dim=1)
        ours_true = (f[torch.arange(n)[:, None], :] * f[idx]).sum(-1)
        torch.testing.assert_close(ours_true[differ], ref_sims[differ], rtol=0, atol=2e-6)
    return differ.sum().item()


@pytest.mark.parametrize(
    ("n", "e", "k", "chunk"), [(257, 24, 10, 64), (100, 8, 5, 7), (50, 16, 49, 4096), (31, 5, 3, 1)]
)
def test_knn_table_equals_brute_force(n: int, e: int, k: int, chunk: int) -> None:
    gen = torch.Generator().manual_seed(n * 1000 + chunk)
    feats = torch.randn(n, e, generator=gen) * torch.rand(n, 1, generator=gen).add(0.5)
    out = knn_table(feats, k=k, chunk=chunk)
    differ = _assert_same_topk(out, feats, k)
    print(f"knn n={n} e={e} k={k} chunk={chunk}: {differ} index positions differ at float ties")
    assert (out[1][:, :-1] >= out[1][:, 1:]).all()


def test_knn_ties_are_broken_by_lower_index_for_every_chunk() -> None:
    """Vectors in {0, +-0.5}^8 with four non-zeros: exact unit norm, dot products exact in
    float32, many exact ties (and exact duplicates) -- the order must be index ascending."""
    gen = torch.Generator().manual_seed(7)
    rows = []
    for _ in range(90):
        v = torch.zeros(8)
        pos = torch.randperm(8, generator=gen)[:4]
        v[pos] = torch.where(torch.rand(4, generator=gen) < 0.5, -0.5, 0.5)
        rows.append(v)
    feats = torch.stack(rows)
    ref_idx, ref_sims = _brute_force(feats, 12)
    for chunk in (1, 5, 13, 64, 90, 4096):
        idx, sims = knn_table(feats, k=12, chunk=chunk)
        assert torch.equal(idx, ref_idx), f"chunk {chunk}"
        assert torch.equal(sims.double(), ref_sims), f"chunk {chunk}"


def test_knn_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match=r"k: expected 1 <= k <= N - 1 = 4, got 5"):
        knn_table(torch.randn(5, 3), k=5)
    with pytest.raises(ValueError, match=r"features: expected \[N >= 2"):
        knn_table(torch.randn(5), k=1)
    with pytest.raises(ValueError, match="finite"):
        knn_table(torch.tensor([[1.0, float("nan")], [1.0, 0.0]]), k=1)
    with pytest.raises(ValueError, match="chunk"):
        knn_table(torch.randn(5, 3), k=1, chunk=0)


def _table(n: int = 60, k: int = 6, seed: int = 0) -> PairingTable:
    gen = torch.Generator().manual_seed(seed)
    return PairingTable.build(torch.randn(n, 12, generator=gen), k=k, featuriser="test")


def test_positives_are_always_in_the_top_k_and_cover_it() -> None:
    table = _table()
    gen = torch.Generator().manual_seed(1)
    anchors = torch.arange(table.n).repeat(40)
    pos = sample_positive(table, anchors, gen)
    assert isinstance(pos, torch.Tensor) and pos.shape == anchors.shape
    hits = (table.indices[anchors] == pos[:, None]).sum(1)
    assert (hits == 1).all()
    # every neighbour slot is drawn: 40 draws per anchor over 6 slots
    seen = {(int(a), int(p)) for a, p in zip(anchors, pos, strict=True)}
    assert len(seen) > 0.95 * table.n * table.k
    one = sample_positive(table, 3, gen)
    assert isinstance(one, int) and one in table.indices[3].tolist()
    with pytest.raises(ValueError, match=r"anchor_idx: expected dataset indices in \[0, 60\)"):
        sample_positive(table, 60, gen)


def test_negatives_never_hit_anchor_or_its_top_k() -> None:
    table = _table(n=40, k=5)
    gen = torch.Generator().manual_seed(2)
    perm_used = set()
    for _ in range(400):
        batch = torch.randperm(table.n, generator=gen)[:8]
        neg = sample_negatives(batch, table, gen)
        assert sorted(neg.tolist()) == sorted(batch.tolist())  # a shuffle of the batch
        assert not (neg == batch).any()
        assert not (table.indices[batch] == neg[:, None]).any(1).any()
        perm_used.add(tuple((neg[:, None] == batch[None, :]).int().argmax(1).tolist()))
    assert len(perm_used) > 300  # random, not one fixed shuffle


def test_negatives_fall_back_to_matching_and_fail_clearly() -> None:
    # Hand-made table where item 0's top-K covers the rest of the batch but one item: the only
    # valid shuffles send that item to anchor 0; rejection rarely finds them in 1 try.
    n = 12
    nbrs = torch.tensor(
        [[(i + j) % n for j in range(1, 5)] for i in range(n)], dtype=torch.int64
    )  # item i's top-4 = i+1..i+4
    table = PairingTable(nbrs, torch.ones(n, 4), "hand", "2026-01-01T00:00:00+00:00")
    batch = torch.tensor([0, 1, 2, 3, 4, 5])
    for s in range(50):
        neg = sample_negatives(batch, table, torch.Generator().manual_seed(s), max_tries=1)
        assert int(neg[0]) == 5
        assert not (table.indices[batch] == neg[:, None]).any(1).any()
        assert not (neg == batch).any()
    with pytest.raises(ValueError, match="at least 2"):
        sample_negatives(torch.tensor([3]), table, torch.Generator())
    # batch {0..4}: anchor 0 forbids 1..4 and itself -> no valid shuffle
    with pytest.raises(ValueError, match=r"anchor 0 has 0 allowed.*smaller K"):
        sample_negatives(torch.tensor([0, 1, 2, 3, 4]), table, torch.Generator())
    with pytest.raises(ValueError, match="int64"):
        sample_negatives(torch.tensor([0.0, 1.0]), table, torch.Generator())


def test_save_load_round_trip(tmp_path: Path) -> None:
    ids = [f"img/{i:03d}.png" for i in range(60)]
    gen = torch.Generator().manual_seed(0)
    table = PairingTable.build(
        torch.randn(60, 12, generator=gen), k=6, featuriser="x", item_ids=ids
    )
    path = tmp_path / "table.safetensors"
    save_table(table, path)
    back = load_table(path)
    assert torch.equal(back.indices, table.indices) and torch.equal(back.sims, table.sims)
    assert (back.k, back.n, back.featuriser, back.created) == (6, 60, "x", table.created)
    assert back.item_ids == tuple(ids)
    bare = PairingTable(table.indices, table.sims, "y", table.created)
    save_table(bare, path)
    assert load_table(path).item_ids is None
    from safetensors.torch import save_file

    save_file({"indices": table.indices}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match=r"moca_rt\.pairing"):
        load_table(tmp_path / "other.safetensors")


def test_table_validates_itself() -> None:
    idx = torch.tensor([[1], [0], [0]])
    PairingTable(idx, torch.zeros(3, 1), "x", "t")
    with pytest.raises(ValueError, match="itself"):
        PairingTable(torch.tensor([[0], [0], [0]]), torch.zeros(3, 1), "x", "t")
    with pytest.raises(ValueError, match=r"expected values in \[0, 3\)"):
        PairingTable(torch.tensor([[1], [3], [0]]), torch.zeros(3, 1), "x", "t")
    with pytest.raises(ValueError, match="float32"):
        PairingTable(idx, torch.zeros(3, 1, dtype=torch.float64), "x", "t")


@pytest.fixture(scope="module")
def dino_test_model():
    return load_dino(FIXTURES / "dino" / "weights.safetensors", DINO_PRESETS["dino_test"])


def test_dino_featuriser_and_compute_features(dino_test_model) -> None:
    img = np.asarray(Image.open(FIXTURES / "dino" / "input_224.png").convert("RGB"))
    images = [img, img[::-1].copy(), img[:, ::-1].copy(), img, np.roll(img, 40, axis=0)]
    cls = DinoFeaturiser(dino_test_model, "cls")
    gap = DinoFeaturiser(dino_test_model, "gap")
    feats = compute_features(cls, images, batch_size=2)
    assert feats.shape == (5, 96) and feats.dtype == torch.float32
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(5))
    with torch.no_grad():
        tokens = dino_test_model.forward_tokens(preprocess_dino(np.stack(images)))
    torch.testing.assert_close(
        feats, torch.nn.functional.normalize(tokens[:, 0], dim=1), rtol=1e-5, atol=1e-5
    )
    feats_gap = compute_features(gap, iter(images), batch_size=4)
    torch.testing.assert_close(
        feats_gap, torch.nn.functional.normalize(tokens[:, 1:].mean(1), dim=1), rtol=1e-5, atol=1e-5
    )
    assert cls.name.endswith(":cls") and gap.name.endswith(":gap")
    # identical images 0 and 3 are each other's nearest neighbour with cosine 1
    idx, sims = knn_table(feats, k=2)
    assert idx[0, 0] == 3 and idx[3, 0] == 0 and sims[0, 0] > 0.9999
    with pytest.raises(ValueError, match="one size within a batch"):
        compute_features(cls, [img, img[:160]], batch_size=2)
    resized = compute_features(cls, [img, img[:160]], batch_size=2, image_size=112)
    assert resized.shape == (2, 96)


def test_compute_features_with_any_callable() -> None:
    def mean_colour(batch: torch.Tensor) -> torch.Tensor:
        return batch.float().mean(dim=(1, 2))

    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (16, 20, 3), dtype=np.uint8) for _ in range(7)]
    feats = compute_features(mean_colour, images, batch_size=3)
    expected = torch.stack([torch.from_numpy(im).double().mean((0, 1)) for im in images])
    torch.testing.assert_close(feats.double(), torch.nn.functional.normalize(expected, dim=1))
    with pytest.raises(ValueError, match=r"featuriser: expected \[3, E\]"):
        compute_features(lambda b: b.float().mean(dim=(0, 1, 2)), images, batch_size=3)
    with pytest.raises(ValueError, match="uint8"):
        compute_features(mean_colour, [np.zeros((4, 4, 3), np.float32)])


def test_cli_writes_a_table(tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(9):
        Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    out = tmp_path / "t.safetensors"
    args = ["--images", str(folder), "--out", str(out), "--k", "3", "--preset", "dino_test"]
    assert main([*args, "--random-weights", "0", "--image-size", "32", "--batch-size", "4"]) == 0
    table = load_table(out)
    assert (table.n, table.k) == (9, 3) and table.item_ids == tuple(f"{i}.png" for i in range(9))
    assert main([*args, "--k", "9", "--random-weights", "0"]) == 2
    assert main(args) == 2  # neither weights nor random weights


@requires_cuda
def test_knn_table_on_cuda_matches_cpu() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    gen = torch.Generator().manual_seed(5)
    feats = torch.randn(700, 64, generator=gen)
    for chunk in (128, 300, 4096):
        cuda_idx, cuda_sims = knn_table(feats, k=10, chunk=chunk, device="cuda")
        assert cuda_idx.device.type == "cpu"
        _assert_same_topk((cuda_idx, cuda_sims), feats, 10)
    signs = torch.where(torch.rand(90, 8, generator=gen) < 0.5, -0.5, 0.5)
    ties = signs * (torch.rand(90, 8, generator=gen).argsort(1) < 4)
    assert torch.equal(knn_table(ties, 12, 13, "cuda")[0], knn_table(ties, 12, 13)[0])


def test_negatives_are_redrawn_from_all_items_when_the_batch_has_no_shuffle() -> None:
    from moca_rt.train.pairing import sample_negatives_or_redraw

    # Class pairing with one class filling 6 of a batch of 8: no valid shuffle exists (the
    # crash of `adaav --pairing class` at batch 8); negatives come from the whole set instead.
    classes = torch.tensor([0] * 6 + [1] * 2 + [2] * 8 + [3] * 8)
    rows = []
    for i in range(len(classes)):
        mates = torch.nonzero(classes == classes[i]).squeeze(1)
        mates = mates[mates != i]
        rows.append(mates[torch.arange(7) % mates.numel()])
    table = torch.stack(rows)
    batch = torch.arange(8)
    with pytest.raises(ValueError, match="cannot draw negatives"):
        sample_negatives(batch, table, torch.Generator().manual_seed(0))
    for s in range(20):
        neg = sample_negatives_or_redraw(
            batch, table, torch.Generator().manual_seed(s), len(classes)
        )
        assert (classes[neg] != classes[batch]).all()
        assert torch.equal(
            neg,
            sample_negatives_or_redraw(
                batch, table, torch.Generator().manual_seed(s), len(classes)
            ),
        )
    # A batch that has a valid shuffle keeps the paper's rule (a permutation of the batch).
    ok = torch.tensor([0, 6, 8, 16])
    neg = sample_negatives_or_redraw(ok, table, torch.Generator().manual_seed(1), len(classes))
    assert sorted(neg.tolist()) == sorted(ok.tolist())
