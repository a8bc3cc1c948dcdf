"""Keyframe image coding (WebP or JPEG through OpenCV).

The keyframe is the one full image of the face the receiver gets per call or refresh;
every later frame is rebuilt from it. It travels on the reliable "control" channel, so
a few kB are fine, but it must never crash the receiver: :func:`decode_keyframe` reads
and checks the image header (format, dimensions ≤ 4096×4096) before decoding, and every
failure is a :class:`KeyframeDecodeError`.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np

from codec.bitstream.packets import KeyframeCodec
from codec.errors import BitstreamError, CodecError, OversizedError

__all__ = [
    "KEYFRAME_CODEC_IDS",
    "KEYFRAME_CODEC_NAMES",
    "MAX_KEYFRAME_SIDE",
    "KeyframeDecodeError",
    "KeyframeOversizedError",
    "decode_keyframe",
    "encode_keyframe",
    "keyframe_dimensions",
]

# The ids written in the bitstream are defined once, by codec.bitstream.KeyframeCodec.
KEYFRAME_CODEC_IDS: dict[str, int] = {"webp": int(KeyframeCodec.WEBP),
                                      "jpeg": int(KeyframeCodec.JPEG)}
KEYFRAME_CODEC_NAMES: dict[int, str] = {v: k for k, v in KEYFRAME_CODEC_IDS.items()}
MAX_KEYFRAME_SIDE = 4096
# The biggest keyframe a sane sender makes (4096² JPEG at q=100 is ~20 MB); refuse
# larger input before handing it to a decoder.
_MAX_KEYFRAME_BYTES = 64 * 1024 * 1024


class KeyframeDecodeError(BitstreamError):
    """The keyframe bytes are empty, corrupt, or not the announced image format."""


class KeyframeOversizedError(KeyframeDecodeError, OversizedError):
    """The keyframe's header announces dimensions beyond :data:`MAX_KEYFRAME_SIDE`."""


def _codec_name(codec: str | int) -> str:
    """A codec name ("webp", "jpeg") or a bitstream codec id -> the codec name."""
    if isinstance(codec, int):
        if codec not in KEYFRAME_CODEC_NAMES:
            raise KeyframeDecodeError(f"unknown keyframe codec id {codec}")
        return KEYFRAME_CODEC_NAMES[codec]
    name = codec.lower()
    if name == "jpg":
        name = "jpeg"
    if name not in KEYFRAME_CODEC_IDS:
        raise ValueError(f"unknown keyframe codec {codec!r}; have {sorted(KEYFRAME_CODEC_IDS)}")
    return name


def encode_keyframe(image_rgb: np.ndarray, codec: str = "webp", quality: int = 90) -> bytes:
    """Code an RGB image as WebP or JPEG.

    Args:
        image_rgb: H×W×3 uint8 RGB, H and W ≤ 4096.
        codec: "webp" or "jpeg".
        quality: 1–100 (higher = larger and better; WebP 100 is still lossy here).

    Returns:
        The image file bytes (a complete .webp / .jpg file).
    """
    name = _codec_name(codec)
    if not (isinstance(image_rgb, np.ndarray) and image_rgb.ndim == 3 and image_rgb.shape[2] == 3):
        raise ValueError(f"expected H×W×3 RGB, got shape {getattr(image_rgb, 'shape', None)}")
    if image_rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {image_rgb.dtype}")
    height, width = image_rgb.shape[:2]
    if not (1 <= height <= MAX_KEYFRAME_SIDE and 1 <= width <= MAX_KEYFRAME_SIDE):
        raise ValueError(f"keyframe size {width}×{height} outside 1..{MAX_KEYFRAME_SIDE}")
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    bgr = cv2.cvtColor(np.ascontiguousarray(image_rgb), cv2.COLOR_RGB2BGR)
    if name == "webp":
        # OpenCV reads WebP quality > 100 as lossless; we cap at 100 (lossy)
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, int(quality)])
    else:
        # optimized Huffman tables: a few % smaller for free, still baseline JPEG
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 1]
        ok, buf = cv2.imencode(".jpg", bgr, params)
    if not ok:
        raise CodecError(f"OpenCV failed to encode a {width}×{height} {name} keyframe")
    return buf.tobytes()


