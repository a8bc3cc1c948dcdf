"""The receiver on CUDA: the Decoder with the refiner at 256, 512 and 1280×720, batch 1, timed
per frame, and its frames checked against the CPU's on the same packets.

The accelerator machine has torch, OpenCV, numpy, msgpack and safetensors but no dlib, PyAV,
aiortc or constriction, and no network. So the work is split in two steps:

1. ``prepare``, here on the CPU machine (needs dlib; PyAV only for ``--clip``)::

       python -m benchmarks.receiver_gpu prepare --out out/gpu_streams

   encodes ``--frames`` frames (60) of the built-in input (the portrait turned in 3D by the
   default model, :class:`sender.sources.FreeViewPortraitSource`), or of ``--clip``, at each of
   ``--sizes`` (a 256-px and a 512-px face crop, the whole frame at 1280×720) with the default
   landmark model and WebP keyframes and patches (OpenCV decodes them; AV1 keyframes would need
   PyAV). Each stream is a ``.fvc`` container (:mod:`codec.bitstream`); beside it go the
   CPU-decoded frames' sha256s (all of them), a few whole CPU frames (``--keep``, uint8 npz),
   decoded with the refiner ``eager`` (fp32, the reference), and the CPU's ms/frame as the
   receiver ships here (refiner ``fast``, batch 1, rough: the machine is shared), all listed
   in ``manifest.json``. About 5 MB for the three sizes; ``out/`` is ignored by ``.gitignore``,
   so the folder travels to the device only as a ``carry`` path.

2. ``wheels``, here: constriction (the range coder the motion packets need) for the device's
   Python 3.12, at the version pyproject.toml pins, into ``out/gpu_wheels`` (about 0.4 MB)::

       python -m benchmarks.receiver_gpu wheels --out out/gpu_wheels

3. ``run``, on the device, as one command (carry ``out/gpu_streams`` and ``out/gpu_wheels``,
   about 6.3 MB; a timeout_s of 330 leaves room; $FACECODEC_GIT_SHA names the commit where the
   device's copy has no git)::

       set -o pipefail; python3 -m pip install -q --no-index --no-deps --no-compile \\
           --no-cache-dir --upgrade --target /tmp/site out/gpu_wheels/*.whl \\
           && export PYTHONPATH=/tmp/site:$PWD || exit 3;
       nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee $OUT/nvidia-smi.csv;
       PYTHONUNBUFFERED=1 timeout 270 python3 -m benchmarks.receiver_gpu run \\
           --streams out/gpu_streams --device cuda --json $OUT/receiver-gpu.json 2>&1 \\
           | tee $OUT/receiver-gpu.log

   For each stream: the Decoder (refiner on, batch 1) decodes it once untimed (warm-up:
   CUDA's start, cuDNN's choices; these frames are the ones checked), then ``--passes`` times
   more with a fresh Decoder on the same model, each packet timed alone with
   ``torch.cuda.synchronize`` before and after (motion packet in, uint8 frame on the host out;
   the refiner's share timed the same way). Median, p90 and frames/s per size, and against
   the CPU: max and mean absolute difference, PSNR, frames whose bytes match, and whether
   that is within ``TOLERANCE`` (recorded, never asserted). The run path imports no dlib,
   PyAV or aiortc (tests/test_receiver_gpu.py runs it with them blocked).

Failures do not stop the run: no CUDA device, a stream whose file changed, or a size that
fails is a typed error in the JSON (written whatever happens) and the log; the exit status
is 0 when every stream ran, 1 when one failed, 2 when the device is missing.

On the CPU (``--device cpu``) the run uses the reference's refiner mode, so its frames match
the CPU's exactly: a check of the script, not of a device. On CUDA the refiner mode does not
apply (:func:`codec.models.refiner.frozen_refiner` traces only on the CPU): the module runs
as loaded, fp32 with torch's default TF32 convolutions (recorded in the JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import platform
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("benchmarks.receiver_gpu")

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_SIZES = "256,512,1280x720"
DEFAULT_FRAMES = 60
# Whole CPU frames kept for the pixel check (indices into the decoded frames; clipped to the
# stream's length): the keyframe's frame, one mid-way, the last.
DEFAULT_KEEP = "0,30,59"
# uint8 frames, CUDA against the CPU's fp32 refiner: TF32 convolutions move the refiner's
# output by well under a level, so a pixel may round the other way, rarely by two (the bound
# tests/test_gpu.py holds the Decoder to on 256-px crops).
TOLERANCE = {"max_abs": 2, "mean_abs": 0.1}
# What the device lacks (device README, KINDS.md): the run path must not import these.
ABSENT_ON_DEVICE = ("av", "aiortc", "dlib", "face_recognition_models")
# Carried as wheels: the device has msgpack and safetensors (safetensors at our pin).
DEVICE_WHEELS = ("constriction",)
WHEEL_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                   "manylinux2014_x86_64", "manylinux1_x86_64")


class ReceiverBenchmarkError(Exception):
    """A stream (or the device) the run could not measure; its message goes to the JSON."""


class DeviceUnavailableError(ReceiverBenchmarkError):
    """The device asked for is not there (no CUDA)."""


class StreamChangedError(ReceiverBenchmarkError):
    """A stream file is missing or differs from the one the manifest describes."""


@dataclass(frozen=True)
class StreamSize:
    """One picture to code: a square face crop of ``width`` px, or the whole frame."""

    width: int
    height: int
    whole_frame: bool

    @property
    def name(self) -> str:
        return f"frame{self.width}x{self.height}" if self.whole_frame else f"crop{self.width}"


def parse_sizes(text: str) -> list[StreamSize]:
    """``256,512,1280x720``: a number is a square crop, ``WxH`` the whole frame at that size."""
    sizes = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        try:
            if "x" in item:
                width, height = (int(v) for v in item.split("x", 1))
                sizes.append(StreamSize(width, height, True))
            else:
                sizes.append(StreamSize(int(item), int(item), False))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad size {item!r}: want 256 (a crop) or 1280x720 (a frame)") from None
    if not sizes:
        raise argparse.ArgumentTypeError("no sizes")
    return sizes


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frame_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def percentiles(values: list[float]) -> dict[str, Any]:
    """Median, p90, mean and frames/s of per-frame milliseconds (None when there are none)."""
    if not values:
        return {"frames": 0, "median_ms": None, "p90_ms": None, "mean_ms": None, "fps_at_median": None}
    median = float(np.median(values))
    return {"frames": len(values), "median_ms": median, "p90_ms": float(np.percentile(values, 90)),
            "mean_ms": float(np.mean(values)), "max_ms": float(np.max(values)),
            "fps_at_median": 1000.0 / median if median > 0 else None}


def pixel_difference(got: np.ndarray, expected: np.ndarray) -> dict[str, Any]:
    """How far a frame is from the reference (uint8 levels; PSNR in dB, None when identical)."""
    if got.shape != expected.shape:
        return {"shape": list(got.shape), "expected_shape": list(expected.shape), "max_abs": None}
    difference = np.abs(got.astype(np.int16) - expected.astype(np.int16))
    mse = float(np.mean(difference.astype(np.float64) ** 2))
    return {"max_abs": int(difference.max()), "mean_abs": float(difference.mean()),
            "share_of_values_differing": float((difference > 0).mean()),
            "psnr_db": float(10 * np.log10(255.0 ** 2 / mse)) if mse > 0 else None}


# ---------------------------------------------------------------------------------------------
# prepare (the CPU machine)


def _source_frames(size: StreamSize, frames: int, clip: Path | None, model) -> list[np.ndarray]:
    """``frames`` RGB pictures at ``size``: the built-in input, or the clip's face crop / frame."""
    from codec.keyframe import fit_frame

    if clip is None:
        from sender.sources import FreeViewPortraitSource

        if size.whole_frame:
            source = FreeViewPortraitSource(model, num_frames=frames, frame_size=(size.width, size.height))
        else:
            source = FreeViewPortraitSource(model.at_size(size.width, size.height), num_frames=frames)
        return list(source)
    from codec.facecrop import FIT_FRAMES, FaceCropper
    from codec.media import read_frames

    images = [item.image for item in read_frames(clip, fps=25.0, max_frames=frames)]
    if not images:
        raise ReceiverBenchmarkError(f"{clip}: no video frames")
    if size.whole_frame:
        return [fit_frame(_cut_to_aspect(image, size.width / size.height), (size.width, size.height))
                for image in images]
    box = FaceCropper(out_size=size.width).fit(images[:FIT_FRAMES])
    return [box.crop(image, size.width) for image in images]


