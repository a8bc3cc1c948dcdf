"""Frame sources for the sender: a video file, or the built-in default input.

A source is an iterable of H×W×3 uint8 RGB frames with an ``fps`` attribute. The default
input needs no data files: scikit-image's public-domain astronaut photograph (Eileen
Collins, NASA) seen through a hand-held camera that drifts along a smooth scripted path.
The path is 2D image motion only (roll rotation ±5°, translation, zoom ±5%): the face
moves, turns in-plane and changes scale, but does not turn in depth or change
expression. With trained weights, :func:`default_source` instead turns the portrait's head
in 3D through the generator's free view (:class:`FreeViewPortraitSource`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import cv2
import numpy as np

from codec.errors import MediaError
from codec.media import MediaInfo, probe, read_frames

if TYPE_CHECKING:
    from codec.families.base import TalkingHeadModel

__all__ = [
    "CameraPose",
    "CameraSource",
    "FrameSource",
    "FreeViewPortraitSource",
    "ScriptedCameraSource",
    "VideoFileSource",
    "camera_pose",
    "cover_to_size",
    "default_source",
]


class FrameSource(Protocol):
    """Anything the sender can take frames from."""

    fps: float

    def __iter__(self) -> Iterator[np.ndarray]:
        """Yield H×W×3 uint8 RGB frames at ``fps``."""
        ...


class VideoFileSource:
    """RGB frames of a video file resampled to a constant rate.

    Args:
        path: a video file PyAV reads (or a directory of images at 25 fps).
        fps: output frame rate (frames are dropped/repeated by timestamp).
        loop: start again at the end, forever (a stand-in for a live camera).
        max_frames: stop after this many frames per pass (None = whole file).

    Raises:
        MediaError: on construction if the file is missing or has no video stream.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        fps: float = 25.0,
        loop: bool = False,
        max_frames: int | None = None,
    ) -> None:
        self.path = os.fspath(path)
        self.fps = float(fps)
        self.loop = loop
        self.max_frames = max_frames
        self.info: MediaInfo = probe(self.path)  # fail early, with the path in the error

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the frames."""
        return self.info.width, self.info.height

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            count = 0
            for item in read_frames(self.path, fps=self.fps, max_frames=self.max_frames):
                count += 1
                yield item.image
            if not self.loop or count == 0:
                return


class CameraSource:
    """Live RGB frames from a V4L2 camera (Linux) through PyAV/FFmpeg.

    The device is opened on construction (fail early). Frames the driver delivers at
    another size than asked for are scaled to ``size``.

    Args:
        device: the V4L2 device node.
        size: (width, height) asked of the driver.
        fps: frame rate asked of the driver.

    Raises:
        MediaError: the device does not exist or cannot be opened as a camera.
    """

    def __init__(
        self, device: str = "/dev/video0", size: tuple[int, int] = (640, 480), fps: float = 25.0
    ) -> None:
        import av  # lazy, as in codec.media

        self.device = device
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        if not os.path.exists(device):
            raise MediaError(f"{device}: no such camera device")
        options = {"video_size": f"{self.size[0]}x{self.size[1]}", "framerate": f"{self.fps:g}"}
        try:
            self._container = av.open(device, format="v4l2", options=options)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"{device}: cannot open as a V4L2 camera: {exc}") from exc
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(f"{device}: opened, but it gives no video stream")

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        width, height = self.size
        try:
            for frame in self._container.decode(video=0):
                yield frame.to_ndarray(format="rgb24", width=width, height=height)
        except av.FFmpegError as exc:
            raise MediaError(f"{self.device}: camera read failed: {exc}") from exc

    def close(self) -> None:
        """Release the device (idempotent)."""
        self._container.close()


@dataclass(frozen=True)
class CameraPose:
    """The scripted camera at one instant: roll (degrees), shift (fraction of the
    frame side, +x right, +y down) and zoom (1 = the base framing)."""

    roll_deg: float
    shift_x: float
    shift_y: float
    zoom: float


def camera_pose(t: float) -> CameraPose:
    """The default source's smooth hand-held path at time ``t`` seconds.

    Sums of slow sines with incommensurate periods (3.7–7.3 s), so the motion never
    visibly repeats within a 10 s clip and has no jerks: roll within ±5°, shift within
    ±4% (x) / ±3% (y) of the frame, zoom within 1 ± 5%.
    """
    two_pi = 2.0 * math.pi
    roll = 3.5 * math.sin(two_pi * t / 5.1) + 1.5 * math.sin(two_pi * t / 2.3 + 1.0)
    shift_x = 0.03 * math.sin(two_pi * t / 6.3 + 0.4) + 0.01 * math.sin(two_pi * t / 1.9)
    shift_y = 0.02 * math.sin(two_pi * t / 4.1 + 2.0) + 0.01 * math.sin(two_pi * t / 2.7 + 0.3)
    zoom = 1.0 + 0.05 * math.sin(two_pi * t / 7.3 + 0.8)
    return CameraPose(roll, shift_x, shift_y, zoom)


class ScriptedCameraSource:
    """A still image filmed by a camera moving along :func:`camera_pose`.

    Args:
        image: H×W×3 uint8 RGB still (the scene).
        num_frames: frames to yield (None = endless).
        fps: frame rate; frame i is at t = i / fps.
        size: (width, height) of the output frames.
        base_zoom: framing zoom applied on top of the path, so that the rotated and
            shifted view rarely reaches the photo's edges (reflection fills the rest).
    """

    def __init__(
        self,
        image: np.ndarray,
        num_frames: int | None = 250,
        fps: float = 25.0,
        size: tuple[int, int] = (512, 512),
        base_zoom: float = 1.12,
    ) -> None:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected H×W×3 uint8 RGB, got {image.dtype} {image.shape}")
        self.fps = float(fps)
        self.num_frames = num_frames
        self.size = (int(size[0]), int(size[1]))
        self.base_zoom = base_zoom
        self.scene = cover_to_size(image, self.size)

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("endless source has no length")
        return self.num_frames

    def frame_at(self, t: float) -> np.ndarray:
        """The view at time ``t`` s: H×W×3 uint8 RGB (H, W = size)."""
        pose = camera_pose(t)
        width, height = self.size
        centre = (width / 2.0, height / 2.0)
        # the scene moves opposite to the camera; rotate/zoom about the frame centre
        matrix = cv2.getRotationMatrix2D(centre, pose.roll_deg, pose.zoom * self.base_zoom)
        matrix[0, 2] += pose.shift_x * width
        matrix[1, 2] += pose.shift_y * height
        return cv2.warpAffine(
            self.scene,
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )

    def __iter__(self) -> Iterator[np.ndarray]:
        index = 0
        while self.num_frames is None or index < self.num_frames:
            yield self.frame_at(index / self.fps)
            index += 1


def cover_to_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``image`` to the aspect of ``size`` (width, height), then resize: the
    picture fills ``size`` with nothing stretched (a camera that changed its resolution
    mid-call, :class:`sender.session.SenderSession`)."""
    width, height = size
    src_h, src_w = image.shape[:2]
    scale = max(width / src_w, height / src_h)
    crop_w, crop_h = round(width / scale), round(height / scale)
    x0, y0 = (src_w - crop_w) // 2, (src_h - crop_h) // 2
    cropped = image[y0 : y0 + crop_h, x0 : x0 + crop_w]
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return np.ascontiguousarray(cv2.resize(cropped, (width, height), interpolation=interp))


