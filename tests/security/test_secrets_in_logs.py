"""Secrets never in logs (issue #13).

A whole simulated fleet (`fleet-sim run fleet_configs/ci.yaml`, the run tests/simulators judges too)
leaves its run directory behind. Every secret of that run is collected: the API tokens the simulator
minted (their plaintext noted as it minted them, `tests.utils.fleet_sim_capture`), the bundle signing
key it generated, every PEM private key in any file of the run directory (TLS keys included, whatever
their names), and every secret-named field or URL password of its configs. Then every log the run wrote
(each ``*.log``: controller, gateways, agents, observer, Mosquitto; ``report.json``, ``report.html``;
fleet-sim's stdout and stderr) must hold none of them, nor any 16 characters in a row of a key body
or a token's random part, nor a token whose sha256 the controller stored, nor an ``Authorization``
value or a secret-named query parameter. A failure names the file and the kind of secret, never the
secret itself.

The controller's access log and the gateway's errors are checked on their own, with requests a fleet
run does not make: a token in ``?token=`` or in ``Authorization``, a malformed answer or a redirect
loop from the controller's side.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography.hazmat.primitives import serialization

from cloud_controller.models import Role
from edge_agent.ota.fetch import FetchError, fetch_bundle
from edge_gateway.controller_client import ControllerClient
from edge_gateway.exceptions import UpstreamError
from fleet_protocol.signing import generate_private_key, public_key_pem
from simulators.controller import ControllerProcess
from tests.utils import fleet_sim_capture

#: Any run of this many characters of a key body or a token's random part is a leak.
WINDOW = 16
#: Characters of base64, base64url and hex: the alphabet of key bodies and tokens.
_B64_RUN = re.compile(rf"[A-Za-z0-9+/=_-]{{{WINDOW},}}")
_B64_CHARS = re.compile(r"[A-Za-z0-9+/=_-]+")
#: A controller API token: ``ef_<role>_`` and 43 characters of ``secrets.token_urlsafe(32)``.
_TOKEN_PREFIX = re.compile("ef_(?:{})_".format("|".join(role.value for role in Role)))
_TOKEN = re.compile(rf"(?=({_TOKEN_PREFIX.pattern}[A-Za-z0-9_-]{{43}}))")
_PEM_KEY = re.compile(r"-----BEGIN ([A-Z0-9 ]*PRIVATE KEY)-----(.*?)-----END \1-----", re.S)
#: A config field that holds a secret: ``token``, ``metrics_token``, ``password``, ``client_secret``...
_SECRET_FIELD = re.compile(r"(?i)^(?:.*[_-])?(?:token|password|passwd|secret|api[_-]?key)$")
_URL_PASSWORD = re.compile(r"://[^/:@\s]+:([^@/\s]+)@")
#: What a log may never show, whoever's secret it is.
_SHAPES = {
    "a PEM private key": re.compile(r"PRIVATE KEY-----"),
    "an Authorization value": re.compile(rf"(?i)\b(?:bearer|basic)\s+[A-Za-z0-9._~+/-]{{{WINDOW},}}"),
    "a secret-named query parameter": re.compile(
        r"(?i)[?&][\w.-]*(?:token|password|passwd|secret|api[_-]?key)[\w.-]*=(?!\[redacted\])[^&#\s\"']+"
    ),
}
#: Logs every run writes (relative to the run directory): the test fails if one is missing.
_EXPECTED_LOGS = {
    "controller/controller.log",
    "observer.log",
    "report.json",
    "report.html",
    "site-0/agents-0.log",
    "site-0/broker/mosquitto.log",
    "site-0/gateway/gateway.log",
}


@dataclass(frozen=True)
class Secret:
    kind: str  # what it is, for the failure message: never the secret itself
    value: str
    body: str = ""  # the random part, each WINDOW characters of which must not appear either


def is_log(relative: Path) -> bool:
    name = relative.name
    return (
        ".log" in name
        or relative.suffix in {".out", ".err", ".txt", ".jsonl", ".html"}
        or name == "report.json"
    )


def private_keys(text: str, where: str) -> Iterator[Secret]:
    """Each PEM private key in ``text``: its body, and the raw key where it has one (Ed25519, X25519)."""
    for label, block in _PEM_KEY.findall(text):
        lines = [line.strip() for line in block.splitlines()]
        body = "".join(line for line in lines if line and ":" not in line)  # not Proc-Type:, DEK-Info:
        kind = f"{label.lower()} ({where})"
        yield Secret(kind, body, body)
        try:
            key = serialization.load_pem_private_key(
                f"-----BEGIN {label}-----{block}-----END {label}-----".encode(), None
            )
            raw = key.private_bytes(  # type: ignore[union-attr]
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        except (TypeError, ValueError, AttributeError):  # encrypted, or no raw form (RSA, EC)
            continue
        for encoded in (raw.hex(), base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            yield Secret(f"{kind}, raw", encoded.rstrip("="), encoded.rstrip("="))


def config_secrets(data: Any, where: str) -> Iterator[Secret]:
    """Secret-named string fields and URL passwords anywhere in a parsed config."""
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, str) and _SECRET_FIELD.match(str(key)) and len(value) >= 8:
                yield Secret(f"{key} in {where}", value, _token_body(value))
            else:
                yield from config_secrets(value, where)
    elif isinstance(data, list):
        for item in data:
            yield from config_secrets(item, where)
    elif isinstance(data, str):
        for password in _URL_PASSWORD.findall(data):
            yield Secret(f"a URL password in {where}", password, password if len(password) >= WINDOW else "")


def _token_body(value: str) -> str:
    """A token's random part (``ef_gateway_`` is every gateway token's); a secret of another shape whole."""
    prefix = _TOKEN_PREFIX.match(value)
    body = value[prefix.end() :] if prefix else value
    return body if len(body) >= WINDOW else ""


def collect(run_dir: Path) -> tuple[list[Secret], dict[Path, str]]:
    """The secrets in ``run_dir`` (not from logs) and every log there, by path relative to it."""
    secrets: list[Secret] = []
    logs: dict[Path, str] = {}
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
        relative = path.relative_to(run_dir)
        if is_log(relative):
            logs[relative] = path.read_bytes().decode("utf-8", "replace")
            continue
        data = path.read_bytes()
        if b"PRIVATE KEY-----" in data:
            secrets.extend(private_keys(data.decode("ascii", "replace"), f"key file {relative}"))
        if len(data) > 1 << 20 or b"\0" in data:
            continue  # databases, models, bundles: no configs
        try:
            parsed = yaml.safe_load(data.decode())
        except (UnicodeDecodeError, yaml.YAMLError):
            continue
        secrets.extend(config_secrets(parsed, f"config {relative}"))
    return secrets, logs


def leaks(logs: dict[str, str], secrets: list[Secret], token_hashes: dict[str, str]) -> list[str]:
    """``"<log>: <kind of secret>"`` for each secret some log holds (the secret itself never shown)."""
    windows: dict[str, str] = {}  # every WINDOW characters of a body -> its kind
    odd: dict[str, str] = {}  # those with a character outside the base64 alphabets: searched as they are
    for secret in secrets:
        for start in range(len(secret.body) - WINDOW + 1):
            piece = secret.body[start : start + WINDOW]
            (windows if _B64_CHARS.fullmatch(piece) else odd).setdefault(piece, secret.kind)
    found: list[str] = []
    for name, text in sorted(logs.items()):
        kinds = {s.kind for s in secrets if s.value in text}
        kinds |= {f"{WINDOW}+ characters of {kind}" for piece, kind in odd.items() if piece in text}
        for run in _B64_RUN.findall(text):
            for start in range(len(run) - WINDOW + 1):
                if (kind := windows.get(run[start : start + WINDOW])) is not None:
                    kinds.add(f"{WINDOW}+ characters of {kind}")
        for token in _TOKEN.findall(text):
            digest = hashlib.sha256(token.encode()).hexdigest()
            if digest in token_hashes:
                kinds.add(f"an API token the controller issued ({token_hashes[digest]})")
        kinds |= {shape for shape, pattern in _SHAPES.items() if pattern.search(text)}
        found += [f"{name}: {kind}" for kind in sorted(kinds)]
    return found


def issued_tokens(database: Path) -> dict[str, str]:
    """sha256 -> name and role of every token in the controller's database."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT token_sha256, name, role FROM api_token").fetchall()
    return {digest: f"{name}, {role.lower()}" for digest, name, role in rows}


