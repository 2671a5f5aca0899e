"""Audio bytes to a log-mel part: decode, downmix, resample, cap, log-mel (numpy only).

WAV/FLAC/OGG (and AIFF) go through libsndfile (soundfile); everything else (MP3, AAC,
M4A, Opus, a video's audio track) through PyAV, opened by `av_safety.open_container`.
The duration is checked against the hard limit from the header before decoding when
the header has one, and decoding stops at the cap, so memory stays bounded.
"""

from __future__ import annotations

import functools
import io

import av
import numpy as np
import soundfile as sf
import soxr
from loom.schemas.records import Modality, Reason, empty_part
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.av_safety import open_container, reason_for
from loom.transforms.sniff import DecodeError, sniff

N_MELS = 64
WIN_MS = 25.0
HOP_MS = 10.0
F_MIN = 0.0
LOG_EPS = 1e-6
_CHUNK_FRAMES = 4096  # STFT frames per block, bounds the temporary arrays

_SF_MIMES = frozenset({"audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave",
                       "audio/flac", "audio/x-flac", "audio/ogg", "audio/vorbis",
                       "audio/aiff", "audio/x-aiff"})
# Demuxers whose header duration is exact (MP3/ADTS durations are bitrate estimates).
_EXACT_DURATION = frozenset({"mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm", "ogg", "flac", "wav"})
_MAX_PACKET_ERRORS = 8


# ----------------------------------------------------------------------------- log-mel

def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)  # HTK


def _mel_to_hz(m):
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sr: int, n_fft: int, n_mels: int = N_MELS, f_min: float = F_MIN
                   ) -> np.ndarray:
    """(n_mels, n_fft//2 + 1) triangular HTK-mel filters from f_min to sr/2, peak 1."""
    freqs = np.fft.rfftfreq(n_fft, 1.0 / sr)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(f_min), _hz_to_mel(sr / 2.0), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (freqs[None, :] - lo) / np.maximum(mid - lo, 1e-12)
    down = (hi - freqs[None, :]) / np.maximum(hi - mid, 1e-12)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb.setflags(write=False)
    return fb


def stft_params(sr: int, win_ms: float = WIN_MS, hop_ms: float = HOP_MS
                ) -> tuple[int, int, int]:
    """(window, hop, n_fft) in samples for a sample rate."""
    win = max(1, int(round(sr * win_ms / 1000.0)))
    hop = max(1, int(round(sr * hop_ms / 1000.0)))
    return win, hop, 1 << (win - 1).bit_length()


