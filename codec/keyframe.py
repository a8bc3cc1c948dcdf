"""Keyframe image coding: WebP or JPEG through OpenCV, or one AV1 intra frame through PyAV.

The keyframe is the one full image of the face the receiver gets per call or refresh;
every later frame is rebuilt from it. It travels on the reliable "control" channel, so
a few kB are fine, but it must never crash the receiver: :func:`decode_keyframe` reads
and checks the image header (format, dimensions ≤ 4096×4096) before decoding, and every
failure is a :class:`KeyframeDecodeError`.

AV1 (``benchmarks.keyframe_codecs``): SVT-AV1 at preset 3 with its visual-quality tuning
reaches WebP q90's rebuilt-frame LPIPS on the dev crops with ~30 % fewer bytes, but takes
~125 ms a 256 px keyframe on one of our CPU cores (WebP: 8 ms). The data is the encoder's
low-overhead OBU stream (temporal delimiter, sequence header, frame): what AVIF stores, without
the container; dav1d decodes it. PyAV is imported only when AV1 is used (the training image
has OpenCV but no PyAV).
"""

from __future__ import annotations

import struct
from fractions import Fraction

import cv2
import numpy as np

from codec.bitstream.header import KeyframeCodec
from codec.errors import BitstreamError, CodecError, OversizedError

__all__ = [
    "KEYFRAME_CODEC_IDS",
    "KEYFRAME_CODEC_NAMES",
    "MAX_KEYFRAME_SIDE",
    "KeyframeDecodeError",
    "KeyframeOversizedError",
    "DEFAULT_KEYFRAME_CODEC",
    "DEFAULT_KEYFRAME_QUALITY",
    "WHOLE_FRAME_KEYFRAME_QUALITY",
    "decode_keyframe",
    "default_keyframe_quality",
    "encode_keyframe",
    "fit_square",
    "keyframe_dimensions",
    "received_keyframe",
]

# The ids written in the bitstream are defined once, by codec.bitstream.KeyframeCodec.
KEYFRAME_CODEC_IDS: dict[str, int] = {"webp": int(KeyframeCodec.WEBP),
                                      "jpeg": int(KeyframeCodec.JPEG),
                                      "av1": int(KeyframeCodec.AV1)}
KEYFRAME_CODEC_NAMES: dict[int, str] = {v: k for k, v in KEYFRAME_CODEC_IDS.items()}
# Quality 1-100 for every codec (higher = larger and better); AV1's CRF is 63·(100 - q)/100.
# The defaults, chosen by the rebuilt frames' LPIPS per keyframe byte, not the image's own
# quality (benchmarks.keyframe_codecs --manifest, docs/measurements.md#keyframe-codec): the
# lowest quality within +0.001 rebuilt LPIPS of the previous default (q78). AV1 q66 (CRF 21): -16 % bytes
# against q78 for +0.0008 on train clips, -0.0001 on dev; WebP stays at q90 (q85: +0.0018).
DEFAULT_KEYFRAME_QUALITY: dict[str, int] = {"webp": 90, "jpeg": 90, "av1": 66}
# The same for whole camera frames (a model ``at_size(..., whole_frame=True)``): the face is a
# small part of the picture and the keyframe's bytes go mostly to the background. On the 11
# whole-frame dev clips (benchmarks/results/rd-dev-frame.json, one keyframe, 250 frames) AV1
# q66 -> q46 (CRF 21 -> 34) took 15.0 -> 9.2 kbit/s for rebuilt LPIPS 0.1788 -> 0.1873, a
# trade x264 makes at ~3x the cost (its matched-LPIPS ratio 3.7x -> 5.8x); q30 goes on to
# 5.7 kbit/s but LPIPS 0.210.
WHOLE_FRAME_KEYFRAME_QUALITY: dict[str, int] = {"webp": 90, "jpeg": 90, "av1": 46}
# What files, calls and the rd benchmark's "ours" send unless asked otherwise: AV1 spends ~35 %
# fewer keyframe bytes than WebP q90 at the same rebuilt LPIPS; a call codes it off the frame
# loop (codec.keyframe_worker), since it takes ~110 ms.
DEFAULT_KEYFRAME_CODEC = "av1"
AV1_PRESET = "3"  # SVT-AV1 speed preset: 3 of 0 (slowest) - 13; keyframes are rare
AV1_PARAMS = "tune=0"  # SVT-AV1's subjective (visual quality) tuning: lower LPIPS per byte than PSNR tuning
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


