"""``python -m moca_rt.infer`` end to end and on bad input (issue 5), with tiny random models.

The CLI runs in-process through ``main([...])`` (exit code, stdout/stderr via capsys) except
for Ctrl-C, which needs a real process and a real SIGINT. Models are the ``moca_test`` preset
(and ``sam_synth`` for proposals) with seeded random weights, so only the plumbing is checked:
one record per input frame, masks that match their PNGs, exit codes, messages and that outputs
written before a failure are kept.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import media_factory as mf
import numpy as np
import pytest
import torch
from conftest import requires_cuda
from PIL import Image

from moca_rt import infer, infer_job
from moca_rt.sinks import decode_rle, read_jsonl

QUIET_CPU = ["--no-progress", "--device", "cpu"]
TINY = ["--preset", "moca_test", "--proposals", "none", *QUIET_CPU]
# the tiny test models with the tiny SAM
TINY_SAM = ["--preset", "moca_test", "--sam-preset", "sam_synth", *QUIET_CPU]


def _run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = infer.main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _count_video_frames(path: Path) -> int:
    with av.open(str(path)) as c:
        return sum(1 for _ in c.decode(video=0))


def _check_records_match_pngs(out: Path) -> list[dict]:
    records = read_jsonl(out / "records.jsonl")
    for rec in records:
        if rec["dropped"]:
            assert rec["mask"] is None
            continue
        assert rec["mask_file"] == f"masks/{rec['index']:06d}.png"
        png = np.asarray(Image.open(out / rec["mask_file"]))
        assert np.array_equal(decode_rle(rec) * 255, png), f"frame {rec['index']}"
    return records


@pytest.fixture(scope="module")
def media(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("infer_media")


@pytest.fixture(scope="module")
def clip(media: Path) -> Path:
    """10 frames 64x64 at 25 fps with a 48 kHz mono sine (H.264 + AAC)."""
    return mf.write_video(media / "clip.mp4", num_frames=10, height=64, width=64)


@pytest.fixture(scope="module")
def synth_clip(media: Path) -> Path:
    """A synthetic-world video (moving shapes, sounds switching) of 10 frames at 64x64."""
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4

    scene = SynthWorld(0, image_size=64, video_seconds=0.4).sample("video", 0)
    return write_mp4(
        media / "synth.mp4", scene.frames, scene.audio, fps=25.0, sample_rate=scene.sample_rate
    )


# ---- must show ----


def test_end_to_end_synthetic_video(
    synth_clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        synth_clip,
        "--out",
        out,
        *TINY_SAM,
        *("--proposals", "grid", "--points-per-side", "2", "--batch", "3", "--overlay"),
        *("--tau", "-1"),
    )
    assert code == 0, err
    n = _count_video_frames(synth_clip)
    records = _check_records_match_pngs(out)
    assert [r["index"] for r in records] == list(range(n))
    assert all(not r["dropped"] and r["mask"]["size"] == [64, 64] for r in records)
    assert any(r["proposals"] > 0 for r in records), "the SAM grid produced no proposal at all"
    assert all(r["chosen"] for r in records)  # tau = -1: every frame has a sounding cluster
    assert len(list((out / "masks").glob("*.png"))) == n
    with av.open(str(out / "overlay.mp4")) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        assert sum(1 for _ in c.decode(video=0)) == n
    # the timing table on stdout, the summary on disk
    for stage in ("audio", "vision", "kmeans", "proposals", "total"):
        assert stage in stdout
    assert f"{n} frames ({n} processed, 0 dropped" in stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == n and summary["processed"] == n and summary["error"] is None
    assert summary["stage_ms"]["vision"] > 0


def test_demo_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(infer, "DEMO_SECONDS", 0.2)  # 5 frames; the real demo is 2 s
    out = tmp_path / "demo"
    code, stdout, err = _run(capsys, "--demo", "--out", out, "--no-progress", "--device", "cpu")
    assert code == 0, err
    assert (out / "demo_input.mp4").is_file() and "shipped tiny models" in err
    records = _check_records_match_pngs(out)
    assert len(records) == _count_video_frames(out / "demo_input.mp4") == 5
    assert records[0]["mask"]["size"] == [224, 224]
    assert "total" in stdout


def test_batch_does_not_change_outputs(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    masks = []
    for batch in ("1", "4"):
        out = tmp_path / f"b{batch}"
        code, _, err = _run(capsys, clip, "--out", out, *TINY, "--batch", batch, "--tau", "-1")
        assert code == 0, err
        masks.append([r["mask"] for r in read_jsonl(out / "records.jsonl")])
    assert masks[0] == masks[1]


# ---- bad input ----


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nope" / "clip.mp4"
    code, _, err = _run(capsys, missing, "--out", tmp_path / "out", *TINY)
    assert code == infer.EXIT_BAD_INPUT == 3
    assert str(missing) in err and "not found" in err


def test_zero_byte_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = mf.write_zero_byte(tmp_path / "empty.mp4")
    code, _, err = _run(capsys, empty, "--out", tmp_path / "out", *TINY)
    assert code == 3
    assert "empty" in err and str(empty) in err


def test_wav_named_mp4(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake = mf.write_wav_as_mp4(tmp_path / "sound.mp4")
    code, _, err = _run(capsys, fake, "--out", tmp_path / "out", *TINY)
    assert code == 3
    assert "no video stream" in err


def test_corrupt_file(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = mf.write_corrupt_header(clip, tmp_path / "corrupt.mp4")
    out = tmp_path / "out"
    code, _, err = _run(capsys, bad, "--out", out, *TINY)
    # a destroyed header cannot be opened (3); if the demuxer still finds frames the run
    # reports the broken part (1) after writing them; either way no traceback.
    assert code in (1, 3), err
    assert "error:" in err and "Traceback" not in err
    if code == 1:
        assert (out / "summary.json").is_file()


def test_corrupt_middle_keeps_decodable_frames(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = mf.write_video(media / "mid.mp4", num_frames=25, height=64, width=64)
    data = bytearray(full.read_bytes())
    n = len(data)
    data[n // 2 : n // 2 + 3000] = (
        np.random.default_rng(1).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    )
    bad = tmp_path / "mid.mp4"
    bad.write_bytes(bytes(data))
    decodable, errors = 0, 0
    with av.open(str(bad)) as c:
        for packet in c.demux(c.streams.video[0]):
            try:
                decodable += len(packet.decode())
            except av.error.FFmpegError:
                errors += 1
    out = tmp_path / "out"
    code, _, err = _run(capsys, bad, "--out", out, *TINY)
    records = _check_records_match_pngs(out)
    assert len(records) == decodable  # every frame FFmpeg can decode has its record
    if errors or decodable < 25:
        assert code == 1 and "the source broke after" in err
    else:
        assert code in (0, 1)
    assert "Traceback" not in err


def test_out_is_a_file(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    code, _, err = _run(capsys, clip, "--out", taken, *TINY)
    assert code == 3 and f"--out {taken}" in err


def test_truncated_file_keeps_decodable_frames(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    full = mf.write_video(media / "long.mkv", num_frames=25, height=64, width=64)
    cut = mf.write_truncated(full, tmp_path / "cut.mkv", 0.6)
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, cut, "--out", out, *TINY)
    assert code == infer.EXIT_DECODE_ERROR == 1, err
    assert "truncated" in err and "the source broke after" in err
    records = _check_records_match_pngs(out)
    decodable = 0
    with av.open(str(cut)) as c:
        try:
            for _ in c.decode(video=0):
                decodable += 1
        except av.error.FFmpegError:
            pass
    assert 0 < len(records) < 25
    assert len(records) >= decodable - 1  # the last partial packet may not decode for us
    assert [r["index"] for r in records] == list(range(len(records)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["error"] and "truncated" in summary["error"]
    assert "total" in stdout  # the timing table is still printed


def test_video_without_audio(
    media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mute = mf.write_video(media / "mute.mp4", num_frames=5, height=48, width=64, audio_rate=None)
    code, _, err = _run(capsys, mute, "--out", tmp_path / "a", *TINY)
    assert code == 3
    assert "no audio stream" in err and "pass --allow-silent" in err
    assert "allow_silent=True" not in err and not (tmp_path / "a").exists()
    out = tmp_path / "b"
    code, _, err = _run(capsys, mute, "--out", out, *TINY, "--allow-silent")
    assert code == 0, err
    # the substitution is said (issue 10, item 2), on stderr and in the summary
    assert f"warning: {mute} has no audio stream: every frame is scored against silence" in err
    warned = json.loads((out / "summary.json").read_text())["warnings"]
    assert any("no audio stream" in w for w in warned)
    records = _check_records_match_pngs(out)
    assert len(records) == 5
    for rec in records:
        assert rec["silent"] and rec["audio_missing"] and rec["chosen"] == []
        assert not decode_rle(rec).any()


@pytest.mark.parametrize(
    ("rate", "channels"),
    [(8000, 1), (44100, 2), (48000, 2), (48000, 1)],
    ids=["8k-mono", "44k-stereo", "48k-stereo", "48k-mono"],
)
def test_audio_rates_and_channels(
    rate: int, channels: int, media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = mf.write_video(
        media / f"a{rate}_{channels}.mp4",
        num_frames=5,
        height=32,
        width=32,
        audio_rate=rate,
        audio_channels=channels,
    )
    out = tmp_path / "out"
    code, _, err = _run(capsys, path, "--out", out, *TINY)
    assert code == 0, err
    records = read_jsonl(out / "records.jsonl")
    assert len(records) == 5
    # a 0.5-amplitude sine is far above the -60 dBFS gate at every rate and channel count
    assert all(not r["silent"] and r["level_dbfs"] > -20 for r in records)


def test_one_frame_video(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = mf.write_video(media / "one.mp4", num_frames=1, height=32, width=48)
    out = tmp_path / "out"
    code, _, err = _run(capsys, one, "--out", out, *TINY)
    assert code == 0, err
    (rec,) = _check_records_match_pngs(out)
    assert rec["index"] == 0 and rec["mask"]["size"] == [32, 48]


def test_4k_frame(media: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    big = mf.write_video(media / "4k.mp4", num_frames=1, height=2160, width=3840)
    out = tmp_path / "out"
    code, _, err = _run(capsys, big, "--out", out, *TINY, "--tau", "-1")
    assert code == 0, err
    (rec,) = read_jsonl(out / "records.jsonl")
    mask = decode_rle(rec)
    assert mask.shape == (2160, 3840) and mask.any()
    assert np.asarray(Image.open(out / "masks" / "000000.png")).shape == (2160, 3840)


def test_nonfinite_audio_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wave = mf.sine(440.0, 16000, 2.0)
    wave[0, 1000:1100] = np.nan
    wave[0, 5000] = np.inf
    wave[0, 7000] = -np.inf
    wav = mf.write_float_wav(tmp_path / "nan.wav", wave, 16000)
    image = tmp_path / "frame.png"
    Image.fromarray(mf.make_frame(0, 40, 56)).save(image)
    out = tmp_path / "out"
    code, _, err = _run(capsys, image, "--audio", wav, "--out", out, *TINY)
    assert code == 0, err
    # one line, no source line of the library (issue 10, item 3), and recorded in the summary
    assert "warning: decoded audio holds NaN/inf samples" in err and "audio.py" not in err
    assert any("NaN/inf" in w for w in json.loads((out / "summary.json").read_text())["warnings"])
    (rec,) = _check_records_match_pngs(out)
    assert rec["mask"]["size"] == [40, 56] and not rec["silent"]
    assert np.isfinite(rec["level_dbfs"]) and all(np.isfinite(rec["scores"]))


def test_audio_flag_with_a_video_is_rejected(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = mf.write_wav(tmp_path / "x.wav", mf.sine(440.0, 16000, 1.0), 16000)
    code, _, err = _run(capsys, clip, "--audio", wav, "--out", tmp_path / "out", *TINY)
    assert code == 3 and "--audio" in err and "expected an image or a frame folder" in err


def test_realtime_flag_on_an_image_is_noted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wav = mf.write_wav(tmp_path / "x.wav", mf.sine(440.0, 16000, 2.0), 16000)
    image = tmp_path / "frame.png"
    Image.fromarray(mf.make_frame(0, 32, 32)).save(image)
    code, _, err = _run(
        capsys, image, "--audio", wav, "--realtime", "--out", tmp_path / "out", *TINY
    )
    assert code == 0, err
    assert "--realtime ignored" in err


@pytest.mark.parametrize("flag", ["--imagebind", "--adapter", "--sam"])
def test_checkpoint_of_the_wrong_model(
    flag: str, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors.torch import save_file

    # a state dict of some other network: none of its keys belongs to ImageBind, AdaAV or SAM
    wrong = {"backbone.layer1.weight": torch.zeros(4, 4), "head.fc.bias": torch.zeros(3)}
    ckpt = tmp_path / "other_model.safetensors"
    save_file(wrong, str(ckpt))
    args: list[str | Path] = [clip, "--out", tmp_path / "out", "--preset", "moca_test", flag, ckpt]
    args += QUIET_CPU
    if flag == "--sam":
        args += ["--proposals", "grid"]
    code, _, err = _run(capsys, *args)
    assert code == infer.EXIT_BAD_CHECKPOINT == 4, err
    assert "does not fit" in err and "Traceback" not in err
    if flag == "--sam":
        assert "image_encoder.patch_embed.proj.weight" in err and "backbone.layer1.weight" in err
    else:
        assert "unexpected keys [backbone.layer1.weight, head.fc.bias]" in err
        assert "missing keys" in err


def test_tiny_imagebind_without_preset_names_the_preset(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from moca_rt.shipped import shipped_weights

    tiny = shipped_weights().imagebind
    code, _, err = _run(capsys, clip, "--out", tmp_path / "out", *QUIET_CPU, "--imagebind", tiny)
    # the preset is read from the checkpoint's shapes and said (issue 10, item 7)
    assert code == 0, err
    assert "note: --preset moca_synth: the --imagebind checkpoint's shapes fit" in err
    with_preset: list[str | Path] = [
        "--imagebind",
        tiny,
        "--preset",
        "moca_synth",
        "--proposals",
        "none",
    ]
    code, _, err = _run(capsys, clip, "--out", tmp_path / "ok", *QUIET_CPU, *with_preset)
    assert code == 0, err


def test_random_weights_instead_of_the_shipped_models(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _run(capsys, clip, "--out", tmp_path / "out", *QUIET_CPU, "--random-weights")
    assert code == 0, err
    assert "seeded random weights (--random-weights)" in err and "shipped tiny models" not in err


def test_adapter_of_another_size(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Adapters trained for moca_synth do not fit moca_test: shape mismatches are named."""
    from safetensors.torch import save_file

    from moca_rt.config import MOCA_PRESETS
    from moca_rt.modeling.moca import MocaModel

    other = MocaModel.from_config(MOCA_PRESETS["moca_synth"], device="meta")
    state = {k: torch.zeros(v.shape) for k, v in other.adapter_state_dict().items()}
    ckpt = tmp_path / "synth_adapter.safetensors"
    save_file(state, str(ckpt))
    code, _, err = _run(capsys, clip, "--out", tmp_path / "out", *TINY, "--adapter", ckpt)
    assert code == 4, err
    assert "does not fit MoCA adapters" in err


