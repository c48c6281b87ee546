"""The fleet CA and device enrollment through their command lines, as an operator runs them."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from cloud_controller.cli import main as controller
from edge_agent.cli import main as agent


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_enroll_with_a_csr_then_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca, device = tmp_path / "ca", tmp_path / "device-tls"
    assert controller(["pki", "init", "--dir", str(ca)]) == 0
    assert _mode(ca / "ca.key") == 0o600
    assert controller(["pki", "init", "--dir", str(ca)]) == 2, "an existing CA is never overwritten"

    # On the device: a key that never leaves it, and a CSR.
    assert agent(["enroll", "--dir", str(device), "--device-id", "dev-7"]) == 0
    assert _mode(device / "device.key") == 0o600
    key_before = (device / "device.key").read_bytes()
    assert agent(["enroll", "--dir", str(device), "--device-id", "dev-7"]) == 0
    assert (device / "device.key").read_bytes() == key_before, "enrolling again keeps the key"

    # At the CA: a CSR naming another device is refused; the right one is signed.
    signed = tmp_path / "signed"
    refused = ["pki", "issue", "dev-8", "--kind", "device", "--site", "site-a"]
    assert (
        controller([*refused, "--dir", str(ca), "--csr", str(device / "device.csr"), "--out", str(signed)])
        == 2
    )
    assert "names 'dev-7'" in capsys.readouterr().err
    issue = ["pki", "issue", "dev-7", "--kind", "device", "--site", "site-a", "--dir", str(ca)]
    assert controller([*issue, "--csr", str(device / "device.csr"), "--out", str(signed)]) == 0
    assert not (signed / "dev-7.key").exists(), "with a CSR the CA never sees a key"
    cert = x509.load_pem_x509_certificate((signed / "dev-7.pem").read_bytes())
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-7"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "site-a"

    # Back on the device: installed after checks; the printed config points at the files.
    assert (
        agent(
            [
                "enroll",
                "--dir",
                str(device),
                "--install-cert",
                str(signed / "dev-7.pem"),
                "--ca",
                str(signed / "ca.pem"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert str((device / "device.pem").resolve()) in out and "key_file" in out

    # One name, one kind: dev-7 cannot become a gateway (the broker gives names their topics).
    assert (
        controller(
            [
                "pki",
                "issue",
                "dev-7",
                "--kind",
                "gateway",
                "--site",
                "site-a",
                "--dir",
                str(ca),
                "--out",
                str(signed),
            ]
        )
        == 2
    )
    assert "already a device" in capsys.readouterr().err

    assert controller(["pki", "revoke", "dev-7", "--dir", str(ca)]) == 0
    crl = x509.load_pem_x509_crl((ca / "crl.pem").read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None
    assert controller(["pki", "revoke", "dev-7", "--dir", str(ca)]) == 2, "nothing live left to revoke"
    capsys.readouterr()
    assert controller(["pki", "list", "--dir", str(ca)]) == 0
    assert "revoked" in capsys.readouterr().out


def test_install_refuses_a_certificate_for_another_key_or_from_another_ca(tmp_path: Path) -> None:
    ca, rogue, device, other = tmp_path / "ca", tmp_path / "rogue", tmp_path / "device", tmp_path / "other"
    for directory in (ca, rogue):
        assert controller(["pki", "init", "--dir", str(directory)]) == 0
    assert agent(["enroll", "--dir", str(device), "--device-id", "dev-1"]) == 0
    assert agent(["enroll", "--dir", str(other), "--device-id", "dev-1"]) == 0
    base = ["pki", "issue", "dev-1", "--kind", "device", "--site", "site-a"]
    assert (
        controller(
            [*base, "--dir", str(ca), "--csr", str(other / "device.csr"), "--out", str(tmp_path / "a")]
        )
        == 0
    )
    assert (
        controller(
            [*base, "--dir", str(rogue), "--csr", str(device / "device.csr"), "--out", str(tmp_path / "b")]
        )
        == 0
    )
    install = ["enroll", "--dir", str(device), "--ca", str(ca / "ca.pem"), "--install-cert"]
    assert agent([*install, str(tmp_path / "a" / "dev-1.pem")]) == 1, "a certificate for another key"
    assert agent([*install, str(tmp_path / "b" / "dev-1.pem")]) == 1, "signed by another CA"
    assert not (device / "device.pem").exists()


def test_a_device_or_gateway_certificate_names_its_site_and_a_broker_its_hosts(tmp_path: Path) -> None:
    ca = tmp_path / "ca"
    assert controller(["pki", "init", "--dir", str(ca)]) == 0
    out = ["--dir", str(ca), "--out", str(tmp_path / "out")]
    assert controller(["pki", "issue", "gw-1", "--kind", "gateway", *out]) == 2
    assert controller(["pki", "issue", "broker-1", "--kind", "broker", *out]) == 2
    assert (
        controller(
            [
                "pki",
                "issue",
                "broker-1",
                "--kind",
                "broker",
                "--host",
                "127.0.0.1",
                "--host",
                "site-1.local",
                *out,
            ]
        )
        == 0
    )
    assert _mode(tmp_path / "out" / "broker-1.key") == 0o600
    cert = x509.load_pem_x509_certificate((tmp_path / "out" / "broker-1.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["site-1.local"]
