from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import numpy as np
import pytest
from loom.schemas.records import PART, Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.av_safety import open_container
from loom.transforms.sniff import DecodeError
from loom.transforms.video import MODES, decode_video, sample_times

from tests.transforms import media

SPEC = PreprocessingSpec(image_codec="raw")  # 1 fps, 32 frames, 48 px, exact pixels
S = SPEC.image_size


@pytest.fixture(scope="module")
def short_video() -> bytes:
    return media.make_video(5.0, fps=10, gop=7, audio=True)


@pytest.fixture(scope="module")
def long_video() -> bytes:
    return media.make_video(60.0, fps=10, gop=25, audio=False)


def _frames(parts: list[dict]) -> np.ndarray:
    video = parts[0]
    assert video["kind"] == "video" and set(video) == set(PART.names)
    assert video["height"] == video["width"] == S
    return np.frombuffer(video["pixels"], np.uint8).reshape(video["frames"], S, S, 3)


def _indices(parts: list[dict]) -> list[int]:
    return [media.frame_index(f) for f in _frames(parts)]


def _reason(data: bytes, mode: str = "smart") -> Reason:
    with pytest.raises(DecodeError) as info:
        decode_video(data, SPEC, mode)
    return info.value.reason


def test_sample_times():
    assert sample_times(5.0, 1.0, 32) == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert sample_times(0.2, 1.0, 32) == [0.0]
    spread = sample_times(100.0, 1.0, 4)
    assert spread == pytest.approx([12.5, 37.5, 62.5, 87.5])


def test_short_video_one_frame_per_second(short_video):
    parts, meta = decode_video(short_video, SPEC)
    assert _indices(parts) == [0, 10, 20, 30, 40]  # t = 0, 1, 2, 3, 4 s at 10 fps
    assert meta["frames_sampled"] == 5 and meta["duration_s"] == pytest.approx(5.0)
    assert meta["fps"] == pytest.approx(10.0) and meta["has_audio"] is True


def test_long_video_is_spread_over_the_whole_duration(long_video):
    parts, meta = decode_video(long_video, SPEC)
    idx = _indices(parts)
    assert len(idx) == 32 and meta["duration_s"] == pytest.approx(60.0)
    expected = [round((i + 0.5) * 60.0 / 32 * 10) for i in range(32)]
    assert all(abs(a - b) <= 1 for a, b in zip(idx, expected, strict=True))
    assert idx[0] <= 10 and idx[-1] >= 585 and idx == sorted(idx)


def test_modes_agree(short_video, long_video):
    for data in (short_video, long_video):
        results = {mode: _indices(decode_video(data, SPEC, mode)[0]) for mode in MODES}
        assert len({len(v) for v in results.values()}) == 1
        assert all(abs(a - b) <= 1 for a, b in zip(results["smart"], results["full"], strict=True))
        # keyframes mode: each pick is a keyframe (gop 7 / 25)
        gop = 7 if data is short_video else 25
        assert all(i % gop == 0 for i in results["keyframes"])


def test_audio_track_becomes_an_audio_part(short_video):
    parts, meta = decode_video(short_video, SPEC)
    assert [p["kind"] for p in parts] == ["video", "audio"]
    audio = parts[1]
    assert audio["feature_bins"] == 64 and abs(audio["frames"] - 500) <= 5
    assert len(audio["features"]) == audio["frames"] * 64
    assert meta["audio"]["channels_in"] == 2 and not meta["audio"]["truncated"]
    parts, meta = decode_video(media.make_video(2.0, audio=False), SPEC)
    assert [p["kind"] for p in parts] == ["video"] and meta["has_audio"] is False


def test_matroska(short_video):
    mkv = media.make_video(3.0, gop=7, container="mkv", audio=True)
    parts, meta = decode_video(mkv, SPEC)
    assert _indices(parts) == [0, 10, 20] and meta["has_audio"]


def test_audio_only_has_no_video_stream():
    m4a, _ = media.make_mp3_or_m4a(1.0)
    assert _reason(m4a) is Reason.NO_VIDEO_STREAM
    assert _reason(media.make_wav(1.0)) is Reason.NO_VIDEO_STREAM