def head_pose_path(t: float) -> tuple[float, float, float]:
    """The scripted head turn of the free-view default: (yaw, pitch, roll) degrees at ``t`` s.

    Incommensurate periods (4, 3 and 5 s), so the path does not repeat within a benchmark clip;
    amplitudes inside what a one-shot free view renders well (±15° yaw)."""
    return (15.0 * math.sin(2 * math.pi * t / 4.0), 6.0 * math.sin(2 * math.pi * t / 3.0),
            5.0 * math.sin(2 * math.pi * t / 5.0))


class FreeViewPortraitSource:
    """A still portrait turned in 3D by the codec's own model (free view, one-shot).

    The photo is face-cropped once and becomes the model's source; every frame re-renders
    it with the photo's own expression and position but the head rotated by
    :func:`head_pose_path`. Frames are the model's resolution (e.g. 256×256), or, with
    ``frame_size`` (width, height), the whole photo at that size (cropped to its aspect),
    its head turned in place, shoulders and background still. Only
    meaningful with a working model (the landmark family, or trained vid2vid weights): an
    untrained generator renders noise, so :func:`default_source` uses it only then.
    """

    def __init__(self, model: TalkingHeadModel, image: np.ndarray | None = None,
                 num_frames: int | None = 250, fps: float = 25.0,
                 frame_size: tuple[int, int] | None = None) -> None:
        from codec.facecrop import FaceCropper

        if image is None:
            from skimage import data  # lazy: only the default source needs scikit-image

            image = data.astronaut()
        # The plain model: an input generator must be cheap (it runs on the sender's clock)
        # and must not depend on what the receiver side chooses to render.
        model = model.plain()
        if frame_size is not None:
            model = model.at_size(frame_size[0], frame_size[1], whole_frame=True)
        self.model = model
        self.fps = fps
        self.num_frames = num_frames
        if frame_size is not None:
            # The photo cut to the frame's aspect from its top (a portrait's head is near it).
            width, height = int(frame_size[0]), int(frame_size[1])
            keep_w = min(image.shape[1], round(image.shape[0] * width / height))
            keep_h = min(image.shape[0], round(keep_w * height / width))
            x0 = (image.shape[1] - keep_w) // 2
            crop = np.ascontiguousarray(cv2.resize(image[:keep_h, x0:x0 + keep_w], (width, height),
                                                   interpolation=cv2.INTER_LINEAR))
        else:
            size = model.image_size
            crop = FaceCropper(out_size=size).fit([image]).crop(image, size)
        tracker = model.motion_tracker()
        self._base = tracker.motion(crop).astype(np.float32)
        if not np.all(np.isfinite(self._base)):
            raise ValueError("the portrait has no face the model can track")
        self._source = model.prepare_source(crop, tracker.keyframe_info(crop))

    def __len__(self) -> int:
        if self.num_frames is None:
            raise TypeError("an endless source has no length")
        return self.num_frames

    def frame_at(self, t: float) -> np.ndarray:
        motion = self._base.copy()
        motion[0:3] += np.asarray(head_pose_path(t), np.float32)
        return self.model.render(self._source, motion[None])[0]

    def __iter__(self) -> Iterator[np.ndarray]:
        index = 0
        while self.num_frames is None or index < self.num_frames:
            yield self.frame_at(index / self.fps)
            index += 1


