from __future__ import annotations

import numpy as np
import pytest
from loom.schemas.records import PART, Reason
from loom.schemas.spec import PreprocessingSpec
from loom.transforms.audio import N_MELS, audio_part_from_samples, decode_audio
from loom.transforms.sniff import DecodeError

from tests.transforms import media

SPEC = PreprocessingSpec()


def _features(part: dict) -> np.ndarray:
    assert part["kind"] == "audio" and part["feature_bins"] == N_MELS
    assert set(part) == set(PART.names)
    f = np.asarray(part["features"], dtype=np.float32)
    assert f.size == part["frames"] * N_MELS and np.isfinite(f).all()
    return f.reshape(part["frames"], N_MELS)


def _peak_bin(part: dict) -> int:
    return int(np.argmax(_features(part).mean(axis=0)))


def _reason(data: bytes, spec: PreprocessingSpec = SPEC) -> Reason:
    with pytest.raises(DecodeError) as info:
        decode_audio(data, spec)
    return info.value.reason


def test_wav_stereo_44k_becomes_mono_16k_log_mel():
    part, meta = decode_audio(media.make_wav(2.0, sr=44100, channels=2), SPEC)
    assert abs(part["frames"] - 200) <= 2  # ~100 frames a second
    assert meta == {"duration_s": pytest.approx(2.0), "truncated": False,
                    "sample_rate_in": 44100, "channels_in": 2}
    assert part["mime"] == "audio/wav"
    assert _features(part).dtype == np.float32


def test_resampling_keeps_pitch():
    low, _ = decode_audio(media.make_wav(1.0, freq=440), SPEC)
    high, _ = decode_audio(media.make_wav(1.0, freq=2000), SPEC)
    assert _peak_bin(low) < _peak_bin(high)
    # the same tone at another input rate lands in the same mel bin
    low16, _ = decode_audio(media.make_wav(1.0, sr=16000, freq=440), SPEC)
    assert abs(_peak_bin(low16) - _peak_bin(low)) <= 1


@pytest.mark.parametrize("make", [media.make_flac, media.make_ogg,
                                  lambda s, **kw: media.make_mp3_or_m4a(s, **kw)[0]],
                         ids=["flac", "ogg", "m4a"])
def test_other_containers_decode(make):
    ref, _ = decode_audio(media.make_wav(1.5), SPEC)
    part, meta = decode_audio(make(1.5), SPEC)
    assert abs(part["frames"] - 150) <= 4  # AAC adds encoder priming
    assert meta["sample_rate_in"] == 44100 and meta["channels_in"] == 2
    assert abs(_peak_bin(part) - _peak_bin(ref)) <= 1


def test_cap_truncates():
    spec = PreprocessingSpec(audio_cap_s=3)
    part, meta = decode_audio(media.make_wav(5.0, sr=16000, channels=1), spec)
    assert meta["truncated"] is True and meta["duration_s"] == pytest.approx(5.0)
    assert abs(part["frames"] - 300) <= 2
    m4a, _ = media.make_mp3_or_m4a(5.0, sr=8000, channels=1)
    part, meta = decode_audio(m4a, spec)
    assert meta["truncated"] is True and abs(part["frames"] - 300) <= 2


@pytest.mark.parametrize("make", [media.make_wav, media.make_flac,
                                  lambda s, **kw: media.make_mp3_or_m4a(s, **kw)[0]],
                         ids=["wav", "flac", "m4a"])
def test_over_hard_limit_is_too_long(make):
    spec = PreprocessingSpec(audio_hard_limit_s=5, audio_cap_s=2)
    assert _reason(make(6.0, sr=8000, channels=1), spec) is Reason.TOO_LONG
    part, meta = decode_audio(make(4.0, sr=8000, channels=1), spec)
    assert meta["truncated"] and abs(part["frames"] - 200) <= 2


def test_corrupt_and_truncated_files_are_rejected():
    wav = media.make_wav(1.0)
    assert _reason(wav[:20]) in (Reason.DECODE_ERROR, Reason.TRUNCATED)
    assert _reason(wav[:len(wav) // 2]) is Reason.TRUNCATED
    assert _reason(b"RIFF\x00\x00\x00\x00WAVE" + bytes(range(256)) * 8) in (
        Reason.DECODE_ERROR, Reason.TRUNCATED)
    flac = media.make_flac(2.0)
    assert _reason(flac[:30]) in (Reason.DECODE_ERROR, Reason.TRUNCATED)
    assert _reason(flac[:len(flac) // 2]) is Reason.TRUNCATED
    m4a, _ = media.make_mp3_or_m4a(1.0)
    assert _reason(m4a[:len(m4a) // 2]) in (Reason.DECODE_ERROR, Reason.TRUNCATED)
    assert _reason(b"not audio at all " * 50) in (Reason.DECODE_ERROR,
                                                 Reason.UNSUPPORTED_FORMAT)


def test_empty():
    assert _reason(b"") is Reason.EMPTY
    assert _reason(media.make_wav(0.0)) is Reason.EMPTY
    with pytest.raises(DecodeError) as info:
        audio_part_from_samples(np.zeros(0, np.float32), 16000, SPEC)
    assert info.value.reason is Reason.EMPTY


def test_video_without_audio_has_no_audio_stream():
    video = media.make_video(1.0, audio=False)
    assert _reason(video) is Reason.NO_AUDIO_STREAM


def test_audio_part_from_samples_downmixes_and_caps():
    x = media.tone(3.0, 22050, 440, channels=2)
    spec = PreprocessingSpec(audio_cap_s=2)
    part, meta = audio_part_from_samples(x, 22050, spec)
    assert meta["channels_in"] == 2 and meta["truncated"]
    assert abs(part["frames"] - 200) <= 2
    part, meta = audio_part_from_samples(x[:, 0], 22050, SPEC, duration_s=40.0)
    assert meta["truncated"] and meta["duration_s"] == 40.0
