"""Every input gets a clear answer (issue 10): one test (or more) per numbered item.

Each broken-input test builds its input itself (``media_factory``) and checks the exit code,
the message, what was written and, once outputs exist, that ``summary.json`` records it. The
models are the tiny ``moca_test`` preset with seeded random weights (plumbing only).
"""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import av
import media_factory as mf
import numpy as np
import pytest
import torch
from PIL import Image

from moca_rt import build, evaluate, infer, infer_job
from moca_rt.datasets.__main__ import run_generate
from moca_rt.sinks import decode_rle, read_jsonl

TINY = ["--preset", "moca_test", "--proposals", "none", "--no-progress", "--device", "cpu"]
REPO = Path(__file__).resolve().parents[1]


def _run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = infer.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _image(path: Path, height: int = 32, width: int = 40) -> Path:
    Image.fromarray(mf.make_frame(0, height, width)).save(path)
    return path


# ---- 1: float garbage in a WAV; any escaping exception is an exit code and in summary.json


def _garbage_wave(seconds: float = 2.0) -> np.ndarray:
    rng = np.random.default_rng(0)
    wave = mf.sine(440.0, 16000, seconds)
    wave[0, ::7] = rng.uniform(-3.4e38, 3.4e38, wave[0, ::7].shape).astype(np.float32)
    assert np.isfinite(wave).all() and np.abs(wave).max() > 1e38
    return wave


def test_garbage_float_wav_is_clipped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = mf.write_float_wav(tmp_path / "garbage.wav", _garbage_wave(), 16000)
    out = tmp_path / "out"
    code, _, err = _run(capsys, _image(tmp_path / "f.png"), "--audio", wav, "--out", out, *TINY)
    assert code == infer.EXIT_OK, err
    assert "Traceback" not in err and "warning: decoded audio holds samples up to" in err
    summary = _summary(out)
    assert summary["error"] is None and any("clipped" in w for w in summary["warnings"])
    (rec,) = read_jsonl(out / "records.jsonl")
    assert np.isfinite(rec["level_dbfs"]) and all(np.isfinite(rec["scores"]))


def test_garbage_float_wav_in_a_frame_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, wav = mf.write_avsbench_clip(tmp_path / "avs", "garbage", num_frames=3)
    mf.write_float_wav(wav, _garbage_wave(3.0), 16000)
    out = tmp_path / "out"
    code, _, err = _run(capsys, frames, "--out", out, *TINY)
    assert code == 0, err
    assert len(read_jsonl(out / "records.jsonl")) == 3
    assert any("clipped" in w for w in _summary(out)["warnings"])


def test_an_unexpected_error_is_exit_6_and_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moca_rt.pipeline import MocaPipeline

    def broken(self: object, *args: object, **kwargs: object) -> object:
        raise ValueError("waveform: expected finite samples, got NaN or inf")

    monkeypatch.setattr(MocaPipeline, "stream", broken)
    wav = mf.write_wav(tmp_path / "x.wav", mf.sine(440.0, 16000, 2.0), 16000)
    out = tmp_path / "out"
    code, _, err = _run(capsys, _image(tmp_path / "f.png"), "--audio", wav, "--out", out, *TINY)
    assert code == infer.EXIT_INTERNAL == 6
    assert "Traceback" not in err
    assert "error: unexpected ValueError: waveform: expected finite samples" in err
    assert _summary(out)["error"] == "ValueError: waveform: expected finite samples, got NaN or inf"


# ---- 2: silent substitutions are said


def test_audio_shorter_than_a_window_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = mf.write_wav(tmp_path / "short.wav", mf.sine(440.0, 16000, 0.2), 16000)
    out = tmp_path / "out"
    code, _, err = _run(capsys, _image(tmp_path / "f.png"), "--audio", wav, "--out", out, *TINY)
    assert code == 0, err
    expected = "the audio lasts 0.20 s, shorter than the 2 s window of a frame"
    assert f"warning: {expected}" in err
    assert any(expected in w for w in _summary(out)["warnings"])


def test_one_frame_video_with_longer_audio_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = mf.write_video(
        tmp_path / "one.mp4", num_frames=1, height=32, width=32, audio_duration=4.0
    )
    out = tmp_path / "out"
    code, _, err = _run(capsys, one, "--out", out, *TINY)
    assert code == 0, err
    assert re.search(r"warning: one video frame against 4\.\d\d s of audio", err), err
    assert len(read_jsonl(out / "records.jsonl")) == 1


