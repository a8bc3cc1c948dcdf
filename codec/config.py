"""Size knobs of the face vid2vid networks, one frozen dataclass per model.

A ``ModelConfig`` fully determines the architecture (and so the shape of every
weight). It is stored beside shipped weights as JSON (``to_dict`` /
``from_dict``), so a receiver can rebuild exactly the network a sender used.

Names of the networks follow the paper: F (appearance), L (canonical
keypoints), H/Δ (head pose + expression, the sender's only network),
M (motion field), G (generator), D (discriminator, training only).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

# Kind of every field, used by from_dict to validate JSON input strictly.
_INT_TUPLE = "int_tuple"


@dataclass(frozen=True)
class ModelConfig:
    """Every architecture knob of :class:`codec.models.FaceVid2Vid` and the discriminator.

    Defaults are the ``vox256`` product model. Spatial sizes: the feature volume
    is ``feature_channels × feature_depth × h × w`` with
    ``h = w = image_size / 2**(len(appearance_channels) - 1)``.
    """

    name: str = "vox256"
    image_size: int = 256
    num_kp: int = 20

    # F: appearance feature extractor. 2D encoder widths; each step after the
    # first halves the resolution. Volume = C×D×h×w (paper: 32×16×64×64).
    feature_channels: int = 32
    feature_depth: int = 16
    appearance_channels: tuple[int, ...] = (64, 128, 256)
    appearance_res_blocks: int = 6

    # L: canonical keypoint detector, a 2D hourglass on a downscaled image,
    # lifted to a kp_volume_channels×kp_depth×s×s volume of K heatmaps.
    kp_image_size: int = 64
    kp_hourglass_channels: int = 32
    kp_hourglass_max_channels: int = 128
    kp_hourglass_levels: int = 4
    kp_volume_channels: int = 16
    kp_depth: int = 16
    kp_temperature: float = 0.1
    kp_anchor_sigma: float = 0.3

    # H/Δ: head pose + expression, a small strided ResNet on a resized image.
    head_pose_image_size: int = 128
    head_pose_channels: tuple[int, ...] = (32, 64, 128, 256)
    head_pose_blocks_per_stage: int = 0

    # M: motion field estimator, a 3D hourglass run at (h / motion_downscale).
    # Default 2 (a 16×32×32 grid at 256 px): the hourglass cost scales with voxels,
    # so ~4× cheaper per frame; the flows are smooth and upsample with little loss.
    motion_downscale: int = 2
    motion_compressed_channels: int = 4
    motion_hourglass_channels: int = 32
    motion_hourglass_max_channels: int = 256
    motion_hourglass_levels: int = 3
    kp_variance: float = 0.01

    # G: generator. generator_up_channels has one entry per ×2 upsampling and
    # must bring h back to image_size.
    generator_channels: int = 256
    generator_res_blocks: int = 2
    generator_up_channels: tuple[int, ...] = (128, 64)

    # D: multi-scale patch discriminator (training only).
    discriminator_scales: int = 2
    discriminator_channels: tuple[int, ...] = (32, 64, 128, 256)

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def feature_size(self) -> int:
        """Spatial side h = w of the appearance feature volume."""
        return self.image_size // 2 ** (len(self.appearance_channels) - 1)

    @property
    def motion_size(self) -> int:
        """Spatial side of the grid the motion field estimator runs on."""
        return self.feature_size // self.motion_downscale

    @property
    def motion_vector_length(self) -> int:
        """Floats the sender transmits per frame: 3 angles + 3 translation + 3K expression."""
        return 6 + 3 * self.num_kp

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _FIELD_KINDS[f.name]
            if kind is int:
                lowest = 0 if f.name in _NON_NEGATIVE else 1
                if isinstance(value, bool) or not isinstance(value, int) or value < lowest:
                    raise ValueError(f"{f.name} must be an int >= {lowest}, got {value!r}")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not value > 0):
                raise ValueError(f"{f.name} must be a positive number, got {value!r}")
            if kind is str and (not isinstance(value, str) or not value):
                raise ValueError(f"{f.name} must be a non-empty str, got {value!r}")
            if kind == _INT_TUPLE and (
                not isinstance(value, tuple) or not value
                or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value)
            ):
                raise ValueError(
                    f"{f.name} must be a non-empty tuple of positive ints, got {value!r}")
        downsamplings = len(self.appearance_channels) - 1
        if self.image_size % 2**downsamplings:
            raise ValueError(f"image_size {self.image_size} not divisible by 2**{downsamplings}")
        if len(self.generator_up_channels) != downsamplings:
            raise ValueError(
                f"generator_up_channels needs {downsamplings} entries (one per appearance "
                f"downsampling) so the output is image_size, got {len(self.generator_up_channels)}")
        if self.feature_size % self.motion_downscale:
            raise ValueError(f"feature size {self.feature_size} not divisible by motion_downscale")
        if self.motion_size % 2**self.motion_hourglass_levels:
            raise ValueError(f"motion grid {self.motion_size} not divisible by "
                             f"2**motion_hourglass_levels={2**self.motion_hourglass_levels}")
        if self.kp_image_size % 2**self.kp_hourglass_levels:
            raise ValueError(f"kp_image_size {self.kp_image_size} not divisible by "
                             f"2**kp_hourglass_levels={2**self.kp_hourglass_levels}")
        if self.head_pose_image_size % 2 ** len(self.head_pose_channels):
            raise ValueError("head_pose_image_size must be divisible by 2**len(head_pose_channels)")

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (tuples become lists); inverse of :meth:`from_dict`."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output.

        Every field must be present (a stored config must say exactly which
        architecture its weights fit); unknown or missing keys and wrong types
        raise ValueError.
        """
        if not isinstance(data, dict):
            raise ValueError(f"model config must be a dict, got {type(data).__name__}")
        known = set(_FIELD_KINDS)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys: {unknown}")
        missing = sorted(known - set(data))
        if missing:
            raise ValueError(f"missing model config keys: {missing}")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if _FIELD_KINDS[key] == _INT_TUPLE:
                if not isinstance(value, (list, tuple)):
                    raise ValueError(f"{key} must be a list of ints, got {value!r}")
                value = tuple(value)
            elif (_FIELD_KINDS[key] is float and isinstance(value, int)
                  and not isinstance(value, bool)):
                value = float(value)  # JSON writes 1.0 as 1 in some encoders
            kwargs[key] = value
        return cls(**kwargs)


