from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleet_protocol import (
    MANIFEST_FILE,
    SIGNATURE_FILE,
    BundleError,
    BundleManifest,
    DigestMismatch,
    FileEntry,
    KeyRetired,
    Preprocessing,
    Runtime,
    SignatureError,
    TensorSpec,
)
from fleet_protocol.codec import decode
from fleet_protocol.signing import (
    TrustedKey,
    canonical_manifest_bytes,
    check_bundle,
    generate_private_key,
    key_id,
    manifest_sha256,
    verify_bundle,
)
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


# -- key rotation: several trusted keys, a retired one refused from its retirement on ----------------

_RETIRED_AT = datetime(2026, 3, 1, tzinfo=UTC)


def test_a_device_trusts_several_keys_at_once(tmp_path: Path) -> None:
    old, new = generate_private_key(), generate_private_key()
    trusted = [TrustedKey(old.public_key(), _RETIRED_AT), TrustedKey(new.public_key())]
    before = _RETIRED_AT.timestamp() - 1
    for name, key in (("by-old", old), ("by-new", new)):
        bundle = _bundle(tmp_path, key, name)
        checked = check_bundle(bundle, trusted, now=before)
        assert checked.manifest.ref == "m@1.0.0" and checked.signer.key_id == key_id(key.public_key())


def test_a_bundle_signed_by_a_retired_key_is_refused_from_the_retirement_on(tmp_path: Path) -> None:
    old, new = generate_private_key(), generate_private_key()
    trusted = [TrustedKey(old.public_key(), _RETIRED_AT), new.public_key()]  # a plain key: never retired
    bundle = _bundle(tmp_path, old)
    verify_bundle(bundle, trusted, now=_RETIRED_AT.timestamp() - 0.001)
    for now in (_RETIRED_AT.timestamp(), _RETIRED_AT.timestamp() + 86_400 * 365):
        with pytest.raises(KeyRetired) as refused:
            verify_bundle(bundle, trusted, now=now)
        message = str(refused.value)
        assert f"signed by key {key_id(old.public_key())}, retired at 2026-03-01T00:00:00+00:00" in message
        assert key_id(new.public_key()) in message, "the message names the keys still in use"
        assert refused.value.key_id == key_id(old.public_key()) and refused.value.retired_at == _RETIRED_AT
        assert isinstance(refused.value, SignatureError), "callers that refuse bad signatures refuse it too"
    # A bundle the new key signed is not affected by the old key's retirement.
    verify_bundle(_bundle(tmp_path, new, "new"), trusted, now=_RETIRED_AT.timestamp() + 1)