def _cut_to_aspect(image: np.ndarray, aspect: float) -> np.ndarray:
    """The centre of ``image`` at width / height = ``aspect`` (a clip's frame is cut, not
    stretched, to the size asked for)."""
    height, width = image.shape[:2]
    keep_w, keep_h = min(width, round(height * aspect)), min(height, round(width / aspect))
    x0, y0 = (width - keep_w) // 2, (height - keep_h) // 2
    return image[y0:y0 + keep_h, x0:x0 + keep_w]


def _encode(size: StreamSize, pictures: list[np.ndarray], model, path: Path) -> dict[str, Any]:
    """The pictures through the Encoder (WebP keyframes and patches) into a .fvc at ``path``."""
    from codec.api import Encoder
    from codec.bitstream import ContainerWriter

    encoder = Encoder(model.at_size(size.width, size.height, size.whole_frame), keyframe_codec="webp")
    packets = 0
    with open(path, "wb") as f:
        writer = ContainerWriter(f, encoder.stream_header())
        for index, picture in enumerate(pictures):
            for packet in encoder.encode(picture, index / encoder.frame_rate):
                writer.write_video_packet(packet)
                packets += 1
        writer.close()
    stats = encoder.stats
    return {"packets": packets, "keyframes": stats.keyframes, "keyframe_bytes": stats.keyframe_bytes,
            "patches": stats.patches, "patch_bytes": stats.patch_bytes, "motion_bytes": stats.motion_bytes,
            "skipped": stats.skipped}