_FIELD_KINDS: dict[str, Any] = {
    "name": str, "image_size": int, "num_kp": int,
    "feature_channels": int, "feature_depth": int, "appearance_channels": _INT_TUPLE,
    "appearance_res_blocks": int,
    "kp_image_size": int, "kp_hourglass_channels": int, "kp_hourglass_max_channels": int,
    "kp_hourglass_levels": int, "kp_volume_channels": int, "kp_depth": int,
    "kp_temperature": float, "kp_anchor_sigma": float,
    "head_pose_image_size": int, "head_pose_channels": _INT_TUPLE,
    "head_pose_blocks_per_stage": int,
    "motion_downscale": int, "motion_compressed_channels": int, "motion_hourglass_channels": int,
    "motion_hourglass_max_channels": int, "motion_hourglass_levels": int, "kp_variance": float,
    "generator_channels": int, "generator_res_blocks": int, "generator_up_channels": _INT_TUPLE,
    "discriminator_scales": int, "discriminator_channels": _INT_TUPLE,
}
# Block counts may legitimately be 0 (e.g. stride-2 blocks only in H/Δ).
_NON_NEGATIVE = {"head_pose_blocks_per_stage", "appearance_res_blocks", "generator_res_blocks"}
assert set(_FIELD_KINDS) == {f.name for f in dataclasses.fields(ModelConfig)}


CONFIGS: dict[str, ModelConfig] = {
    # The product model: 256 px, K = 20 as in the paper, ≤ 10 M inference parameters.
    "vox256": ModelConfig(),
    # For tests: a full encode + render in a few ms on CPU. Not meant to be trained.
    "tiny": ModelConfig(
        name="tiny", image_size=64, num_kp=6,
        feature_channels=4, feature_depth=4, appearance_channels=(8, 16, 16),
        appearance_res_blocks=1,
        kp_image_size=32, kp_hourglass_channels=8, kp_hourglass_max_channels=32,
        kp_hourglass_levels=2, kp_volume_channels=4, kp_depth=4,
        head_pose_image_size=32, head_pose_channels=(8, 16, 32),
        head_pose_blocks_per_stage=0,
        motion_downscale=2, motion_compressed_channels=2, motion_hourglass_channels=8,
        motion_hourglass_max_channels=32, motion_hourglass_levels=2,
        generator_channels=16, generator_res_blocks=1, generator_up_channels=(16, 8),
        discriminator_scales=2, discriminator_channels=(8, 16, 32),
    ),
}


def get_config(name: str) -> ModelConfig:
    """The registered config called ``name``; KeyError naming the known ones otherwise."""
    try:
        return CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown model config {name!r}; known: {sorted(CONFIGS)}") from None