def default_keyframe_quality(codec: str, whole_frame: bool = False) -> int:
    """The quality a codec's keyframes use unless asked otherwise: of face crops, or with
    ``whole_frame`` of whole camera frames (:data:`WHOLE_FRAME_KEYFRAME_QUALITY`)."""
    table = WHOLE_FRAME_KEYFRAME_QUALITY if whole_frame else DEFAULT_KEYFRAME_QUALITY
    return table[_codec_name(codec)]


def encode_keyframe(image_rgb: np.ndarray, codec: str = "webp", quality: int | None = None) -> bytes:
    """Code an RGB image as WebP, JPEG or one AV1 intra frame.

    Args:
        image_rgb: H×W×3 uint8 RGB, H and W ≤ 4096.
        codec: "webp", "jpeg" or "av1".
        quality: 1–100 (higher = larger and better; WebP 100 is still lossy here); None:
            the codec's default (:data:`DEFAULT_KEYFRAME_QUALITY`).

    Returns:
        The image file bytes (a complete .webp / .jpg file, or AV1 OBUs).
    """
    name = _codec_name(codec)
    if not (isinstance(image_rgb, np.ndarray) and image_rgb.ndim == 3 and image_rgb.shape[2] == 3):
        raise ValueError(f"expected H×W×3 RGB, got shape {getattr(image_rgb, 'shape', None)}")
    if image_rgb.dtype != np.uint8:
        raise ValueError(f"expected uint8, got {image_rgb.dtype}")
    height, width = image_rgb.shape[:2]
    if not (1 <= height <= MAX_KEYFRAME_SIDE and 1 <= width <= MAX_KEYFRAME_SIDE):
        raise ValueError(f"keyframe size {width}×{height} outside 1..{MAX_KEYFRAME_SIDE}")
    if quality is None:
        quality = DEFAULT_KEYFRAME_QUALITY[name]
    if not 1 <= int(quality) <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    if name == "av1":
        return _encode_av1(image_rgb, int(quality))
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


def _encode_av1(image_rgb: np.ndarray, quality: int) -> bytes:
    import os

    import av

    # SVT-AV1 prints its whole configuration to stderr for every encoder it opens; errors only.
    os.environ.setdefault("SVT_LOG", "1")
    height, width = image_rgb.shape[:2]
    if width % 2 or height % 2 or min(width, height) < 16:
        # 4:2:0 chroma: the decoder would hand back a padded image. Face crops are even.
        raise ValueError(f"AV1 keyframes need even sides of at least 16, not {width}×{height}")
    context = av.CodecContext.create("libsvtav1", "w")
    context.width, context.height = width, height
    context.pix_fmt = "yuv420p"
    context.time_base = Fraction(1, 25)
    context.options = {"crf": str(round(63 * (100 - quality) / 100)), "preset": AV1_PRESET,
                       "svtav1-params": AV1_PARAMS}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image_rgb), format="rgb24").reformat(format="yuv420p")
    frame.pts = 0
    try:
        data = b"".join(bytes(p) for p in [*context.encode(frame), *context.encode(None)])
    except av.FFmpegError as exc:
        raise CodecError(f"SVT-AV1 failed to encode a {width}×{height} keyframe: {exc}") from exc
    if not data:
        raise CodecError(f"SVT-AV1 returned nothing for a {width}×{height} keyframe")
    return data