def test_out_of_gpu_memory(
    clip: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from moca_rt.modeling.moca import MocaModel

    calls = {"n": 0}
    real = MocaModel.encode_vision

    def fail_third(self: MocaModel, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MocaModel, "encode_vision", fail_third)
    out = tmp_path / "out"
    code, _, err = _run(capsys, clip, "--out", out, *TINY, "--batch", "2")
    assert code == infer.EXIT_OUT_OF_MEMORY == 5
    assert "out of GPU memory" in err and "smaller --batch" in err and "--batch 2" in err
    # the two batches before the failure are on disk
    records = _check_records_match_pngs(out)
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch", "0"], "--batch: expected >= 1, got 0"),
        (["--reconnect", "-1"], "--reconnect: expected >= 0, got -1"),
        (["--engine", "onnxruntime"], "expected --engine-dir DIR"),
        (["--engine", "tensorrt", "--demo"], "python -m moca_rt.export.build_trt"),
        (["--engine-dir", "x"], "--engine-dir is for --engine onnxruntime or tensorrt"),
        (["--clusters", "40"], "num_clusters must be in [2, 16]"),
        (["--fps", "-2"], "--fps: expected > 0"),
        (["--precision", "fp8"], "invalid choice"),
    ],
)
def test_bad_command_line(
    flags: list[str], message: str, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        infer.main([str(clip), "--out", str(tmp_path / "out"), *flags])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_reconnect_is_for_live_streams(clip: Path, tmp_path: Path) -> None:
    opts = infer.InferOptions(source=str(clip), out=tmp_path, reconnect=2)
    source_opts, notes = infer_job.source_options(str(clip), opts)
    assert "reconnect" not in source_opts
    assert notes == [f"--reconnect ignored: {clip} is a file, not a live stream"]
    live = infer.InferOptions(source="udp://127.0.0.1:5000", out=tmp_path, reconnect=2)
    source_opts, notes = infer_job.source_options("udp://127.0.0.1:5000", live)
    assert source_opts["reconnect"] == 2 and notes == []


def test_ctrl_c_keeps_outputs(media: Path, tmp_path: Path) -> None:
    long_clip = mf.write_video(media / "long_ctrlc.mp4", num_frames=250, height=32, width=32)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "moca_rt.infer", str(long_clip), "--out", str(out), *TINY],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a child inherits an ignored SIGINT (Python then installs no KeyboardInterrupt handler):
        # whatever the test runner's own disposition is, the CLI gets the default
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    records_path = out / "records.jsonl"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if records_path.is_file() and records_path.read_text().count("\n") >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == infer.EXIT_INTERRUPTED == 130, stderr[-2000:]
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert "total" in stdout  # the timing table of the frames done so far
    lines = records_path.read_text().splitlines()
    assert 1 <= len(lines) < 250
    records = [json.loads(line) for line in lines]  # every line is complete JSON
    for rec in records:
        if not rec["dropped"]:
            png = np.asarray(Image.open(out / "masks" / f"{rec['index']:06d}.png"))
            assert np.array_equal(decode_rle(rec) * 255, png)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["frames"] == len(records)


