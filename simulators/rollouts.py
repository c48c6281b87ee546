"""Rollouts through the controller's API, as an operator runs them: create, follow to the end, record.

A group has one active rollout at a time (the controller answers 409 to a second), so a
rollout that comes while another runs waits for it. One that has not ended within the time
the scenario gives it (paused at an install deadline, say) is aborted, as an operator would,
so that the group is free for the next. What each one did (its waves, its decisions with their
numbers, how it ended) is kept for the report and the invariants.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from simulators.controller import ControllerProcess
from simulators.scenario import SimError

#: States a rollout does not leave.
ENDED = ("succeeded", "aborted", "failed")


@dataclass
class RolloutOutcome:
    kind: str  # the timeline event: "rollout" or "bad_rollout"
    version: str
    defect: str | None
    bundles: dict[str, str]  # target -> sha256 address of the bundle at the controller
    id: str | None = None
    previous: str | None = None  # the version the group ran before
    state: str = "not started"
    #: Unix times: created, ended (when seen ended).
    created_at: float | None = None
    ended_at: float | None = None
    waves: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    @property
    def expected(self) -> str:
        """How it should end: a good version everywhere, a bad one stopped at its canary."""
        return "succeeded" if self.defect is None else "failed"

    def waves_started(self) -> int:
        return sum(1 for wave in self.waves if wave.get("started_at") is not None)

    def seconds(self) -> float | None:
        if self.created_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.created_at

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": self.seconds(), "expected": self.expected}

    def line(self) -> str:
        """One line for the report: how it ended, how far it went, the last decision's reason."""
        what = self.version + (f" ({self.defect})" if self.defect else "")
        if self.error is not None:
            return f"{what}: {self.error}"
        took = f" in {self.seconds():.0f}s" if self.seconds() is not None else ""
        targets = "/".join(str(w.get("target", "?")) for w in self.waves if w.get("started_at") is not None)
        last = self.decisions[-1]["reason"] if self.decisions else "no decision"
        return (
            f"{what} {self.state}{took} after {self.waves_started()} of {len(self.waves)} waves"
            f" (devices {targets or '-'}); {last}"
        )


async def run_rollout(
    controller: ControllerProcess, outcome: RolloutOutcome, body: dict[str, Any], *, within_s: float
) -> RolloutOutcome:
    """Create the rollout (waiting out a rollout already active on the group) and follow it to its end."""
    deadline = time.monotonic() + within_s
    headers = {"Authorization": f"Bearer {controller.tokens['operator']}"}
    async with httpx.AsyncClient(base_url=controller.url, headers=headers, timeout=30) as client:
        while True:
            response = await client.post("/api/v1/rollouts", json=body)
            if response.status_code == 201:
                break
            busy = response.status_code == 409 and "active rollout" in response.text
            if not busy or time.monotonic() >= deadline:
                outcome.error = f"the controller refused the rollout: {response.status_code} {response.text}"
                return outcome
            await asyncio.sleep(1.0)  # another rollout runs on the group: this one waits its turn
        created = response.json()
        outcome.id, outcome.state, outcome.created_at = created["id"], created["state"], time.time()
        previous = created.get("previous")
        outcome.previous = previous["version"] if previous else None
        while True:
            await asyncio.sleep(1.0)
            try:
                status = await client.get(f"/api/v1/rollouts/{outcome.id}")
            except httpx.HTTPError as exc:  # a busy controller: ask again
                outcome.error = f"GET failed: {exc}"
                continue
            if status.status_code != 200:
                raise SimError(f"cannot follow rollout {outcome.id}: {status.status_code} {status.text}")
            _take(outcome, status.json())
            outcome.error = None
            if outcome.state in ENDED:
                outcome.ended_at = time.time()
                return outcome
            if time.monotonic() >= deadline:
                outcome.error = f"still {outcome.state} after {within_s:.0f}s: aborted"
                aborted = await client.post(f"/api/v1/rollouts/{outcome.id}/abort")
                if aborted.status_code == 200:
                    outcome.state = aborted.json()["state"]
                outcome.ended_at = time.time()
                return outcome


def _take(outcome: RolloutOutcome, status: dict[str, Any]) -> None:
    outcome.state = status["state"]
    outcome.waves = status["waves"]
    outcome.decisions = status["decisions"]
