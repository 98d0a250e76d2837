"""``python -m moca_rt.batch`` on a local Ray with 2 CPUs (issue 12, item 1).

Six generated synthetic-world clips (64 px, 10 frames), one corrupt file and one missing entry
go through a job of 2 actors running the shipped tiny models without SAM proposals. Checked:
every clip's outputs equal single-process ``infer``'s (records equal apart from timings, PNGs
byte for byte); the corrupt and missing videos are manifest errors and the job goes on; a rerun
skips the finished clips; a worker process killed (SIGKILL) while it writes a clip is restarted
by Ray, and every clip's output is present once and intact, with one ok line each.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import media_factory as mf
import pytest
import torch

from moca_rt import batch, infer
from moca_rt.build import BuildSettings
from moca_rt.errors import InputError
from moca_rt.sinks import read_jsonl

pytest.importorskip("ray", reason="needs moca-rt[ray] (CI installs it)")

CLIPS = 6
SETTINGS = BuildSettings(proposals="none")  # shipped tiny models, cluster masks only
INFER_FLAGS = ["--proposals", "none", "--no-progress", "--device", "cpu"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """clips/c0..c5.mp4, clips/corrupt.mp4, list.csv (all of them plus a missing file), and
    ref/<name>/ written by single-process infer for each good clip."""
    from moca_rt.datasets.synth import SynthWorld
    from moca_rt.datasets.video import write_mp4

    root = tmp_path_factory.mktemp("batch")
    clips = root / "clips"
    world = SynthWorld(5, image_size=64, video_seconds=0.4)
    for i in range(CLIPS):
        scene = world.sample("video", i)
        write_mp4(clips / f"c{i}.mp4", scene.frames, scene.audio, fps=25.0)
    mf.write_corrupt_header(clips / "c0.mp4", clips / "corrupt.mp4")
    listing = root / "list.csv"
    names = [f"clips/c{i}.mp4" for i in range(CLIPS)] + ["clips/corrupt.mp4", "clips/gone.mp4"]
    listing.write_text("video,comment\n" + "".join(f"{n},x\n" for n in names))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray actor with one CPU: the same float reductions
    # (and infer --threads 1: infer applies its own thread policy otherwise)
    try:
        for i in range(CLIPS):
            ref = root / "ref" / f"c{i}"
            args = [str(clips / f"c{i}.mp4"), "--out", str(ref), "--threads", "1", *INFER_FLAGS]
            code = infer.main(args)
            assert code == 0
    finally:
        torch.set_num_threads(threads)
    return {"root": root, "clips": clips, "list": listing, "ref": root / "ref"}


def _without_timings(path: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "timings"} for r in read_jsonl(path)]


def _assert_same_as_infer(out: Path, ref: Path) -> None:
    assert _without_timings(out / "records.jsonl") == _without_timings(ref / "records.jsonl")
    pngs = sorted(p.name for p in (ref / "masks").iterdir())
    assert pngs and sorted(p.name for p in (out / "masks").iterdir()) == pngs
    for name in pngs:
        assert (out / "masks" / name).read_bytes() == (ref / "masks" / name).read_bytes(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["out"] == str(out) and summary["error"] is None


def _options(corpus: dict[str, Path], out: Path, **kw: object) -> batch.BatchOptions:
    return batch.BatchOptions(
        inputs=[str(corpus["list"])], out=out, settings=SETTINGS, actors=2, progress=False, **kw
    )


def test_collect_videos_folders_globs_lists(
    corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips = corpus["clips"]
    monkeypatch.chdir(clips.parent)
    (relative,) = batch.collect_videos(["clips/c1.mp4"])
    assert relative.video == str(clips / "c1.mp4")  # absolute: the manifest's key
    from_folder = batch.collect_videos([str(clips)])
    assert [j.name for j in from_folder] == ["c0", "c1", "c2", "c3", "c4", "c5", "corrupt"]
    from_glob = batch.collect_videos([str(clips / "c[0-2].mp4")])
    assert [j.name for j in from_glob] == ["c0", "c1", "c2"]
    listing = tmp_path / "videos.txt"
    listing.write_text(f"# corpus\n{clips / 'c1.mp4'}\n\n{clips / 'c1.mp4'}\nother/c1.mp4\n")
    from_text = batch.collect_videos([str(listing), str(clips / "c2.mp4")])
    assert [j.video for j in from_text][1:] == [
        str(tmp_path / "other/c1.mp4"),
        str(clips / "c2.mp4"),
    ]
    first, second = from_text[0].name, from_text[1].name  # two stems c1: hashed apart
    assert first != second and first.startswith("c1-") and second.startswith("c1-")
    from_csv = batch.collect_videos([str(corpus["list"])])
    assert len(from_csv) == CLIPS + 2 and from_csv[-1].video.endswith("gone.mp4")
    with pytest.raises(InputError, match="matches video files"):
        batch.collect_videos([str(clips / "*.mkv")])
    with pytest.raises(InputError, match="found nothing"):
        batch.collect_videos([str(tmp_path / "absent.mp4")])


def test_batch_job_equals_infer_records_errors_and_resumes(
    ray_local: object, corpus: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "job"
    report = batch.run_batch(_options(corpus, out))
    assert (report.videos, report.skipped, report.ok, report.errors) == (CLIPS + 2, 0, CLIPS, 2)
    rows = {Path(r["video"]).name: r for r in read_jsonl(out / batch.MANIFEST_FILE)}
    assert len(rows) == CLIPS + 2
    for i in range(CLIPS):
        row = rows[f"c{i}.mp4"]
        assert row["status"] == "ok" and row["frames"] == row["processed"] == 10
        assert row["timings"]["total_s"] > 0 and row["worker"]["pid"] != os.getpid()
        _assert_same_as_infer(out / f"c{i}", corpus["ref"] / f"c{i}")
    assert rows["corrupt.mp4"]["status"] == "error"
    assert "MediaOpenError" in rows["corrupt.mp4"]["error"]
    assert rows["gone.mp4"]["status"] == "error" and "not found" in rows["gone.mp4"]["error"]
    assert not (out / "corrupt").exists() and not (out / batch.PARTIAL_DIR).exists()
    assert len({r["worker"]["actor"] for r in rows.values() if r["status"] == "ok"}) == 2

    stamps = {i: (out / f"c{i}" / "records.jsonl").stat().st_mtime_ns for i in range(CLIPS)}
    again = batch.run_batch(_options(corpus, out))
    assert (again.skipped, again.ok, again.errors) == (CLIPS, 0, 2)  # errors are tried again
    assert {Path(r["video"]).name for r in again.rows} == {"corrupt.mp4", "gone.mp4"}
    for i in range(CLIPS):
        assert (out / f"c{i}" / "records.jsonl").stat().st_mtime_ns == stamps[i]
    skipped = batch.run_batch(_options(corpus, out, retry_errors=False))
    assert (skipped.skipped, skipped.ok + skipped.errors) == (CLIPS + 2, 0)
    assert len(read_jsonl(out / batch.MANIFEST_FILE)) == CLIPS + 2 + 2


def test_killed_worker_is_restarted_and_every_clip_is_written_once(
    ray_local: object, corpus: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "job"
    result: dict[str, object] = {}

    def job() -> None:
        try:
            result["report"] = batch.run_batch(_options(corpus, out))
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    thread = threading.Thread(target=job)
    thread.start()
    killed: tuple[int, str] | None = None
    deadline = time.monotonic() + 240
    while killed is None and thread.is_alive() and time.monotonic() < deadline:
        partial = out / batch.PARTIAL_DIR
        for folder in partial.iterdir() if partial.is_dir() else []:
            records = folder / "records.jsonl"
            if records.is_file() and records.stat().st_size > 0:  # mid-clip: frames written
                name, pid, _ = folder.name.split(".")
                os.kill(int(pid), signal.SIGKILL)
                killed = (int(pid), name)
                break
        time.sleep(0.005)
    thread.join(timeout=300)
    assert not thread.is_alive(), "the job did not finish"
    assert "error" not in result, result.get("error")
    assert killed is not None, "no worker was caught mid-clip"
    pid, name = killed
    report = result["report"]
    assert isinstance(report, batch.BatchReport)
    assert (report.ok, report.errors) == (CLIPS, 2)
    rows = read_jsonl(out / batch.MANIFEST_FILE)
    ok = [r for r in rows if r["status"] == "ok"]
    assert sorted(r["name"] for r in ok) == [f"c{i}" for i in range(CLIPS)]  # once each
    redone = next(r for r in ok if r["name"] == name)
    assert redone["worker"]["pid"] != pid  # finished by the restarted actor
    assert pid not in {r["worker"]["pid"] for r in rows}
    for i in range(CLIPS):
        _assert_same_as_infer(out / f"c{i}", corpus["ref"] / f"c{i}")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"c{i}" for i in range(CLIPS)] + [batch.MANIFEST_FILE]
    )


def test_cli_exit_codes(ray_local: object, corpus: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as usage:
        batch.main([str(corpus["clips"]), "--out", str(tmp_path), "--actors", "0"])
    assert usage.value.code == batch.EXIT_USAGE
    assert batch.main([str(tmp_path / "none*.mp4"), "--out", str(tmp_path)]) == batch.EXIT_BAD_INPUT
    videos = [str(corpus["clips"] / "corrupt.mp4"), str(corpus["clips"] / "c1.mp4")]
    flags = ["--proposals", "none", "--no-progress", "--timeline", "otio"]
    code = batch.main([*videos, "--out", str(tmp_path / "cli"), *flags])
    assert code == batch.EXIT_SOME_FAILED
    assert (tmp_path / "cli" / "c1" / "timeline.otio").is_file()


def test_a_torn_manifest_line_is_cut_before_appending(tmp_path: Path) -> None:
    manifest = tmp_path / batch.MANIFEST_FILE
    whole = json.dumps({"video": "a.mp4", "status": "ok"})
    manifest.write_text(whole + "\n" + '{"video": "b.mp4", "sta')  # the driver died here
    assert list(batch.read_manifest(manifest)) == ["a.mp4"]
    batch._drop_torn_tail(manifest)
    assert manifest.read_text() == whole + "\n"
    batch._drop_torn_tail(manifest)  # a whole file stays as it is
    assert manifest.read_text() == whole + "\n"


def test_missing_checkpoint_is_an_input_error_before_ray_starts(
    corpus: dict[str, Path], tmp_path: Path
) -> None:
    settings = BuildSettings(sam=tmp_path / "absent.pth")
    opts = batch.BatchOptions(inputs=[str(corpus["clips"])], out=tmp_path / "o", settings=settings)
    with pytest.raises(InputError, match=r"--sam .*absent\.pth: not found"):
        batch.run_batch(opts)
    assert not (tmp_path / "o").exists()


def test_a_frame_folder_from_a_list_and_an_edl_it_cannot_have(tmp_path: Path) -> None:
    """An AVSBench frame folder named in a text list is segmented like a video (no Ray needed
    for one video); its 1 fps has no SMPTE timecode, so the EDL is reported, the masks kept."""
    from moca_rt.build import build_pipeline

    frames_dir, _ = mf.write_avsbench_clip(tmp_path / "avs", "clipA")
    listing = tmp_path / "list.txt"
    listing.write_text("avs/visual_frames/clipA\n")
    (job,) = batch.collect_videos([str(listing)])
    assert job.name == "clipA" and Path(job.video) == frames_dir
    pipeline = build_pipeline(SETTINGS).pipeline
    row = batch.segment_video(pipeline, job, tmp_path / "out", timeline="edl")
    assert row["status"] == "ok" and row["frames"] == 5
    edl = tmp_path / "out" / "clipA" / "timeline.edl"
    assert row["timeline_error"].startswith(f"{edl}: cannot write a CMX 3600 EDL at 1.0 fps")
    assert len(list((tmp_path / "out" / "clipA" / "masks").iterdir())) == 5
    assert not edl.exists()
    row = batch.segment_video(pipeline, job, tmp_path / "out", timeline="otio")  # redo: replaced
    assert row["status"] == "ok" and "timeline_error" not in row
    assert (tmp_path / "out" / "clipA" / "timeline.otio").is_file()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [batch.PARTIAL_DIR, "clipA"]


def test_root_cause_of_a_wrapped_worker_error() -> None:
    text = (
        "The actor died because of an error raised in its creation task, "
        "ray::MapWorker(MapBatches(SegmentWorker)).__init__() (pid=1)\n"
        "Traceback (most recent call last):\n  File 'x.py', line 1\n"
        "moca_rt.errors.CheckpointError: --sam: checkpoint does not fit SAM\n"
    )
    assert batch._root_cause(text) == (
        "moca_rt.errors.CheckpointError: --sam: checkpoint does not fit SAM"
    )
    assert batch._root_cause("lost the cluster\nretrying") == "lost the cluster"