# ---- source options ----


def test_fps_keeps_input_indices(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, _, err = _run(capsys, clip, "--out", out, *TINY, "--fps", "5")
    assert code == 0, err
    records = _check_records_match_pngs(out)
    assert [r["index"] for r in records] == [0, 5]  # 10 frames at 25 fps, one per 0.2 s


def test_realtime_on_a_file_records_every_frame(
    clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(capsys, clip, "--out", out, *TINY, "--realtime")
    assert code == 0, err
    records = _check_records_match_pngs(out)
    # frames the model could not keep up with are dropped records, never missing ones
    assert [r["index"] for r in records] == list(range(10))
    dropped = sum(r["dropped"] for r in records)
    assert f"10 frames ({10 - dropped} processed, {dropped} dropped" in stdout


def test_box_prompts(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    boxes = tmp_path / "boxes.json"
    boxes.write_text(
        json.dumps({"frames": {"1": [[4, 4, 40, 40], [30, 10, 60, 50]], "3": [[0, 0, 63, 63]]}})
    )
    out = tmp_path / "out"
    code, _, err = _run(
        capsys,
        clip,
        "--out",
        out,
        *TINY_SAM,
        *("--proposals", "boxes", "--boxes", boxes, "--tau", "-1"),
        "--fps",
        "12.5",
    )
    assert code == 0, err
    records = _check_records_match_pngs(out)
    assert [r["index"] for r in records] == [0, 2, 4, 6, 8]  # frames 1 and 3 are not selected
    assert all(r["proposals"] == 0 and r["fallback"] for r in records)
    out2 = tmp_path / "out2"
    code, _, err = _run(
        capsys,
        clip,
        "--out",
        out2,
        *TINY_SAM,
        *("--proposals", "boxes", "--boxes", boxes, "--tau", "-1"),
    )
    assert code == 0, err
    by_index = {r["index"]: r for r in _check_records_match_pngs(out2)}
    assert len(by_index) == 10
    assert by_index[1]["proposals"] == 2 and by_index[3]["proposals"] == 1
    assert all(by_index[i]["proposals"] == 0 for i in (0, 2, 4, 5, 6, 7, 8, 9))


@pytest.mark.parametrize(
    "content", ["{not json", '{"frames": {"0": [[1, 2, 3]]}}'], ids=["syntax", "short-box"]
)
def test_bad_box_file(
    content: str, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boxes = tmp_path / "boxes.json"
    boxes.write_text(content)
    out = tmp_path / "out"
    code, _, err = _run(capsys, clip, "--out", out, *TINY, "--proposals", "boxes", "--boxes", boxes)
    assert code == 3, err
    assert f"--boxes {boxes}" in err


def test_missing_box_file(clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "none.json"
    code, _, err = _run(capsys, clip, "--out", tmp_path / "out", *TINY, "--boxes", missing)
    assert code == 3 and str(missing) in err


@requires_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_run(
    precision: str, clip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, err = _run(
        capsys,
        clip,
        "--out",
        out,
        *("--preset", "moca_test", "--sam-preset", "sam_synth", "--no-progress"),
        *("--device", "cuda", "--precision", precision),
        *("--proposals", "grid", "--points-per-side", "4", "--batch", "4", "--tau", "-1"),
    )
    assert code == 0, err
    records = _check_records_match_pngs(out)
    assert [r["index"] for r in records] == list(range(10))
    assert all(r["chosen"] and r["mask"]["size"] == [64, 64] for r in records)
    assert "10 frames (10 processed" in stdout
