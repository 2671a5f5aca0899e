"""A folder of bad inputs built from the hostile generators and the fuzzer's seeds, for
engine-parity tests: every file is deterministic, so two runs see the same bytes."""

from __future__ import annotations

import pathlib
import random

from tests.transforms import hostile_archives as ha
from tests.transforms.test_fuzz_decoders import seeds


def write_hostile_inputs(out: pathlib.Path, mutations: int = 3) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "hostile.zip": ha.hostile_zip()[0],
        "encrypted.zip": ha.encrypted_flag_zip(),
        "lying.zip": ha.lying_size_zip(),
        "lying.tar": ha.lying_size_tar(),
        "webdataset.tar": ha.webdataset_tar()[0],
        "empty.txt": b"",
        "garbage.jpg": b"\x00not an image at all" * 8,
        "garbage.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,
        "garbage.gif": b"GIF89a" + b"\xff" * 30,
        "garbage.wav": b"RIFF\x10\x00\x00\x00WAVEfmt " + b"\x01" * 20,
        "garbage.mp4": b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 64,
        "garbage.pdf": b"%PDF-1.4\n" + b"\x00garbage" * 10,
        "bad.jsonl": b'{"id": "x", "parts": [{"image": "missing.png"}]}\n{not json\n',
    }
    rng = random.Random(7)
    for kind, data in sorted(seeds().items()):
        files[f"seed.{kind}"] = data
        for m in range(mutations):  # truncations and header flips: decoders' error paths
            cut = bytearray(data[: max(1, rng.randrange(len(data)))])
            if m % 2:
                at = rng.randrange(min(len(cut), 64))
                cut[at] ^= 0xFF
            files[f"mut{m}.{kind}"] = bytes(cut)
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out
