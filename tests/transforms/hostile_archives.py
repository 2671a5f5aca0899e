"""Generated hostile archives (tar in WebDataset layout, tar.gz, zip), all in memory."""

from __future__ import annotations

import gzip
import io
import stat
import struct
import tarfile
import zipfile

from PIL import Image

from tests.transforms.helpers import encode
from tests.transforms.media import make_wav

CAPTION = b"A small red circle sits in the top left of the frame."


def jpeg(color=(200, 10, 10)) -> bytes:
    return encode(Image.new("RGB", (40, 30), color), "JPEG")


def png(color=(10, 200, 10)) -> bytes:
    return encode(Image.new("RGB", (40, 30), color))


def _reg(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def make_tar(entries, compress: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    return gzip.compress(raw, mtime=0) if compress else raw


def webdataset_tar() -> tuple[bytes, dict]:
    """A shard with good samples and every hostile member kind; expected outcomes."""
    nested = make_tar([_reg("x.txt", b"inner")])
    entries = [
        _reg("shard/0001.jpg", jpeg()), _reg("shard/0001.txt", CAPTION),
        _reg("shard/0001.json", b'{"license": "cc-by"}'),
        _reg("shard/0002.png", png()), _reg("shard/0002.cls", b"7"),
        _reg("shard/0003.txt", b"Only a caption in this one, about a blue square."),
        _reg("shard/0004.wav", make_wav(0.5, sr=16000, channels=1)),
        _reg("../escape.txt", b"climbs out"),
        _reg("/etc/passwd.txt", b"absolute"),
        _reg("shard/a/../../../x.txt", b"climbs out through a folder"),
        _special("shard/0005.txt", tarfile.SYMTYPE, "/etc/passwd"),
        _special("shard/0006.txt", tarfile.LNKTYPE, "shard/0001.txt"),
        _special("shard/dev.bin", tarfile.CHRTYPE),
        _special("shard/blk.bin", tarfile.BLKTYPE),
        _special("shard/pipe.bin", tarfile.FIFOTYPE),
        _reg("shard/0007.jpg", b"\xff\xd8\xff\xe0 not really a jpeg" + bytes(100)),
        _reg("shard/0007.txt", b"its caption is fine"),
        _reg("shard/0008.tar", nested),
        _reg("shard/0009.bin", b"\x00\x01\x02" * 30_000),  # over max_member_bytes=60_000
        _reg("shard/0010.json", b'{"only": "metadata"}'),
        _reg("shard/0011.txt", b"first"), _reg("shard/0011.txt", b"second"),
    ]
    expected = {
        "shard/0001": "interleaved", "shard/0002": "image", "shard/0003": "text",
        "shard/0004": "audio",
        "../escape.txt": "forbidden_member", "/etc/passwd.txt": "forbidden_member",
        "shard/a/../../../x.txt": "forbidden_member", "shard/0005.txt": "forbidden_member",
        "shard/0006.txt": "forbidden_member", "shard/dev.bin": "forbidden_member",
        "shard/blk.bin": "forbidden_member", "shard/pipe.bin": "forbidden_member",
        "shard/0007": "decode_error", "shard/0008": "unsupported_format",
        "shard/0009.bin": "too_large", "shard/0010": "empty", "shard/0011": "bad_record",
    }
    return make_tar(entries), expected


def gz_tar_bomb(mib: int = 24) -> bytes:
    """A tar.gz of one member of zeros: ~1000x compression."""
    return make_tar([_reg("bomb/0001.txt", bytes(mib << 20))], compress=True)


def _patch_all(data: bytes, sig: bytes, offset: int, fmt: str, value: int) -> bytes:
    out, at = bytearray(data), data.find(sig)
    while at != -1:
        struct.pack_into(fmt, out, at + offset, value)
        at = data.find(sig, at + 4)
    return bytes(out)


def make_zip(entries, compression=zipfile.ZIP_DEFLATED) -> bytes:
    """entries: (name, bytes, unix mode or None)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = compression
            if mode is not None:
                info.external_attr = mode << 16
                info.create_system = 3
            zf.writestr(info, data)
    return buf.getvalue()


def hostile_zip() -> tuple[bytes, dict]:
    entries = [
        ("0001.png", png(), None), ("0001.txt", CAPTION, None),
        ("../up.txt", b"x", None), ("/abs.txt", b"x", None), ("C:/win.txt", b"x", None),
        ("link.txt", b"/etc/passwd", stat.S_IFLNK | 0o777),
        ("fifo.txt", b"", stat.S_IFIFO | 0o644),
        ("bomb.txt", bytes(8 << 20), None),  # deflates ~1000x
        ("0002.txt", b"a caption that is fine", stat.S_IFREG | 0o644),
    ]
    expected = {"0001": "interleaved", "../up.txt": "forbidden_member",
                "/abs.txt": "forbidden_member", "C:/win.txt": "forbidden_member",
                "link.txt": "forbidden_member", "fifo.txt": "forbidden_member",
                "bomb.txt": "decompression_bomb", "0002": "text"}
    return make_zip(entries), expected


def encrypted_flag_zip() -> bytes:
    """A zip whose member claims to be encrypted (general-purpose flag bit 0)."""
    data = make_zip([("secret.txt", b"hello there", None)])
    data = _patch_all(data, b"PK\x03\x04", 6, "<H", 1)
    return _patch_all(data, b"PK\x01\x02", 8, "<H", 1)


def lying_size_zip() -> bytes:
    """A member whose central directory says 100 bytes but that inflates to 2 MiB."""
    data = make_zip([("liar.txt", bytes(2 << 20), None)])
    return _patch_all(data, b"PK\x01\x02", 24, "<I", 100)


def many_members_zip(n: int) -> bytes:
    return make_zip([(f"{i:04d}.txt", f"caption {i}".encode(), None) for i in range(n)],
                    zipfile.ZIP_STORED)


def lying_size_tar() -> bytes:
    """A plain tar whose first header claims an 8 GiB member (checksum kept valid)."""
    data = bytearray(make_tar([_reg("s/0001.txt", b"short")]))
    data[124:136] = b"77777777777\x00"
    data[148:156] = b" " * 8
    data[148:156] = b"%06o\x00 " % sum(data[:512])
    return bytes(data)