class _Bits:
    """MSB-first bit reader over bytes (AV1 headers); running out is a KeyframeDecodeError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def read(self, n: int) -> int:
        value = 0
        for _ in range(n):
            byte = self.pos >> 3
            if byte >= len(self.data):
                raise KeyframeDecodeError("truncated AV1 sequence header")
            value = (value << 1) | ((self.data[byte] >> (7 - (self.pos & 7))) & 1)
            self.pos += 1
        return value


def _leb128(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            raise KeyframeDecodeError("truncated AV1 OBU size")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise KeyframeDecodeError("AV1 OBU size longer than 8 bytes")


_OBU_SEQUENCE_HEADER = 1
_OBU_TEMPORAL_DELIMITER = 2


def _av1_dimensions(data: bytes) -> tuple[int, int]:
    """(max frame width, max frame height) from the sequence header OBU (AV1 spec 5.5), which
    must come first after any temporal delimiter. Every OBU must carry its size and the sizes
    must add up to the data exactly (a truncated keyframe is refused, not half-decoded)."""
    pos, size_found = 0, None
    while pos < len(data):
        header = data[pos]
        if header & 0x80:
            raise KeyframeDecodeError("corrupt AV1: OBU forbidden bit set")
        obu_type, has_extension, has_size = (header >> 3) & 0x0F, header & 0x04, header & 0x02
        if not has_size:
            raise KeyframeDecodeError("AV1 keyframe OBUs must carry their size")
        size, start = _leb128(data, pos + 1 + (1 if has_extension else 0))
        if start + size > len(data):
            raise KeyframeDecodeError("truncated AV1 OBU")
        if obu_type == _OBU_SEQUENCE_HEADER and size_found is None:
            size_found = _sequence_header_size(data[start:start + size])
        elif size_found is None and obu_type != _OBU_TEMPORAL_DELIMITER:
            raise KeyframeDecodeError("not an AV1 keyframe (no sequence header first)")
        pos = start + size
    if size_found is None:
        raise KeyframeDecodeError("not an AV1 keyframe (no sequence header)")
    return size_found


def _sequence_header_size(payload: bytes) -> tuple[int, int]:
    bits = _Bits(payload)
    bits.read(3)  # seq_profile
    bits.read(1)  # still_picture
    if bits.read(1):  # reduced_still_picture_header
        bits.read(5)  # seq_level_idx[0]
    else:
        decoder_model_info = False
        buffer_delay_bits = 0
        if bits.read(1):  # timing_info_present_flag
            bits.read(32)  # num_units_in_display_tick
            bits.read(32)  # time_scale
            if bits.read(1):  # equal_picture_interval: num_ticks_per_picture_minus_1, uvlc
                zeros = 0
                while not bits.read(1):
                    zeros += 1
                    if zeros >= 32:
                        raise KeyframeDecodeError("corrupt AV1 sequence header (uvlc)")
                bits.read(zeros)
            decoder_model_info = bool(bits.read(1))
            if decoder_model_info:
                buffer_delay_bits = bits.read(5) + 1
                bits.read(32)  # num_units_in_decoding_tick
                bits.read(5)  # buffer_removal_time_length_minus_1
                bits.read(5)  # frame_presentation_time_length_minus_1
        initial_display_delay = bool(bits.read(1))
        for _ in range(bits.read(5) + 1):  # operating points
            bits.read(12)  # operating_point_idc
            if bits.read(5) > 7:  # seq_level_idx
                bits.read(1)  # seq_tier
            if decoder_model_info and bits.read(1):  # decoder_model_present_for_this_op
                bits.read(2 * buffer_delay_bits + 1)
            if initial_display_delay and bits.read(1):
                bits.read(4)
    width_bits, height_bits = bits.read(4) + 1, bits.read(4) + 1
    return bits.read(width_bits) + 1, bits.read(height_bits) + 1


def _decode_av1(data: bytes, width: int, height: int) -> np.ndarray:
    import av

    try:
        context = av.CodecContext.create("libdav1d", "r")
        # dav1d's own frame-size limit, on top of the header check above
        context.options = {"max_pixels": str(MAX_KEYFRAME_SIDE * MAX_KEYFRAME_SIDE)}
        frames = [*context.decode(av.Packet(data)), *context.decode(None)]
    except (av.FFmpegError, ValueError) as exc:
        raise KeyframeDecodeError(f"corrupt AV1 keyframe ({len(data)} bytes): {exc}") from exc
    if len(frames) != 1:
        raise KeyframeDecodeError(f"an AV1 keyframe holds one frame, this one {len(frames)}")
    image = frames[0].to_ndarray(format="rgb24")
    if image.shape[:2] != (height, width):
        raise KeyframeDecodeError(f"decoded size {image.shape[1]}×{image.shape[0]} differs from the "
                                  f"sequence header's {width}×{height}")
    return image


def keyframe_dimensions(data: bytes, codec: str) -> tuple[int, int]:
    """(width, height) announced by a keyframe's header, without decoding it.

    Raises:
        KeyframeDecodeError: empty, truncated, or not the given format.
    """
    name = _codec_name(codec)
    if not data:
        raise KeyframeDecodeError("empty keyframe")
    if name == "av1":
        return _av1_dimensions(data)
    return _webp_dimensions(data) if name == "webp" else _jpeg_dimensions(data)


def decode_keyframe(data: bytes, codec: str | int = "webp") -> np.ndarray:
    """Decode keyframe bytes made by :func:`encode_keyframe`.

    Args:
        data: the image bytes.
        codec: "webp", "jpeg" or "av1", or the bitstream's codec id.

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
    if _codec_name(codec) == "av1":
        return _decode_av1(data, width, height)
    bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise KeyframeDecodeError(f"corrupt {_codec_name(codec)} keyframe ({len(data)} bytes)")
    if bgr.shape[:2] != (height, width):
        raise KeyframeDecodeError(
            f"decoded size {bgr.shape[1]}×{bgr.shape[0]} differs from header {width}×{height}"
        )
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fit_square(image: np.ndarray, size: int) -> np.ndarray:
    """An H×W×3 uint8 RGB image resized to size×size (unchanged when it already is)."""
    return fit_frame(image, (size, size))