def log_mel(samples: np.ndarray, sr: int, n_mels: int = N_MELS, *, win_ms: float = WIN_MS,
            hop_ms: float = HOP_MS, f_min: float = F_MIN, log_eps: float = LOG_EPS
            ) -> np.ndarray:
    """(frames, n_mels) float32 log-mel power; frames = 1 + len // hop (centered windows).
    The defaults are PreprocessingSpec's: ingest passes the spec's own values."""
    x = np.asarray(samples, dtype=np.float32).reshape(-1)
    win, hop, n_fft = stft_params(sr, win_ms, hop_ms)
    padded = np.pad(x, (win // 2, win // 2))
    n_frames = 1 + len(x) // hop
    need = (n_frames - 1) * hop + win
    if len(padded) < need:
        padded = np.pad(padded, (0, need - len(padded)))
    frames = np.lib.stride_tricks.sliding_window_view(padded, win)[::hop][:n_frames]
    window = np.hanning(win + 1)[:-1].astype(np.float32)  # periodic Hann
    fb = mel_filterbank(sr, n_fft, n_mels, f_min).T.astype(np.float32)
    out = np.empty((n_frames, n_mels), dtype=np.float32)
    for s in range(0, n_frames, _CHUNK_FRAMES):
        spec = np.fft.rfft(frames[s:s + _CHUNK_FRAMES] * window, n=n_fft, axis=1)
        power = (spec.real ** 2 + spec.imag ** 2).astype(np.float32)
        out[s:s + _CHUNK_FRAMES] = np.log(power @ fb + log_eps)
    return out


# ----------------------------------------------------------------------------- parts

def audio_part_from_samples(samples: np.ndarray, sr: int, spec: PreprocessingSpec, *,
                            duration_s: float | None = None, channels_in: int | None = None,
                            mime: str | None = None) -> tuple[dict, dict]:
    """A PART dict (kind audio) and its metadata from decoded samples.

    `samples` is (n,) mono or (n, channels); it is downmixed, cut at spec.audio_cap_s,
    resampled to spec.audio_sample_rate and turned into log-mel features. `duration_s`
    is the source's full duration when the caller decoded only up to the cap (it decides
    `truncated`). The hard limit is not applied here (decode_audio applies it).
    """
    if not sr or sr <= 0:
        raise DecodeError(Reason.DECODE_ERROR, f"bad sample rate {sr}")
    x = np.asarray(samples)
    channels = channels_in or (x.shape[1] if x.ndim == 2 else 1)
    if x.ndim == 2:
        x = x.mean(axis=1) if x.shape[1] else np.zeros(0, np.float32)
    x = np.nan_to_num(x.reshape(-1).astype(np.float32, copy=False), nan=0.0,
                      posinf=0.0, neginf=0.0)
    if x.size == 0:
        raise DecodeError(Reason.EMPTY, "no audio samples")
    cap_n = max(1, int(round(spec.audio_cap_s * sr)))
    total_s = float(duration_s) if duration_s is not None else x.size / sr
    truncated = x.size > cap_n or total_s > spec.audio_cap_s + 1.0 / sr
    x = x[:cap_n]
    target = spec.audio_sample_rate
    if sr != target:
        x = soxr.resample(x, sr, target).astype(np.float32, copy=False)
    if x.size == 0:
        raise DecodeError(Reason.EMPTY, "no audio samples after resampling")
    feats = log_mel(x, target, spec.audio_n_mels, win_ms=spec.audio_win_ms,
                    hop_ms=spec.audio_hop_ms, f_min=spec.audio_f_min, log_eps=spec.audio_log_eps)
    part = empty_part(Modality.AUDIO.value)
    # float16, as stored: Python floats would cost ~16x the memory (issue 16)
    part.update(features=feats.reshape(-1).astype(np.float16), feature_bins=spec.audio_n_mels,
                frames=int(feats.shape[0]), mime=mime)
    meta = {"duration_s": total_s, "truncated": bool(truncated), "sample_rate_in": int(sr),
            "channels_in": int(channels)}
    return part, meta


def _is_soundfile_kind(data: bytes, mime: str | None) -> bool:
    if data[:4] in (b"RIFF", b"RF64") and data[8:12] == b"WAVE":
        return True
    if data[:4] in (b"fLaC", b"OggS") or (data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC")):
        return True
    return (mime or "").lower() in _SF_MIMES and not data[:3] == b"ID3"


def _wav_data_shortfall(data: bytes) -> int:
    """Bytes the RIFF/WAVE 'data' chunk claims beyond the end of the file (0 if none)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return 0
    pos = 12
    while pos + 8 <= len(data):
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag == b"data":
            if size in (0, 0xFFFFFFFF):  # streaming placeholder: length unknown
                return 0
            short = pos + 8 + size - len(data)
            return short if short > 1024 else 0  # a few stray bytes are tolerated
        pos += 8 + size + (size & 1)
    return 0


class _NotForSoundfile(Exception):
    """libsndfile opened the file but cannot tell its length: let FFmpeg try."""


def _decode_soundfile(data: bytes, spec: PreprocessingSpec):
    """(samples (n, ch) float32 up to the cap, sr, channels, duration_s) via libsndfile."""
    short = _wav_data_shortfall(data)
    if short:
        raise DecodeError(Reason.TRUNCATED, f"WAV data chunk lacks {short} bytes")
    with sf.SoundFile(io.BytesIO(data)) as f:
        sr, channels, frames = int(f.samplerate), int(f.channels), int(f.frames)
        if sr <= 0 or channels <= 0:
            raise DecodeError(Reason.DECODE_ERROR, f"bad header: {sr} Hz, {channels} channels")
        if frames <= 0:
            if len(data) > 4096 and data[:4] != b"RIFF":
                raise _NotForSoundfile(f"libsndfile reports {frames} frames")
            raise DecodeError(Reason.EMPTY, "no audio frames")
        duration = frames / sr
        if duration > spec.audio_hard_limit_s:
            raise DecodeError(Reason.TOO_LONG,
                              f"{duration:.1f} s exceeds {spec.audio_hard_limit_s} s")
        want = min(frames, int(round(spec.audio_cap_s * sr)))
        x = f.read(want, dtype="float32", always_2d=True)
    if len(x) < want - max(1, sr // 100):  # header promises more than the body holds
        raise DecodeError(Reason.TRUNCATED, f"read {len(x)} of {want} frames")
    return x, sr, channels, duration


# ----------------------------------------------------------------------------- PyAV

def _header_duration(container, stream) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration and container.duration > 0:
        return container.duration / 1_000_000
    return None


class _ToFloat:
    """Frames of any sample format (s64, dbl, u8, planar or not) to mono float32, through
    PyAV's resampler (swresample) rather than per-format numpy arithmetic: one converter
    per (format, layout, rate), since a stream may change them mid-way."""

    def __init__(self):
        self._by_kind: dict[tuple, av.AudioResampler] = {}

    def __call__(self, frame) -> np.ndarray:
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key not in self._by_kind:
            self._by_kind[key] = av.AudioResampler(format="fltp", layout=frame.layout,
                                                   rate=frame.sample_rate)
        out = [f.to_ndarray() for f in self._by_kind[key].resample(frame)]
        if not out:
            return np.zeros(0, np.float32)
        arr = np.concatenate(out, axis=1) if len(out) > 1 else out[0]  # (channels, n)
        return arr.mean(axis=0) if arr.shape[0] > 1 else arr[0]


def decode_track(container, stream, cap_s: float) -> tuple[np.ndarray, int, int, float, bool]:
    """Decode one audio stream up to `cap_s` seconds.

    Returns (mono float32 samples at the stream's first rate, sample rate, channels,
    decoded seconds, reached_cap). Raises DecodeError on a broken stream.
    """
    chunks: list[np.ndarray] = []
    total, sr, channels, errors, reached = 0, 0, 0, 0, False
    cap_n = None
    to_mono = _ToFloat()
    packets = container.demux(stream)
    while not reached:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as e:
            if total:  # the file ends in a broken packet: a truncated file
                raise DecodeError(Reason.TRUNCATED, f"audio demux: {e}") from None
            raise DecodeError(reason_for(e), f"audio demux: {e}") from None
        try:
            frames = packet.decode()
        except av.error.FFmpegError as e:
            errors += 1
            if errors > _MAX_PACKET_ERRORS:
                raise DecodeError(reason_for(e), f"audio decode: {e}") from None
            continue
        for frame in frames:
            if not sr:
                sr = int(frame.sample_rate)
                channels = int(frame.layout.nb_channels)
                if sr <= 0:
                    raise DecodeError(Reason.DECODE_ERROR, f"bad sample rate {sr}")
                cap_n = max(1, int(round(cap_s * sr)))
            x = to_mono(frame)
            if frame.sample_rate != sr and x.size:
                x = soxr.resample(x, int(frame.sample_rate), sr).astype(np.float32)
            chunks.append(x[: cap_n - total])
            total += len(chunks[-1])
            if total >= cap_n:
                reached = True
                break
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return samples, sr, channels, (total / sr if sr else 0.0), reached


def _scan_end(container, stream) -> float | None:
    """Seconds of the stream's last packet end, demuxing (not decoding) what remains."""
    end = None
    tb = stream.time_base
    start = stream.start_time or 0
    try:
        for packet in container.demux(stream):
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is not None and tb:
                t = float((ts + (packet.duration or 0) - start) * tb)
                end = t if end is None else max(end, t)
    except av.error.FFmpegError:
        pass
    return end


def _decode_pyav(data: bytes, spec: PreprocessingSpec):
    container = open_container(data)
    try:
        if not container.streams.audio:
            raise DecodeError(Reason.NO_AUDIO_STREAM, "no audio stream")
        stream = container.streams.audio[0]
        header = _header_duration(container, stream)
        if header is not None and header > spec.audio_hard_limit_s:
            raise DecodeError(Reason.TOO_LONG, f"{header:.1f} s exceeds {spec.audio_hard_limit_s} s")
        samples, sr, channels, got, reached = decode_track(container, stream, spec.audio_cap_s)
        if not sr or samples.size == 0:
            raise DecodeError(Reason.EMPTY, "no audio decoded")
        if reached:
            duration = header if header is not None else _scan_end(container, stream)
            duration = max(duration or 0.0, got)
            if duration > spec.audio_hard_limit_s:
                raise DecodeError(Reason.TOO_LONG,
                                  f"{duration:.1f} s exceeds {spec.audio_hard_limit_s} s")
        else:
            duration = got
            if (header is not None and container.format.name in _EXACT_DURATION
                    and got < header - max(1.0, 0.05 * header)):
                raise DecodeError(Reason.TRUNCATED, f"decoded {got:.2f} s of {header:.2f} s")
        return samples, sr, channels, duration
    finally:
        container.close()


def decode_audio(data: bytes, spec: PreprocessingSpec,
                 mime: str | None = None) -> tuple[dict, dict]:
    """(PART dict of kind audio with log-mel features, metadata) for an audio file.

    metadata: duration_s (of the whole source), truncated (longer than the cap),
    sample_rate_in, channels_in. Raises DecodeError with a stable Reason.
    """
    if not data:
        raise DecodeError(Reason.EMPTY, "empty file")
    mime = mime or sniff(data)[1]
    result = None
    if _is_soundfile_kind(data, mime):
        try:
            result = _decode_soundfile(data, spec)
        except DecodeError:
            raise
        except (_NotForSoundfile, RuntimeError, ValueError, TypeError, OSError, EOFError,
                MemoryError) as e:
            sf_error = e  # e.g. an Opus or ADPCM flavour libsndfile lacks: let FFmpeg try
            try:
                samples, sr, channels, duration = _decode_pyav(data, spec)
            except DecodeError as de:
                if de.reason in (Reason.DECODE_ERROR, Reason.UNSUPPORTED_FORMAT):
                    raise DecodeError(de.reason, f"{de.message}; libsndfile: {sf_error}") from None
                raise
            result = (samples, sr, channels, duration)
    else:
        result = _decode_pyav(data, spec)
    samples, sr, channels, duration = result
    return audio_part_from_samples(samples, sr, spec, duration_s=duration,
                                   channels_in=channels, mime=mime)
