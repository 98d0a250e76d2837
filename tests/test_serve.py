"""Ray Serve on loopback (issue 12, item 2): ``moca_rt.serve`` behind Serve's HTTP proxy.

One replica of the shipped tiny models (cluster masks only, max batch 8) on the local 2-CPU
Ray. 50 concurrent requests from a bounded client (10 threads) over 5 different image + WAV
pairs are all answered with the masks and scores the pipeline gives for the same inputs in this
process; some frames share a model call (dynamic batching). A clip is answered per frame. Bad
inputs get 4xx with a message: not an image, no audio, an oversize body, not multipart, a clip
that is not a video, an unknown path, a wrong method.
"""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import media_factory as mf
import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("ray", reason="needs moca-rt[ray] (CI installs it)")
requests = pytest.importorskip("requests", reason="installed with moca-rt[ray]")

from moca_rt.build import BuildSettings  # noqa: E402
from moca_rt.sinks import mask_to_rle  # noqa: E402

PAIRS = 5
REQUESTS = 50
CLIENT_THREADS = 10
MAX_BODY = 512 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, bytes]]:
    """Image (PNG) + WAV pairs from the synthetic world's s4 split (64 px, 2 s of sound)."""
    from moca_rt.datasets.synth import SynthWorld

    world = SynthWorld(11, image_size=64, min_seconds=2.0, max_seconds=2.0)
    folder = tmp_path_factory.mktemp("serve")
    pairs = []
    for i in range(PAIRS):
        scene = world.sample("s4", i)
        png = io.BytesIO()
        Image.fromarray(scene.image).save(png, format="PNG")
        wav = mf.write_wav(folder / f"{i}.wav", scene.audio[None], scene.sample_rate)
        pairs.append({"image": png.getvalue(), "audio": wav.read_bytes()})
    return pairs


@pytest.fixture(scope="module")
def expected(inputs: list[dict[str, bytes]], tmp_path_factory: pytest.TempPathFactory) -> list:
    """What the pipeline answers for each pair in this process (frame read the same way)."""
    from moca_rt.build import build_pipeline
    from moca_rt.media import open_source

    pipeline = build_pipeline(BuildSettings(proposals="none")).pipeline
    folder = tmp_path_factory.mktemp("serve_ref")
    out = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the replica (one CPU): the same float reductions
    try:
        for i, pair in enumerate(inputs):
            (folder / f"{i}.png").write_bytes(pair["image"])
            (folder / f"{i}.wav").write_bytes(pair["audio"])
            with open_source(folder / f"{i}.png", audio=str(folder / f"{i}.wav")) as source:
                frame = next(iter(source))
            result = pipeline.segment(frame.image, frame.audio)
            out.append((mask_to_rle(result.mask), result.scores))
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def server(ray_local: object) -> Iterator[str]:
    from ray import serve

    from moca_rt.serve import ServeConfig, start

    port = _free_port()
    config = ServeConfig(
        max_batch_size=8,
        batch_wait_timeout_s=0.05,
        max_body_bytes=MAX_BODY,
        max_clip_frames=16,
        settings=BuildSettings(proposals="none"),
    )
    start(config, port=port, name="moca_serve_test")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _post(url: str, files: dict[str, tuple[str, bytes, str]]) -> requests.Response:
    return requests.post(f"{url}/segment", files=files, timeout=120)


def _pair_files(pair: dict[str, bytes]) -> dict[str, tuple[str, bytes, str]]:
    return {
        "image": ("frame.png", pair["image"], "image/png"),
        "audio": ("sound.wav", pair["audio"], "audio/wav"),
    }


def test_healthz(server: str) -> None:
    answer = requests.get(f"{server}/healthz", timeout=30)
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "ok" and body["max_batch_size"] == 8 and body["device"] == "cpu"


def test_50_concurrent_requests_are_all_answered_correctly(
    server: str, inputs: list[dict[str, bytes]], expected: list
) -> None:
    def call(k: int) -> tuple[int, requests.Response]:
        return k, _post(server, _pair_files(inputs[k % PAIRS]))

    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        answers = list(pool.map(call, range(REQUESTS)))
    sizes = []
    for k, answer in answers:
        assert answer.status_code == 200, answer.text
        frames = answer.json()["frames"]
        assert len(frames) == 1
        mask, scores = expected[k % PAIRS]
        assert frames[0]["mask"] == mask, f"request {k}"
        np.testing.assert_allclose(frames[0]["scores"], scores, atol=1e-4)
        sizes.append(frames[0]["batch_size"])
    assert max(sizes) > 1, f"no two frames shared a model call: {sizes}"
    assert len({mask["counts"] for mask, _ in expected}) > 1  # the pairs differ


