"""Video bytes to parts: sampled frames (resized and center-cropped like images) and the
audio track's log-mel.

Frame policy: one target every 1/spec.video_fps seconds (t = 0, 1/fps, ...) while the
video fits in spec.video_max_frames such steps, else video_max_frames targets spread
evenly over the whole duration (t_i = (i + 0.5) * duration / max_frames). Each target
takes the decoded frame nearest to it (ties go to the earlier frame).

Modes:
  smart      (default) decode forward, seek to a keyframe only when the next target lies
             past the next keyframe (keyframe times come from a demux-only index pass);
  full       decode every frame;
  keyframes  decode keyframes only (fast, coarse: nearest keyframe per target).

Only the sampled, already-resized frames are kept, so memory is bounded by
video_max_frames * image_size^2 * 3 bytes plus the decoder's own buffers.
"""

from __future__ import annotations

import bisect
import math
from fractions import Fraction

import av
import numpy as np
from loom.schemas.records import Modality, Reason, empty_part
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.audio import audio_part_from_samples, decode_audio, decode_track
from loom.transforms.av_safety import open_container, reason_for
from loom.transforms.image import frames_payload
from loom.transforms.sniff import DecodeError, sniff
from PIL import Image, ImageOps

MODES = ("smart", "full", "keyframes")
_MAX_PACKET_ERRORS = 8
_ERRORS = (av.error.FFmpegError, OSError, ValueError, RuntimeError, EOFError, MemoryError)


def sample_times(duration: float, fps: float, max_frames: int) -> list[float]:
    """Target times in seconds from the start of the video."""
    step = 1.0 / fps
    if duration <= max_frames * step + 1e-9:
        n = max(1, math.ceil(duration * fps - 1e-9))  # t < duration
        return [i * step for i in range(min(n, max_frames))]
    return [(i + 0.5) * duration / max_frames for i in range(max_frames)]


