"""One frame of each stage as a zero-argument callable, in a precision and mode, with notes
that say what exactly it covers."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from codec.keypoints import HeadMotion, transform_keypoints
from codec.models.generator import Generator

from .inputs import BenchInputs, to_uint8
from .modes import ModeRunner
from .motion import motion_packer
from .stages import INTRA_PERIOD, KEYFRAME_STAGES, MOTION_QUALITY, NotApplicable, autocast

Step = Callable[[], Any]


class StepBuilder:
    """Builds the per-frame callables the benchmark times, on ``inputs`` in ``modes``."""

    def __init__(self, inputs: BenchInputs, modes: ModeRunner) -> None:
        self.inputs = inputs
        self.modes = modes

    def build(self, stage: str, precision: str, mode: str) -> tuple[Step, list[str]]:
        """A zero-argument callable doing one frame of ``stage``, and notes about it; raises
        NotApplicable where the stage does not exist in that precision/mode."""
        inputs, modes = self.inputs, self.modes
        model = inputs.model
        notes = self._applicable(stage, precision, mode)
        if stage in KEYFRAME_STAGES:
            return self._keyframe_step(stage, precision, notes), notes
        if stage == "receiver.kp_transform":
            return self._kp_transform_step(precision, notes), notes
        if stage == "sender.H":
            notes.append("estimate_motion -> the 6+3K motion vector on the device")
            return modes.network_step("sender.H", precision, mode, inputs.pose_vector,
                                      (inputs.frame_image,)), notes
        if stage == "receiver.M":
            notes.append("model.motion called with the tensors render() passes it")
            return modes.network_step("receiver.M", precision, mode, model.motion,
                                      inputs.motion_inputs(precision),
                                      post=lambda out: out.deformation), notes
        if stage == "receiver.warp":
            notes.append("Generator.warp (trilinear grid_sample of the F volume), the first "
                         "step of G")
            return modes.network_step("receiver.warp", precision, mode, Generator.warp,
                                      inputs.generator_inputs(precision)[:2]), notes
        if stage == "receiver.G":
            notes.append("model.generator incl. its warp, with the tensors render() passes "
                         "it; G without warp = receiver.G − receiver.warp")
            return modes.network_step("receiver.G", precision, mode, model.generator,
                                      inputs.generator_inputs(precision)), notes
        if stage == "receiver.render":
            notes.append("model.render: keypoint transform + M + G")
            return self._render_step(precision, mode), notes
        if stage == "sender.frame":
            return self._sender_frame(precision, mode, notes), notes
        if stage == "receiver.frame":
            return self._receiver_frame(precision, mode, notes), notes
        raise ValueError(f"unknown stage {stage!r}")

    def host(self, stage: str) -> tuple[Step, list[str]]:
        """One frame of a motion-coding stage (host code, fp32 eager only; needs constriction)."""
        if stage == "sender.motion_encode":
            pack = motion_packer(self.inputs.config.num_kp)
            vectors, counter = self.inputs.motion_vectors, iter(range(1 << 62))

            def step() -> bytes:
                seq = next(counter)
                return pack(vectors[seq % len(vectors)], seq)
            return step, [("quantize + range code + pack one synthetic talking-head motion "
                           f"vector (quality {MOTION_QUALITY}, intra every {INTRA_PERIOD})")]
        return self.inputs.packet_decoder(), [("parse packet + range decode + dequantize (quality "
                                               f"{MOTION_QUALITY}, intra every {INTRA_PERIOD})")]

    def _applicable(self, stage: str, precision: str, mode: str) -> list[str]:
        """Raise NotApplicable for a variant that does not exist; else its first notes."""
        device = self.inputs.device
        if mode == "graph" and device.type != "cuda":
            raise NotApplicable("CUDA graphs need a CUDA device")
        if stage in KEYFRAME_STAGES and mode != "eager":
            raise NotApplicable("runs once per keyframe, not per frame: eager only")
        if stage == "receiver.kp_transform" and mode != "eager":
            raise NotApplicable("a few hundred FLOPs; included in receiver.render's "
                                "compiled / captured path")
        if precision != "fp32" and device.type == "cpu" and precision == "fp16":
            return ["CPU fp16 autocast: some kernels may fall back to slow paths"]
        return []

    def _keyframe_step(self, stage: str, precision: str, notes: list[str]) -> Step:
        """keyframe.setup (prepare_source), keyframe.F or keyframe.L, eager."""
        model, keyframe, device = self.inputs.model, self.inputs.keyframe, self.inputs.device

        def amp() -> contextlib.AbstractContextManager:
            return autocast(precision, device)

        if stage == "keyframe.setup":
            def step() -> Any:
                with amp():
                    return model.prepare_source(keyframe).feature_volume
            notes.append("F + L + H/Δ on the keyframe (prepare_source)")
            return step
        if stage == "keyframe.F":
            def step() -> Any:
                with amp():
                    return model.appearance(keyframe)
            return step

        def step() -> Any:
            with amp():
                return model.canonical_kp(keyframe)
        return step

    def _kp_transform_step(self, precision: str, notes: list[str]) -> Step:
        source = self.inputs.source(precision)
        vector = self.inputs.motion_vectors[0]
        num_kp, device = self.inputs.config.num_kp, self.inputs.device

        def step() -> Any:
            motion = HeadMotion.from_vector(vector, num_kp)
            rotation, translation, expression = motion.to_tensors(device)
            dtype = source.canonical_keypoints.dtype
            return transform_keypoints(source.canonical_keypoints, rotation.to(dtype),
                                       translation.to(dtype), expression.to(dtype))
        notes.append("HeadMotion -> device tensors (angles -> R) + x_d = R·x_c + t + δ")
        return step

    def _render_step(self, precision: str, mode: str) -> Step:
        render = self.modes.render_fn(precision, mode)
        counter = iter(range(1 << 62))
        driving = self.inputs.driving

        def step() -> Any:
            # a different driving motion each frame (inputs live on the device already)
            return render(driving[next(counter) % len(driving)])
        return step

    def _sender_frame(self, precision: str, mode: str, notes: list[str]) -> Step:
        inputs = self.inputs
        h_step = self.modes.network_step("sender.H", precision, mode, inputs.pose_vector,
                                         (inputs.frame_image,))
        notes.append("H/Δ on a device-resident frame + read-back of its outputs"
                     + (" + quantize, range code and pack" if inputs.has_constriction else ""))
        if not inputs.has_constriction:
            notes.append("motion coding excluded: constriction is not installed")
            return lambda: h_step().cpu()
        notes.append("coded vector = H/Δ output + a synthetic talking-head trajectory (the "
                     "untrained H/Δ output barely moves and would code unrealistically cheaply)")
        pack = motion_packer(inputs.config.num_kp)
        vectors = inputs.motion_vectors
        counter = iter(range(1 << 62))

        def step() -> bytes:
            seq = next(counter)
            return pack(h_step().float().cpu().numpy()[0] + vectors[seq % len(vectors)], seq)
        return step

    def _receiver_frame(self, precision: str, mode: str, notes: list[str]) -> Step:
        inputs = self.inputs
        render = self.modes.render_fn(precision, mode)
        num_kp, device = inputs.config.num_kp, inputs.device
        notes.append("packet -> motion decode -> device tensors -> render -> uint8 H×W×3 on "
                     "the host")
        if inputs.has_constriction:
            next_vector = inputs.packet_decoder()
        else:
            notes.append("motion decoding excluded (constriction is not installed): starts "
                         "from decoded motion vectors")
            vectors = inputs.motion_vectors
            counter = iter(range(1 << 62))

            def next_vector() -> np.ndarray:
                return vectors[next(counter) % len(vectors)]

        def step() -> np.ndarray:
            motion = HeadMotion.from_vector(next_vector(), num_kp)
            return to_uint8(render(motion.to_tensors(device)))
        return step