@pytest.mark.slow
@pytest.mark.solo
def test_no_token_or_key_of_a_whole_fleet_run_is_in_any_of_its_logs(
    ci_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    result, out = ci_run
    # Messages name files and kinds of secrets only: pytest would print a log it was given.
    assert (out / "report.json").exists(), f"fleet-sim exited {result.returncode} without a report: see {out}"
    captured = fleet_sim_capture.captured(out)
    secrets, logs = collect(out)
    for kind, value in captured:
        if "PRIVATE KEY" in value:
            secrets.extend(private_keys(value, kind))
        else:
            secrets.append(Secret(kind, value, _token_body(value)))
    token_hashes = issued_tokens(out / "controller" / "controller.sqlite")
    named: dict[str, str] = {
        f"fleet-sim {stream}": text for stream, text in (("stdout", result.stdout), ("stderr", result.stderr))
    }
    named |= {str(path): text for path, text in logs.items()}

    # What was collected, so that the test cannot pass for having found nothing.
    assert {str(p) for p in logs} >= _EXPECTED_LOGS, (
        f"logs missing from the run: {_EXPECTED_LOGS - {str(p) for p in logs}}"
    )
    kinds = [kind for kind, _ in captured]
    assert kinds.count("bundle signing key") == 1, kinds
    assert {"API token (operator)", "API token (viewer)"} <= set(kinds), kinds
    assert kinds.count("API token (gateway)") == 2, "one per site"
    minted = {hashlib.sha256(v.encode()).hexdigest() for k, v in captured if k.startswith("API token")}
    stored = minted <= set(token_hashes)
    assert stored, "each token noted is one the controller stored"
    from_configs = [s for s in secrets if s.kind.startswith("token in config site-")]
    assert len(from_configs) == 2, "each gateway's upstream.token is read from its config"
    assert all(len(s.body) >= WINDOW for s in secrets if "private key" in s.kind), "key bodies to look for"

    found = leaks(named, secrets, token_hashes)
    assert not found, "secrets in the run's logs:\n" + "\n".join(found)


def test_the_controller_access_log_keeps_no_token_from_headers_or_query_strings(tmp_path: Path) -> None:
    key_file = tmp_path / "fleet.pub"
    key_file.write_bytes(public_key_pem(generate_private_key().public_key()))
    controller = ControllerProcess(tmp_path / "controller", key_file, token_prefix="test")
    metrics_token = "m-" + hashlib.sha256(b"metrics").hexdigest()[:30]
    controller.env["EDGEFLEET_CONTROLLER__METRICS_TOKEN"] = metrics_token
    controller.start()
    operator, viewer = controller.tokens["operator"], controller.tokens["viewer"]
    wrong = "ef_operator_" + "x" * 43  # a mistyped token is often most of a real one
    try:
        with httpx.Client(base_url=controller.url, timeout=10) as http:
            calls = [
                http.get("/api/v1/devices", headers={"Authorization": f"Bearer {operator}"}),
                http.get("/api/v1/devices", headers={"Authorization": f"Bearer {wrong}"}),
                http.get("/api/v1/devices", params={"token": operator}),
                http.get("/api/v1/devices", params={"limit": 5, "access_token": viewer}),
                http.get("/metrics", headers={"Authorization": f"Bearer {metrics_token}"}),
                http.get("/metrics", params={"metrics_token": metrics_token}),
                http.post("/login", data={"token": viewer}),
            ]
        with httpx.Client(base_url=controller.url, cookies={"edgefleet_token": viewer}, timeout=10) as http:
            calls.append(http.get("/"))
    finally:
        controller.stop()
    assert [c.status_code for c in calls] == [200, 401, 401, 401, 200, 401, 303, 200]
    log = controller.log.read_text()
    requests = log.count('"logger": "uvicorn.access"')
    assert requests >= len(calls), "every request is in the access log"
    secrets = [
        Secret("operator token", operator, _token_body(operator)),
        Secret("viewer token", viewer, _token_body(viewer)),
        Secret("a refused token", wrong, _token_body(wrong)),
        Secret("metrics_token", metrics_token, metrics_token),
    ]
    found = leaks({"controller.log": log}, secrets, issued_tokens(Path(controller.database_url[10:])))
    assert not found, "\n".join(found)
    # Booleans, not `in log`: pytest would print the log.
    redacted = "GET /api/v1/devices?token=[redacted] HTTP/1.1" in log
    assert redacted, "the request is logged, its token is not"
    redacted = "GET /api/v1/devices?limit=5&access_token=[redacted] HTTP/1.1" in log
    assert redacted, "the other parameters are kept"


async def test_a_broken_answer_from_the_controller_side_leaves_the_token_out_of_the_error() -> None:
    """A malformed answer or a redirect loop (a proxy on the way, a wrong URL): aiohttp's error
    carries the request's headers; what the gateway and the agent log of it must not."""
    token = "ef_gateway_" + "S3cr3t" * 8

    async def malformed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 abc Nonsense\r\n\r\n")
        await writer.drain()
        writer.close()

    async def redirect_loop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 302 Found\r\nLocation: /again\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    messages: dict[str, str] = {}  # what failed -> its message
    for handler in (malformed, redirect_loop):
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        client = ControllerClient(url, token, timeout_s=5)
        for call in (
            client.ingest(b"{}"),
            client.desired("site-a", None),
            client.download_bundle("0" * 64, Path("/nonexistent/part")),
        ):
            with pytest.raises(UpstreamError) as refused:
                await call
            messages[f"gateway {refused.value.args[0].split(':')[0]} ({handler.__name__})"] = str(
                refused.value
            )
        await client.close()
        with pytest.raises(FetchError) as failed:  # the agent's fallback download, with its token
            await fetch_bundle(
                ["http://127.0.0.1:9/", f"{url}/api/v1/bundles/{'0' * 64}"],
                Path("/nonexistent/b"),
                token=token,
                timeout_s=5,
            )
        messages[f"agent's fallback download ({handler.__name__})"] = str(failed.value)
        server.close()
        await server.wait_closed()
    said = messages.values()
    assert any("ClientResponseError" in m for m in said) and any("TooManyRedirects" in m for m in said)
    found = leaks(messages, [Secret("gateway token", token, _token_body(token))], {})
    assert not found, "\n".join(found)
