"""The synthetic world: determinism, ground truth from re-rendering, split contracts, sounds."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest

from moca_rt.datasets.synth import (
    CLASS_SPECS,
    SPLITS,
    Scene,
    SceneObject,
    SynthWorld,
    class_sound,
    render_object_mask,
    render_objects,
)

SIZE = 80


def _digest(scene: Scene) -> str:
    h = hashlib.sha256()
    for arr in (
        scene.frames,
        scene.audio,
        scene.masks,
        scene.labels,
        scene.instance_masks,
        scene.class_ids,
        scene.sounding,
    ):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _world(seed: int = 3, **kw: object) -> SynthWorld:
    return SynthWorld(seed, image_size=SIZE, video_seconds=0.6, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("split", SPLITS)
def test_same_seed_is_byte_identical_and_seed_matters(split: str) -> None:
    a = _world(3).sample(split, 5)
    b = _world(3).sample(split, 5)
    assert _digest(a) == _digest(b)
    c = _world(4).sample(split, 5)
    d = _world(3).sample(split, 6)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(
        a.audio[: min(a.audio.size, c.audio.size)], c.audio[: min(a.audio.size, c.audio.size)]
    )
    assert not np.array_equal(a.frames, d.frames)
    assert not np.array_equal(a.frames, _world(3).sample(split, 5, partition="test").frames)


def test_fresh_process_reproduces_the_bytes() -> None:
    code = (
        "import hashlib, numpy as np\n"
        "from moca_rt.datasets.synth import SynthWorld\n"
        f"s = SynthWorld(11, image_size={SIZE}, frames_per_clip=2).sample('ms3', 2)\n"
        "h = hashlib.sha256()\n"
        "for a in (s.frames, s.audio, s.masks, s.labels, s.instance_masks, s.class_ids,\n"
        "          s.sounding):\n"
        "    h.update(np.ascontiguousarray(a).tobytes())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = SynthWorld(11, image_size=SIZE, frames_per_clip=2).sample("ms3", 2)
    assert out.stdout.strip() == _digest(here)


@pytest.mark.parametrize(
    ("split", "index"), [("s4", 0), ("ms3", 1), ("ms3", 7), ("avss", 2), ("video", 0)]
)
def test_ground_truth_is_union_of_visible_sounding_objects(split: str, index: int) -> None:
    scene = _world(5, frames_per_clip=2).sample(split, index)
    n = len(scene.objects)
    for f in range(0, scene.num_frames, max(scene.num_frames // 3, 1)):
        full = np.stack([render_object_mask(o, f, SIZE) for o in scene.objects])
        visible = full.copy()
        for i in range(n):  # painter's order: anything drawn later (nearer) hides object i
            visible[i] &= ~full[i + 1 :].any(axis=0)
        np.testing.assert_array_equal(scene.instance_masks[f], visible)
        expected = (
            visible[scene.sounding[f]].any(axis=0)
            if scene.sounding[f].any()
            else np.zeros((SIZE, SIZE), bool)
        )
        np.testing.assert_array_equal(scene.masks[f], expected)
        labels = np.zeros((SIZE, SIZE), np.uint8)
        for i in np.flatnonzero(scene.sounding[f]):
            labels[visible[i]] = scene.class_ids[i] + 1
        np.testing.assert_array_equal(scene.labels[f], labels)
        # The scene's pixels on each visible object are exactly that object rendered alone.
        for i, obj in enumerate(scene.objects):
            alone, _ = render_objects(
                scene.background, [obj], f, scene.noise_seed, scene.pixel_noise
            )
            np.testing.assert_array_equal(scene.frames[f][visible[i]], alone[visible[i]])


def test_occlusion_actually_happens_somewhere() -> None:
    world = _world(2)
    hidden = 0
    for i in range(20):
        s = world.sample("ms3", i)
        full = np.stack([render_object_mask(o, 0, SIZE) for o in s.objects])
        hidden += int((full & ~s.instance_masks[0]).sum())
    assert hidden > 0


def test_split_contracts() -> None:
    world = _world(9)
    ms3_counts = set()
    for i in range(30):
        s4 = world.sample("s4", i)
        assert s4.sounding.sum(axis=1).tolist() == [1] and s4.masks.any()
        ms3 = world.sample("ms3", i)
        k = int(ms3.sounding[0].sum())
        assert 1 <= k <= 3
        ms3_counts.add(k)
        assert len(set(ms3.class_ids.tolist())) == len(ms3.class_ids)  # distinct classes
        assert s4.duration >= 1.0 - 1e-9 and s4.duration <= 5.0 + 1e-9
    assert ms3_counts == {1, 2, 3}
    # Silent objects exist: some scenes show more objects than they sound.
    assert any(
        len(world.sample("ms3", i).objects) > world.sample("ms3", i).sounding[0].sum()
        for i in range(10)
    )


def _dbfs(x: np.ndarray) -> float:
    return 20 * np.log10(max(float(np.sqrt(np.mean(x.astype(np.float64) ** 2))), 1e-12))


def test_silent_clips_are_empty_and_near_silent() -> None:
    world = _world(1)
    for i in range(5):
        s = world.sample("silent", i)
        assert not s.masks.any() and not s.labels.any() and not s.sounding.any()
        assert len(s.objects) >= 1 and s.instance_masks.any()
        assert _dbfs(s.audio) < -60.0
        assert _dbfs(world.sample("s4", i).audio) > -30.0


def test_video_sounds_switch_with_the_flags() -> None:
    world = SynthWorld(4, image_size=64, video_seconds=4.0)
    scene = world.sample("video", 1)
    assert scene.num_frames == 100 and scene.audio.shape[0] == 4 * 16000
    flags = scene.sounding
    assert (flags.any(axis=0) & ~flags.all(axis=0)).any(), "some object must switch on or off"
    np.testing.assert_allclose(np.diff(scene.frame_times), 1 / 25)
    per_frame = scene.audio.reshape(100, -1)
    on = per_frame[flags.any(axis=1)][:, 64:-64]
    off = per_frame[~flags.any(axis=1)][:, 64:-64]
    if off.size:
        assert _dbfs(on) > _dbfs(off) + 6.0
    assert (scene.masks.any(axis=(1, 2)) <= flags.any(axis=1)).all()
    # Objects move: the masks of frame 0 and the last frame differ.
    assert not np.array_equal(scene.instance_masks[0], scene.instance_masks[-1])


@pytest.mark.parametrize("class_id", [c for c, s in enumerate(CLASS_SPECS) if s.timbre != "noise"])
def test_tonal_class_sounds_peak_at_their_pitch(class_id: int) -> None:
    sr = 16000
    sound = class_sound(SceneObject(class_id, (0.0, 0.0), 1.0, 0.0), sr, sr, noise_seed=1)
    assert sound.dtype == np.float32 and abs(_dbfs(sound) + 20.0) < 0.1
    spectrum = np.abs(np.fft.rfft(sound * np.hanning(sr)))
    peak = float(np.argmax(spectrum))  # 1 Hz bins
    f0 = CLASS_SPECS[class_id].f0
    assert abs(peak - f0) / f0 < 0.05, (CLASS_SPECS[class_id].name, peak, f0)


def test_classes_differ_in_look_and_sound() -> None:
    looks = {(s.shape, s.colour) for s in CLASS_SPECS}
    sounds = {(round(s.f0), s.timbre, s.envelope) for s in CLASS_SPECS}
    assert len(looks) == len(CLASS_SPECS) and len(sounds) == len(CLASS_SPECS)
    assert len({s.shape for s in CLASS_SPECS[:8]}) == 8


def test_bad_arguments_name_what_was_expected() -> None:
    with pytest.raises(ValueError, match="expected split"):
        _world().sample("s5", 0)
    with pytest.raises(ValueError, match="expected a non-negative int seed"):
        SynthWorld(-1)
    with pytest.raises(ValueError, match="num_classes"):
        SynthWorld(0, num_classes=40)
    with pytest.raises(ValueError, match="unknown \\['snr'\\]"):
        SynthWorld(0, snr=3.0)
    with pytest.raises(ValueError, match="background"):
        render_objects(np.zeros((4, 5, 3), np.float32), [])


def test_resound_keeps_the_picture_and_changes_the_sound() -> None:
    world = _world(8)
    scene = next(s for s in (world.sample("ms3", i) for i in range(40)) if len(s.objects) >= 3)
    flags = ~scene.sounding[0]
    if not flags.any():
        flags[0] = True
    other = world.resound(scene, flags)
    np.testing.assert_array_equal(other.frames, scene.frames)
    expected = scene.instance_masks[0][flags].any(axis=0)
    np.testing.assert_array_equal(other.masks[0], expected)
    assert other.sounding_class_ids == sorted(int(c) for c in scene.class_ids[flags])
    assert not np.array_equal(other.audio, scene.audio) and _dbfs(other.audio) > -30.0
    np.testing.assert_array_equal(world.resound(scene, flags).audio, other.audio)
    quiet = world.resound(scene, np.zeros(len(scene.objects), bool))
    assert not quiet.masks.any() and _dbfs(quiet.audio) < -60.0
    with pytest.raises(ValueError, match="expected sounding of shape"):
        world.resound(scene, [True])


def test_offscreen_and_noise_clips_are_empty_but_loud() -> None:
    world = _world(2)
    for i in range(6):
        off = world.sample("offscreen", i)
        assert not off.masks.any() and not off.sounding.any() and off.instance_masks.any()
        assert -23.0 < _dbfs(off.audio) < -17.0  # a class sound at -20 dBFS plus noise
        noise = world.sample("noise", i)
        assert not noise.masks.any() and len(noise.objects) >= 1
        assert -31.0 < _dbfs(noise.audio) < -19.0
    # The off-screen sound is a class that is not in the picture: its pitch peak differs from
    # every visible class's, and a scene with its class visible would sound like it.
    off = world.sample("offscreen", 0)
    visible = set(off.class_ids.tolist())
    assert len(visible) <= world.config.num_classes - 1


def test_new_splits_leave_the_old_ones_byte_identical() -> None:
    # The split codes of the five original splits did not move, so their scenes are unchanged.
    from moca_rt.datasets.synth import _SPLIT_CODE

    assert [_SPLIT_CODE[s] for s in ("s4", "ms3", "avss", "silent", "video")] == [1, 2, 3, 4, 5]
