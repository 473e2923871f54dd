"""Synthetic surveillance scenes: a fixed camera view with walkers along a path, and injected anomalies.

A scene is a static textured background (grass, a paved path, a few benches or flower beds,
lighting) fixed by `SceneConfig.layout_seed`, so every clip of one scene shows the same view, plus
walkers that move along the path at a normal speed, plus a little sensor noise. A clip's own `seed`
only decides the walkers, the noise and the anomalies' details.

Anomalies are extra objects drawn on top, in a frame range each:
  fast       a walker running at 3-4× the normal speed along the path
  wrong_way  a walker going across the path (two-way scenes) or against the flow (one-way scenes)
  intruder   a large cart-like object of another colour driving over the grass
  loiter     a walker standing about on the path, barely moving

Every random stream (walkers, noise, each anomaly) has its own generator, so adding an anomaly
changes the frames it is visible in and nothing else; the labels are exactly those frames.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np

KINDS = ("fast", "wrong_way", "intruder", "loiter")
ENCODERS = ("libx264", "h264", "mpeg4")  # the first FFmpeg has wins; its own mpeg4 encoder is nearly always there


@dataclass(frozen=True)
class Palette:
    grass: tuple[float, float, float]
    path: tuple[float, float, float]
    blocks: tuple[tuple[float, float, float], ...]  # benches, flower beds, kiosks on the grass
    walker_lo: float  # walkers' clothes: each channel uniform in [walker_lo, walker_hi]
    walker_hi: float
    intruder: tuple[float, float, float]
    lamp: float  # > 0: a pool of light at night instead of daylight from the top


PALETTES = {
    "day": Palette(
        grass=(78, 122, 64),
        path=(196, 190, 176),
        blocks=((120, 86, 58), (150, 150, 156), (170, 70, 80)),
        walker_lo=15,
        walker_hi=110,
        intruder=(236, 196, 40),
        lamp=0.0,
    ),
    "night": Palette(
        grass=(26, 38, 34),
        path=(72, 72, 84),
        blocks=((48, 40, 36), (90, 90, 100), (30, 50, 70)),
        walker_lo=130,
        walker_hi=230,
        intruder=(210, 60, 40),
        lamp=0.6,
    ),
}


@dataclass(frozen=True)
class SceneConfig:
    width: int = 160  # even: H.264 with yuv420p needs it
    height: int = 120
    fps: int = 10
    palette: str = "day"  # key of PALETTES: "day" (light path, dark walkers) or "night" (dark, lit walkers)
    layout_seed: int = 0  # fixes the background, i.e. the camera view; clips of a scene share it
    walkers: int = 4  # walkers in the scene; each waits a little off-screen between crossings
    speed: tuple[float, float] = (0.8, 1.6)  # normal walking speed, px/frame
    direction: tuple[float, float] = (1.0, 0.0)  # (x, y) of the flow along the path; normalised
    two_way: bool = True  # walkers go both ways along `direction`, else only with it
    path_center: tuple[float, float] = (0.5, 0.55)  # a point on the path's centre line, fractions of (W, H)
    path_width: float = 0.3  # fraction of min(W, H)
    walker_size: tuple[int, int] = (5, 12)  # (w, h) px of a walker's ellipse
    noise: float = 2.0  # std of the per-pixel sensor noise, grey levels

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16 or self.width % 2 or self.height % 2:
            raise ValueError(f"frame size must be even and at least 16×16, got {self.width}×{self.height}")
        if self.palette not in PALETTES:
            raise ValueError(f"unknown palette {self.palette!r}; choose from {', '.join(PALETTES)}")
        if not 0 < self.speed[0] <= self.speed[1]:
            raise ValueError(f"speed range must be positive and increasing, got {self.speed}")
        if np.hypot(*self.direction) == 0:
            raise ValueError("direction must not be (0, 0)")


# A light walkway seen from the side: people cross left↔right, grass above and below.
SCENE_A = SceneConfig()

# After the camera moved: a dark plaza, one-way flow down and slightly to the right, lit walkers.
SCENE_B = SceneConfig(
    palette="night",
    layout_seed=1,
    walkers=5,
    speed=(0.7, 1.4),
    direction=(0.35, 1.0),
    two_way=False,
    path_center=(0.4, 0.5),
    path_width=0.4,
    walker_size=(7, 7),
    noise=2.5,
)


@dataclass(frozen=True)
class _Geometry:
    """The path's frame: p = center + s·d + l·n, with s along the flow and l across it."""

    width: int
    height: int
    center: np.ndarray
    d: np.ndarray
    n: np.ndarray
    half_width: float  # of the path, px

    @staticmethod
    def of(scene: SceneConfig) -> _Geometry:
        d = np.asarray(scene.direction, dtype=np.float64)
        d /= np.hypot(*d)
        center = np.array([scene.path_center[0] * scene.width, scene.path_center[1] * scene.height])
        return _Geometry(
            scene.width,
            scene.height,
            center,
            d,
            np.array([-d[1], d[0]]),
            scene.path_width * min(scene.width, scene.height) / 2,
        )

    def point(self, s: float, lateral: float) -> np.ndarray:
        return self.center + s * self.d + lateral * self.n

    def span(
        self, lateral: float, margin: float, axis: np.ndarray | None = None, origin: np.ndarray | None = None
    ) -> tuple[float, float]:
        """Interval of s for which origin + s·axis lies in the frame grown by `margin` px on every side.

        Defaults: the line along the flow at `lateral` px off the centre line. Empty intervals
        come back with lo > hi.
        """
        axis = self.d if axis is None else axis
        origin = self.center + lateral * self.n if origin is None else origin
        lo, hi = -np.inf, np.inf
        for k, size in enumerate((self.width, self.height)):
            a, b = -margin - origin[k], size - 1 + margin - origin[k]
            if abs(axis[k]) < 1e-9:
                if not a <= 0 <= b:
                    return 1.0, -1.0
                continue
            s0, s1 = sorted((a / axis[k], b / axis[k]))
            lo, hi = max(lo, s0), min(hi, s1)
        return float(lo), float(hi)

    def lane(self, size: tuple[float, float]) -> float:
        """How far off the centre line an object of size (w, h) may go and still be all on the path."""
        across = abs(self.n[0]) * size[0] / 2 + abs(self.n[1]) * size[1] / 2
        return max(self.half_width - across - 1.0, 0.0)

    def lateral_extent(self) -> tuple[float, float]:
        """Smallest and largest l over the frame's corners."""
        corners = np.array(
            [[0, 0], [self.width - 1, 0], [0, self.height - 1], [self.width - 1, self.height - 1]], dtype=np.float64
        )
        ls = (corners - self.center) @ self.n
        return float(ls.min()), float(ls.max())

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        """(s, l) of every pixel, each (H, W)."""
        yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float64)
        dx, dy = xx - self.center[0], yy - self.center[1]
        return dx * self.d[0] + dy * self.d[1], dx * self.n[0] + dy * self.n[1]


