"""Weights registry: export/load round trip and every way a weights file can be wrong."""

from __future__ import annotations

import pytest
import torch

from codec.errors import WeightsError
from codec.weights_io import export_weights, file_sha256, load_weights_file
from codec.zoo import REGISTRY, WEIGHTS_DIR, build_untrained, load_pretrained, resolve_model


def test_export_then_load_round_trip(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    digest = export_weights(tiny_model.network, path)
    assert digest == file_sha256(path)
    loaded = load_weights_file(path, expected_sha256=digest)
    assert loaded.name == "tiny" and not loaded.untrained
    for key, value in tiny_model.network.state_dict().items():
        expected = value.half().to(value.dtype) if value.is_floating_point() else value
        assert torch.equal(loaded.network.state_dict()[key], expected), key


def test_export_is_fp16_and_hash_is_stable(tmp_path, tiny_model):
    from safetensors import safe_open

    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    assert export_weights(tiny_model.network, a) == export_weights(tiny_model.network, b)
    with safe_open(str(a), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert torch.float32 not in dtypes
    assert tiny_model.sha256 == file_sha256(a)  # an untrained model's id is its export's hash


def test_sha256_mismatch_is_refused(tmp_path, tiny_model):
    path = tmp_path / "tiny.safetensors"
    export_weights(tiny_model.network, path)
    with pytest.raises(WeightsError, match="sha256"):
        load_weights_file(path, expected_sha256="0" * 64)


def test_missing_and_corrupt_files_are_refused(tmp_path, tiny_model):
    with pytest.raises(WeightsError, match="not found"):
        load_weights_file(tmp_path / "nope.safetensors")
    path = tmp_path / "tiny.safetensors"
    export_weights(tiny_model.network, path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(WeightsError):
        load_weights_file(path)
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError):
        load_weights_file(path)


def test_weights_of_another_shape_are_refused(tmp_path, tiny_model):
    from safetensors.torch import load_file, save_file

    path = tmp_path / "tiny.safetensors"
    export_weights(tiny_model.network, path)
    state = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    key = next(iter(state))
    state[key] = torch.zeros(3, 3, dtype=torch.float16)
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(WeightsError, match="shape"):
        load_weights_file(path)


def test_unregistered_model_says_how_to_proceed():
    assert "vox256" not in REGISTRY or (WEIGHTS_DIR / REGISTRY["vox256"].filename).is_file()
    if "vox256" not in REGISTRY:
        with pytest.raises(WeightsError, match="--untrained"):
            load_pretrained("vox256")
        with pytest.raises(WeightsError):
            resolve_model("vox256")


def test_registered_weights_match_their_hash():
    for entry in REGISTRY.values():
        assert file_sha256(WEIGHTS_DIR / entry.filename) == entry.sha256
        assert (WEIGHTS_DIR / entry.card).is_file()


def test_untrained_seeds_are_distinct_and_reproducible():
    a, b, c = (build_untrained("tiny", seed=s) for s in (0, 0, 1))
    assert a.untrained and a.sha256 == b.sha256 != c.sha256
