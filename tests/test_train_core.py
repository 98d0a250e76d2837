"""The shared training core: resume equals an uninterrupted run, best-on-val selection, logs."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from moca_rt.train.core import LoopSettings, run_stage, seeded_batch


class _Quadratic:
    """A tiny stage: fit w to a seeded target with SGD on seeded mini-batches."""

    name = "quadratic"

    def __init__(self, selection: str | None = "neg_error", fail_at: int | None = None) -> None:
        torch.manual_seed(0)
        self.selection = selection
        self.target = torch.randn(32, 4)
        self.w = torch.zeros(4, requires_grad=True)
        self.opt = torch.optim.SGD([self.w], lr=0.1, momentum=0.9)
        self.fail_at = fail_at
        self.saved: list[torch.Tensor] = []

    def train_step(self, step: int) -> dict[str, float]:
        if step == self.fail_at:
            raise KeyboardInterrupt
        idx = seeded_batch(3, step, 32, 8)
        loss = ((self.w - self.target[idx]) ** 2).mean()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return {"loss": float(loss.detach())}

    def evaluate(self) -> dict[str, float]:
        return {"neg_error": -float(((self.w.detach() - self.target.mean(0)) ** 2).sum())}

    def save_weights(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "w.pt"
        torch.save(self.w.detach().clone(), path)
        self.saved.append(self.w.detach().clone())
        return [path]

    def state_dict(self) -> dict[str, Any]:
        return {"w": self.w.detach().clone(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            self.w.copy_(state["w"])
        self.opt.load_state_dict(state["opt"])


def _settings(out: Path, **kw: Any) -> LoopSettings:
    return LoopSettings(
        out=out,
        iters=kw.pop("iters", 12),
        log_every=kw.pop("log_every", 4),
        save_every=kw.pop("save_every", 4),
        eval_every=kw.pop("eval_every", 4),
        threads=0,
        **kw,
    )


def test_seeded_batch_is_a_pure_permutation_per_epoch() -> None:
    epoch = [i for step in range(4) for i in seeded_batch(1, step, 32, 8)]
    assert sorted(epoch) == list(range(32))
    assert seeded_batch(1, 5, 32, 8) == seeded_batch(1, 5, 32, 8)
    assert seeded_batch(1, 4, 32, 8) != seeded_batch(1, 0, 32, 8)
    with pytest.raises(ValueError, match="batch"):
        seeded_batch(0, 0, 4, 8)


def test_resume_after_an_interrupt_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    whole = _Quadratic()
    res_whole = run_stage(whole, _settings(tmp_path / "a"), stream=io.StringIO())
    broken = _Quadratic(fail_at=6)
    with pytest.raises(KeyboardInterrupt):
        run_stage(broken, _settings(tmp_path / "b"), stream=io.StringIO())
    assert not (tmp_path / "b" / "done.json").exists()
    resumed = _Quadratic()
    out = io.StringIO()
    res = run_stage(resumed, _settings(tmp_path / "b"), stream=out)
    assert "resumed at step 4" in out.getvalue()
    assert torch.equal(resumed.w.detach(), whole.w.detach())
    assert res.metrics == res_whole.metrics
    # A finished stage is skipped on a rerun and reports the recorded result.
    again = io.StringIO()
    res_again = run_stage(_Quadratic(), _settings(tmp_path / "b"), stream=again)
    assert "skipped" in again.getvalue()
    assert res_again.selected_step == res.selected_step


def test_best_on_val_selection_and_logs(tmp_path: Path) -> None:
    stage = _Quadratic()
    out = io.StringIO()
    res = run_stage(stage, _settings(tmp_path), stream=out)
    evals = [e for e in res.evaluations]
    best = max(evals, key=lambda e: e["neg_error"])
    assert res.selected_step == best["step"]
    assert res.weights == tmp_path / "best"
    assert torch.equal(
        torch.load(tmp_path / "best" / "w.pt"),
        stage.saved[[e["step"] for e in evals].index(best["step"])],
    )
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if r["kind"] == "train"] == [4, 8, 12]
    assert [r["step"] for r in lines if r["kind"] == "eval"] == [0, 4, 8, 12]
    assert out.getvalue().count("[quadratic] step") == 3
    done = json.loads((tmp_path / "done.json").read_text())
    assert done["selected_step"] == res.selected_step


def test_without_selection_the_last_step_ships(tmp_path: Path) -> None:
    res = run_stage(
        _Quadratic(selection=None), _settings(tmp_path, eval_every=0), stream=io.StringIO()
    )
    assert res.selected_step == 12 and res.weights == tmp_path / "final"
    assert [e["step"] for e in res.evaluations] == [12]


def test_non_finite_loss_stops_the_run(tmp_path: Path) -> None:
    class Bad(_Quadratic):
        def train_step(self, step: int) -> dict[str, float]:
            return {"loss": float("nan")}

    with pytest.raises(FloatingPointError, match="not finite at step 0"):
        run_stage(Bad(), _settings(tmp_path), stream=io.StringIO())


def test_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="log_every"):
        LoopSettings(out=tmp_path, iters=3, log_every=0)
    with pytest.raises(ValueError, match="iters"):
        LoopSettings(out=tmp_path, iters=-1)


def test_stage_clis_share_the_loop_flags(tmp_path: Path) -> None:
    """The ImageBind and AdaAV stage CLIs train, checkpoint at each evaluation by default and
    write loadable weights (SAM's CLI has its own test in test_train_sam)."""
    from moca_rt.train import adaav_synth, imagebind_synth

    tiny = ["--iters", "2", "--train-scenes", "8", "--val-scenes", "4", "--batch", "4"]
    tiny += ["--eval-every", "1", "--log-every", "1"]
    assert imagebind_synth.main(["--out", str(tmp_path / "ib"), *tiny]) == 0
    weights = tmp_path / "ib" / "final" / "imagebind_synth.safetensors"
    assert weights.is_file()
    assert (
        adaav_synth.main(["--imagebind", str(weights), "--out", str(tmp_path / "ad"), *tiny]) == 0
    )
    for stage in ("ib", "ad"):
        done = json.loads((tmp_path / stage / "done.json").read_text())
        assert done["steps"] == 2
        assert [e["step"] for e in done["evaluations"]] == [0, 1, 2]
    settings = imagebind_synth.build_parser().parse_args(["--out", "x", "--eval-every", "7"])
    from moca_rt.train.core import loop_settings_from_args

    assert loop_settings_from_args(settings).save_every == 7


def test_config_flags_are_declared_once_from_the_dataclass() -> None:
    """A config field's flag, type and default come from the dataclass, and parsed flags go
    back into the fields of the same name (others excluded or given explicitly)."""
    import argparse
    from dataclasses import dataclass

    from moca_rt.train.core import add_config_argument, config_from_args

    @dataclass(frozen=True)
    class Config:
        size: int = 3
        rate: float = 0.5
        name: str = "a"
        limit: int | None = None
        fast: bool = False
        iters: int | None = None
        renamed: int = 1

    p = argparse.ArgumentParser()
    for field, kwargs in (
        ("size", {}),
        ("rate", {}),
        ("name", {"choices": ["a", "b"]}),
        ("limit", {"type": int}),
        ("fast", {}),
    ):
        add_config_argument(p, Config(), field, f"The {field}.", **kwargs)
    p.add_argument("--iters", type=int, default=9)
    p.add_argument("--other", type=int, default=4)
    defaults = p.parse_args([])
    assert (defaults.size, defaults.rate, defaults.name, defaults.limit, defaults.fast) == (
        3,
        0.5,
        "a",
        None,
        False,
    )
    args = p.parse_args(["--size", "7", "--rate", "2", "--name", "b", "--limit", "5", "--fast"])
    assert isinstance(args.rate, float) and args.limit == 5
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "c"])
    config = config_from_args(Config(), args, exclude=("iters",), renamed=args.other)
    assert config == Config(size=7, rate=2.0, name="b", limit=5, fast=True, renamed=4)
    assert config_from_args(Config(), args).iters == 9


