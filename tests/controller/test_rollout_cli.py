"""``cloud-controller rollout ...`` against a real controller, as an operator types it."""

from __future__ import annotations

import json
from pathlib import Path

from tests.controller.conftest import Controller
from tests.controller.rollout_fleet import make_fleet


def test_rollout_commands_create_show_list_and_pause_through_the_api(
    sqlite_controller: Controller, bundles, signing_key, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ctl = sqlite_controller
    make_fleet(ctl, bundles, signing_key, tmp_path, devices=4)
    helped = ctl.cli("rollout", "create", "--help")
    assert helped.returncode == 0
    for option in ("--waves", "--soak", "--shadow", "--install-deadline", "--min-installed", "--max-failed"):
        assert option in helped.stdout
    assert "EDGEFLEET_TOKEN" in helped.stdout and "'1%,10%,50,100%'" in helped.stdout

    flags = ["--url", ctl.url, "--token", ctl.tokens["operator"]]
    created = ctl.cli(
        "rollout", "create", *flags, "--model", "sensor-mlp", "--version", "2.0.0", "--group", "presses",
        "--waves", "50%,100%", "--soak", "600", "--max-latency-ratio", "2.5", "--json",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    rollout = json.loads(created.stdout)
    assert rollout["waves"] == [{"percent": 50.0}, {"percent": 100.0}]
    assert rollout["gates"]["max_latency_ratio"] == 2.5 and rollout["soak_s"] == 600

    # Read as a viewer, with the URL and token from the environment.
    ctl.env |= {"EDGEFLEET_URL": ctl.url, "EDGEFLEET_TOKEN": ctl.tokens["viewer"]}
    status = ctl.cli("rollout", "status", rollout["id"])
    assert status.returncode == 0, status.stderr
    assert (
        f"{rollout['id']} sensor-mlp@2.0.0 to group presses (from sensor-mlp@1.0.0): running" in status.stdout
    )
    for expected in ("Waves (cumulative)", "Decisions", "wave 0 starts with a target of 2 of 4 devices"):
        assert expected in status.stdout
    listed = ctl.cli("rollout", "list", "--state", "running")
    assert listed.returncode == 0 and rollout["id"] in listed.stdout
    refused = ctl.cli("rollout", "pause", rollout["id"])
    assert (refused.returncode, refused.stderr.strip()) == (
        1,
        "cloud-controller: 403: Role viewer may not do this",
    )

    paused = ctl.cli("rollout", "pause", rollout["id"], "--token", ctl.tokens["operator"])
    assert (paused.returncode, paused.stdout.strip()) == (0, f"rollout {rollout['id']} paused")
    again = ctl.cli("rollout", "create", "--token", ctl.tokens["operator"], "--model", "sensor-mlp",
                    "--version", "2.0.0", "--group", "presses")  # fmt: skip
    assert again.returncode == 1
    assert f"409: Group presses has an active rollout {rollout['id']} (paused)" in again.stderr


def test_rollout_commands_say_why_they_fail(sqlite_controller: Controller) -> None:
    ctl = sqlite_controller
    bad_token = ctl.cli("rollout", "list", "--url", ctl.url, "--token", "nope")
    assert (bad_token.returncode, bad_token.stderr.strip()) == (
        1,
        "cloud-controller: 401: Invalid or revoked token",
    )
    away = ctl.cli("rollout", "list", "--url", "http://127.0.0.1:1", "--token", "x")
    assert away.returncode == 3 and "cannot reach the controller at http://127.0.0.1:1" in away.stderr
    waves = ctl.cli("rollout", "create", "--url", ctl.url, "--model", "m", "--version", "1", "--group", "g",
                    "--waves", "10%,half")  # fmt: skip
    assert (waves.returncode, waves.stderr.strip()) == (
        2,
        "cloud-controller: --waves: 'half' is neither N% nor a count",
    )
    operator = ["--url", ctl.url, "--token", ctl.tokens["operator"]]
    invalid = ctl.cli("rollout", "create", *operator, "--model", "m", "--version", "1", "--group", "g",
                      "--min-installed", "2")  # fmt: skip
    assert (
        invalid.returncode == 1
        and "gates.min_installed: Input should be less than or equal to 1" in invalid.stderr
    )


def test_the_cli_offers_every_role_for_tokens_without_loading_the_database_stack() -> None:
    from cloud_controller.commands.admin import ROLES
    from cloud_controller.models import Role

    assert tuple(r.value for r in Role) == ROLES
