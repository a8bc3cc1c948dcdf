"""What the stages run on, built once: the model (random, seeded weights), a keyframe and a
frame, the synthetic motion stream and its packets, the driving tensors render() receives,
and the fp32 eager reference outputs every variant is compared with."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from codec.config import ModelConfig
from codec.keypoints import HeadMotion, transform_keypoints
from codec.models import FaceVid2Vid, build_model
from codec.models.generator import Generator
from codec.models.vid2vid import SourceState

from . import motion as motion_stream
from .numerics import compare
from .stages import INTRA_PERIOD, autocast


def _pose_vector(model: FaceVid2Vid, image: torch.Tensor) -> torch.Tensor:
    """H/Δ -> 1×(6+3K) [yaw, pitch, roll, t, δ] on the device (HeadMotion.to_vector's layout)."""
    pose = model.estimate_motion(image)
    return torch.cat([pose.angles().float(), pose.translation.float(),
                      pose.expression.float().flatten(1)], dim=1)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """B×3×H×W in [0, 1] -> H×W×3 uint8 on the host (what a receiver displays)."""
    return (image[0].float().clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


class BenchInputs:
    """The model and every input a stage reads; ``frames``: the motion stream covers at least
    that many frames (and two intra periods)."""

    def __init__(self, config: ModelConfig, device: torch.device, frames: int, seed: int = 0) -> None:
        self.config = config
        self.device = device
        self.model: FaceVid2Vid = build_model(config, seed=seed).to(device).requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        size = config.image_size
        self.keyframe = torch.rand(1, 3, size, size, generator=gen).to(device)
        self.frame_image = torch.rand(1, 3, size, size, generator=gen).to(device)
        self.has_constriction = importlib.util.find_spec("constriction") is not None
        self.motion_vectors = motion_stream.synthetic_motion(max(frames, 2 * INTRA_PERIOD), config.num_kp, seed)
        self.packets: list[bytes] = []
        self.motion_bits_per_frame: float | None = None
        if self.has_constriction:
            self.packets = motion_stream.encode_packets(self.motion_vectors, config.num_kp)
            self.motion_bits_per_frame = 8.0 * sum(map(len, self.packets)) / len(self.packets)
        # driving motion as render() receives it, one per synthetic frame (device resident)
        motions = [HeadMotion.from_vector(v, config.num_kp) for v in self.motion_vectors]
        self.driving = [m.to_tensors(device) for m in motions]
        self._sources: dict[str, SourceState] = {}
        self.reference: dict[str, Any] = {}
        with torch.inference_mode():
            self._build_reference()

    def pose_vector(self, image: torch.Tensor) -> torch.Tensor:
        """H/Δ as the sender runs it (one plain function, so sender.H and sender.frame share
        one compiled version)."""
        return _pose_vector(self.model, image)

    def packet_decoder(self) -> Callable[[], np.ndarray]:
        """A fresh decoder of the motion stream: each call decodes the next packet."""
        return motion_stream.packet_decoder(self.packets, self.config.num_kp)

    def source(self, precision: str) -> SourceState:
        """The keyframe's cached state, prepared in ``precision`` (eager), as the receiver holds it."""
        if precision not in self._sources:
            with autocast(precision, self.device):
                self._sources[precision] = self.model.prepare_source(self.keyframe)
        return self._sources[precision]

    def motion_inputs(self, precision: str, index: int = 0) -> tuple[torch.Tensor, ...]:
        """Exactly what FaceVid2Vid._render passes M: (F volume, x_s, x_d, R_s, R_d)."""
        source = self.source(precision).expand(1)
        dtype = source.canonical_keypoints.dtype
        rotation, translation, expression = (v.to(dtype) for v in self.driving[index])
        driving_kp = transform_keypoints(source.canonical_keypoints, rotation, translation,
                                         expression)
        return (source.feature_volume, source.source_keypoints, driving_kp, source.rotation,
                rotation)

    def generator_inputs(self, precision: str) -> tuple[torch.Tensor, ...]:
        """What _render passes G: (F volume, deformation, occlusion) from M in ``precision``."""
        inputs = self.motion_inputs(precision)
        with autocast(precision, self.device):
            motion = self.model.motion(*inputs)
        return inputs[0], motion.deformation, motion.occlusion

    def _build_reference(self) -> None:
        """fp32 eager outputs every variant is compared with, and the M→G split check."""
        model, ref = self.model, self.reference
        source = self.source("fp32")
        ref["keyframe.setup"] = source.feature_volume
        ref["keyframe.F"] = source.feature_volume
        ref["keyframe.L"] = source.canonical_keypoints
        ref["sender.H"] = _pose_vector(model, self.frame_image)
        m_in = self.motion_inputs("fp32")
        ref["receiver.kp_transform"] = m_in[2]
        motion = model.motion(*m_in)
        ref["receiver.M"] = motion.deformation
        ref["receiver.warp"] = Generator.warp(source.feature_volume, motion.deformation)
        ref["receiver.G"] = model.generator(source.feature_volume, motion.deformation,
                                            motion.occlusion)
        ref["receiver.render"] = model.render(source, *self.driving[0])
        ref["receiver.frame"] = to_uint8(ref["receiver.render"])
        self.split_check = compare(ref["receiver.G"], ref["receiver.render"], peak=1.0)

    def receiver_frame_reference(self) -> np.ndarray:
        """fp32 eager frame of the first decoded packet (quantized motion, as the receiver sees it)."""
        if "receiver.frame.decoded" not in self.reference:
            with torch.inference_mode():
                vector = self.packet_decoder()()
                motion = HeadMotion.from_vector(vector, self.config.num_kp)
                image = self.model.render(self.source("fp32"), *motion.to_tensors(self.device))
                self.reference["receiver.frame.decoded"] = to_uint8(image)
        return self.reference["receiver.frame.decoded"]
