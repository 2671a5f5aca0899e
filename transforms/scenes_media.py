"""The rich scenes as video, audio and PDF pages, and the audio code read back.

A scene is one or two objects (transforms.scenes.RichScene). Each medium carries the
whole scene in its own content, so a reader (the offline LLM) can recover it from the
bytes alone, never from a file name or a hash:

- video: the first object slides into its cell over the first seconds, the second
  appears halfway; from then on the frame is the scene. H.264 at a few fps, a few
  seconds long (ingest samples 1 fps), optionally with the scene's audio as an AAC track.
- audio: one event per object, in reading order: a low marker tone whose pitch names
  the object's cell, then one beep per shape rank (circle 1 ... bar 6) at the pitch of
  its colour, each beep as long as its size; with background noise and jitter.
- PDF: one page per scene, the shapes drawn as vector paths above a text block that
  describes them (a real text layer, as pdfium extracts it).
"""

from __future__ import annotations

import dataclasses
import io
import random
from fractions import Fraction

import numpy as np
from loom.transforms import scenes
from loom.transforms.scenes import RichScene, Scene
from PIL import Image

SAMPLE_RATE = 16_000
SHAPE_BEEPS = {s: i + 1 for i, s in enumerate(scenes.RICH_SHAPES)}  # circle 1 ... bar 6
COLOR_HZ = {c: 700.0 * 1.1225 ** i for i, c in enumerate(sorted(scenes.RICH_COLORS))}
CELL_HZ = {cell: 200.0 + 40.0 * i for i, cell in enumerate(scenes.CELLS)}
BEEP_S = {"small": 0.08, "medium": 0.16, "large": 0.28}
MARKER_S, GAP_S, OBJECT_GAP_S = 0.25, 0.07, 0.35


# ------------------------------------------------------------------------------ audio