def test_sam_cli_leaves_the_schedule_length_to_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--iters`` of the SAM CLI is the run's step count, not ``SamTrainConfig.iters``."""
    from moca_rt.train import sam_synth
    from moca_rt.train.core import StageResult

    seen: list[Any] = []

    def fake_train(config: Any, settings: LoopSettings) -> StageResult:
        seen.append((config, settings))
        return StageResult("sam", settings.iters, settings.iters, {}, settings.out, 0.0)

    monkeypatch.setattr(sam_synth, "train_sam", fake_train)
    assert sam_synth.main(["--out", "x", "--iters", "9", "--prompts", "3", "--seed", "2"]) == 0
    config, settings = seen[0]
    assert config.iters is None and settings.iters == 9
    assert config.prompts_per_image == 3 and config.seed == 2


def test_a_resumed_adaav_stage_keeps_training_its_adapters(tmp_path: Path) -> None:
    """The AdaAV stage's state loads *into* the parameters Adam holds: loading by replacing
    them (``load_adapter_state_dict``, ``assign=True``) left Adam stepping orphaned tensors, so
    a resumed stage never changed its adapters again."""
    import copy

    from safetensors.torch import save_file

    from moca_rt.train.adaav_synth import AdaavStage, AdaavStageConfig
    from moca_rt.train.pretrain_imagebind import PretrainConfig, init_model, official_state_dict

    weights = tmp_path / "imagebind.safetensors"
    save_file(official_state_dict(init_model(PretrainConfig(preset="imagebind_synth"))), weights)
    config = AdaavStageConfig(
        imagebind=str(weights), train_scenes=8, val_scenes=4, batch=4, alpha=5.0, image_size=56
    )
    stage = AdaavStage(config, iters=4)
    stage.train_step(0)
    saved = copy.deepcopy(stage.state_dict())
    stage.train_step(1)
    straight = {k: v.clone() for k, v in stage.model.adapter_state_dict().items()}
    assert any(not torch.equal(v, saved["adapters"][k]) for k, v in straight.items())

    stage.load_state_dict(saved)
    held = {id(p) for group in stage.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in held for p in stage.model.trainable_parameters())
    for k, v in stage.model.adapter_state_dict().items():
        assert torch.equal(v, saved["adapters"][k])
    stage.train_step(1)
    for k, v in stage.model.adapter_state_dict().items():
        torch.testing.assert_close(v, straight[k], rtol=1e-5, atol=1e-7)
