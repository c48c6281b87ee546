from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    BundleError,
    DigestMismatch,
    Preprocessing,
    Runtime,
    SignatureError,
    TensorSpec,
)
from fleet_protocol.signing import generate_private_key, manifest_sha256, verify_bundle
from model_compiler.bundle import write_bundle


def _bundle(root: Path, key: Ed25519PrivateKey, name: str = "b", version: str = "1.0.0") -> Path:
    source = root / f"{name}-src"
    source.mkdir()
    (source / "model.onnx").write_bytes(b"\x08\x07" + bytes(range(256)) * 8)
    (source / "extra.bin").write_bytes(b"weights" * 100)
    return write_bundle_dir(root / name, source, key, version)


def write_bundle_dir(out: Path, source: Path, key: Ed25519PrivateKey, version: str) -> Path:
    write_bundle(
        out,
        {"model.onnx": source / "model.onnx", "extra.bin": source / "extra.bin"},
        key,
        model_id="m",
        version=version,
        runtime=Runtime.ONNXRUNTIME,
        entrypoint="model.onnx",
        inputs=[TensorSpec(name="x", shape=[None, 2])],
        outputs=[TensorSpec(name="y", shape=[None, 1])],
        preprocessing=Preprocessing(feature_names=["a", "b"]),
    )
    return out


def test_verify_accepts_an_intact_bundle(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    manifest = verify_bundle(bundle, [key.public_key()])
    assert manifest.ref == "m@1.0.0"
    assert set(manifest.files) == {"model.onnx", "extra.bin"}
    assert len(manifest_sha256(bundle)) == 64


@pytest.mark.parametrize("name", ["model.onnx", "extra.bin"])
def test_verify_refuses_a_flipped_byte_in_any_file(tmp_path: Path, name: str) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    with pytest.raises(DigestMismatch, match=f"{name} does not match its sha256"):
        verify_bundle(bundle, [key.public_key()])


def test_verify_refuses_a_truncated_file(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    (bundle / "extra.bin").write_bytes((bundle / "extra.bin").read_bytes()[:10])
    with pytest.raises(DigestMismatch, match="extra.bin is 10 bytes"):
        verify_bundle(bundle, [key.public_key()])


def test_verify_refuses_an_edited_manifest(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    manifest = json.loads((bundle / MANIFEST_FILE).read_bytes())
    manifest["version"] = "9.9.9"
    (bundle / MANIFEST_FILE).write_text(json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    with pytest.raises(SignatureError, match="manifest was changed after signing"):
        verify_bundle(bundle, [key.public_key()])


def test_verify_refuses_a_manifest_swapped_from_another_bundle(tmp_path: Path) -> None:
    key = generate_private_key()
    first, second = _bundle(tmp_path, key, "one", "1.0.0"), _bundle(tmp_path, key, "two", "2.0.0")
    (second / "model.onnx").write_bytes(b"other model")
    # A validly signed manifest + signature of bundle one, next to bundle two's files.
    second_manifest = json.loads((second / MANIFEST_FILE).read_bytes())
    second_manifest["files"]["model.onnx"]["size"] = 11
    shutil.copy(first / MANIFEST_FILE, second / MANIFEST_FILE)
    shutil.copy(first / SIGNATURE_FILE, second / SIGNATURE_FILE)
    with pytest.raises(DigestMismatch, match="model.onnx"):
        verify_bundle(second, [key.public_key()])


def test_verify_refuses_a_bundle_signed_by_an_untrusted_key(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, generate_private_key())
    with pytest.raises(SignatureError, match="which is not trusted"):
        verify_bundle(bundle, [generate_private_key().public_key()])


def test_verify_refuses_a_signature_made_with_another_key_under_our_key_id(tmp_path: Path) -> None:
    trusted, attacker = generate_private_key(), generate_private_key()
    bundle = _bundle(tmp_path, attacker)
    envelope = json.loads((bundle / SIGNATURE_FILE).read_bytes())
    from fleet_protocol.signing import key_id

    envelope["key_id"] = key_id(trusted.public_key())
    (bundle / SIGNATURE_FILE).write_text(json.dumps(envelope))
    with pytest.raises(SignatureError, match="does not match manifest.json"):
        verify_bundle(bundle, [trusted.public_key()])


def test_verify_refuses_an_unsigned_bundle(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    (bundle / SIGNATURE_FILE).unlink()
    with pytest.raises(SignatureError, match="is unsigned"):
        verify_bundle(bundle, [key.public_key()])


def test_verify_refuses_a_garbled_signature_file(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    (bundle / SIGNATURE_FILE).write_bytes(b"\x00garbage")
    with pytest.raises(SignatureError, match="malformed"):
        verify_bundle(bundle, [key.public_key()])


def test_verify_refuses_a_missing_file(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    (bundle / "extra.bin").unlink()
    with pytest.raises(BundleError, match="lacks extra.bin"):
        verify_bundle(bundle, [key.public_key()])


def test_verify_refuses_everything_without_trusted_keys(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, generate_private_key())
    with pytest.raises(SignatureError, match="no trusted public keys"):
        verify_bundle(bundle, [])


def test_manifest_refuses_file_names_that_escape_the_bundle() -> None:
    from pydantic import ValidationError

    from fleet_protocol import BundleManifest, FileEntry

    with pytest.raises(ValidationError, match="not a plain file name"):
        BundleManifest(
            model_id="m",
            version="1.0.0",
            runtime=Runtime.ONNXRUNTIME,
            entrypoint="../../etc/passwd",
            files={"../../etc/passwd": FileEntry(sha256="0" * 64, size=1)},
            inputs=[TensorSpec(name="x", shape=[1, 2])],
            outputs=[TensorSpec(name="y", shape=[1, 1])],
            preprocessing=Preprocessing(feature_names=["a", "b"]),
        )
