"""In-memory media for the audio and video tests: every generator returns bytes.

Video frames are one flat color that encodes the frame index (see `frame_color` and
`frame_index`), so a test can tell which source frames a decoder sampled.
"""

from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import soundfile as sf

_STEP = 16  # color quantum per digit: survives YUV 4:2:0 + x264 at a low CRF


def frame_color(i: int) -> tuple[int, int, int]:
    """The RGB color of source frame `i` (0 <= i < 1024): three base-16/4 digits."""
    return ((i % 16) * _STEP + 8, ((i // 16) % 16) * _STEP + 8, ((i // 256) % 4) * 64 + 32)


def frame_index(rgb: np.ndarray) -> int:
    """The source frame index encoded in a decoded (h, w, 3) uint8 frame."""
    r, g, b = (float(c) for c in rgb.reshape(-1, 3).mean(axis=0))
    lo = lambda v: int(np.clip(round((v - 8) / _STEP), 0, 15))  # noqa: E731
    return lo(r) + 16 * lo(g) + 256 * int(np.clip(round((b - 32) / 64), 0, 3))


def tone(seconds: float, sr: int, freq: float = 440.0, channels: int = 1,
         amp: float = 0.5) -> np.ndarray:
    """A sine, (n, channels) float32; channel c is scaled by 1/(c+1) so channels differ."""
    t = np.arange(int(round(seconds * sr)), dtype=np.float64) / sr
    mono = amp * np.sin(2 * np.pi * freq * t)
    return np.stack([mono / (c + 1) for c in range(channels)], axis=1).astype(np.float32)


def _soundfile(seconds, sr, channels, freq, fmt, subtype=None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, sr, freq, channels), sr, format=fmt, subtype=subtype)
    return buf.getvalue()


def make_wav(seconds: float, sr: int = 44100, channels: int = 2, freq: float = 440.0) -> bytes:
    return _soundfile(seconds, sr, channels, freq, "WAV", "PCM_16")


def make_flac(seconds: float, sr: int = 44100, channels: int = 2, freq: float = 440.0) -> bytes:
    return _soundfile(seconds, sr, channels, freq, "FLAC")


def make_ogg(seconds: float, sr: int = 44100, channels: int = 2, freq: float = 440.0) -> bytes:
    return _soundfile(seconds, sr, channels, freq, "OGG", "VORBIS")


def _add_audio_stream(out, sr: int, channels: int):
    stream = out.add_stream("aac", rate=sr)
    stream.layout = "stereo" if channels == 2 else "mono"
    return stream


def _encode_audio(out, stream, seconds: float, sr: int, channels: int, freq: float) -> None:
    samples = tone(seconds, sr, freq, channels)
    step = 1024
    for start in range(0, len(samples), step):
        chunk = np.ascontiguousarray(samples[start:start + step].T)  # planar (ch, n)
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=stream.layout.name)
        frame.sample_rate = sr
        frame.pts = start
        frame.time_base = Fraction(1, sr)
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)


def make_mp3_or_m4a(seconds: float, sr: int = 44100, channels: int = 2,
                    freq: float = 440.0) -> tuple[bytes, str]:
    """AAC in an M4A (MP4) container: (bytes, mime). AAC is always built into FFmpeg."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="ipod") as out:  # ipod = .m4a, brand "M4A "
        stream = _add_audio_stream(out, sr, channels)
        _encode_audio(out, stream, seconds, sr, channels, freq)
    return buf.getvalue(), "audio/mp4"


def make_video(seconds: float, fps: int = 10, size: tuple[int, int] = (96, 64),
               gop: int | None = None, audio: bool = True, container: str = "mp4",
               audio_sr: int = 44100, freq: float = 440.0) -> bytes:
    """H.264 (libx264) frames whose flat color encodes the frame index, plus an AAC tone.

    `gop` is the keyframe interval in frames (x264's default, 250, when None); frame i
    is shown at i / fps seconds.
    """
    w, h = size
    n = int(round(seconds * fps))
    buf = io.BytesIO()
    fmt = {"mp4": "mp4", "mkv": "matroska", "matroska": "matroska"}[container]
    with av.open(buf, "w", format=fmt) as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        opts = {"crf": "10", "preset": "ultrafast", "tune": "zerolatency"}
        if gop:
            opts |= {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0"}
            vs.codec_context.gop_size = gop
        vs.options = opts
        vs.codec_context.options = opts
        astream = _add_audio_stream(out, audio_sr, 2) if audio else None
        for i in range(n):
            rgb = np.empty((h, w, 3), np.uint8)
            rgb[:] = frame_color(i)
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, fps)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode(None):
            out.mux(packet)
        if astream is not None:
            _encode_audio(out, astream, seconds, audio_sr, 2, freq)
    return buf.getvalue()