# ---- 3 and 4: errors before any output leave nothing; the input is checked before models load


@pytest.fixture
def no_model_load(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record calls of build_pipeline (a bad input must be reported before it)."""
    calls: list[object] = []
    real = build.build_pipeline

    def spy(settings: object) -> object:
        calls.append(settings)
        return real(settings)  # type: ignore[arg-type]

    monkeypatch.setattr(build, "build_pipeline", spy)
    return calls


def test_bad_input_is_reported_before_models_load_and_leaves_nothing(
    tmp_path: Path, no_model_load: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    mute = mf.write_video(tmp_path / "mute.mp4", num_frames=3, height=32, width=32, audio_rate=None)
    cases = {
        "missing": (tmp_path / "nope.mp4", "not found"),
        "empty": (mf.write_zero_byte(tmp_path / "empty.mp4"), "empty"),
        "no audio": (mute, "pass --allow-silent"),
    }
    for name, (source, message) in cases.items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        code, _, err = _run(capsys, source, "--out", out, *TINY)
        assert code == infer.EXIT_BAD_INPUT, (name, err)
        assert message in err and "Traceback" not in err, name
        assert not out.exists(), f"{name}: an exit-3 error left {out} behind"
    assert no_model_load == []  # reported before any model was built


def test_out_inside_a_file_is_reported_before_models_load(
    tmp_path: Path, no_model_load: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    clip = mf.write_video(tmp_path / "c.mp4", num_frames=2, height=32, width=32)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    code, _, err = _run(capsys, clip, "--out", blocker / "out", *TINY)
    assert code == 3 and f"but {blocker} is a file" in err
    assert no_model_load == []


def test_truncated_mp4_with_its_index_at_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = mf.write_video(tmp_path / "full.mp4", num_frames=25, height=32, width=32)
    with av.open(str(full)) as c:  # PyAV writes the moov box last
        assert c.format.name.startswith("mov")
    data = full.read_bytes()
    assert data.rfind(b"moov") > len(data) // 2
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code, _, err = _run(capsys, cut, "--out", out, *TINY)
    assert code == 3
    assert "truncated" in err and "moov" in err and "Invalid data found" in err
    assert not out.exists()


def test_unreachable_rtsp_host_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:  # a free port: nothing listens there once it is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, _, err = _run(
        capsys, f"rtsp://127.0.0.1:{port}/cam", "--out", tmp_path / "out", *TINY, "--timeout", "2"
    )
    assert code == 3
    assert f"nothing listens on 127.0.0.1:{port} (connection refused)" in err
    assert not (tmp_path / "out").exists()


def test_bad_box_file_is_named_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    clip = mf.write_video(tmp_path / "c.mp4", num_frames=2, height=32, width=32)
    boxes = tmp_path / "boxes.json"
    boxes.write_text("{not json")
    code, _, err = _run(capsys, clip, "--out", tmp_path / "out", *TINY, "--boxes", boxes)
    assert code == 3
    assert err.count(str(boxes)) == 1, err


# ---- 5: infer -> evaluate with no renaming; a whole split as SOURCE


def test_frame_folder_masks_carry_the_ground_truth_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    frames, _ = mf.write_avsbench_clip(tmp_path / "avs", "bento_000", num_frames=5)
    gt = tmp_path / "gt"
    gt.mkdir()
    for k in range(1, 6):  # AVSBench S4 ground truth: <vid>_<k>.png, 0/255
        Image.fromarray(np.full((48, 64), 255 * (k % 2), np.uint8)).save(gt / f"bento_000_{k}.png")
    out = tmp_path / "out"
    code, _, err = _run(capsys, frames, "--out", out, *TINY)
    assert code == 0, err
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        f"bento_000_{k}.png" for k in range(1, 6)
    ]
    for rec in read_jsonl(out / "records.jsonl"):
        png = np.asarray(Image.open(out / rec["mask_file"]))
        assert rec["mask_file"] == f"masks/bento_000_{rec['index'] + 1}.png"
        assert np.array_equal(decode_rle(rec) * 255, png)
    assert evaluate.main(["--pred", str(out / "masks"), "--gt", str(gt), "--split", "s4"]) == 0


@pytest.fixture(scope="module")
def s4_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("s4_split") / "S4"
    run_generate(root, "s4", num=3, size=64, partition="test", progress=False)
    return root


def test_split_root_then_evaluate_without_renaming(
    s4_split: Path, tmp_path: Path, no_model_load: list[object], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, s4_split, "--out", out, *TINY)
    assert code == 0, err
    assert len(no_model_load) == 1  # one model load for every video of the split
    assert "3 videos (3 ok, 0 failed), 15 frames" in stdout
    gt_root = s4_split / "s4_data" / "gt_masks"
    gt = sorted(p.relative_to(gt_root) for p in gt_root.rglob("*.png"))
    pred = sorted(p.relative_to(out / "masks") for p in (out / "masks").rglob("*.png"))
    assert pred == gt and len(gt) == 15
    summary = _summary(out)
    assert summary["ok"] == 3 and summary["error"] is None
    for video in summary["per_video"]:  # one JSONL per video
        assert len(read_jsonl(Path(video["out"]) / "records.jsonl")) == 5
    code = evaluate.main(["--pred", str(out / "masks"), "--gt", str(gt_root), "--split", "s4"])
    assert code == 0
    assert re.search(r"videos +3\n", capsys.readouterr().out)


def test_split_index_csv_and_a_bad_video(
    s4_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    broken = tmp_path / "S4"
    shutil.copytree(s4_split, broken)
    wavs = sorted((broken / "s4_data" / "audio_wav").rglob("*.wav"))
    wavs[1].write_bytes(b"RIFF not really a wav")  # the second video's audio is broken
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, broken / "s4_meta_data.csv", "--out", out, *TINY)
    assert code == infer.EXIT_DECODE_ERROR, err
    assert "2 ok, 1 failed" in stdout and "1 of 3 videos failed" in err
    summary = _summary(out)
    bad = [v for v in summary["per_video"] if v["error"]]
    assert len(bad) == 1 and wavs[1].stem in bad[0]["video"] and str(wavs[1]) in bad[0]["error"]
    assert summary["ok"] == 2 and summary["error"].startswith("1 of 3 videos failed")
    written = {p.parent.name for p in (out / "masks").rglob("*.png")}
    assert len(written) == 2 and wavs[1].stem not in written


def test_index_split_selects_rows(
    s4_split: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, s4_split, "--out", out, *TINY, "--index-split", "val")
    assert code == 3 and "expected at least one video of split 'val'" in err
    assert not out.exists()


def test_split_as_a_folder_tree(s4_split: Path, tmp_path: Path) -> None:
    from moca_rt.datasets.avsbench import is_split_root, split_videos

    tree = s4_split / "s4_data" / "visual_frames" / "test"
    assert is_split_root(tree) and is_split_root(s4_split)
    one_video = next(p for p in tree.rglob("*") if p.is_dir() and any(p.glob("*.png")))
    assert not is_split_root(one_video)
    split = split_videos(tree)
    assert split.subset == "tree" and len(split.videos) == 3
    gt = s4_split / "s4_data" / "gt_masks" / "test"
    for video in split.videos:  # the tree's paths mirror the ground truth's below the split
        for name in video.mask_names:
            assert (gt / video.mask_dir / name).is_file()


# ---- 6: evaluate's default batch is AVSBench test.sh's --test_batch_size 4


def test_evaluate_default_batch_is_four(tmp_path: Path) -> None:
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    rng = np.random.default_rng(0)
    for v in range(5):
        for k in range(1, 3):
            g = np.zeros((16, 16), np.uint8) if v == 0 else rng.integers(0, 2, (16, 16)) * 255
            p = rng.integers(0, 2, (16, 16)) * 255
            for root, arr in ((gt, g), (pred, p)):
                (root / f"v{v}").mkdir(parents=True, exist_ok=True)
                Image.fromarray(arr.astype(np.uint8)).save(root / f"v{v}" / f"v{v}_{k}.png")
    default = evaluate.run_evaluate(pred, gt, "s4")
    four = evaluate.run_evaluate(pred, gt, "s4", batch_videos=4)
    one = evaluate.run_evaluate(pred, gt, "s4", batch_videos=1)
    assert default["batch_videos"] == 4 and default["num_batches"] == 2
    assert default["fscore"] == four["fscore"] and default["miou"] == four["miou"]
    assert default["fscore"] != one["fscore"]  # the F-score depends on the batching
    assert evaluate.DEFAULT_BATCH_VIDEOS == {"s4": 4, "ms3": 4, "avss": 4}


# ---- 7: options that do nothing say so; the overlay of an image + wav has its audio


def test_sam_preset_without_sam_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clip = mf.write_video(tmp_path / "c.mp4", num_frames=2, height=32, width=32)
    args = [clip, "--out", tmp_path / "out", "--preset", "moca_test", "--no-progress"]
    code, _, err = _run(capsys, *args, "--device", "cpu", "--sam-preset", "sam_vit_b")
    assert code == 0, err
    assert "note: --sam-preset sam_vit_b ignored: no SAM runs without --sam weights" in err


def test_image_with_wav_overlay_has_the_audio(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = mf.write_wav(tmp_path / "x.wav", mf.sine(440.0, 16000, 2.0), 16000)
    out = tmp_path / "out"
    code, _, err = _run(
        capsys, _image(tmp_path / "f.png"), "--audio", wav, "--out", out, *TINY, "--overlay"
    )
    assert code == 0, err
    with av.open(str(out / "overlay.mp4")) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        rate = c.streams.audio[0].rate
        samples = sum(f.samples for f in c.decode(audio=0))
    assert samples >= 0.9 * 2.0 * rate  # the 2 s of the wav


# ---- 8: network sources take --timeout


def test_idle_udp_source_fails_within_the_timeout(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    started = time.monotonic()
    code, _, err = _run(capsys, f"udp://127.0.0.1:{port}", "--out", out, *TINY, "--timeout", "1")
    took = time.monotonic() - started
    assert code == 3, err
    assert "no stream data arrived within 1 s" in err and not out.exists()
    # the input is opened before any model loads; without --timeout this took about 9 s
    assert took < 5.0, f"an idle UDP source with --timeout 1 took {took:.1f} s to fail"


# ---- 9: threads


def test_thread_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    from moca_rt import threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(threads, "available_cpus", lambda: 2)
        monkeypatch.delenv(threads.THREADS_ENV, raising=False)
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
        assert threads.default_threads() == 1  # spinning workers: leave a core free
        monkeypatch.setenv("OMP_WAIT_POLICY", "passive")
        assert threads.default_threads() == 2  # sleeping workers: every core
        monkeypatch.setattr(threads, "available_cpus", lambda: 64)
        assert threads.default_threads() == 8
        monkeypatch.setenv(threads.THREADS_ENV, "3")
        assert threads.default_threads() == 3
        monkeypatch.setenv(threads.THREADS_ENV, "zero")
        with pytest.raises(ValueError, match="MOCA_THREADS"):
            threads.default_threads()
        assert threads.configure_threads(2) == 2 == torch.get_num_threads()
        assert threads.configured_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = torch.get_num_threads()
    wav = mf.write_wav(tmp_path / "x.wav", mf.sine(440.0, 16000, 2.0), 16000)
    try:
        args = [_image(tmp_path / "f.png"), "--audio", wav, "--out", tmp_path / "o", *TINY]
        torch.set_num_threads(2)
        code, _, err = _run(capsys, *args, "--threads", "1")
        assert code == 0, err
        assert "note: 1 CPU thread(s) for the compute (--threads)" in err
        assert _summary(tmp_path / "o")["notes"][0].startswith("1 CPU thread(s)")
        assert torch.get_num_threads() == 2  # the caller's count is restored
        with pytest.raises(SystemExit) as exc:
            infer.main([*map(str, args), "--threads", "0"])
        assert exc.value.code == 2 and "--threads: expected >= 1" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


# ---- 10: the README's test command is what CI runs


def test_readme_test_command_matches_ci() -> None:
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    checks = ["ruff check .", "ruff format --check .", "mypy moca_rt kernels export train"]
    checks.append("python -m pytest -q")
    section = readme[readme.index("Run the checks and tests") :][:1500]
    for check in checks:
        assert check in ci, f".ci/run does not run {check!r}"
        assert check in section, f"the README's test command lacks {check!r}"
    assert re.search(r"about \d+ minutes", section), "the README should say how long it takes"


def test_demo_options_unchanged() -> None:
    """``infer``'s names of earlier releases stay importable (the job moved to infer_job)."""
    assert infer.InferOptions is infer_job.InferOptions and infer.run_infer is infer_job.run_infer