def test_a_clip_is_answered_per_frame(server: str, tmp_path: Path) -> None:
    clip = mf.write_video(tmp_path / "c.mp4", num_frames=6, fps=25, height=48, width=64)
    answer = _post(server, {"clip": ("c.mp4", clip.read_bytes(), "video/mp4")})
    assert answer.status_code == 200, answer.text
    frames = answer.json()["frames"]
    assert [f["index"] for f in frames] == list(range(6))
    assert all(f["mask"]["size"] == [48, 64] for f in frames)


@pytest.mark.parametrize(
    ("case", "status", "message"),
    [
        ("not_an_image", 400, "image: expected a PNG or JPEG"),
        ("gif_image", 415, "expected PNG or JPEG, got GIF"),
        ("no_audio", 400, "expected an 'audio' part"),
        ("bad_audio", 400, "audio: cannot be decoded"),
        ("no_parts", 400, "expected form parts 'image' and 'audio', or 'clip'"),
        ("bad_clip", 400, "clip: cannot be decoded"),
        ("long_clip", 413, "clip: expected at most 16 frames"),
        ("oversize", 413, "body: expected at most"),
        ("not_multipart", 415, "expected a multipart/form-data body"),
    ],
)
def test_bad_input_is_a_4xx_with_a_message(
    server: str,
    inputs: list[dict[str, bytes]],
    tmp_path: Path,
    case: str,
    status: int,
    message: str,
) -> None:
    pair = inputs[0]
    url = f"{server}/segment"
    if case == "not_an_image":
        answer = _post(server, {**_pair_files(pair), "image": ("x.png", b"hello", "image/png")})
    elif case == "gif_image":
        gif = io.BytesIO()
        Image.new("RGB", (8, 8)).save(gif, format="GIF")
        answer = _post(server, {**_pair_files(pair), "image": ("x.gif", gif.getvalue(), "")})
    elif case == "no_audio":
        answer = _post(server, {"image": ("x.png", pair["image"], "image/png")})
    elif case == "bad_audio":
        answer = _post(server, {**_pair_files(pair), "audio": ("x.wav", b"RIFFjunk", "")})
    elif case == "no_parts":
        answer = requests.post(url, files={"other": ("a", b"1", "")}, timeout=60)
    elif case == "bad_clip":
        answer = _post(server, {"clip": ("c.mp4", b"\x00" * 1000, "video/mp4")})
    elif case == "long_clip":
        clip = mf.write_video(tmp_path / "long.mp4", num_frames=30, fps=25, height=32, width=32)
        answer = _post(server, {"clip": ("c.mp4", clip.read_bytes(), "video/mp4")})
    elif case == "oversize":
        answer = _post(server, {"clip": ("c.mp4", b"\x00" * (MAX_BODY + 1), "video/mp4")})
    else:
        answer = requests.post(url, data=pair["image"], timeout=60)
    assert answer.status_code == status, answer.text
    text = answer.json()["error"]
    assert message in text
    assert "Traceback" not in answer.text


def test_wrong_path_and_method(server: str) -> None:
    missing = requests.get(f"{server}/nothing", timeout=30)
    assert missing.status_code == 404 and "/segment" in missing.json()["error"]
    wrong = requests.get(f"{server}/segment", timeout=30)
    assert wrong.status_code == 405 and "expected POST" in wrong.json()["error"]


def test_config_from_key_value_args() -> None:
    from moca_rt.errors import InputError
    from moca_rt.serve import ServeConfig

    config = ServeConfig.from_args(
        {
            "max_batch_size": "1",
            "num_replicas": "2",
            "num_gpus_per_replica": "0.5",
            "proposals": "none",
            "tau": "0.3",
            "delta": "none",
            "sam": "/models/sam.pth",
            "random_weights": "true",
        }
    )
    assert (config.max_batch_size, config.num_replicas, config.num_gpus_per_replica) == (1, 2, 0.5)
    settings = config.settings
    assert settings.proposals == "none" and settings.tau == 0.3 and settings.delta is None
    assert settings.sam == Path("/models/sam.pth") and settings.random_weights is True
    with pytest.raises(InputError, match="seed: expected int"):
        ServeConfig.from_args({"seed": "x"})
    with pytest.raises(InputError, match="unknown key"):
        ServeConfig.from_args({"max_batch": "1"})
    with pytest.raises(InputError, match="expected >= 1"):
        ServeConfig(max_batch_size=0)