def _read_stream(path: Path):
    from codec.bitstream import read_container

    with open(path, "rb") as f:
        return read_container(f)


def _decoder(container, model, refiner_mode: str | None):
    """A fresh Decoder for the stream on ``model`` (loaded once, shared), refiner mode set on
    the Decoder's own copy of the model: ``at_size`` hands back the model itself at its own
    size, and a mode or timer set on that would reach every later Decoder."""
    import copy

    from codec.api import Decoder

    decoder = Decoder(container.header, model)
    decoder.model = copy.copy(decoder.model)
    if refiner_mode is not None and decoder.model.refiner is not None:
        decoder.model.refiner_mode = refiner_mode
    return decoder


def prepare(args: argparse.Namespace) -> int:
    import torch

    from benchmarks.speed.environment import environment
    from codec.zoo import DEFAULT_MODEL, resolve_model

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    keep = sorted({int(v) for v in args.keep.split(",") if v.strip()})
    plain = resolve_model(DEFAULT_MODEL, refiner=False)
    receiver = resolve_model(DEFAULT_MODEL, refiner=True, device="cpu")
    streams = []
    for size in args.sizes:
        log.info("%s: encoding %d frames", size.name, args.frames)
        started = time.perf_counter()
        pictures = _source_frames(size, args.frames, args.clip, plain)
        path = out / f"{size.name}.fvc"
        coded = _encode(size, pictures, plain, path)
        encode_seconds = time.perf_counter() - started
        container = _read_stream(path)
        # The reference: eager fp32 refiner, batch 1.
        reference = [frame.image for frame in
                     _decoder(container, receiver, "eager").decode_stream(container.video_packets, batch_size=1)]
        kept = [i for i in keep if i < len(reference)]
        frames_file = out / f"{size.name}-frames.npz"
        np.savez_compressed(frames_file, **{f"frame_{i:05d}": reference[i] for i in kept})
        # The CPU's time as the receiver ships here (refiner "fast"), per motion packet, on
        # a second pass (the first traces the refiner for this size).
        for _pass in range(2):
            decoder, times = _decoder(container, receiver, None), []
            for data in container.video_packets:
                t0 = time.perf_counter()
                frame = decoder.decode(data)
                if frame is not None:
                    times.append(1000.0 * (time.perf_counter() - t0))
        header = container.header
        streams.append({
            "name": size.name, "file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size,
            "width": header.width, "height": header.height, "whole_frame": bool(header.whole_frame),
            "model": header.model_name, "keyframe_codec": "webp", "frames_in": len(pictures), **coded,
            "encode_seconds": encode_seconds,
            "reference": {"device": "cpu", "refiner_mode": "eager", "batch_size": 1,
                          "frames": len(reference), "frame_sha256": [frame_sha256(f) for f in reference],
                          "kept_file": frames_file.name, "kept_indices": kept},
            "cpu_decode": {"refiner_mode": receiver.refiner_mode, "batch_size": 1,
                           "threads": torch.get_num_threads(), **percentiles(times),
                           "note": "rough: the prepare machine's CPU, shared with other jobs"},
        })
        row = streams[-1]["cpu_decode"]
        log.info("%s: %d packets, %d bytes, CPU decode median %.1f ms/frame", size.name, coded["packets"],
                 streams[-1]["bytes"], row["median_ms"] or float("nan"))
    manifest = {
        "name": "receiver-gpu-streams", "format": MANIFEST_FORMAT, "frames": args.frames,
        "source": str(args.clip) if args.clip else "built-in: FreeViewPortraitSource (default model's free view)",
        "command": "python -m benchmarks.receiver_gpu " + " ".join(args.argv),
        "env": environment(torch.device("cpu")), "streams": streams,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    total = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(f"wrote {len(streams)} streams to {out} ({total / 1e6:.2f} MB); carry this folder to the device")
    return 0


# ---------------------------------------------------------------------------------------------
# wheels (the CPU machine)


def pinned_versions(names: tuple[str, ...] = DEVICE_WHEELS) -> dict[str, str]:
    """``name -> version`` as pyproject.toml pins them (``name==version``)."""
    import tomllib

    from benchmarks.env import REPO

    pins = {}
    for requirement in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        name, _, version = requirement.partition("==")
        if name.strip() in names:
            pins[name.strip()] = version.strip()
    missing = set(names) - set(pins)
    if missing:
        raise ReceiverBenchmarkError(f"pyproject.toml pins no version of {sorted(missing)}")
    return pins


def wheels(args: argparse.Namespace) -> int:
    """pip download of the pinned wheels for the device's CPython 3.12 on x86-64 Linux."""
    import subprocess

    args.out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", "-d", str(args.out)]
    for name in WHEEL_PLATFORMS:
        command += ["--platform", name]
    command += [f"{name}=={version}" for name, version in pinned_versions().items()]
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        log.error("pip download failed (%d)", done.returncode)
        return 1
    total = sum(p.stat().st_size for p in args.out.glob("*.whl"))
    print(f"{args.out}: {', '.join(sorted(p.name for p in args.out.glob('*.whl')))} ({total / 1e6:.2f} MB)")
    return 0


# ---------------------------------------------------------------------------------------------
# run (the device)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _TimedRefiner:
    """Wraps a model's ``_refine`` so each call's time (synchronised) adds to ``elapsed_ms``."""

    def __init__(self, model, device) -> None:
        self.model, self.device, self.inner = model, device, model._refine
        self.elapsed_ms = 0.0
        model._refine = self  # an instance attribute: this copy of the model only

    def __call__(self, *args, **kwargs):
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            _sync(self.device)
            self.elapsed_ms += 1000.0 * (time.perf_counter() - t0)


def _timed_pass(container, model, device, refiner_mode: str | None) -> dict[str, Any]:
    """One pass over the stream with a fresh Decoder, each packet timed alone (batch 1)."""
    decoder = _decoder(container, model, refiner_mode)
    timer = _TimedRefiner(decoder.model, device) if decoder.model.refiner is not None else None
    frame_ms, refine_ms, other_ms, images = [], [], [], []
    for data in container.video_packets:
        before = timer.elapsed_ms if timer else 0.0
        _sync(device)
        t0 = time.perf_counter()
        frame = decoder.decode(data)
        _sync(device)
        elapsed = 1000.0 * (time.perf_counter() - t0)
        if frame is None:
            other_ms.append(elapsed)  # keyframes and patches: prepared, not rendered
            continue
        frame_ms.append(elapsed)
        refine_ms.append((timer.elapsed_ms if timer else 0.0) - before)
        images.append(frame.image)
    return {"frame_ms": frame_ms, "refine_ms": refine_ms, "other_ms": other_ms, "images": images,
            "refined_frames": sum(1 for ms in refine_ms if ms > 0)}


def run_stream(entry: dict[str, Any], streams: Path, model, device, passes: int,
               refiner_mode: str | None) -> dict[str, Any]:
    """One stream on the device: warm-up pass (its frames checked), then ``passes`` timed."""
    path = streams / entry["file"]
    if not path.is_file():
        raise StreamChangedError(f"{path} is missing")
    if file_sha256(path) != entry["sha256"]:
        raise StreamChangedError(f"{path} differs from the one the manifest describes")
    container = _read_stream(path)
    started = time.perf_counter()
    warm = _timed_pass(container, model, device, refiner_mode)
    warm_seconds = time.perf_counter() - started
    timed = [_timed_pass(container, model, device, refiner_mode) for _ in range(passes)]
    frame_ms = [ms for p in timed for ms in p["frame_ms"]]
    refine_ms = [ms for p in timed for ms in p["refine_ms"]]
    other_ms = [ms for p in timed for ms in p["other_ms"]]
    reference = entry["reference"]
    got = warm["images"]
    sums = [frame_sha256(image) for image in got]
    expected_sums = reference["frame_sha256"]
    frames = {}
    with np.load(streams / reference["kept_file"]) as kept:
        for index in reference["kept_indices"]:
            if index < len(got):
                frames[str(index)] = pixel_difference(got[index], kept[f"frame_{index:05d}"])
    worst_max = max((row["max_abs"] for row in frames.values() if row.get("max_abs") is not None), default=None)
    worst_mean = max((row["mean_abs"] for row in frames.values() if "mean_abs" in row), default=None)
    shapes_ok = all(row.get("max_abs") is not None for row in frames.values())
    within = (shapes_ok and len(got) == len(expected_sums) and worst_max is not None
              and worst_max <= TOLERANCE["max_abs"] and worst_mean <= TOLERANCE["mean_abs"])
    repeatable = all(len(p["images"]) == len(got) and all(np.array_equal(a, b) for a, b in zip(p["images"], got))
                     for p in timed)
    cpu = entry.get("cpu_decode", {})
    speed = percentiles(frame_ms)
    return {
        "name": entry["name"], "width": entry["width"], "height": entry["height"],
        "whole_frame": entry["whole_frame"], "frames": len(got), "packets": len(container.video_packets),
        "warmup_pass_seconds": warm_seconds, "timed_passes": passes,
        "decode": speed,  # motion packet in, uint8 frame on the host out
        "refiner": {**percentiles(refine_ms), "refined_frames_per_pass": timed[0]["refined_frames"] if timed else None},
        "keyframe_and_patch_packets": percentiles(other_ms),
        "cpu_reference_decode": {k: cpu.get(k) for k in ("median_ms", "p90_ms", "refiner_mode", "threads", "note")},
        "speedup_over_cpu_reference_median": (cpu["median_ms"] / speed["median_ms"]
                                              if cpu.get("median_ms") and speed["median_ms"] else None),
        "pixels_against_cpu": {
            "reference": f"CPU, refiner {reference['refiner_mode']}, batch {reference['batch_size']}",
            "frames_compared": len(frames), "per_frame": frames, "max_abs": worst_max, "mean_abs_worst_frame": worst_mean,
            "frames_bytes_identical": sum(1 for a, b in zip(sums, expected_sums) if a == b),
            "frames_expected": len(expected_sums), "tolerance": TOLERANCE, "within_tolerance": bool(within),
            "timed_passes_identical_to_warmup": bool(repeatable),
        },
    }


def run_environment(device) -> dict[str, Any]:
    import importlib.machinery

    import cv2
    import torch

    from benchmarks.speed.environment import environment

    def absent(name: str) -> bool:
        # Looked up on sys.path, not imported (nor through import hooks: the test blocks them).
        return importlib.machinery.PathFinder.find_spec(name) is None

    env = environment(device)
    env.update(python=platform.python_version(), numpy=np.__version__, opencv=cv2.__version__,
               cudnn_benchmark=torch.backends.cudnn.benchmark,
               absent_on_device={name: absent(name) for name in ABSENT_ON_DEVICE})
    try:
        import constriction

        env["constriction"] = getattr(constriction, "__version__", "present")
    except ImportError:
        env["constriction"] = None
    return env


def run(args: argparse.Namespace) -> int:
    import torch

    report: dict[str, Any] = {"name": "receiver-gpu", "device": args.device, "batch_size": 1,
                              "passes": args.passes,
                              "command": "python -m benchmarks.receiver_gpu " + " ".join(args.argv),
                              "results": [], "errors": []}
    status = 0
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailableError(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
        report["env"] = run_environment(device)
        manifest = json.loads((args.streams / MANIFEST).read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise StreamChangedError(f"{args.streams / MANIFEST}: format {manifest.get('format')}, "
                                     f"this script reads {MANIFEST_FORMAT}")
        report["streams_made"] = {k: manifest.get(k) for k in ("command", "source", "frames")}
        report["streams_made"]["env"] = {k: manifest.get("env", {}).get(k) for k in ("git_sha", "cpu", "torch")}
        wanted = set(args.only.split(",")) if args.only else None
        from codec.zoo import resolve_model

        models: dict[str, Any] = {}
        for entry in manifest["streams"]:
            if wanted is not None and entry["name"] not in wanted:
                continue
            try:
                name = entry["model"]
                if name not in models:
                    t0 = time.perf_counter()
                    models[name] = resolve_model(name, refiner=True, device=str(device))
                    report.setdefault("model_load_seconds", {})[name] = time.perf_counter() - t0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                refiner_mode = (args.refiner_mode if args.refiner_mode != "reference"
                                else entry["reference"]["refiner_mode"])
                row = run_stream(entry, args.streams, models[name], device, args.passes, refiner_mode)
                row["refiner_mode"] = refiner_mode if device.type == "cpu" else "n/a on CUDA: the module as loaded"
                if device.type == "cuda":
                    row["peak_gpu_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
                report["results"].append(row)
                pixels, speed = row["pixels_against_cpu"], row["decode"]
                print(f"{row['name']:>14}: {speed['median_ms']:.2f} ms/frame median, p90 {speed['p90_ms']:.2f}, "
                      f"{speed['fps_at_median']:.0f} fps (refiner {row['refiner']['median_ms']:.2f} ms); "
                      f"against the CPU max |diff| {pixels['max_abs']}, identical frames "
                      f"{pixels['frames_bytes_identical']}/{pixels['frames_expected']}, "
                      f"within tolerance: {pixels['within_tolerance']}", flush=True)
            except Exception as exc:  # noqa: BLE001 (one size failing must not lose the others)
                status = 1
                log.error("%s failed: %s: %s", entry.get("name"), type(exc).__name__, exc)
                report["errors"].append({"stream": entry.get("name"), "type": type(exc).__name__,
                                         "message": str(exc), "traceback": traceback.format_exc(limit=6)[-3000:]})
    except DeviceUnavailableError as exc:
        status = 2
        log.error("%s", exc)
        report["errors"].append({"stream": None, "type": type(exc).__name__, "message": str(exc)})
    except (ReceiverBenchmarkError, OSError, ValueError, KeyError) as exc:
        status = 1
        log.error("%s: %s", type(exc).__name__, exc)
        report["errors"].append({"stream": None, "type": type(exc).__name__, "message": str(exc)})
    finally:
        report["status"] = status
        if args.json is not None:
            from benchmarks.env import write_json

            write_json(args.json, report)
            print(f"wrote {args.json}")
    return status


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m benchmarks.receiver_gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = p.add_subparsers(dest="step", required=True)
    prep = steps.add_parser("prepare", help="encode the streams and the CPU reference (CPU machine)")
    prep.add_argument("--out", type=Path, default=Path("out/gpu_streams"), help="default: %(default)s")
    prep.add_argument("--sizes", type=parse_sizes, default=parse_sizes(DEFAULT_SIZES),
                      help="crops (256) and whole frames (1280x720), comma-separated (default: %(default)s)")
    prep.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="frames a stream (default: %(default)s)")
    prep.add_argument("--clip", type=Path, default=None, help="a video file (default: the built-in input)")
    prep.add_argument("--keep", default=DEFAULT_KEEP, help="CPU frames kept whole (default: %(default)s)")
    whl = steps.add_parser("wheels", help="download the wheels the device lacks (CPU machine)")
    whl.add_argument("--out", type=Path, default=Path("out/gpu_wheels"), help="default: %(default)s")
    whl.add_argument("--python-version", default="3.12", help="the device's Python (default: %(default)s)")
    go = steps.add_parser("run", help="time the receiver and check its frames (the device)")
    go.add_argument("--streams", type=Path, default=Path("out/gpu_streams"), help="default: %(default)s")
    go.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default: %(default)s)")
    go.add_argument("--passes", type=int, default=3, help="timed passes after the warm-up (default: %(default)s)")
    go.add_argument("--only", default=None, help="comma-separated stream names (default: all)")
    go.add_argument("--refiner-mode", default="reference", choices=["reference", "fast", "float32", "eager"],
                    help="on the CPU only: the refiner's mode (default: the reference's, eager)")
    go.add_argument("--json", type=Path, default=None, help="write the report here")
    args = p.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.step == "prepare":
        return prepare(args)
    if args.step == "wheels":
        return wheels(args)
    if args.passes < 1:
        p.error("--passes must be at least 1")
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