@pytest.mark.parametrize("mode", MODES)
def test_truncated_or_corrupt_video_raises_decode_error_only(short_video, mode):
    mkv = media.make_video(5.0, gop=7, container="mkv", audio=False)
    for data in (short_video, mkv):
        for frac in (0.02, 0.3, 0.6):
            assert _reason(data[:int(len(data) * frac)], mode) in (
                Reason.TRUNCATED, Reason.DECODE_ERROR)
    corrupt = bytearray(short_video)
    for pos in range(2000, len(corrupt), 997):
        corrupt[pos] ^= 0x5A
    # FFmpeg may conceal the damage: then a well-formed result, else one of the two reasons.
    try:
        parts, meta = decode_video(bytes(corrupt), SPEC, mode)
    except DecodeError as e:
        assert e.reason in (Reason.TRUNCATED, Reason.DECODE_ERROR), e.reason
    else:
        video = parts[0]
        assert 1 <= video["frames"] <= 5 and meta["duration_s"] > 0
        assert len(video["pixels"]) == video["frames"] * S * S * 3
    assert _reason(b"") is Reason.EMPTY
    assert _reason(b"\x00\x00\x00\x18ftypmp42" + b"\xff" * 300) in (
        Reason.DECODE_ERROR, Reason.TRUNCATED, Reason.UNSUPPORTED_FORMAT)


@pytest.fixture
def listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    hits: list[bytes] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            conn.settimeout(1)
            try:
                hits.append(conn.recv(256) or b"<connected>")
            except OSError:
                hits.append(b"<connected>")
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield srv.getsockname()[1], hits
    stop.set()
    thread.join(2)
    srv.close()


def test_hostile_playlists_and_scripts_are_refused(listener, tmp_path):
    port, hits = listener
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(media.make_video(1.0, audio=False))
    before = os.stat(secret)
    os.utime(secret, ns=(before.st_atime_ns - 10**10, before.st_mtime_ns))  # old atime
    atime = os.stat(secret).st_atime_ns
    url = f"http://127.0.0.1:{port}/x.ts"
    hostile = {
        "hls": f"#EXTM3U\n#EXTINF:1,\n{url}\n".encode(),
        "hls-full": (f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXT-X-MEDIA-SEQUENCE:0\n"
                     f"#EXTINF:1,\n{url}\n#EXT-X-ENDLIST\n").encode(),
        "concat": f"ffconcat version 1.0\nfile '{secret}'\n".encode(),
        "concat-url": f"ffconcat version 1.0\nfile '{url}'\n".encode(),
        "sdp": (f"v=0\no=- 0 0 IN IP4 127.0.0.1\ns=x\nc=IN IP4 127.0.0.1\nt=0 0\n"
                f"m=video {port} RTP/AVP 96\na=rtpmap:96 H264/90000\n").encode(),
    }
    for name, data in hostile.items():
        with pytest.raises(DecodeError) as info:
            decode_video(data, SPEC)
        assert info.value.reason in (Reason.UNSUPPORTED_FORMAT, Reason.DECODE_ERROR), name
        with pytest.raises(DecodeError):
            open_container(data)
    threading.Event().wait(0.5)
    assert hits == []
    assert os.stat(secret).st_atime_ns == atime


def test_transforms_import_neither_beam_nor_ray():
    code = ("import sys, transforms.audio, transforms.video, transforms.av_safety; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('apache_beam', 'ray')]; "
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    subprocess.run([sys.executable, "-c", code], cwd=root, check=True, timeout=60)


def test_protocol_whitelist_alone_blocks_nested_opens(listener, tmp_path):
    """Force the demuxers the probe would refuse: the protocol fence still holds."""
    import io

    import av
    from loom.transforms.av_safety import CONTAINER_OPTIONS

    port, hits = listener
    playlist = (f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n"
                f"http://127.0.0.1:{port}/x.ts\n#EXT-X-ENDLIST\n").encode()
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"secret")
    script = f"ffconcat version 1.0\nfile '{secret}'\n".encode()
    only_protocols = {k: v for k, v in CONTAINER_OPTIONS.items() if k != "format_whitelist"}
    for opts in (CONTAINER_OPTIONS, only_protocols):
        for fmt, data, extra in (("hls", playlist, {}), ("concat", script, {"safe": "0"})):
            with pytest.raises(av.error.FFmpegError):
                av.open(io.BytesIO(data), format=fmt, container_options=opts | extra,
                        timeout=5)
    threading.Event().wait(0.3)
    assert hits == []
    # control: without the fences, FFmpeg's HLS demuxer does call the listener
    with pytest.raises(av.error.FFmpegError):
        av.open(io.BytesIO(playlist), format="hls", timeout=5)
    for _ in range(20):
        if hits:
            break
        threading.Event().wait(0.1)
    assert hits and hits[0].startswith(b"GET /x.ts")
