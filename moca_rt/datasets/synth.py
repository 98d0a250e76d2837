"""The synthetic audio-visual world (DESIGN section 6): seeded scenes where ground truth is known.

A scene is a textured background with a few textured shapes drawn in depth order (index 0 is
the farthest), and a 16 kHz soundtrack that mixes the sounds of the *sounding* objects plus
background noise at a chosen SNR. Visible objects may be silent, so the same-looking picture can
come with a different sound. Every class pairs one shape with one colour/texture family and one
sound family (pitch, timbre, envelope); see :data:`CLASS_SPECS`.

Splits (``SPLITS``):

* ``s4``: exactly one sounding object plus 0..``max_distractors`` silent ones.
* ``ms3``: 1-3 sounding objects plus silent ones.
* ``avss``: as ``ms3``; :attr:`Scene.labels` holds ``class_id + 1`` on the visible pixels of
  sounding objects and 0 elsewhere.
* ``silent``: 1-3 visible objects, none sounding: empty masks and near-silent audio (white noise
  at ``silent_dbfs``, -80 dBFS RMS by default).
* ``offscreen``: 1-3 visible objects, none sounding, and the sound of a class that is NOT in
  the picture at a normal level (RMS -20 dBFS) plus background noise at the usual SNR: empty
  masks, although the audio is loud (the silence gate cannot help; only the cluster choice can).
* ``noise``: 1-3 visible silent objects and noise only (white or brown, RMS -30..-20 dBFS):
  empty masks.
* ``video``: ``video_seconds`` at ``video_fps`` (25) with moving, spinning objects whose sounds
  switch on and off at frame boundaries; masks, labels and sounding flags are per frame.

Everything is a pure function of ``(seed, split, index, partition)``: the random generator is
seeded with ``SeedSequence([seed, split code, partition code, index])`` and nothing else is
read, so the same arguments give byte-identical arrays in any process.

Coordinate frames: images are H x W x 3 uint8 RGB, row-major, pixel (x, y) has its centre at
``(x + 0.5, y + 0.5)``; object centres are (x, y) in those pixel units.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Literal

import numpy as np

from moca_rt.config import SAMPLE_RATE

Split = Literal["s4", "ms3", "avss", "silent", "video", "offscreen", "noise"]
Partition = Literal["train", "val", "test"]
SPLITS: tuple[Split, ...] = ("s4", "ms3", "avss", "silent", "video", "offscreen", "noise")
_NOTHING_SOUNDS = ("silent", "offscreen", "noise")
PARTITIONS: tuple[Partition, ...] = ("train", "val", "test")
_SPLIT_CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(SPLITS)}
_PARTITION_CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(PARTITIONS)}

_TABLE_SIZE = 2048

ShapeName = Literal["disc", "square", "triangle", "star", "ring", "cross", "ellipse", "hexagon"]
TextureName = Literal["stripes", "checker", "dots", "radial"]
TimbreName = Literal["pure", "odd", "saw", "bell", "noise"]
EnvelopeName = Literal["steady", "pulse", "pluck", "tremolo", "vibrato"]
NoiseColour = Literal["none", "white", "brown"]


@dataclass(frozen=True)
class ClassSpec:
    """Look and sound of one object class.

    ``colour``/``colour2`` are RGB in [0, 255] blended by the texture pattern; ``f0`` in Hz;
    ``rate`` in Hz is the envelope's repetition or modulation rate; ``noise`` mixes a coloured
    noise band (``noise_band`` = (low, high) Hz) into the tone at ``noise_mix`` of its RMS.
    """

    name: str
    shape: ShapeName
    texture: TextureName
    colour: tuple[int, int, int]
    colour2: tuple[int, int, int]
    f0: float
    timbre: TimbreName
    envelope: EnvelopeName
    rate: float
    noise: NoiseColour = "none"
    noise_band: tuple[float, float] = (0.0, 8000.0)
    noise_mix: float = 0.0


_RGB = tuple[int, int, int]
_BaseRow = tuple[str, ShapeName, TextureName, _RGB, _RGB, float, TimbreName, EnvelopeName, float]

# Classes 0..7, one per shape, named "<colour name>_<shape>": colour name, shape, texture,
# colour, colour2, f0 (Hz), timbre, envelope, envelope rate (Hz).
_BASE_CLASSES: tuple[_BaseRow, ...] = (
    ("red", "disc", "stripes", (215, 40, 40), (120, 15, 20), 220.0, "saw", "steady", 0.0),
    ("blue", "square", "checker", (40, 70, 220), (170, 190, 250), 330.0, "odd", "pulse", 4.0),
    ("green", "triangle", "dots", (40, 190, 60), (10, 80, 20), 440.0, "pure", "pluck", 3.0),
    ("yellow", "star", "radial", (240, 215, 40), (150, 110, 10), 587.0, "bell", "tremolo", 6.0),
    ("magenta", "ring", "stripes", (215, 45, 200), (250, 180, 245), 784.0, "pure", "vibrato", 5.0),
    ("cyan", "cross", "checker", (40, 210, 215), (10, 90, 110), 1200.0, "noise", "pulse", 8.0),
    ("orange", "ellipse", "dots", (245, 140, 30), (130, 60, 5), 165.0, "odd", "tremolo", 3.0),
    ("purple", "hexagon", "radial", (130, 50, 200), (215, 190, 250), 1046.0, "saw", "pluck", 6.0),
)
# The base classes that mix a noise band into their tone: noise colour, band (Hz), mix.
_NOISY_CLASSES: dict[str, tuple[NoiseColour, tuple[float, float], float]] = {
    "cyan_cross": ("white", (1500.0, 3500.0), 1.0),
    "orange_ellipse": ("brown", (40.0, 600.0), 0.5),
}

_EXTRA_COLOURS: tuple[tuple[str, _RGB, _RGB], ...] = (
    ("white", (235, 235, 235), (150, 150, 150)),
    ("black", (25, 25, 25), (95, 95, 95)),
    ("teal", (20, 130, 120), (120, 220, 200)),
    ("pink", (250, 150, 180), (180, 60, 100)),
    ("olive", (120, 130, 30), (200, 210, 120)),
    ("brown", (120, 70, 30), (200, 150, 100)),
    ("navy", (20, 30, 110), (110, 130, 220)),
    ("lime", (170, 250, 60), (80, 140, 10)),
)
_TEXTURES: tuple[TextureName, ...] = ("stripes", "checker", "dots", "radial")


def _make_class_specs() -> tuple[ClassSpec, ...]:
    base_specs = []
    for colour_name, shape, texture, c1, c2, f0, timbre, envelope, rate in _BASE_CLASSES:
        spec = ClassSpec(
            f"{colour_name}_{shape}", shape, texture, c1, c2, f0, timbre, envelope, rate
        )
        if spec.name in _NOISY_CLASSES:
            noise, band, mix = _NOISY_CLASSES[spec.name]
            spec = replace(spec, noise=noise, noise_band=band, noise_mix=mix)
        base_specs.append(spec)
    # Classes 8..15 reuse the shapes and sound families with new colours, textures, a pitch a
    # tritone away and a faster envelope.
    extra_specs = [
        replace(
            base,
            name=f"{colour_name}_{base.shape}",
            texture=_TEXTURES[(_TEXTURES.index(base.texture) + 2) % 4],
            colour=c1,
            colour2=c2,
            f0=base.f0 * 1.4142,
            rate=base.rate * 1.5 + 1.0,
        )
        for base, (colour_name, c1, c2) in zip(base_specs, _EXTRA_COLOURS, strict=True)
    ]
    return (*base_specs, *extra_specs)


CLASS_SPECS: tuple[ClassSpec, ...] = _make_class_specs()
MAX_CLASSES = len(CLASS_SPECS)


@dataclass(frozen=True)
class SceneObject:
    """One object: its class, its pose at frame 0, its motion, and its per-instance jitter.

    ``center`` (x, y) and ``radius`` are in pixels, ``angle`` in radians (counter-clockwise in
    the image's x-right / y-down frame), ``velocity`` in pixels per frame, ``spin`` in radians
    per frame. Motion reflects off the image border so the object stays inside.
    """

    class_id: int
    center: tuple[float, float]
    radius: float
    angle: float
    velocity: tuple[float, float] = (0.0, 0.0)
    spin: float = 0.0
    tint: tuple[float, float, float] = (0.0, 0.0, 0.0)
    texture_phase: float = 0.0
    texture_scale: float = 1.0
    pitch_scale: float = 1.0
    rate_scale: float = 1.0
    sound_phase: float = 0.0

    def pose(self, frame: int, image_size: int) -> tuple[float, float, float]:
        """(cx, cy, angle) at ``frame``: linear motion folded back into [radius, size - radius]."""
        lo, hi = self.radius, image_size - self.radius
        cx = _reflect(self.center[0] + self.velocity[0] * frame, lo, hi)
        cy = _reflect(self.center[1] + self.velocity[1] * frame, lo, hi)
        return cx, cy, self.angle + self.spin * frame


def _reflect(x: float, lo: float, hi: float) -> float:
    span = hi - lo
    if span <= 0:
        return lo
    t = (x - lo) % (2 * span)
    return lo + (t if t <= span else 2 * span - t)


@dataclass(frozen=True, eq=False)
class Scene:
    """One sample of the synthetic world.

    Shapes (F frames, N objects in depth order, T audio samples, H = W = image size):

    * ``frames``: uint8 [F, H, W, 3] RGB.
    * ``audio``: float32 [T] mono at ``sample_rate`` Hz, in [-1, 1].
    * ``masks``: bool [F, H, W], the union of the visible pixels of the objects sounding in
      that frame (the ground truth).
    * ``labels``: uint8 [F, H, W], ``class_id + 1`` on those pixels, 0 = background.
    * ``instance_masks``: bool [F, N, H, W], visible (occlusion-aware) pixels of every object.
    * ``class_ids``: int64 [N]; ``sounding``: bool [F, N].
    * ``frame_times``: float64 [F], seconds into ``audio`` that each frame shows.
    * ``background``: float32 [H, W, 3], the noise-free background (for re-rendering).
    """

    split: str
    partition: str
    index: int
    seed: int
    frames: np.ndarray
    audio: np.ndarray
    sample_rate: int
    masks: np.ndarray
    labels: np.ndarray
    instance_masks: np.ndarray
    class_ids: np.ndarray
    sounding: np.ndarray
    frame_times: np.ndarray
    objects: tuple[SceneObject, ...]
    background: np.ndarray
    noise_seed: int
    pixel_noise: float
    snr_db: float
    class_names: tuple[str, ...] = field(default=())

    @property
    def image(self) -> np.ndarray:
        """uint8 [H, W, 3]: the first frame."""
        return self.frames[0]

    @property
    def mask(self) -> np.ndarray:
        """bool [H, W]: the first frame's ground-truth mask."""
        return self.masks[0]

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration(self) -> float:
        """Audio length in seconds."""
        return self.audio.shape[0] / self.sample_rate

    @property
    def sounding_class_ids(self) -> list[int]:
        """Sorted class ids sounding in any frame."""
        return sorted({int(c) for c in self.class_ids[self.sounding.any(axis=0)]})


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def _shape_mask(shape: ShapeName, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test in object-local units (the shape fits in the unit disc)."""
    if shape == "disc":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.72
    if shape == "triangle":
        # Equilateral triangle inscribed in the unit circle, apex up (-v).
        return (v <= 0.5) & (np.sqrt(3.0) * u - v <= 1.0) & (-np.sqrt(3.0) * u - v <= 1.0)
    if shape == "star":
        rho = np.sqrt(u * u + v * v)
        theta = np.arctan2(v, u)
        return rho <= 0.5 + 0.5 * np.cos(2.5 * theta) ** 2
    if shape == "ring":
        r2 = u * u + v * v
        return (r2 <= 1.0) & (r2 >= 0.3)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))
    if shape == "ellipse":
        return u * u + (v / 0.55) ** 2 <= 1.0
    if shape == "hexagon":
        au, av = np.abs(u), np.abs(v)
        return (av <= 0.866) & (np.sqrt(3.0) * au + av <= np.sqrt(3.0))
    raise ValueError(f"expected a shape in {list(_SHAPE_NAMES)}, got {shape!r}")


_SHAPE_NAMES: tuple[ShapeName, ...] = (
    "disc",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "ellipse",
    "hexagon",
)


def _texture(
    texture: TextureName, u: np.ndarray, v: np.ndarray, phase: float, scale: float
) -> np.ndarray:
    """Pattern in [0, 1] that blends the class's two colours (float32 like u)."""
    k = 3.0 * scale
    if texture == "stripes":
        return (np.sin((u + v) * (np.pi * k) + phase) > 0).astype(np.float32)
    if texture == "checker":
        return ((np.floor(u * k + phase) + np.floor(v * k)) % 2).astype(np.float32)
    if texture == "dots":
        fu = (u * k + phase) % 1.0 - 0.5
        fv = (v * k) % 1.0 - 0.5
        return (fu * fu + fv * fv < 0.09).astype(np.float32)
    if texture == "radial":
        return (0.5 + 0.5 * np.cos(np.sqrt(u * u + v * v) * (2 * np.pi * k) + phase)).astype(
            np.float32
        )
    raise ValueError(f"expected a texture in {list(_TEXTURES)}, got {texture!r}")


def object_crop(
    obj: SceneObject, frame: int, image_size: int
) -> tuple[slice, slice, np.ndarray, np.ndarray]:
    """Bounding box of ``obj`` at ``frame`` and its coverage and colour there.

    Returns ``(rows, cols, inside, rgb)``: slices into an image of ``image_size`` pixels, bool
    [h, w] coverage and float32 [h, w, 3] colour (RGB 0..255) of the box.
    """
    spec = CLASS_SPECS[obj.class_id]
    cx, cy, angle = obj.pose(frame, image_size)
    r = obj.radius
    x0, x1 = max(int(np.floor(cx - r)), 0), min(int(np.ceil(cx + r)) + 1, image_size)
    y0, y1 = max(int(np.floor(cy - r)), 0), min(int(np.ceil(cy + r)) + 1, image_size)
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - np.float32(cx))[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - np.float32(cy))[:, None]
    c, s = np.float32(np.cos(angle) / r), np.float32(np.sin(angle) / r)
    u = xs * c + ys * s
    v = ys * c - xs * s
    inside = _shape_mask(spec.shape, u, v)
    pattern = _texture(spec.texture, u, v, obj.texture_phase, obj.texture_scale)[..., None]
    c1 = np.asarray(spec.colour, np.float32) + np.asarray(obj.tint, np.float32)
    c2 = np.asarray(spec.colour2, np.float32) + np.asarray(obj.tint, np.float32)
    rgb = c1 + (c2 - c1) * pattern
    return slice(y0, y1), slice(x0, x1), inside, rgb


def render_object_mask(obj: SceneObject, frame: int, image_size: int) -> np.ndarray:
    """bool [H, W]: the full (unoccluded) pixels of ``obj`` alone at ``frame``."""
    out = np.zeros((image_size, image_size), dtype=bool)
    rows, cols, inside, _ = object_crop(obj, frame, image_size)
    out[rows, cols] = inside
    return out


def render_objects(
    background: np.ndarray,
    objects: tuple[SceneObject, ...] | list[SceneObject],
    frame: int = 0,
    noise_seed: int | None = None,
    pixel_noise: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint ``objects`` back to front (list order) over ``background``.

    Args:
        background: float32 [H, W, 3] (H == W), RGB 0..255.
        objects: depth order, index 0 farthest.
        frame: frame index for the objects' motion.
        noise_seed: seeds the per-pixel sensor noise (uniform, +-``pixel_noise``) added after
            painting; the frame index is mixed in, so each frame gets its own noise.
        pixel_noise: noise amplitude in 0..255 units; 0 disables it.

    Returns:
        ``(image, id_map)``: uint8 [H, W, 3] and int16 [H, W] with the index of the object
        seen at each pixel (-1 = background). ``id_map == i`` is object i's visible mask.
    """
    if (
        background.ndim != 3
        or background.shape[2] != 3
        or background.shape[0] != background.shape[1]
    ):
        raise ValueError(f"expected a square [H, W, 3] background, got shape {background.shape}")
    size = background.shape[0]
    canvas = background.astype(np.float32, copy=True)
    id_map = np.full((size, size), -1, dtype=np.int16)
    for i, obj in enumerate(objects):
        rows, cols, inside, rgb = object_crop(obj, frame, size)
        canvas[rows, cols][inside] = rgb[inside]
        id_map[rows, cols][inside] = i
    if pixel_noise > 0 and noise_seed is not None:
        rng = np.random.default_rng([noise_seed, frame])
        noise = rng.random((size, size, 3), dtype=np.float32)
        noise *= np.float32(2 * pixel_noise)
        canvas += noise
        canvas -= np.float32(pixel_noise - 0.5)  # centre the noise; +0.5 rounds on truncation
    else:
        canvas += np.float32(0.5)
    np.clip(canvas, 0, 255, out=canvas)
    return canvas.astype(np.uint8), id_map


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 [H, W, 3]: a smooth colour field, a faint pattern and fixed grain."""
    grid = 5
    base = rng.uniform(40, 200, size=3).astype(np.float32)
    coarse = base + rng.normal(0, 35, size=(grid, grid, 3)).astype(np.float32)
    # Separable bilinear upsampling of the coarse grid: interp matrix [size, grid].
    pos = (np.arange(size, dtype=np.float32) + 0.5) * (grid - 1) / size
    i0 = np.minimum(pos.astype(np.int64), grid - 2)
    w = pos - i0
    interp = np.zeros((size, grid), np.float32)
    interp[np.arange(size), i0] = 1 - w
    interp[np.arange(size), i0 + 1] = w
    field_ = np.einsum("yi,ijc,xj->yxc", interp, coarse, interp, optimize=True)
    freq = rng.uniform(0.02, 0.12)
    angle = rng.uniform(0, np.pi)
    coords = np.arange(size, dtype=np.float32)
    wave = np.sin(
        (coords[None, :] * np.float32(np.cos(angle)) + coords[:, None] * np.float32(np.sin(angle)))
        * np.float32(2 * np.pi * freq)
    )
    field_ += (wave * np.float32(rng.uniform(4, 14)))[..., None]
    grain = rng.random((size, size, 1), dtype=np.float32)
    field_ += (grain - np.float32(0.5)) * np.float32(rng.uniform(6, 20))
    return np.clip(field_, 0, 255).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Sounds
# --------------------------------------------------------------------------------------------


def _wavetables() -> dict[str, np.ndarray]:
    x = np.arange(_TABLE_SIZE) * (2 * np.pi / _TABLE_SIZE)
    tables = {
        "pure": np.sin(x) + 0.15 * np.sin(2 * x),
        "odd": sum(np.sin(k * x) / k for k in (1, 3, 5, 7, 9)),
        "saw": sum(np.sin(k * x) / k for k in range(1, 9)),
    }
    return {k: (t / np.abs(t).max()).astype(np.float32) for k, t in tables.items()}


_TABLES = _wavetables()


def _envelope(spec: ClassSpec, t: np.ndarray, rate: float, phase: float) -> np.ndarray:
    if spec.envelope in ("steady", "vibrato"):
        return np.ones_like(t)
    frac = (t * np.float32(rate) + np.float32(phase)) % np.float32(1.0)
    if spec.envelope == "pulse":
        return np.clip((np.float32(0.5) - frac) * np.float32(30), 0, 1) * np.clip(frac * 60, 0, 1)
    if spec.envelope == "pluck":
        return np.exp(-frac * np.float32(5.0)) * np.clip(frac * 200, 0, 1)
    if spec.envelope == "tremolo":
        return np.float32(0.6) + np.float32(0.4) * np.sin(frac * np.float32(2 * np.pi))
    raise ValueError(f"unknown envelope {spec.envelope!r}")


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n."""
    best = 1 << max(int(n - 1).bit_length(), 0)
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 3
        p5 *= 5
    return best


def _band_noise(
    rng: np.random.Generator, n: int, colour: NoiseColour, band: tuple[float, float], sr: int
) -> np.ndarray:
    n_fft = _fast_len(n)  # pocketfft is slow on lengths with large prime factors
    white = rng.standard_normal(n_fft, dtype=np.float32)
    spectrum = np.fft.rfft(white)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    gain = ((freqs >= band[0]) & (freqs <= band[1])).astype(np.float32)
    if colour == "brown":
        gain /= np.maximum(freqs, band[0] if band[0] > 0 else 1.0) / 100.0
    out = np.fft.irfft(spectrum * gain, n_fft)[:n].astype(np.float32)
    return out / np.float32(max(float(np.sqrt(np.mean(out * out))), 1e-8))


def class_sound(
    obj: SceneObject, num_samples: int, sample_rate: int = SAMPLE_RATE, noise_seed: int = 0
) -> np.ndarray:
    """float32 [num_samples]: the sound of ``obj``'s class with its per-instance jitter.

    Normalised to an RMS of 0.1 (-20 dBFS). ``noise_seed`` seeds the noise component of noisy
    classes.
    """
    spec = CLASS_SPECS[obj.class_id]
    t = np.arange(num_samples, dtype=np.float64) / sample_rate
    f0 = spec.f0 * obj.pitch_scale
    rate = spec.rate * obj.rate_scale
    if spec.envelope == "vibrato":
        depth = 0.04
        cycles = f0 * t - (f0 * depth / (2 * np.pi * rate)) * np.cos(
            2 * np.pi * rate * t + obj.sound_phase
        )
    else:
        cycles = f0 * t + obj.sound_phase
    if spec.timbre == "bell":
        ph = (cycles % 1.0).astype(np.float32) * np.float32(2 * np.pi)
        tone = (
            np.sin(ph)
            + np.float32(0.5) * np.sin(ph * np.float32(2.76))
            + np.float32(0.3) * np.sin(ph * np.float32(5.4))
        )
    elif spec.timbre == "noise":
        tone = np.zeros(num_samples, np.float32)
    else:
        idx = ((cycles % 1.0) * _TABLE_SIZE).astype(np.int64)
        tone = _TABLES[spec.timbre][np.minimum(idx, _TABLE_SIZE - 1)]
    tone = tone.astype(np.float32)
    if spec.noise != "none":
        noise = _band_noise(
            np.random.default_rng(noise_seed), num_samples, spec.noise, spec.noise_band, sample_rate
        )
        tone = tone + np.float32(spec.noise_mix) * noise
    if spec.envelope in ("steady", "vibrato"):
        sound = tone
    else:
        sound = tone * _envelope(spec, t.astype(np.float32), rate, obj.sound_phase % 1.0)
    rms = float(np.sqrt(np.mean(sound * sound))) if num_samples else 0.0
    return (sound * np.float32(0.1 / max(rms, 1e-8))).astype(np.float32)


def _frame_gate(gate: np.ndarray, num_samples: int, fps: float, sample_rate: int) -> np.ndarray:
    """float32 [num_samples]: per-frame on/off flags as a waveform gate with 5 ms ramps."""
    frame_of_sample = np.minimum(
        (np.arange(num_samples) * fps / sample_rate).astype(np.int64), gate.shape[0] - 1
    )
    hard = gate[frame_of_sample].astype(np.float32)
    k = max(int(0.005 * sample_rate), 1)
    padded = np.concatenate([np.full(k // 2, hard[0]), hard, np.full(k - k // 2, hard[-1])])
    csum = np.concatenate([[0.0], np.cumsum(padded, dtype=np.float64)])
    return ((csum[k : k + num_samples] - csum[:num_samples]) / k).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The world
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of :class:`SynthWorld` (all sizes in pixels, times in seconds, levels in dB)."""

    image_size: int = 224
    num_classes: int = 8
    frames_per_clip: int = 1
    sample_rate: int = SAMPLE_RATE
    min_seconds: float = 1.0
    max_seconds: float = 5.0
    snr_db: tuple[float, float] = (10.0, 25.0)
    silent_dbfs: float = -80.0
    max_distractors: int = 2
    radius_frac: tuple[float, float] = (0.11, 0.24)
    pixel_noise: float = 6.0
    clip_speed: float = 6.0
    video_fps: float = 25.0
    video_seconds: float = 4.0
    video_speed: float = 2.0
    video_segment_seconds: tuple[float, float] = (0.4, 1.6)


class SynthWorld:
    """Seeded generator of audio-visual scenes.

    Args:
        seed: non-negative int; with (split, index, partition) it fixes every byte of a scene.
        image_size: H = W of the frames (>= 32).
        num_classes: 2..16 classes (``CLASS_SPECS[:num_classes]``).
        frames_per_clip: frames of an ``s4``/``ms3``/``avss``/``silent`` scene, one per second
            (AVSBench has 5); with 1 the audio lasts ``min_seconds``..``max_seconds`` and the
            image shows its middle, otherwise it lasts exactly ``frames_per_clip`` seconds and
            frame f shows time f + 0.5 s; objects then drift by up to ``clip_speed`` pixels
            per frame.
        **overrides: any other :class:`SynthConfig` field.
    """

    def __init__(
        self,
        seed: int,
        image_size: int = 224,
        num_classes: int = 8,
        frames_per_clip: int = 1,
        **overrides: object,
    ) -> None:
        if not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"expected a non-negative int seed, got {seed!r}")
        if image_size < 32:
            raise ValueError(f"expected image_size >= 32, got {image_size}")
        if not 2 <= num_classes <= MAX_CLASSES:
            raise ValueError(f"expected num_classes in [2, {MAX_CLASSES}], got {num_classes}")
        if frames_per_clip < 1:
            raise ValueError(f"expected frames_per_clip >= 1, got {frames_per_clip}")
        self.seed = int(seed)
        known = {f.name for f in fields(SynthConfig)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"expected SynthConfig fields {sorted(known)}, got unknown {unknown}")
        self.config = SynthConfig(
            image_size=image_size,
            num_classes=num_classes,
            frames_per_clip=frames_per_clip,
            **overrides,  # type: ignore[arg-type]
        )
        lo, hi = self.config.radius_frac
        if not 0 < lo <= hi < 0.5:
            raise ValueError(
                "expected 0 < radius_frac[0] <= radius_frac[1] < 0.5, "
                f"got {self.config.radius_frac}"
            )

    @property
    def class_names(self) -> tuple[str, ...]:
        """Names of the classes in use; class id i is ``class_names[i]``."""
        return tuple(s.name for s in CLASS_SPECS[: self.config.num_classes])

    def rng(self, split: str, index: int, partition: str = "train") -> np.random.Generator:
        """The generator behind one scene (a pure function of its arguments)."""
        if split not in _SPLIT_CODE:
            raise ValueError(f"expected split in {list(SPLITS)}, got {split!r}")
        if partition not in _PARTITION_CODE:
            raise ValueError(f"expected partition in {list(PARTITIONS)}, got {partition!r}")
        if index < 0:
            raise ValueError(f"expected a non-negative index, got {index}")
        seq = np.random.SeedSequence(
            [self.seed, _SPLIT_CODE[split], _PARTITION_CODE[partition], int(index)]
        )
        return np.random.default_rng(seq)

    def sample(self, split: str, index: int, partition: str = "train") -> Scene:
        """Scene ``index`` of ``split`` (see the module docstring for what each split holds)."""
        cfg = self.config
        rng = self.rng(split, index, partition)
        size = cfg.image_size
        video = split == "video"
        if split == "s4":
            n_sound = 1
        elif split in ("ms3", "avss"):
            n_sound = int(rng.integers(1, 4))
        elif split in _NOTHING_SOUNDS:
            n_sound = 0
        else:
            n_sound = int(rng.integers(2, 5))  # video: objects that sound at some point
        n_extra = int(rng.integers(0, cfg.max_distractors + 1))
        if split in _NOTHING_SOUNDS:
            n_extra = int(rng.integers(1, 4))
        n_obj = min(n_sound + n_extra, cfg.num_classes - (split == "offscreen"))
        n_sound = min(n_sound, n_obj)
        classes = rng.permutation(cfg.num_classes)[:n_obj]
        depth = rng.permutation(n_obj)  # object k of `classes` is drawn at depth position depth[k]
        is_sounder = np.zeros(n_obj, bool)
        is_sounder[depth[:n_sound]] = True
        class_ids = np.empty(n_obj, np.int64)
        class_ids[depth] = classes

        if video:
            num_frames = max(round(cfg.video_fps * cfg.video_seconds), 1)
            fps = cfg.video_fps
            speed = cfg.video_speed
            frame_times = np.arange(num_frames, dtype=np.float64) / fps
            num_samples = round(num_frames / fps * cfg.sample_rate)
        else:
            num_frames = cfg.frames_per_clip
            fps = 1.0
            speed = cfg.clip_speed if num_frames > 1 else 0.0
            frame_times = np.arange(num_frames, dtype=np.float64) + 0.5
            if num_frames > 1:
                num_samples = num_frames * cfg.sample_rate
            else:
                seconds = rng.uniform(cfg.min_seconds, cfg.max_seconds)
                num_samples = round(seconds * cfg.sample_rate)
                frame_times = np.array([num_samples / cfg.sample_rate / 2])  # the middle

        background = _background(rng, size)
        objects = self._place_objects(rng, class_ids, size, speed, video)

        sounding = np.zeros((num_frames, n_obj), bool)
        if video:
            for i in np.flatnonzero(is_sounder):
                sounding[:, i] = self._gate_schedule(rng, num_frames, fps)
        else:
            sounding[:, is_sounder] = True

        noise_seed = int(rng.integers(0, 2**62))
        frames = np.empty((num_frames, size, size, 3), np.uint8)
        instance = np.empty((num_frames, n_obj, size, size), bool)
        labels = np.empty((num_frames, size, size), np.uint8)
        obj_index = np.arange(n_obj, dtype=np.int16)[:, None, None]
        for f in range(num_frames):
            frames[f], id_map = render_objects(background, objects, f, noise_seed, cfg.pixel_noise)
            instance[f] = id_map[None] == obj_index
            lut = np.zeros(n_obj + 1, np.uint8)  # last entry: background (id -1)
            lut[:n_obj] = np.where(sounding[f], class_ids + 1, 0)
            labels[f] = lut[id_map]
        masks = labels > 0

        snr_db = float(rng.uniform(*cfg.snr_db))
        if split == "offscreen":
            audio = self._offscreen_soundtrack(rng, class_ids, num_samples, snr_db, noise_seed)
        elif split == "noise":
            audio = self._noise_soundtrack(rng, num_samples)
        else:
            audio = self._soundtrack(
                rng, objects, sounding, num_samples, fps, snr_db, split, noise_seed
            )
        return Scene(
            split=split,
            partition=partition,
            index=int(index),
            seed=self.seed,
            frames=frames,
            audio=audio,
            sample_rate=cfg.sample_rate,
            masks=masks,
            labels=labels,
            instance_masks=instance,
            class_ids=class_ids,
            sounding=sounding,
            frame_times=frame_times,
            objects=tuple(objects),
            background=background,
            noise_seed=noise_seed,
            pixel_noise=cfg.pixel_noise,
            snr_db=snr_db,
            class_names=self.class_names,
        )

    def resound(self, scene: Scene, sounding: np.ndarray | list[bool]) -> Scene:
        """The same frames with another choice of sounding objects: same look, different sound.

        Args:
            scene: a scene of this world.
            sounding: bool [N] (every frame) or [F, N]; object i (depth order) sounds where True.

        Returns:
            A scene with identical ``frames`` and ``instance_masks``, and ``audio``, ``masks``,
            ``labels``, ``sounding`` for the new choice (near-silent audio if nothing sounds).
            Deterministic: the noise is seeded by the scene's key and the new flags.
        """
        flags = np.asarray(sounding, dtype=bool)
        n, f = len(scene.objects), scene.num_frames
        if flags.shape == (n,):
            flags = np.broadcast_to(flags, (f, n))
        if flags.shape != (f, n):
            raise ValueError(f"expected sounding of shape ({n},) or ({f}, {n}), got {flags.shape}")
        flags = flags.copy()
        labels = np.zeros_like(scene.labels)
        for i in range(n):
            on = scene.instance_masks[:, i] & flags[:, i, None, None]
            labels[on] = scene.class_ids[i] + 1
        key = [
            scene.seed,
            _SPLIT_CODE[scene.split],
            _PARTITION_CODE[scene.partition],
            scene.index,
            1,
        ]
        seq = np.random.SeedSequence(key + np.packbits(flags.ravel()).tolist())
        rng = np.random.default_rng(seq)
        fps = 1.0 / float(scene.frame_times[1] - scene.frame_times[0]) if f > 1 else 1.0
        mode = "silent" if not flags.any() else "mix"
        audio = self._soundtrack(
            rng,
            list(scene.objects),
            flags,
            scene.audio.shape[0],
            fps,
            scene.snr_db,
            mode,
            scene.noise_seed,
        )
        return replace(scene, audio=audio, masks=labels > 0, labels=labels, sounding=flags)

    def _place_objects(
        self, rng: np.random.Generator, class_ids: np.ndarray, size: int, speed: float, video: bool
    ) -> list[SceneObject]:
        """Random poses; re-drawn (up to 30 times) until every object keeps >= 35% visible."""
        cfg = self.config
        objects: list[SceneObject] = []
        for _attempt in range(30):
            objects = []
            for cid in class_ids:
                r = float(rng.uniform(*cfg.radius_frac)) * size
                cx, cy = rng.uniform(r, size - r, size=2)
                vel = rng.uniform(-speed, speed, size=2) if speed > 0 else np.zeros(2)
                objects.append(
                    SceneObject(
                        class_id=int(cid),
                        center=(float(cx), float(cy)),
                        radius=r,
                        angle=float(rng.uniform(0, 2 * np.pi)),
                        velocity=(float(vel[0]), float(vel[1])),
                        spin=float(rng.uniform(-0.05, 0.05)) if video else 0.0,
                        tint=tuple(float(x) for x in rng.uniform(-15, 15, size=3)),  # type: ignore[arg-type]
                        texture_phase=float(rng.uniform(0, 2 * np.pi)),
                        texture_scale=float(rng.uniform(0.8, 1.25)),
                        pitch_scale=float(rng.uniform(0.97, 1.03)),
                        rate_scale=float(rng.uniform(0.9, 1.1)),
                        sound_phase=float(rng.uniform(0, 1)),
                    )
                )
            if self._visible_enough(objects, size):
                break
        return objects

    @staticmethod
    def _visible_enough(objects: list[SceneObject], size: int) -> bool:
        id_map = np.full((size, size), -1, np.int16)
        areas = []
        for i, obj in enumerate(objects):
            rows, cols, inside, _ = object_crop(obj, 0, size)
            id_map[rows, cols][inside] = i
            areas.append(int(inside.sum()))
        counts = np.bincount(id_map.ravel() + 1, minlength=len(objects) + 1)[1:]
        return all(c >= max(0.35 * a, 30) for c, a in zip(counts, areas, strict=True))

    def _gate_schedule(self, rng: np.random.Generator, num_frames: int, fps: float) -> np.ndarray:
        """bool [num_frames]: alternating on/off runs of ``video_segment_seconds`` lengths."""
        lo, hi = self.config.video_segment_seconds
        gate = np.zeros(num_frames, bool)
        state = bool(rng.integers(0, 2))
        f = 0
        while f < num_frames:
            run = max(round(rng.uniform(lo, hi) * fps), 1)
            gate[f : f + run] = state
            f += run
            state = not state
        return gate

    def _offscreen_soundtrack(
        self,
        rng: np.random.Generator,
        visible: np.ndarray,
        num_samples: int,
        snr_db: float,
        noise_seed: int,
    ) -> np.ndarray:
        """The sound of a class absent from the picture, at -20 dBFS, plus background noise."""
        absent = sorted(set(range(self.config.num_classes)) - {int(c) for c in visible})
        class_id = int(rng.choice(absent))
        source = SceneObject(
            class_id=class_id,
            center=(-1.0, -1.0),
            radius=0.0,
            angle=0.0,
            velocity=(0.0, 0.0),
            spin=0.0,
            tint=(0.0, 0.0, 0.0),
            texture_phase=0.0,
            texture_scale=1.0,
            pitch_scale=float(rng.uniform(0.97, 1.03)),
            rate_scale=float(rng.uniform(0.9, 1.1)),
            sound_phase=float(rng.uniform(0, 1)),
        )
        mix = class_sound(source, num_samples, self.config.sample_rate, noise_seed + 97)
        noise_rms = 0.1 * 10 ** (-snr_db / 20)
        mix += rng.standard_normal(num_samples, dtype=np.float32) * np.float32(noise_rms)
        return mix.astype(np.float32)

    def _noise_soundtrack(self, rng: np.random.Generator, num_samples: int) -> np.ndarray:
        """White or brown noise only, RMS uniform in -30..-20 dBFS."""
        colour: NoiseColour = "white" if rng.integers(0, 2) == 0 else "brown"
        level = 10 ** (float(rng.uniform(-30.0, -20.0)) / 20)
        band = (0.0, self.config.sample_rate / 2)
        noise = _band_noise(rng, num_samples, colour, band, self.config.sample_rate)
        return (noise * np.float32(level)).astype(np.float32)

    def _soundtrack(
        self,
        rng: np.random.Generator,
        objects: list[SceneObject],
        sounding: np.ndarray,
        num_samples: int,
        fps: float,
        snr_db: float,
        split: str,
        noise_seed: int,
    ) -> np.ndarray:
        cfg = self.config
        sr = cfg.sample_rate
        if split == "silent":
            level = 10 ** (cfg.silent_dbfs / 20)
            return (rng.standard_normal(num_samples, dtype=np.float32) * np.float32(level)).astype(
                np.float32
            )
        mix = np.zeros(num_samples, np.float32)
        for i, obj in enumerate(objects):
            if not sounding[:, i].any():
                continue
            sound = class_sound(obj, num_samples, sr, noise_seed + i + 1)
            if not sounding[:, i].all():
                sound *= _frame_gate(sounding[:, i], num_samples, fps, sr)
            mix += sound
        noise_rms = 0.1 * 10 ** (-snr_db / 20)
        mix += rng.standard_normal(num_samples, dtype=np.float32) * np.float32(noise_rms)
        peak = float(np.abs(mix).max()) if num_samples else 0.0
        if peak > 0.99:
            mix *= np.float32(0.99 / peak)
        return mix.astype(np.float32)
