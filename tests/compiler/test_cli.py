"""The model-compiler CLI: keygen, sign, verify (and why it refuses), profiles, pruning."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from fleet_protocol import MANIFEST_FILE, SIGNATURE_FILE
from fleet_protocol.signing import public_key_pem
from model_compiler.build import BuildRequest, build, select_targets
from model_compiler.exceptions import BudgetError, TargetError
from model_compiler.profiles import load_profile
from tests.compiler.conftest import ROOT, Built


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "model_compiler.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )


@pytest.fixture
def keys(tmp_path: Path, signing_key) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    public = tmp_path / "trusted.pub"
    public.write_bytes(public_key_pem(signing_key.public_key()))
    result = _cli("keygen", str(tmp_path / "other"))
    assert result.returncode == 0, result.stdout
    return public, tmp_path / "other.pub"


def _copy(built: Built, target: str, tmp: Path) -> Path:
    dest = tmp / target
    shutil.copytree(built.report.bundles[target], dest)
    return dest


def test_verify_accepts_an_intact_bundle_and_its_tar(cnn_build: Built, keys) -> None:  # type: ignore[no-untyped-def]
    bundle = cnn_build.report.bundles["openvino-int8"]
    for path in (bundle, bundle.with_suffix(".tar")):
        result = _cli("verify", str(path), "--key", str(keys[0]))
        assert result.returncode == 0, result.stdout
        assert "vibration-cnn@2.1.0" in result.stdout


@pytest.mark.parametrize("name", ["model.xml", "model.bin", MANIFEST_FILE])
def test_verify_refuses_a_tampered_byte_in_any_file(
    cnn_build: Built, keys, tmp_path: Path, name: str
) -> None:  # type: ignore[no-untyped-def]
    bundle = _copy(cnn_build, "openvino-int8", tmp_path)
    data = bytearray((bundle / name).read_bytes())
    data[len(data) // 3] ^= 0x01
    (bundle / name).write_bytes(bytes(data))
    result = _cli("verify", str(bundle), "--key", str(keys[0]))
    assert result.returncode == 5
    expected = (
        "manifest was changed after signing" if name == MANIFEST_FILE else f"{name} does not match its sha256"
    )
    assert expected in result.stdout


def test_verify_refuses_a_manifest_swapped_in_from_another_bundle(
    cnn_build: Built, keys, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    bundle = _copy(cnn_build, "onnx-int8", tmp_path)
    other = cnn_build.report.bundles["onnx-fp32"]
    shutil.copy(other / MANIFEST_FILE, bundle / MANIFEST_FILE)
    shutil.copy(other / SIGNATURE_FILE, bundle / SIGNATURE_FILE)
    result = _cli("verify", str(bundle), "--key", str(keys[0]))
    assert result.returncode == 5
    assert "model.onnx is" in result.stdout and "manifest says" in result.stdout


def test_verify_refuses_the_wrong_key(cnn_build: Built, keys) -> None:  # type: ignore[no-untyped-def]
    result = _cli("verify", str(cnn_build.report.bundles["onnx-fp32"]), "--key", str(keys[1]))
    assert result.returncode == 5
    assert "not trusted" in result.stdout


def test_verify_refuses_a_truncated_archive(cnn_build: Built, keys, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tar = cnn_build.report.bundles["tflite-int8"].with_suffix(".tar")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    result = _cli("verify", str(cut), "--key", str(keys[0]))
    assert result.returncode == 5
    assert "is not a complete bundle archive (truncated or corrupt)" in result.stdout


def test_sign_re_signs_after_a_deliberate_change(cnn_build: Built, keys, tmp_path: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    from fleet_protocol.signing import private_key_pem

    bundle = _copy(cnn_build, "onnx-fp32", tmp_path)
    private = tmp_path / "signer.pem"
    private.write_bytes(private_key_pem(signing_key))
    with (bundle / "model.onnx").open("ab") as handle:
        handle.write(b"\0")  # a change the operator means to ship
    assert _cli("verify", str(bundle), "--key", str(keys[0])).returncode == 5
    assert _cli("sign", str(bundle), "--key", str(private)).returncode == 0
    assert _cli("verify", str(bundle.with_suffix(".tar")), "--key", str(keys[0])).returncode == 0


def test_profile_picks_the_targets_a_device_class_runs() -> None:
    rpi4 = load_profile("rpi4")
    all_targets = ["onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "tflite-fp32", "tflite-int8"]
    assert select_targets(all_targets, rpi4) == ["onnx-int8", "tflite-int8"]
    assert select_targets(all_targets, load_profile("x86-gateway")) == all_targets[:4]


def test_profile_whose_budget_is_too_small_is_refused(cnn_build: Built, tmp_path: Path, signing_key) -> None:  # type: ignore[no-untyped-def]
    tiny = tmp_path / "tiny-mcu.yaml"
    tiny.write_text(
        yaml.safe_dump(
            {
                "name": "tiny-mcu",
                "runtimes": ["onnxruntime"],
                "precisions": ["int8"],
                "memory_mb": 64,
                "flash_kb": 32,
            }
        )
    )
    request = BuildRequest(
        model=cnn_build.spec,
        weights=cnn_build.weights,
        calibration=cnn_build.data["calibration"],
        eval_data=cnn_build.data["eval"],
        out=tmp_path / "out",
        key=signing_key,
        targets=["onnx-int8"],
        profile=load_profile(str(tiny)),
    )
    with pytest.raises(
        BudgetError, match=r"does not fit profile tiny-mcu: onnx-int8: \d+ KB of model, budget 32 KB"
    ):
        build(request)


def test_cli_exits_3_when_no_target_fits_the_profile(cnn_build: Built, tmp_path: Path, keys) -> None:  # type: ignore[no-untyped-def]
    private = tmp_path / "k"
    assert _cli("keygen", str(private)).returncode == 0
    result = _cli(
        "build",
        "--model",
        cnn_build.spec,
        "--eval",
        str(cnn_build.data["eval"]),
        "--key",
        str(private.with_suffix(".pem")),
        "--targets",
        "openvino-fp32",
        "--profile",
        "rpi4",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 3
    assert "profile rpi4 runs onnxruntime, litert in int8" in " ".join(result.stdout.split())


def test_pruning_with_nncf_keeps_accuracy_and_shrinks_the_compressed_model(
    mlp_build: Built, tmp_path: Path, signing_key
) -> None:  # type: ignore[no-untyped-def]
    request = BuildRequest(
        model=mlp_build.spec,
        weights=mlp_build.weights,
        eval_data=mlp_build.data["eval"],
        train_data=mlp_build.data["train"],
        out=tmp_path / "pruned",
        key=signing_key,
        targets=["onnx-fp32"],
        prune_ratio=0.5,
        finetune_steps=100,
    )
    report = build(request)
    assert report.pruning is not None
    assert report.pruning["sparsity"] == pytest.approx(0.5, abs=0.02)
    assert report.pruning["accuracy_after"] >= report.pruning["accuracy_before"] - 0.02
    pruned = (report.bundles["onnx-fp32"] / "model.onnx").read_bytes()
    dense = (mlp_build.report.bundles["onnx-fp32"] / "model.onnx").read_bytes()
    assert len(gzip.compress(pruned)) < 0.8 * len(gzip.compress(dense))
    manifest = json.loads((report.bundles["onnx-fp32"] / MANIFEST_FILE).read_text())
    assert manifest["metrics"]["pruning"]["api"].startswith("nncf.prune")


def test_tflite_targets_without_their_venv_fail_with_a_clear_message(
    mlp_build: Built, tmp_path: Path, signing_key
) -> None:  # type: ignore[no-untyped-def]
    request = BuildRequest(
        model=mlp_build.spec,
        weights=mlp_build.weights,
        eval_data=mlp_build.data["eval"],
        out=tmp_path / "o",
        key=signing_key,
        targets=["tflite-fp32"],
        tflite_python=tmp_path / "no-venv" / "bin" / "python",
    )
    with pytest.raises(TargetError, match="run `make install`"):
        build(request)


def test_archives_hold_only_plain_files(cnn_build: Built) -> None:
    with tarfile.open(cnn_build.report.bundles["onnx-int8"].with_suffix(".tar")) as tar:
        names = sorted(tar.getnames())
    assert names == sorted([MANIFEST_FILE, SIGNATURE_FILE, "model.onnx"])


def test_build_signs_the_versions_a_release_withdraws_into_every_manifest(tmp_path: Path) -> None:
    from tests.compiler.data import sensor_npz

    data = sensor_npz(tmp_path)
    private = tmp_path / "k"
    assert _cli("keygen", str(private)).returncode == 0
    common = ["--model", f"{ROOT}/tests/compiler/models.py:mlp", "--eval", str(data["eval"])]
    common += ["--key", f"{private}.pem", "--model-id", "sensor-mlp", "--version", "1.2.0"]
    result = _cli(
        "build",
        *common,
        "--targets",
        "onnx-fp32,onnx-int8",
        "--withdraw",
        "1.1.0, 1.0.0-rc.1",
        "--out",
        str(tmp_path / "o"),
    )
    assert result.returncode == 0, result.stdout
    for target in ("onnx-fp32", "onnx-int8"):
        manifest = json.loads((tmp_path / "o" / target / MANIFEST_FILE).read_text())
        assert manifest["withdrawn_versions"] == ["1.1.0", "1.0.0-rc.1"]
        verified = _cli("verify", str(tmp_path / "o" / f"{target}.tar"), "--key", f"{private}.pub")
        assert verified.returncode == 0, verified.stdout
    # Refused before anything is built, saying why.
    for bad, why in (("latest", "not semantic versions"), ("1.2.0", "cannot withdraw its own version")):
        result = _cli("build", *common, "--withdraw", bad, "--out", str(tmp_path / "bad"))
        assert result.returncode == 2 and why in " ".join(result.stdout.split()), result.stdout
        assert not (tmp_path / "bad").exists()