def _tone(freq: float, seconds: float, amp: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    return (amp * ramp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def scene_waveform(scene: RichScene, rng: random.Random) -> np.ndarray:
    """Mono float32 samples at SAMPLE_RATE: one marker + beeps event per object."""
    chunks = [np.zeros(int(rng.uniform(0.15, 0.3) * SAMPLE_RATE), np.float32)]
    for obj in scene.objects:
        chunks.append(_tone(CELL_HZ[(obj.row, obj.col)], MARKER_S, rng.uniform(0.25, 0.4)))
        chunks.append(np.zeros(int(GAP_S * 1.5 * SAMPLE_RATE), np.float32))
        hz = COLOR_HZ[obj.color] * rng.uniform(0.995, 1.005)
        for _ in range(SHAPE_BEEPS[obj.shape]):
            chunks.append(_tone(hz, BEEP_S[obj.size], rng.uniform(0.2, 0.4)))
            chunks.append(np.zeros(int(GAP_S * SAMPLE_RATE), np.float32))
        chunks.append(np.zeros(int(OBJECT_GAP_S * SAMPLE_RATE), np.float32))
    chunks.append(np.zeros(int(rng.uniform(0.1, 0.3) * SAMPLE_RATE), np.float32))
    wave = np.concatenate(chunks)
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, 0.01, len(wave))
    return (wave + noise.astype(np.float32)).clip(-1, 1)


def render_audio(scene: RichScene, rng: random.Random) -> bytes:
    """The scene's waveform as a 16-bit WAV file."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, scene_waveform(scene, rng), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _segments(x: np.ndarray, sr: int) -> list[tuple[float, float, float]]:
    """(start_s, duration_s, peak_hz) of each tone: frames well above the noise floor."""
    win, hop = 1024, 128
    if len(x) < win:
        return []
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
    spec = np.abs(np.fft.rfft(frames * np.hanning(win), axis=1))
    freqs = np.fft.rfftfreq(win, 1 / sr)
    band = (freqs > 150) & (freqs < 4000)
    peak = spec[:, band].max(axis=1)
    active = peak > 8 * np.median(spec[:, band])  # a tone towers over white noise
    out, start = [], None
    for i, on in enumerate([*active.tolist(), False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            idx = np.arange(start, i)
            hz = float(np.median(freqs[band][spec[idx][:, band].argmax(axis=1)]))
            # a window straddles (win/hop - 1) extra hops of a tone: take them off
            dur = max(0.0, (i - start) * hop - (win - hop)) / sr + win / sr / 2
            out.append((start * hop / sr, dur, hz))
            start = None
    return out


def _nearest(table: dict, hz: float):
    return min(table, key=lambda k: abs(table[k] - hz))


def decode_scene_audio(samples: np.ndarray, sr: int) -> list[dict[str, str]]:
    """The objects an audio clip encodes (see the module docstring), in its order."""
    x = np.asarray(samples, np.float32).reshape(len(samples), -1).mean(axis=1)
    objects: list[dict] = []
    for _, dur, hz in _segments(x, sr):
        if hz < 600:  # a cell marker opens a new object
            row, col = _nearest(CELL_HZ, hz)
            objects.append({"row": row, "col": col, "beeps": []})
        elif objects:
            objects[-1]["beeps"].append((dur, hz))
    out = []
    for obj in objects:
        if not obj["beeps"]:
            continue
        durs = [d for d, _ in obj["beeps"]]
        n = min(len(durs), len(scenes.RICH_SHAPES))
        out.append({
            "shape": scenes.RICH_SHAPES[n - 1],
            "color": _nearest(COLOR_HZ, float(np.median([h for _, h in obj["beeps"]]))),
            "size": _nearest(BEEP_S, float(np.median(durs))),
            "row": obj["row"], "col": obj["col"],
        })
    return out


# ------------------------------------------------------------------------------ video

@dataclasses.dataclass(frozen=True)
class Motion:
    """How a clip reaches its scene: the first object's starting cell, the time (s) the
    second object appears."""

    start_cell: tuple[str, str]
    appear_s: float


def _cell_of(obj: Scene, side: int) -> tuple[float, float]:
    return ((scenes.COLS.index(obj.col) + 0.5) * side / 3,
            (scenes.ROWS.index(obj.row) + 0.5) * side / 3)


def plan_motion(scene: RichScene, rng: random.Random) -> Motion:
    """The first object comes from a cell of its own row (or column) that the second
    object does not use; the second appears at 2-3 s."""
    first = scene.objects[0]
    taken = {(o.row, o.col) for o in scene.objects[1:]}
    options = [(first.row, c) for c in scenes.COLS if c != first.col]
    options += [(r, first.col) for r in scenes.ROWS if r != first.row]
    options = [o for o in options if o not in taken] or [(first.row, first.col)]
    return Motion(rng.choice(options), rng.choice((2.0, 3.0)))


def video_frames(scene: RichScene, motion: Motion, seconds: float, fps: int, side: int,
                 rng: random.Random) -> list[np.ndarray]:
    """RGB frames: the first object slides in (done by 2 s), the second appears later."""
    from PIL import ImageDraw

    bg = tuple(max(0, min(255, c + rng.randint(-12, 12))) for c in scenes.BACKGROUND)
    fills = [tuple(max(0, min(255, c + rng.randint(-10, 10))) for c in scenes.RICH_COLORS[o.color])
             for o in scene.objects]
    start = dataclasses.replace(scene.objects[0], row=motion.start_cell[0],
                                col=motion.start_cell[1])
    frames = []
    for i in range(int(seconds * fps)):
        t = i / fps
        img = Image.new("RGB", (side, side), bg)
        draw = ImageDraw.Draw(img)
        for j, obj in enumerate(scene.objects):
            r = scenes.SIZES[obj.size] * side / 2
            cx, cy = _cell_of(obj, side)
            if j == 0:
                sx, sy = _cell_of(start, side)
                a = min(1.0, t / 2.0)
                cx, cy = sx + (cx - sx) * a, sy + (cy - sy) * a
            elif t < motion.appear_s:
                continue
            lo, hi = r + 2, side - 2 - r
            scenes._draw_shape(draw, obj.shape, min(hi, max(lo, cx)), min(hi, max(lo, cy)),
                               r, fills[j])
        frames.append(np.asarray(img))
    return frames


def render_video(scene: RichScene, rng: random.Random, side: int = 96, seconds: float = 6.0,
                 fps: int = 4, audio: bool = False) -> bytes:
    """An H.264 MP4 of the scene (see video_frames); with `audio`, the scene's sound as
    an AAC track (the same code as render_audio)."""
    import av

    motion = plan_motion(scene, rng)
    frames = video_frames(scene, motion, seconds, fps, side, rng)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = side, side, "yuv420p"
        vs.options = {"crf": "12", "preset": "ultrafast", "g": str(fps)}
        astream = None
        if audio:
            astream = out.add_stream("aac", rate=SAMPLE_RATE)
            astream.layout = "mono"
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            out.mux(vs.encode(frame))
        out.mux(vs.encode(None))
        if astream is not None:
            wave = scene_waveform(scene, rng)[: int(seconds * SAMPLE_RATE)]
            for s in range(0, len(wave), 1024):
                chunk = np.ascontiguousarray(wave[None, s:s + 1024])
                frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="mono")
                frame.sample_rate, frame.pts = SAMPLE_RATE, s
                frame.time_base = Fraction(1, SAMPLE_RATE)
                out.mux(astream.encode(frame))
            out.mux(astream.encode(None))
    return buf.getvalue()


def read_video(data: bytes, fps: float = 1.0) -> tuple[list[np.ndarray], np.ndarray | None, int]:
    """(frames sampled at `fps`, mono audio samples or None, sample rate) of a clip."""
    import av

    frames, chunks, sr = [], [], 0
    with av.open(io.BytesIO(data)) as container:
        next_t = 0.0
        for frame in container.decode(video=0):
            t = float(frame.pts * frame.time_base) if frame.pts is not None else next_t
            if t + 1e-6 >= next_t:
                frames.append(frame.to_ndarray(format="rgb24"))
                next_t += 1.0 / fps
    with av.open(io.BytesIO(data)) as container:
        if container.streams.audio:
            for frame in container.decode(audio=0):
                arr = frame.to_ndarray().astype(np.float32)
                chunks.append(arr.mean(axis=0) if arr.ndim == 2 else arr)
                sr = frame.sample_rate
    return frames, (np.concatenate(chunks) if chunks else None), sr


# -------------------------------------------------------------------------------- PDF

def _pdf_color(rgb: tuple[int, int, int]) -> str:
    return " ".join(f"{c / 255:.3f}" for c in rgb)


def _pdf_shape(shape: str, cx: float, cy: float, r: float) -> str:
    """A filled path (PDF y grows upwards); the ring is a thick stroked circle."""
    k = 0.5523 * r

    def circle(rr: float, kk: float) -> str:
        return (f"{cx + rr:.2f} {cy:.2f} m "
                f"{cx + rr:.2f} {cy + kk:.2f} {cx + kk:.2f} {cy + rr:.2f} {cx:.2f} {cy + rr:.2f} c "
                f"{cx - kk:.2f} {cy + rr:.2f} {cx - rr:.2f} {cy + kk:.2f} {cx - rr:.2f} {cy:.2f} c "
                f"{cx - rr:.2f} {cy - kk:.2f} {cx - kk:.2f} {cy - rr:.2f} {cx:.2f} {cy - rr:.2f} c "
                f"{cx + kk:.2f} {cy - rr:.2f} {cx + rr:.2f} {cy - kk:.2f} {cx + rr:.2f} {cy:.2f} c ")
    if shape == "circle":
        return circle(r, k) + "f"
    if shape == "ring":
        w = max(2.0, 0.4 * r)
        rr = r - w / 2
        return f"{w:.2f} w " + circle(rr, 0.5523 * rr) + "S"
    if shape == "square":
        return f"{cx - r:.2f} {cy - r:.2f} {2 * r:.2f} {2 * r:.2f} re f"
    if shape == "bar":
        return f"{cx - r:.2f} {cy - r / 2:.2f} {2 * r:.2f} {r:.2f} re f"
    if shape == "triangle":
        pts = [(cx, cy + r), (cx - r, cy - r), (cx + r, cy - r)]
    else:  # diamond
        pts = [(cx, cy + r), (cx + r, cy), (cx, cy - r), (cx - r, cy)]
    path = " ".join(f"{x:.2f} {y:.2f} {'m' if i == 0 else 'l'}" for i, (x, y) in enumerate(pts))
    return path + " h f"


def _wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + ([line] if line else [])


def _pdf_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def render_pdf(pages: list[tuple[RichScene, str]], side: float = 240.0) -> bytes:
    """A PDF with one page per (scene, passage): the scene drawn in a square on top (the
    same cells as an image), the passage as real text below it."""
    text_h = 70.0
    w, h = side, side + text_h
    objs = [b"<< /Type /Catalog /Pages 2 0 R >>",
            ("<< /Type /Pages /Kids [%s] /Count %d >>"
             % (" ".join(f"{4 + 2 * i} 0 R" for i in range(len(pages))), len(pages))).encode(),
            b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    for i, (scene, passage) in enumerate(pages):
        ops = [f"{_pdf_color(scenes.BACKGROUND)} rg 0 {text_h:.2f} {w:.2f} {side:.2f} re f"]
        for obj in scene.objects:
            r = scenes.SIZES[obj.size] * side / 2
            cx, cy = _cell_of(obj, int(side))
            color = _pdf_color(scenes.RICH_COLORS[obj.color])
            ops.append(f"{color} rg {color} RG " + _pdf_shape(obj.shape, cx, h - cy, r))
        ops.append("0 0 0 rg BT /F1 8 Tf 10 %.2f Td 10 TL" % (text_h - 14))
        ops += [f"({_pdf_escape(line)}) Tj T*" for line in _wrap(passage, 56)[:6]]
        ops.append("ET")
        content = "\n".join(ops).encode("latin-1", errors="replace")
        objs.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 {w:.0f} {h:.0f}] /Resources "
                    f"<< /Font << /F1 3 0 R >> >> /Contents {5 + 2 * i} 0 R >>".encode())
        objs.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for i, body in enumerate(objs):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (i + 1, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    out += b"".join(b"%010d 00000 n \n" % off for off in offsets)
    out += f"trailer\n<< /Size {len(objs) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)
