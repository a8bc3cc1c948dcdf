"""Typed errors of the codec. Every failure a user can cause is one of these."""


class CodecError(Exception):
    """Base class for every error the codec raises on purpose."""


class BitstreamError(CodecError):
    """Malformed, truncated, oversized or unsupported bitstream input."""


class TruncatedError(BitstreamError):
    """The input ended before a complete field or packet."""


class UnsupportedVersionError(BitstreamError):
    """The magic matched but the format version is not one this build reads."""


class OversizedError(BitstreamError):
    """A length or count field exceeds the format's limits."""


class PictureTooLargeError(OversizedError):
    """The stream's picture is larger than this receiver renders (its limit, not the format's)."""


class ReferenceSlotError(BitstreamError):
    """A packet names a reference slot outside the stream header's K slots (corrupt input)."""


class MissingReferenceError(CodecError):
    """A predicted (inter) motion packet arrived without its reference frame.

    Not corruption: the receiver holds the last frame until the next intra packet.
    """


class WeightsError(CodecError):
    """Model weights are missing, unregistered, or fail their sha256 check."""


class ModelMismatchError(CodecError):
    """The stream was made with a different model or weights than the receiver has."""


class FaceNotFoundError(CodecError):
    """No usable face in the frame(s) given to the face crop."""


class MediaError(CodecError):
    """A video or audio file could not be read or written."""
