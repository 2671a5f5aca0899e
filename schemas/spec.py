"""The preprocessing spec: one versioned artifact made by ingest, copied into checkpoints.

Mining, eval and backfill apply a checkpoint's own spec, so an encoder always sees
inputs prepared the way it was trained.
"""

from __future__ import annotations

import hashlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

SPEC_FILE = "preprocessing.json"


class PreprocessingSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    image_size: int = Field(48, ge=8, le=1024)
    image_frames: int = Field(1, ge=1, le=64)  # animated images: frames spread evenly
    # How decoded frames are stored (transforms.pixels): JPEG q90 by measurement.
    image_codec: Literal["jpeg", "webp", "png", "raw"] = "jpeg"
    image_quality: int = Field(90, ge=1, le=100)
    patch_size: int = Field(8, ge=2, le=64)
    max_text_chars: int = Field(4000, ge=16)
    max_text_tokens: int = Field(64, ge=4)
    vocab_size: int = Field(2000, ge=64)
    max_image_pixels: int = Field(64_000_000, ge=1)  # Pillow's decompression-bomb guard
    video_fps: float = 1.0
    video_max_frames: int = 32
    audio_sample_rate: int = 16_000
    audio_cap_s: float = 30.0
    audio_hard_limit_s: float = 600.0
    # Log-mel features (transforms.audio.log_mel): everything the audio features depend on,
    # so a checkpoint's spec reproduces them outside loom.
    audio_n_mels: int = Field(64, ge=8, le=512)
    audio_win_ms: float = Field(25.0, gt=0)  # periodic Hann window; n_fft = next power of 2
    audio_hop_ms: float = Field(10.0, gt=0)  # centered frames: 1 + samples // hop
    audio_f_min: float = Field(0.0, ge=0)  # filters from f_min to the Nyquist frequency
    audio_mel_scale: Literal["htk"] = "htk"  # triangular filters, peak 1 (not area-normalized)
    audio_log_eps: float = Field(1e-6, gt=0)  # features = ln(mel power + eps)
    pdf_max_pages: int = 64
    tokenizer_json: str = ""  # the trained Hugging Face tokenizer, inline

    def digest(self) -> str:
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:16]

    def without_tokenizer(self) -> PreprocessingSpec:
        return self.model_copy(update={"tokenizer_json": ""})