def test_a_retired_key_is_judged_by_the_clock_when_no_time_is_given(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    past = datetime.now(UTC) - timedelta(minutes=1)
    with pytest.raises(KeyRetired):
        verify_bundle(bundle, [TrustedKey(key.public_key(), past)])
    verify_bundle(bundle, [TrustedKey(key.public_key(), datetime.now(UTC) + timedelta(days=1))])


def test_allow_retired_accepts_an_installed_bundle_and_names_its_retired_signer(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    trusted = [TrustedKey(key.public_key(), _RETIRED_AT)]
    checked = check_bundle(bundle, trusted, now=_RETIRED_AT.timestamp() + 1, allow_retired=True)
    assert checked.signer.retired(_RETIRED_AT.timestamp() + 1) and checked.signer.retired_at == _RETIRED_AT


def test_retirement_is_judged_only_on_a_signature_that_verifies(tmp_path: Path) -> None:
    """A forged signature under a retired key's id is a bad signature, not a 'retired' one."""
    retired, attacker = generate_private_key(), generate_private_key()
    bundle = _bundle(tmp_path, attacker)
    envelope = json.loads((bundle / SIGNATURE_FILE).read_bytes())
    envelope["key_id"] = key_id(retired.public_key())
    (bundle / SIGNATURE_FILE).write_text(json.dumps(envelope))
    with pytest.raises(SignatureError, match="does not match manifest.json") as refused:
        verify_bundle(bundle, [TrustedKey(retired.public_key(), _RETIRED_AT)], now=_RETIRED_AT.timestamp())
    assert not isinstance(refused.value, KeyRetired)


def test_a_key_listed_twice_keeps_its_earliest_retirement(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    later = _RETIRED_AT + timedelta(days=30)
    for listed in (
        [TrustedKey(key.public_key()), TrustedKey(key.public_key(), _RETIRED_AT)],
        [TrustedKey(key.public_key(), later), TrustedKey(key.public_key(), _RETIRED_AT)],
        [TrustedKey(key.public_key(), _RETIRED_AT), key.public_key()],
    ):
        with pytest.raises(KeyRetired, match="retired at 2026-03-01"):
            verify_bundle(bundle, listed, now=_RETIRED_AT.timestamp() + 1)


def test_every_key_retired_says_so(tmp_path: Path) -> None:
    key = generate_private_key()
    bundle = _bundle(tmp_path, key)
    with pytest.raises(KeyRetired, match="none, every trusted key is retired"):
        verify_bundle(bundle, [TrustedKey(key.public_key(), _RETIRED_AT)], now=_RETIRED_AT.timestamp())


# -- withdrawn versions: an optional signed field, absent from manifests that do not use it ------------


def _manifest(**fields: object) -> BundleManifest:
    return BundleManifest(
        model_id="m",
        version="2.0.0",
        runtime=Runtime.ONNXRUNTIME,
        entrypoint="model.onnx",
        files={"model.onnx": FileEntry(sha256="0" * 64, size=1)},
        inputs=[TensorSpec(name="x", shape=[None, 2])],
        outputs=[TensorSpec(name="y", shape=[None, 1])],
        preprocessing=Preprocessing(feature_names=["a", "b"]),
        created_at=1.0,
        **fields,  # type: ignore[arg-type]
    )


def test_withdrawn_versions_are_signed_and_verified(tmp_path: Path) -> None:
    key = generate_private_key()
    source = tmp_path / "src"
    source.mkdir()
    (source / "model.onnx").write_bytes(b"model")
    write_bundle(
        tmp_path / "b",
        {"model.onnx": source / "model.onnx"},
        key,
        **_manifest(withdrawn_versions=["1.0.0", "1.1.0-rc.1"]).model_dump(exclude={"files"}),
    )
    manifest = verify_bundle(tmp_path / "b", [key.public_key()])
    assert manifest.withdrawn_versions == ["1.0.0", "1.1.0-rc.1"]
    # Taking a version out of the list breaks the signature: the list cannot be edited on the way.
    body = json.loads((tmp_path / "b" / MANIFEST_FILE).read_bytes())
    body["withdrawn_versions"] = ["1.1.0-rc.1"]
    (tmp_path / "b" / MANIFEST_FILE).write_text(json.dumps(body, sort_keys=True, separators=(",", ":")))
    with pytest.raises(SignatureError, match="manifest was changed after signing"):
        verify_bundle(tmp_path / "b", [key.public_key()])


def test_a_manifest_without_withdrawn_versions_is_byte_for_byte_what_it_was() -> None:
    """Older manifests (no such field) still verify and hash the same; older agents still read new ones."""
    body = canonical_manifest_bytes(_manifest())
    assert b"withdrawn_versions" not in body
    older = json.loads(body)  # what a manifest written before the field existed holds
    parsed = decode(json.dumps(older).encode(), BundleManifest)
    assert parsed.withdrawn_versions == [] and canonical_manifest_bytes(parsed) == body
    assert b'"withdrawn_versions":["1.0.0"]' in canonical_manifest_bytes(
        _manifest(withdrawn_versions=["1.0.0"])
    )


@pytest.mark.parametrize(
    ("withdrawn", "error"),
    [(["2.0.0"], "the version of this very manifest"), (["latest"], "String should match pattern")],
)
def test_withdrawn_versions_must_be_other_semantic_versions(withdrawn: list[str], error: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=error):
        _manifest(withdrawn_versions=withdrawn)