def fit_frame(img: Image.Image, size: int) -> np.ndarray:
    """Resize the shorter side to `size` and center-crop, as decode_image does."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")
    return np.asarray(ImageOps.fit(rgb, (size, size), method=Image.Resampling.BICUBIC))


_TURNS = {1: Image.Transpose.ROTATE_90, 2: Image.Transpose.ROTATE_180,
          3: Image.Transpose.ROTATE_270}


def quarter_turns(rotation: float | None) -> int:
    """Counter-clockwise quarter turns (0-3) for a display-matrix rotation in degrees."""
    return int(round((rotation or 0.0) / 90.0)) % 4


def display_image(frame, sar: Fraction | None) -> Image.Image:
    """A decoded frame as it is meant to be seen: the sample aspect ratio stretched out
    (anamorphic video is stored squeezed), then the display matrix's rotation applied
    (phone video is stored sideways), both before any resize or crop."""
    img = frame.to_image()
    if sar and sar > 0 and sar != 1:
        w, h = img.size
        size = (max(1, round(w * sar)), h) if sar > 1 else (w, max(1, round(h / sar)))
        img = img.resize(size, Image.Resampling.BICUBIC)
    turns = quarter_turns(frame.rotation)
    return img.transpose(_TURNS[turns]) if turns else img


def _video_stream(container):
    for s in container.streams.video:
        if not (s.disposition & av.stream.Disposition.attached_pic):  # not cover art
            return s
    return None


class _Sampler:
    """Nearest-frame selection for sorted targets, fed frames in presentation order."""

    def __init__(self, targets: list[float], size: int, sar: Fraction | None = None):
        self.targets, self.size, self.sar = targets, size, sar
        self.j = 0
        self.out: list[np.ndarray | None] = [None] * len(targets)
        self.times: list[float | None] = [None] * len(targets)
        self.prev = None  # (t, frame) of the last frame fed since the last reset
        self.last_t: float | None = None
        self._cache = (None, None)  # (frame, array) of the latest pick

    @property
    def done(self) -> bool:
        return self.j >= len(self.targets)

    def reset(self) -> None:
        self.prev = None

    def _take(self, t: float, frame) -> None:
        if self._cache[0] is not frame:
            self._cache = (frame, fit_frame(display_image(frame, self.sar), self.size))
        self.out[self.j], self.times[self.j] = self._cache[1], t
        self.j += 1

    def feed(self, t: float, frame) -> None:
        while not self.done and t >= self.targets[self.j]:
            target = self.targets[self.j]
            if self.prev is not None and target - self.prev[0] <= t - target:
                self._take(*self.prev)
            else:
                self._take(t, frame)
        self.prev = (t, frame)
        self.last_t = t if self.last_t is None else max(self.last_t, t)

    def finish(self, tolerance: float | None) -> None:
        """Targets past the last frame take it, unless more than `tolerance` s past it."""
        if self.prev is None:
            return
        while not self.done:
            if tolerance is not None and self.targets[self.j] - self.prev[0] > tolerance:
                raise DecodeError(Reason.TRUNCATED, f"video ends at {self.prev[0]:.2f} s, "
                                  f"before the target at {self.targets[self.j]:.2f} s")
            self._take(*self.prev)


def _index(data: bytes):
    """Demux-only pass over all streams: video keyframe pts, first/end pts, packet count,
    and `info` (time base, start, rate, the header's duration, where the data ends)."""
    container = open_container(data)
    try:
        vs = _video_stream(container)
        if vs is None:
            raise DecodeError(Reason.NO_VIDEO_STREAM, "no video stream")
        keys, first, end, count, data_end = [], None, None, 0, 0.0
        try:
            for packet in container.demux():
                ts = packet.pts if packet.pts is not None else packet.dts
                if ts is None or packet.stream is None:
                    continue
                stop = ts + (packet.duration or 0)
                st = packet.stream
                if st.time_base:
                    data_end = max(data_end, float((stop - (st.start_time or 0)) * st.time_base))
                if st.index != vs.index:
                    continue
                count += 1
                first = ts if first is None else min(first, ts)
                end = stop if end is None else max(end, stop)
                if packet.is_keyframe:
                    keys.append(ts)
        except av.error.FFmpegError:
            pass  # a broken tail: decoding will tell how much is usable
        header = (float(vs.duration * vs.time_base) if vs.duration else
                  container.duration / 1_000_000 if container.duration else None)
        info = {"time_base": vs.time_base, "start": vs.start_time,
                "rate": vs.average_rate or vs.guessed_rate, "header_duration": header,
                "data_end": data_end}
        return sorted(set(keys)), first, end, count, info
    finally:
        container.close()


class _Decoder:
    """Decoded video frames with times in seconds relative to the stream start."""

    def __init__(self, container, vs, start: int, keyframes_only: bool):
        self.container, self.vs, self.start = container, vs, start
        self.tb = vs.time_base
        self.keyframes_only = keyframes_only
        self.errors = 0
        self.interval = 0.0
        if keyframes_only:
            vs.codec_context.skip_frame = "NONKEY"

    def seek(self, pts: int) -> None:
        self.container.seek(int(pts), stream=self.vs, backward=True, any_frame=False)

    def frames(self):
        last = None
        packets = self.container.demux(self.vs)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as e:
                if last is None:
                    raise DecodeError(reason_for(e), f"video demux: {e}") from None
                return  # a broken tail; the sampler decides whether that is truncation
            if self.keyframes_only and packet.size and not packet.is_keyframe:
                continue
            try:
                decoded = packet.decode()
            except av.error.FFmpegError as e:
                self.errors += 1
                if self.errors > _MAX_PACKET_ERRORS:
                    raise DecodeError(reason_for(e), f"video decode: {e}") from None
                continue
            for frame in decoded:
                ts = frame.pts if frame.pts is not None else frame.dts
                if ts is not None:
                    t = float((ts - self.start) * self.tb)
                else:
                    t = (last or 0.0) + (self.interval or 0.0)
                if last is not None and t > last:
                    self.interval = t - last
                last = t
                yield t, frame


def _sample_frames(data: bytes, targets: list[float], keys: list[float], key_pts: list[int],
                   start: int, mode: str, size: int, tolerance: float) -> _Sampler:
    container = open_container(data)
    try:
        vs = _video_stream(container)
        sampler = _Sampler(targets, size, vs.sample_aspect_ratio)
        dec = _Decoder(container, vs, start, keyframes_only=(mode == "keyframes"))
        if mode != "smart" or len(keys) < 2:
            for t, frame in dec.frames():
                sampler.feed(t, frame)
                if sampler.done:
                    break
            sampler.finish(None if mode == "keyframes" else tolerance)
            return sampler

        def gop(t: float) -> int:
            return max(0, bisect.bisect_right(keys, t + 1e-9) - 1)

        current = None  # GOP index of the decode position; None before the first frame
        while not sampler.done:
            want = gop(sampler.targets[sampler.j])
            if current is None or want > current:
                if current is not None or want > 0:
                    dec.seek(key_pts[want])
                sampler.reset()
            for t, frame in dec.frames():
                sampler.feed(t, frame)
                current = gop(t)
                if sampler.done or gop(sampler.targets[sampler.j]) > current:
                    break
            else:
                break  # end of stream
        sampler.finish(tolerance)
        return sampler
    finally:
        container.close()


def _audio_part(data: bytes, spec: PreprocessingSpec):
    """(part, meta) of the first audio track up to the cap, or (None, None) without one."""
    container = open_container(data)
    try:
        if not container.streams.audio:
            return None, None
        stream = container.streams.audio[0]
        samples, sr, channels, got, _ = decode_track(container, stream, spec.audio_cap_s)
        if not sr or samples.size == 0:
            return None, None
        duration = float(stream.duration * stream.time_base) if stream.duration else (
            container.duration / 1_000_000 if container.duration else got)
        return audio_part_from_samples(samples, sr, spec, duration_s=max(duration, got),
                                       channels_in=channels)
    finally:
        container.close()


def decode_video(data: bytes, spec: PreprocessingSpec,
                 mode: str = "smart") -> tuple[list[dict], dict]:
    """([video part, audio part if the file has a decodable audio track], metadata).

    The video part's pixels are uint8 (frames, S, S, 3) with S = spec.image_size.
    metadata: duration_s, fps (the stream's), frames_sampled, has_audio (and `audio`,
    the audio part's metadata, when present). Raises DecodeError with a stable Reason.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if not data:
        raise DecodeError(Reason.EMPTY, "empty file")
    try:
        key_pts, first, end, count, info = _index(data)
        if not count:
            raise DecodeError(Reason.DECODE_ERROR, "no video packets")
        tb = info["time_base"]
        start = info["start"] if info["start"] is not None else first
        duration = float((end - start) * tb) if end is not None else 0.0
        header = info["header_duration"]
        if header and header > info["data_end"] + max(2.0, 0.1 * header):
            # e.g. Matroska cut short: the header promises more than the packets hold
            raise DecodeError(Reason.TRUNCATED, f"header says {header:.2f} s, "
                              f"packets end at {info['data_end']:.2f} s")
        if duration <= 0 and header:
            duration = header
        rate = float(info["rate"]) if info["rate"] else 0.0
        keys = [float((k - start) * tb) for k in key_pts]
        targets = sample_times(max(duration, 0.0), spec.video_fps, spec.video_max_frames)
        frame_s = 1.0 / rate if rate > 0 else 0.1
        tolerance = max(1.0, 2.0 / spec.video_fps, 3.0 * frame_s)
        sampler = _sample_frames(data, targets, keys, key_pts, start, mode,
                                 spec.image_size, tolerance)
        if sampler.j == 0:
            raise DecodeError(Reason.DECODE_ERROR, "no frames decoded")
        pixels = np.stack(sampler.out[:sampler.j]).astype(np.uint8, copy=False)
        audio_part, audio_meta = None, None
        try:
            audio_part, audio_meta = _audio_part(data, spec)
        except DecodeError as e:
            audio_meta = {"error": e.reason.value, "message": e.message}
    except DecodeError:
        raise
    except _ERRORS as e:
        raise DecodeError(reason_for(e), f"video: {type(e).__name__}: {e}") from None
    size = spec.image_size
    mime = sniff(data)[1]
    part = empty_part(Modality.VIDEO.value)
    part.update(frames_payload(pixels, spec), height=size, width=size, frames=int(len(pixels)),
                mime=mime)
    parts = [part]
    if audio_part is not None:
        audio_part["mime"] = mime
        parts.append(audio_part)
    meta = {"duration_s": duration, "fps": rate, "frames_sampled": int(len(pixels)),
            "has_audio": audio_part is not None,
            "frame_times_s": [round(t, 4) for t in sampler.times[:sampler.j]]}
    if audio_meta is not None:
        meta["audio"] = audio_meta
    return parts, meta


def decode_av(data: bytes, spec: PreprocessingSpec, mode: str = "smart",
              mime: str | None = None) -> tuple[Modality, list[dict], dict]:
    """(modality, parts, metadata) of a file in a video container: a video Example, or,
    when the container holds no video stream (sound alone in .mp4/.mkv/.avi/.webm, or
    only cover art), an audio Example from the same bytes."""
    try:
        parts, meta = decode_video(data, spec, mode)
        return Modality.VIDEO, parts, meta
    except DecodeError as e:
        if e.reason != Reason.NO_VIDEO_STREAM:
            raise
    part, meta = decode_audio(data, spec, mime)
    return Modality.AUDIO, [part], meta