def _smooth_field(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid, bilinearly interpolated."""
    gh, gw = cells + 1, cells * width // height + 1
    grid = rng.uniform(-1, 1, size=(gh, gw))
    ys, xs = np.linspace(0, gh - 1, height), np.linspace(0, gw - 1, width)
    y0, x0 = np.minimum(ys.astype(int), gh - 2), np.minimum(xs.astype(int), gw - 2)
    fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
    bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _background(scene: SceneConfig) -> np.ndarray:
    """The static view: (H, W, 3) float32, deterministic from the scene alone."""
    pal = PALETTES[scene.palette]
    geo = _Geometry.of(scene)
    rng = np.random.default_rng([scene.layout_seed, 0xB6])
    h, w = scene.height, scene.width
    s, lat = geo.coords()

    # Grass: patchy low-frequency shading plus fixed per-pixel blades, a little greener in places.
    patches = _smooth_field(rng, h, w, 4)
    blades = rng.normal(0, 1, size=(h, w))
    img = np.array(pal.grass, dtype=np.float64) * (1 + 0.18 * patches + 0.08 * blades)[..., None]
    img[..., 1] += 6 * _smooth_field(rng, h, w, 7)

    # Blocks on the grass, never on the path: the path must stay a clean lane for the walkers.
    on_path = np.abs(lat) <= geo.half_width + 2
    placed, tries = 0, 0
    while placed < 4 and tries < 200:
        tries += 1
        bw, bh = int(rng.integers(w // 12, w // 5)), int(rng.integers(h // 14, h // 7))
        x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
        if on_path[max(y0 - 2, 0) : y0 + bh + 2, max(x0 - 2, 0) : x0 + bw + 2].any():
            continue
        color = np.array(pal.blocks[placed % len(pal.blocks)], dtype=np.float64)
        img[y0 + 2 : y0 + bh + 2, x0 + 2 : x0 + bw + 2] *= 0.7  # a drop shadow grounds the block
        img[y0 : y0 + bh, x0 : x0 + bw] = color * (1 + 0.05 * rng.normal(size=(bh, bw, 1)))
        placed += 1

    # The path: paving slabs across the flow, darker kerbs at both edges.
    inside = np.abs(lat) <= geo.half_width
    paving = np.array(pal.path, dtype=np.float64) * (1 + 0.04 * rng.normal(size=(h, w)))[..., None]
    paving[np.mod(s, 9.0) < 1.0] *= 0.9
    paving[np.abs(lat) > geo.half_width - 1.5] *= 0.8
    img[inside] = paving[inside]

    # Light: daylight fades towards the bottom of the view; at night a lamp lights a pool.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if pal.lamp > 0:
        lx, ly = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        r2 = ((xx - lx) ** 2 + (yy - ly) ** 2) / (0.35 * min(w, h)) ** 2
        light = 0.75 + pal.lamp * np.exp(-r2)
    else:
        light = 1.08 - 0.16 * yy / h
    img *= light[..., None]
    return np.clip(img, 0, 255).astype(np.float32)


def _stamp(
    img: np.ndarray,
    cx: float,
    cy: float,
    w: float,
    h: float,
    color: np.ndarray,
    ellipse: bool = True,
    legs: bool = False,
) -> bool:
    """Paint an ellipse (or rectangle) of w × h px centred at (cx, cy); True if any pixel landed in the frame."""
    x0, x1 = max(int(np.floor(cx - w / 2)), 0), min(int(np.ceil(cx + w / 2)) + 1, img.shape[1])
    y0, y1 = max(int(np.floor(cy - h / 2)), 0), min(int(np.ceil(cy + h / 2)) + 1, img.shape[0])
    if x0 >= x1 or y0 >= y1:
        return False
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, v = (xs - cx) / (w / 2), (ys - cy) / (h / 2)
    mask = (u * u + v * v <= 1) if ellipse else ((np.abs(u) <= 1) & (np.abs(v) <= 1))
    if not mask.any():
        return False
    patch = img[y0:y1, x0:x1]
    patch[mask] = color
    if legs:  # trousers darker than the shirt: a little texture, and it looks like a person
        lower = mask & (v > 0.2)
        patch[lower] = color * 0.6
    return True


@dataclass
class _Walker:
    """One normal walker: crosses the frame along the path, waits off-screen, crosses again."""

    scene: SceneConfig
    geo: _Geometry
    rng: np.random.Generator
    s: float = 0.0
    lateral: float = 0.0
    velocity: float = 0.0  # px/frame along d, signed
    wait: int = 0
    phase: float = 0.0
    color: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    size: tuple[float, float] = (0.0, 0.0)

    def spawn(self, first: bool) -> None:
        sc, rng = self.scene, self.rng
        sign = rng.choice([-1.0, 1.0]) if sc.two_way else 1.0
        self.velocity = sign * rng.uniform(*sc.speed)
        self.phase = rng.uniform(0, 2 * np.pi)
        pal = PALETTES[sc.palette]
        self.color = rng.uniform(pal.walker_lo, pal.walker_hi, size=3).astype(np.float32)
        k = rng.uniform(0.85, 1.15)
        self.size = (sc.walker_size[0] * k, sc.walker_size[1] * k)
        # all of a walker stays on the path: motion off it is what the anomalies are made of
        self.lateral = rng.uniform(-1, 1) * self.geo.lane(self.size)
        lo, hi = self.geo.span(self.lateral, margin=max(self.size))
        if first:  # the clip starts mid-scene: walkers are already spread over the path
            self.s, self.wait = rng.uniform(lo, hi), 0
        else:
            self.s, self.wait = (lo if sign > 0 else hi), int(rng.integers(0, 40))

    def draw_and_step(self, img: np.ndarray, t: int) -> None:
        if self.wait > 0:
            self.wait -= 1
            return
        sway = 0.6 * np.sin(self.phase + 0.5 * t)  # a walker's gait wobbles a little across the path
        x, y = self.geo.point(self.s, self.lateral + sway)
        _stamp(img, x, y, *self.size, self.color, legs=True)
        self.s += self.velocity
        lo, hi = self.geo.span(self.lateral, margin=max(self.size))
        if not lo <= self.s <= hi:
            self.spawn(first=False)


def _bounce(x: float, lo: float, hi: float) -> float:
    """Fold x into [lo, hi] like a ball bouncing between two walls."""
    if hi <= lo:
        return lo
    period = 2 * (hi - lo)
    r = np.mod(x - lo, period)
    return lo + (r if r <= hi - lo else period - r)


@dataclass
class _Anomaly:
    """An extra object in frames [start, end): its centre at t is origin + f(t)·axis (bouncing) plus wobble."""

    kind: str
    start: int
    end: int
    origin: np.ndarray
    axis: np.ndarray
    s0: float
    lo: float
    hi: float
    speed: float  # signed, px/frame along axis
    size: tuple[float, float]
    color: np.ndarray
    ellipse: bool = True
    wobble: float = 0.0  # radius of a slow circle, px (loitering)

    def draw(self, img: np.ndarray, t: int) -> bool:
        k = t - self.start
        x, y = self.origin + _bounce(self.s0 + self.speed * k, self.lo, self.hi) * self.axis
        if self.wobble:
            x, y = x + self.wobble * np.cos(0.3 * k), y + self.wobble * np.sin(0.2 * k)
        if self.ellipse:
            return _stamp(img, x, y, *self.size, self.color, legs=True)
        _stamp(img, x, y, self.size[0] + 2, self.size[1] + 2, self.color * 0.45, ellipse=False)  # outline
        return _stamp(img, x, y, *self.size, self.color, ellipse=False)


def _speed(rng: np.random.Generator, low: float, high: float, span: float, frames: int) -> float:
    """A speed in [low, high] px/frame, if possible one that covers `span` a whole number of times in
    `frames` frames: an object entering at one edge then leaves at an edge instead of vanishing mid-frame."""
    v = rng.uniform(low, high)
    if frames > 1 and span > 0:
        fitted = max(1, round(v * (frames - 1) / span)) * span / (frames - 1)
        if low <= fitted <= high:
            return fitted
    return v


def _make_anomaly(
    kind: str, start: int, end: int, scene: SceneConfig, geo: _Geometry, rng: np.random.Generator
) -> _Anomaly:
    """Place one anomaly so that its centre stays in the frame for all of [start, end).

    A centre on the frame's edge still shows half the object, so it is visible in every one of
    those frames and the labels need no guessing. Moving objects enter at an edge and turn back at
    the edges; `_speed` times them to be at an edge again when the range ends, where it can.
    """
    pal = PALETTES[scene.palette]
    person = (float(scene.walker_size[0]), float(scene.walker_size[1]))
    clothes = rng.uniform(pal.walker_lo, pal.walker_hi, size=3).astype(np.float32)
    normal = float(np.mean(scene.speed))
    sign = rng.choice([-1.0, 1.0])
    if kind in ("fast", "loiter") or (kind == "wrong_way" and not scene.two_way):
        lateral = rng.uniform(-1, 1) * geo.lane(person)
        origin, axis = geo.center + lateral * geo.n, geo.d
        lo, hi = geo.span(lateral, margin=0)
        if kind == "fast":
            speed = sign * _speed(rng, 3.0 * normal, 4.0 * normal, hi - lo, end - start)
            s0 = lo if speed > 0 else hi  # runs in from the edge
        elif kind == "loiter":
            speed, s0 = 0.0, rng.uniform(lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo))
        else:  # against a one-way flow
            speed, s0 = -_speed(rng, *scene.speed, hi - lo, end - start), hi
        return _Anomaly(
            kind, start, end, origin, axis, s0, lo, hi, speed, person, clothes, wobble=2.0 if kind == "loiter" else 0.0
        )
    if kind == "wrong_way":  # across a two-way path: from the grass on one side to the other
        lo_s, hi_s = geo.span(0.0, margin=-max(person))
        origin = geo.point(rng.uniform(lo_s + 0.2 * (hi_s - lo_s), hi_s - 0.2 * (hi_s - lo_s)), 0.0)
        lo, hi = geo.span(0.0, margin=0, axis=geo.n, origin=origin)
        speed = sign * _speed(rng, *scene.speed, hi - lo, end - start)
        return _Anomaly(kind, start, end, origin, geo.n, lo if speed > 0 else hi, lo, hi, speed, person, clothes)
    # intruder: a cart on the wider strip of grass, driving along it just clear of the path
    # (further out, a diagonal line would only clip a corner of the frame)
    size = (person[0] * 5.0, person[1] * 1.1) if person[1] > person[0] else (person[0] * 3.5, person[1] * 2.0)
    l_min, l_max = geo.lateral_extent()
    side = 1.0 if l_max >= -l_min else -1.0
    room = (l_max if side > 0 else -l_min) - geo.half_width
    across = abs(geo.n[0]) * size[0] / 2 + abs(geo.n[1]) * size[1] / 2  # the cart's half extent across the path
    lateral = side * (geo.half_width + min(across + 3, room / 2))
    lo, hi = geo.span(lateral, margin=0)
    speed = sign * _speed(rng, 1.0 * normal, 1.5 * normal, hi - lo, end - start)
    color = np.array(pal.intruder, dtype=np.float32) * rng.uniform(0.9, 1.05)
    return _Anomaly(
        kind,
        start,
        end,
        geo.center + lateral * geo.n,
        geo.d,
        lo if speed > 0 else hi,
        lo,
        hi,
        speed,
        size,
        color,
        ellipse=False,
    )


def _check(frames: int, anomalies: list[tuple[str, int, int]]) -> None:
    if frames < 0:
        raise ValueError(f"frames must be >= 0, got {frames}")
    for kind, start, end in anomalies:
        if kind not in KINDS:
            raise ValueError(f"unknown anomaly kind {kind!r}; choose from {', '.join(KINDS)}")
        if not 0 <= start < end <= frames:
            raise ValueError(f"anomaly range [{start}, {end}) must lie within the clip's {frames} frames")


def _render(
    scene: SceneConfig, frames: int, anomalies: list[tuple[str, int, int]], seed: int
) -> Iterator[tuple[np.ndarray, bool]]:
    """Frames with a flag: does any anomalous object show in this frame. Arguments checked by the caller."""
    geo = _Geometry.of(scene)
    bg = _background(scene)
    walk_rng = np.random.default_rng([seed, 1])
    noise_rng = np.random.default_rng([seed, 2])
    walkers = [_Walker(scene, geo, walk_rng) for _ in range(scene.walkers)]
    for w in walkers:
        w.spawn(first=True)
    objects = [
        _make_anomaly(kind, start, end, scene, geo, np.random.default_rng([seed, 3, i]))
        for i, (kind, start, end) in enumerate(anomalies)
    ]
    for t in range(frames):
        img = bg.copy()
        for w in walkers:
            w.draw_and_step(img, t)
        visible = False
        for obj in objects:  # drawn last, over the walkers, so they are never hidden
            if obj.start <= t < obj.end:
                visible |= obj.draw(img, t)
        noise = noise_rng.standard_normal(img.shape, dtype=np.float32)  # drawn every frame: streams stay aligned
        if scene.noise > 0:
            img += scene.noise * noise
        yield np.clip(np.rint(img), 0, 255).astype(np.uint8), visible


def render_clip(
    scene: SceneConfig, frames: int, anomalies: list[tuple[str, int, int]] | None = None, seed: int = 0
) -> Iterator[np.ndarray]:
    """Yield `frames` frames (H, W, 3) uint8 RGB of `scene`, with anomalies (kind, start, end) in
    frames start ≤ t < end. Deterministic for (scene, frames, anomalies, seed).

    Bad arguments raise ValueError here, not at the first frame.
    """
    anomalies = list(anomalies or [])
    _check(frames, anomalies)
    return (frame for frame, _ in _render(scene, frames, anomalies, seed))


def _ranges(flags: list[bool]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for t, flag in enumerate(flags):
        if flag and out and out[-1][1] == t:
            out[-1] = (out[-1][0], t + 1)
        elif flag:
            out.append((t, t + 1))
    return out


def _encoder(container: av.container.OutputContainer, scene: SceneConfig, crf: int) -> av.video.stream.VideoStream:
    for name in ENCODERS:
        try:
            codec = av.codec.Codec(name, "w")
        except (ValueError, av.error.FFmpegError):
            continue
        stream = container.add_stream(codec.name, rate=scene.fps)
        stream.width, stream.height, stream.pix_fmt = scene.width, scene.height, "yuv420p"
        stream.codec_context.thread_count = 1  # tiny frames: threads buy nothing, and one thread is deterministic
        if codec.name == "libx264":
            stream.options = {"crf": str(crf), "preset": "medium"}
        else:
            stream.bit_rate = 200_000
        return stream
    raise RuntimeError(f"FFmpeg has none of the encoders {', '.join(ENCODERS)}")


def write_clip(
    path: str | Path,
    scene: SceneConfig,
    frames: int,
    anomalies: list[tuple[str, int, int]] | None = None,
    seed: int = 0,
    crf: int = 26,
) -> list[tuple[int, int]]:
    """Render a clip into an H.264 mp4 (mpeg4 if FFmpeg lacks an H.264 encoder) at `path`.

    Returns the anomalous frame ranges [start, end), 0-based: exactly the frames in which an
    anomalous object is visible, merged where they touch or overlap.
    """
    path, anomalies = Path(path), list(anomalies or [])
    _check(frames, anomalies)
    flags: list[bool] = []
    try:
        with av.open(str(path), "w") as container:
            stream = _encoder(container, scene, crf)
            for frame, visible in _render(scene, frames, anomalies, seed):
                flags.append(visible)
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush the encoder's delayed frames
                container.mux(packet)
    except BaseException:
        path.unlink(missing_ok=True)  # no half-written clip left behind
        raise
    return _ranges(flags)
