"""Generated files in the formats real-world media comes in (issue 18): every generator
returns bytes made here, with PyAV's bundled FFmpeg, soundfile or Pillow; nothing is
downloaded.

Video frames are split: the left half bright, the right half black, so a test can tell
a rotation (the bright half moves) or a sample-aspect-ratio stretch (the bright share of
a centre crop changes) from the decoded pixels.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
import soundfile as sf

from tests.transforms.media import tone

BRIGHT = 230


def split_frame(w: int, h: int, stripe: bool = False) -> np.ndarray:
    """(h, w, 3) uint8: left half bright, or (stripe) the middle quarter of the width."""
    rgb = np.zeros((h, w, 3), np.uint8)
    if stripe:
        rgb[:, 3 * w // 8 : 5 * w // 8] = BRIGHT
    else:
        rgb[:, : w // 2] = BRIGHT
    return rgb


def _audio(out, stream, seconds: float, sr: int, channels: int, fmt: str) -> None:
    x = tone(seconds, sr, 440.0, channels)  # (n, ch) float32
    step = stream.codec_context.frame_size or 1024
    for start in range(0, len(x), step):
        chunk = x[start:start + step]
        if fmt == "s16":
            arr = (chunk.reshape(1, -1) * 32767).astype(np.int16)
        elif fmt == "flt":
            arr = chunk.reshape(1, -1).copy()
        else:  # fltp
            arr = np.ascontiguousarray(chunk.T)
        frame = av.AudioFrame.from_ndarray(arr, format=fmt, layout=stream.layout.name)
        frame.sample_rate, frame.pts, frame.time_base = sr, start, Fraction(1, sr)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def encode(fmt: str, vcodec: str | None = "libx264", acodec: str | None = "aac", *,
           size: tuple[int, int] = (64, 48), pix: str = "yuv420p", fps: int = 10,
           seconds: float = 1.0, sr: int = 44100, channels: int = 2, afmt: str = "fltp",
           options: dict | None = None, rotation: int | None = None,
           sar: Fraction | None = None, stripe: bool = False,
           metadata: dict | None = None) -> bytes:
    """A container `fmt` with a split-frame video track and/or a 440 Hz tone."""
    w, h = size
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt, options=options or {}) as out:
        out.metadata.update(metadata or {})
        vs = astream = None
        if vcodec:
            vs = out.add_stream(vcodec, rate=fps)
            vs.width, vs.height, vs.pix_fmt = w, h, pix
            if sar is not None:
                vs.codec_context.sample_aspect_ratio = sar
            if rotation is not None:
                vs.set_display_rotation(rotation)
        if acodec:
            astream = out.add_stream(acodec, rate=sr)
            astream.layout = "stereo" if channels == 2 else "mono"
        if vs is not None:
            rgb = split_frame(w, h, stripe)
            for i in range(int(round(seconds * fps))):
                frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix)
                frame.pts, frame.time_base = i, Fraction(1, fps)
                for packet in vs.encode(frame):
                    out.mux(packet)
            for packet in vs.encode(None):
                out.mux(packet)
        if astream is not None:
            _audio(out, astream, seconds, sr, channels, afmt)
    return buf.getvalue()


def mpegts(m2ts: bool = False) -> bytes:
    """H.264 + AAC in MPEG-TS; `m2ts`: 192-byte packets (a 4-byte timecode first)."""
    return encode("mpegts", options={"mpegts_m2ts_mode": "1"} if m2ts else None)


def flv() -> bytes:
    return encode("flv")


def dv() -> bytes:
    """PAL DV (720x576, 4:2:0) with 48 kHz PCM: the only geometry the encoder takes."""
    return encode("dv", "dvvideo", "pcm_s16le", size=(720, 576), fps=25, seconds=0.4,
                  sr=48000, afmt="s16")


def audio_only(fmt: str) -> bytes:
    """A tone alone in a container loom knows as video: mp4, matroska, avi or webm."""
    codec = {"avi": "pcm_s16le", "webm": "libopus"}.get(fmt, "aac")
    afmt = {"avi": "s16", "webm": "flt"}.get(fmt, "fltp")
    return encode(fmt, None, codec, sr=48000 if fmt == "webm" else 44100, afmt=afmt)


def with_raw_metadata(fmt: str, raw: bytes) -> bytes:
    """A video whose title tag holds `raw` (e.g. Latin-1 bytes, not UTF-8): a placeholder
    of the same length is written and its bytes replaced."""
    marker = "T" * len(raw)
    data = encode(fmt, metadata={"title": marker})
    assert data.count(marker.encode()) == 1
    return data.replace(marker.encode(), raw)


def aiff_float(seconds: float = 0.5, sr: int = 22050) -> bytes:
    """AIFF-C with 32-bit float samples ('fl32'): mostly NUL-free, easy to take for UTF-16."""
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, sr, 440.0, 2), sr, format="AIFF", subtype="FLOAT")
    return buf.getvalue()


def wav_pcm64(seconds: float = 0.5, sr: int = 16000) -> bytes:
    """A WAV of 64-bit signed PCM (format tag 1, 64 bits): libsndfile cannot read it."""
    x = (tone(seconds, sr, 440.0, 1)[:, 0].astype(np.float64) * 2.0**62).astype("<i8")
    body = x.tobytes()
    fmt = struct.pack("<HHIIHH", 1, 1, sr, sr * 8, 8, 64)
    return (b"RIFF" + struct.pack("<I", 4 + 8 + len(fmt) + 8 + len(body)) + b"WAVE"
            + b"fmt " + struct.pack("<I", len(fmt)) + fmt
            + b"data" + struct.pack("<I", len(body)) + body)
