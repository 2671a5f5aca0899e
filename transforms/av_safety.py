"""Opening untrusted media with PyAV without letting FFmpeg reach anything else.

Media bytes are always handed to FFmpeg as an in-memory file object, never as a path
or URL, and three fences keep a demuxer from opening other inputs:

* ``format_whitelist``: FFmpeg refuses, inside ``avformat_open_input`` and before the
  demuxer reads its header, any demuxer not on the list (HLS/m3u8, DASH, concat,
  ffmetadata, sdp/rtp/rtsp, image2 sequences, tee, ...);
* ``protocol_whitelist`` set to a name no protocol has: the file object itself needs no
  protocol (PyAV installs a custom AVIOContext), so every nested open (a playlist's
  http:// segment, a concat script's file) fails with EINVAL;
* the demuxer's name is checked again after the open against the same allow-list.

Probe size, analyze duration and the stream count are bounded too.
"""

from __future__ import annotations

import io

import av
import av.container
from loom.schemas.records import Reason
from loom.transforms.sniff import DecodeError

# FFmpeg demuxer names (AVInputFormat.name) of plain, self-contained containers.
ALLOWED_DEMUXERS: frozenset[str] = frozenset({
    "mov,mp4,m4a,3gp,3g2,mj2",
    "matroska,webm",
    "avi",
    "ogg",
    "mp3",
    "wav",
    "flac",
    "aac",  # raw ADTS AAC
    # More self-contained formats: every byte they need is in the one stream given.
    "mpegts",  # .ts, .m2ts, .mts (M2TS is the same demuxer with 192-byte packets)
    "flv",
    "dv",
    "aiff",
    "mpeg",  # MPEG program stream (.mpg, .vob)
    "asf",  # .wmv, .wma
    "caf",
    "au",
    "amr",
    "wv",  # WavPack
    "ivf",  # VP8/VP9/AV1 elementary stream
})
_FORMAT_WHITELIST = ",".join(sorted({n for d in ALLOWED_DEMUXERS for n in d.split(",")}))
NO_PROTOCOL = "none"  # matches no protocol: any nested open is refused

PROBE_SIZE = 5_000_000  # bytes read while probing
ANALYZE_DURATION_US = 5_000_000
MAX_STREAMS = 100

CONTAINER_OPTIONS: dict[str, str] = {
    "format_whitelist": _FORMAT_WHITELIST,
    "protocol_whitelist": NO_PROTOCOL,
    "probesize": str(PROBE_SIZE),
    "analyzeduration": str(ANALYZE_DURATION_US),
    "max_streams": str(MAX_STREAMS),
    "enable_drefs": "0",  # mov: never follow data references to other files
    "use_absolute_path": "0",
    "safe": "1",  # concat (refused anyway): no unsafe file names
}

_TRUNCATION_HINTS = ("end of file", "truncated", "eof")


def reason_for(err: BaseException) -> Reason:
    """The Reason for an FFmpeg/PyAV error raised while opening or decoding."""
    if isinstance(err, (av.error.EOFError, EOFError)):
        return Reason.TRUNCATED
    text = str(err).lower()
    if any(h in text for h in _TRUNCATION_HINTS):
        return Reason.TRUNCATED
    return Reason.DECODE_ERROR


def open_container(data: bytes) -> av.container.InputContainer:
    """An input container over `data` (in memory), or DecodeError. The caller closes it."""
    if not data:
        raise DecodeError(Reason.EMPTY, "empty file")
    try:
        # metadata_errors: a tag in Latin-1 (not UTF-8) must not make the file unreadable
        container = av.open(io.BytesIO(data), mode="r", container_options=CONTAINER_OPTIONS,
                            metadata_errors="replace")
    except (av.error.ArgumentError, av.error.PermissionError) as e:
        # EINVAL: the demuxer is off the format whitelist or wanted a refused protocol;
        # EPERM: a reference FFmpeg itself deems unsafe.
        raise DecodeError(Reason.UNSUPPORTED_FORMAT,
                          f"container refused: {type(e).__name__}: {e}") from None
    except av.error.FFmpegError as e:
        raise DecodeError(reason_for(e), f"cannot open media: {type(e).__name__}: {e}") from None
    except (OSError, ValueError, RuntimeError, MemoryError) as e:
        raise DecodeError(Reason.DECODE_ERROR,
                          f"cannot open media: {type(e).__name__}: {e}") from None
    name = container.format.name if container.format is not None else ""
    if name not in ALLOWED_DEMUXERS:
        container.close()
        raise DecodeError(Reason.UNSUPPORTED_FORMAT, f"container format {name!r} not allowed")
    return container