def _jpeg_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from a JPEG's first SOF marker."""
    if data[:2] != b"\xff\xd8":
        raise KeyframeDecodeError("not a JPEG (no SOI marker)")
    # libjpeg decodes a truncated file into a grey-filled image with only a warning
    if data[-2:] != b"\xff\xd9":
        raise KeyframeDecodeError("truncated JPEG (no EOI marker)")
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise KeyframeDecodeError(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # EOI / SOS before any frame header
            break
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if length < 2:
            raise KeyframeDecodeError("corrupt JPEG: segment length < 2")
        # SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC) carry the frame size
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if pos + 9 > len(data):
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    raise KeyframeDecodeError("corrupt or truncated JPEG: no frame header")


def _webp_dimensions(data: bytes) -> tuple[int, int]:
    """(width, height) from a WebP's RIFF header (VP8, VP8L or VP8X)."""
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise KeyframeDecodeError("not a WebP (no RIFF/WEBP header) or truncated")
    riff_size = int.from_bytes(data[4:8], "little") + 8
    if riff_size != len(data):
        raise KeyframeDecodeError(f"WebP RIFF size {riff_size} ≠ {len(data)} bytes (truncated?)")
    fourcc = data[12:16]
    body = data[20:]
    if fourcc == b"VP8 ":
        if body[3:6] != b"\x9d\x01\x2a":
            raise KeyframeDecodeError("corrupt WebP: bad VP8 start code")
        width, height = struct.unpack("<HH", body[6:10])
        return width & 0x3FFF, height & 0x3FFF
    if fourcc == b"VP8L":
        if body[0] != 0x2F:
            raise KeyframeDecodeError("corrupt WebP: bad VP8L signature")
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if fourcc == b"VP8X":
        width = int.from_bytes(body[4:7], "little") + 1
        height = int.from_bytes(body[7:10], "little") + 1
        return width, height
    raise KeyframeDecodeError(f"unsupported WebP chunk {fourcc!r}")


def keyframe_dimensions(data: bytes, codec: str) -> tuple[int, int]:
    """(width, height) announced by a keyframe's header, without decoding it.

    Raises:
        KeyframeDecodeError: empty, truncated, or not the given format.
    """
    name = _codec_name(codec)
    if not data:
        raise KeyframeDecodeError("empty keyframe")
    return _webp_dimensions(data) if name == "webp" else _jpeg_dimensions(data)


def decode_keyframe(data: bytes, codec: str | int = "webp") -> np.ndarray:
    """Decode keyframe bytes made by :func:`encode_keyframe`.

    Args:
        data: the image bytes.
        codec: "webp" or "jpeg", or the bitstream's codec id.

    Returns:
        H×W×3 uint8 RGB.

    Raises:
        KeyframeOversizedError: the header announces a side > 4096 (checked before
            decoding, so a hostile header cannot make the decoder allocate gigabytes).
        KeyframeDecodeError: empty, corrupt, truncated, or a different format.
    """
    data = bytes(data)
    if len(data) > _MAX_KEYFRAME_BYTES:
        raise KeyframeOversizedError(f"keyframe of {len(data)} bytes exceeds the limit")
    width, height = keyframe_dimensions(data, codec)
    if not (1 <= width <= MAX_KEYFRAME_SIDE and 1 <= height <= MAX_KEYFRAME_SIDE):
        raise KeyframeOversizedError(
            f"keyframe header says {width}×{height}; limit is {MAX_KEYFRAME_SIDE} per side"
        )
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise KeyframeDecodeError(f"corrupt {_codec_name(codec)} keyframe ({len(data)} bytes)")
    if bgr.shape[:2] != (height, width):
        raise KeyframeDecodeError(
            f"decoded size {bgr.shape[1]}×{bgr.shape[0]} differs from header {width}×{height}"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