# Whole frames are sent at the camera's own size up to this (width, height), by default.
DEFAULT_MAX_FRAME = (1280, 720)


def frame_size_within(width: int, height: int, limit: tuple[int, int] = DEFAULT_MAX_FRAME) -> tuple[int, int]:
    """(width, height) of a width×height picture scaled down (never up) so that its long side
    is at most ``max(limit)`` and its short side at most ``min(limit)``, aspect kept, both
    even (4:2:0 video needs them so)."""
    long_side, short_side = max(limit), min(limit)
    scale = min(1.0, long_side / max(width, height), short_side / min(width, height))
    return max(16, int(round(width * scale / 2)) * 2), max(16, int(round(height * scale / 2)) * 2)


def fit_frame(image: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """An H×W×3 uint8 RGB image resized to size×size, or to (width, height) (unchanged when
    it already is)."""
    width, height = (int(size), int(size)) if np.isscalar(size) else (int(v) for v in size)
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8):
        raise ValueError(f"expected an H×W×3 uint8 RGB image, got {getattr(image, 'shape', None)} "
                         f"{getattr(image, 'dtype', None)}")
    if image.shape[:2] == (height, width):
        return np.ascontiguousarray(image)
    shrinking = image.shape[0] > height
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def received_keyframe(data: bytes, codec: str | int, size: int | tuple[int, int]) -> np.ndarray:
    """The image a receiver holds from keyframe bytes: decoded, then fit to the model's
    size×size (or (width, height)): what a sender renders from to see what the receiver shows."""
    return fit_frame(decode_keyframe(data, codec), size)