def default_source(
    num_frames: int | None = 250, fps: float = 25.0, size: tuple[int, int] = (512, 512),
    model=None, whole_frame: bool = False,
) -> ScriptedCameraSource | FreeViewPortraitSource:
    """The project's built-in input: the astronaut photo under a hand-held camera.

    Args:
        num_frames: frames to yield (250 = 10 s at 25 fps, the benchmark length;
            None = endless).
        fps: frame rate.
        size: (width, height) of the frames (the photo is 512×512).

        model: a working model (``codec.families.TalkingHeadModel``, not untrained): the
            portrait then turns its head in 3D along a scripted path through the model's free
            view (:class:`FreeViewPortraitSource`, frames at the model's size, or, with
            ``whole_frame``, the whole photo at ``size``). Without a model, or with an
            untrained one, the photo moves under a 2D hand-held camera path.

    Returns:
        An iterable of H×W×3 uint8 RGB frames with an ``fps`` attribute.
    """
    if model is not None and not model.untrained:
        return FreeViewPortraitSource(model, num_frames=num_frames, fps=fps,
                                      frame_size=size if whole_frame else None)
    from skimage import data  # lazy: only the default source needs scikit-image

    return ScriptedCameraSource(data.astronaut(), num_frames=num_frames, fps=fps, size=size)


def default_audio(duration: float, sample_rate: int = 48_000) -> np.ndarray:
    """A synthetic audio bed for the default clip (mono float32 in [-1, 1]): a soft tone
    that changes pitch every half second, so a dropped or shifted audio track is audible."""
    t = np.arange(int(round(duration * sample_rate)), dtype=np.float64) / sample_rate
    pitch = 220.0 * 2.0 ** (np.floor(t * 2.0) % 5 / 12.0 * 2.0)
    return (0.2 * np.sin(2.0 * math.pi * pitch * t)).astype(np.float32)


def write_default_clip(path: str | Path, num_frames: int = 100, fps: float = 25.0,
                       size: tuple[int, int] = (512, 512), audio: bool = True) -> Path:
    """Write the built-in default input (``default_source``, with ``default_audio``) to a file."""
    from codec.media import encode_pcm_opus, frames_to_video

    path = Path(path)
    track = encode_pcm_opus(default_audio(num_frames / fps)) if audio else None
    frames_to_video(path, default_source(num_frames=num_frames, fps=fps, size=size), fps=fps,
                    audio=track)
    return path
