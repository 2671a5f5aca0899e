"""The mel settings live in the preprocessing spec: ingest's audio features follow them, and
the spec's defaults are what loom has always computed."""

from __future__ import annotations

import numpy as np
from loom.schemas.spec import PreprocessingSpec
from loom.transforms import audio


def _tone(sr: int = 16_000, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)


def test_spec_mel_settings_drive_the_features():
    spec = PreprocessingSpec(audio_n_mels=32, audio_hop_ms=20.0, audio_win_ms=40.0,
                             audio_f_min=100.0, audio_log_eps=1e-3)
    part, _ = audio.audio_part_from_samples(_tone(), 16_000, spec)
    assert part["feature_bins"] == 32
    assert part["frames"] == 1 + 16_000 // 320  # hop of 20 ms at 16 kHz
    want = audio.log_mel(_tone(), 16_000, 32, win_ms=40.0, hop_ms=20.0, f_min=100.0,
                         log_eps=1e-3)
    # float16 in memory, as stored (one rounding)
    np.testing.assert_array_equal(part["features"].reshape(-1, 32), want.astype(np.float16))


def test_default_spec_matches_the_old_constants():
    spec = PreprocessingSpec()
    assert (spec.audio_n_mels, spec.audio_win_ms, spec.audio_hop_ms, spec.audio_f_min,
            spec.audio_log_eps) == (audio.N_MELS, audio.WIN_MS, audio.HOP_MS, audio.F_MIN,
                                    audio.LOG_EPS)
    part, _ = audio.audio_part_from_samples(_tone(), 16_000, spec)
    np.testing.assert_array_equal(part["features"].reshape(-1, 64),
                                  audio.log_mel(_tone(), 16_000).astype(np.float16))
