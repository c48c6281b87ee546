"""Pipeline jobs: tables and API models (the template's family: Create / table / Public).

A job is one run of the retraining pipeline for a model: steps in order (dataset, train, build,
evaluate, register, rollout), each with a state, a log and its times, kept on the job row. A
worker process claims a queued job, holds a lease it renews, and writes every step before and
after it runs, so that another worker resumes a job whose worker died at its first unfinished step.
"""

from __future__ import annotations

import re
import time
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, StrictBool, ValidationError, model_validator
from sqlalchemy import JSON, BigInteger, Column, Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from cloud_controller.models import MAX_ID, BigId, ModelId, ResourceId
from cloud_controller.rollout_models import CountWave, Gates, GroupName, PercentWave, RolloutCreate

#: Job ids: "j-" and 8 hex digits.
JOB_ID_PATTERN = r"^j-[0-9a-f]{8}$"
#: Labelled records one job (or one federated node) trains on at most: the worker holds them in memory.
MAX_SAMPLES = 500_000
#: CPUs a federated job may ask for. The API cannot know the worker's cores (`os.cpu_count()` there),
#: so the bound is fixed; the worker takes ``min(num_cpus, its cores)``.
MAX_NUM_CPUS = 8


def _now() -> float:
    return time.time()


class JobKind(StrEnum):
    RETRAIN = "retrain"  # central training on the labelled records the fleet uploaded
    FEDERATED = "federated"  # Flower rounds over the fleet's clients


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: Jobs that may still change.
UNFINISHED = (JobState.QUEUED, JobState.RUNNING)


class JobTrigger(StrEnum):
    OPERATOR = "operator"
    ALARM = "alarm"
    SCHEDULE = "schedule"


class StepState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # its work was not needed (e.g. no rollout: the candidate did not win)
    CANCELLED = "cancelled"


# -- tables ------------------------------------------------------------------------------


class Job(SQLModel, table=True):
    __table_args__ = (Index("ix_job_state_created_at", "state", "created_at"),)
    id: str = Field(primary_key=True)
    kind: str
    model_id: str = Field(index=True)
    state: str
    trigger: str
    #: What triggered it: the operator's name, the alarm id, the schedule's name.
    trigger_ref: str | None = None
    params: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: The step running, or the last one that ran.
    step: str | None = None
    #: One entry per step, in order: {name, state, log: [lines], started_at, ended_at}.
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    #: What the steps produced, by step: data window and counts, candidate version, bundles, rollout.
    artifacts: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    error: str | None = None
    #: How the job ended, in a sentence (rolled out as..., candidate did not beat production...).
    outcome: str | None = None
    #: Set by a cancel while the job runs: its worker stops at the next check.
    cancel_requested: bool = False
    worker_id: str | None = None
    #: A running job whose lease passed has lost its worker: another worker may take it over.
    lease_until: float | None = None
    attempts: int = Field(default=0, sa_type=BigInteger)
    created_by: str
    created_at: float = Field(default_factory=_now)
    updated_at: float = Field(default_factory=_now)
    started_at: float | None = None
    ended_at: float | None = None


class JobRound(SQLModel, table=True):
    """One federated round of a job: what it reached and which clients took part."""

    __tablename__ = "job_round"
    __table_args__ = (UniqueConstraint("job_id", "round"),)
    id: int | None = Field(default=None, primary_key=True, sa_type=BigId)
    job_id: str = Field(foreign_key="job.id", index=True)
    round: int = Field(sa_type=BigInteger)
    loss: float | None = None
    accuracy: float | None = None
    sampled: int = Field(default=0, sa_type=BigInteger)
    responded: int = Field(default=0, sa_type=BigInteger)
    declined: int = Field(default=0, sa_type=BigInteger)
    failed: int = Field(default=0, sa_type=BigInteger)
    seconds: float | None = None
    at: float = Field(default_factory=_now)


class ModelRecipe(SQLModel, table=True):
    """A model's training recipe (`fleet_learning.TrainingRecipe` as JSON), kept by the registry."""

    __tablename__ = "model_recipe"
    model_id: str = Field(primary_key=True)
    recipe: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    updated_by: str
    updated_at: float = Field(default_factory=_now)


# -- what the API accepts ----------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _number(value: object) -> object:
    """A JSON number, not a boolean or a string (pydantic's lax mode would take either)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("must be a number")
    return value


#: A number as the published schema says: ``true`` or ``"3"`` is refused, ``5.0`` is an integer.
Num = BeforeValidator(_number)
Float = Annotated[float, Num]
Int = Annotated[int, Num]


class JobGates(Gates):
    """`Gates`, refusing what their schema refuses (a boolean for a number)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class JobPercentWave(PercentWave):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)


class JobCountWave(CountWave):
    count: Int = Field(ge=1, le=MAX_ID)


#: ``host:port`` of a SuperLink: a DNS name or IPv4 address, or an IPv6 address in brackets.
_SUPERLINK = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\]):(\d{1,5})$")
#: Characters a CA file path may not hold: it goes into flwr's config.toml, one quoted line.
_UNSAFE_PATH = re.compile(r'["\\\x00-\x1f\x7f]')


class FlowerFederation(_Strict):
    """The real federation a ``engine: deployment`` job runs on: a Flower SuperLink's Control API.

    The SuperLink runs edgefleet's ServerApp, which reads the job's files from the worker's job
    directory: the SuperLink must see that directory at the same path (same host, or a shared volume).
    """

    superlink: str = Field(
        max_length=300,
        description="host:port of the SuperLink's Control API (what `flwr run` connects to)",
    )
    ca_file: str | None = Field(
        default=None,
        max_length=4096,
        description="On the worker: the PEM CA certificate that signed the SuperLink's TLS certificate"
        " (the fleet CA, `cloud-controller pki`)",
    )
    insecure: StrictBool = Field(
        default=False,
        description="Plain gRPC/HTTP to the SuperLink, without TLS: only when said explicitly (the worker"
        " logs it); weights and the recipe then cross the link unencrypted",
    )
    timeout_s: Float | None = Field(
        default=None,
        gt=0,
        le=7 * 86_400,
        description="Longest the train step waits for the run; default: for each round, the round timeout"
        " three times (nodes to come online, training, federated evaluation) plus 120 s to start",
    )

    @model_validator(mode="after")
    def _check(self) -> FlowerFederation:
        match = _SUPERLINK.match(self.superlink)
        if match is None or not 1 <= int(match.group(1)) <= 65535:
            raise ValueError(
                f"superlink {self.superlink!r} is not host:port (the SuperLink's Control API, e.g."
                " superlink.example.com:9093)"
            )
        if self.ca_file is not None:
            if self.insecure:
                raise ValueError("give ca_file (TLS) or insecure: true (a plain link), not both")
            if not self.ca_file.startswith("/") or _UNSAFE_PATH.search(self.ca_file):
                raise ValueError(
                    "ca_file must be an absolute path on the worker, without quotes, backslashes or"
                    " control characters"
                )
        elif not self.insecure:
            raise ValueError(
                "ca_file is needed: the SuperLink's CA certificate (PEM) on the worker, to verify its TLS"
                " certificate; a plain link only with insecure: true"
            )
        return self


#: FederatedParams' fields that say where the rounds run: the worker's, not fleet_learning's.
ENGINE_FIELDS = ("engine", "federation")


class FederatedParams(_Strict):
    """A federated job's settings: `fleet_learning.FederatedConfig`'s fields, published here.

    The API process does not import fleet_learning (it loads torch and Flower); a test keeps the
    two in step, and the worker builds the FederatedConfig from these (all but `ENGINE_FIELDS`).
    """

    engine: Literal["simulation", "deployment"] = Field(
        default="simulation",
        description="simulation: Flower's simulation engine in the worker, each device a client holding"
        " the labelled records it uploaded; deployment: a real federation (`federation`), each device's"
        " SuperNode training on its own training buffer (raw inputs stay on the devices)",
    )
    federation: FlowerFederation | None = Field(
        default=None, description="engine deployment: the SuperLink to run on (its Control API and CA)"
    )

    strategy: Literal["fedavg", "fedprox", "trimmed_mean"] = "fedavg"
    rounds: Int = Field(default=3, ge=1, le=1000)
    min_clients: Int = Field(default=2, ge=1, le=100_000, description="Nodes needed to start and aggregate")
    fraction: Float = Field(default=1.0, gt=0, le=1, description="Share of online nodes sampled per round")
    round_timeout_s: Float = Field(default=600.0, gt=0, le=86_400)
    local_epochs: Int = Field(default=1, ge=1, le=1000)
    mu: Float = Field(default=0.0, ge=0, le=1000, description="FedProx proximal coefficient")
    trim_fraction: Float = Field(default=0.2, ge=0, lt=0.5, description="trimmed_mean: share cut at each end")
    clip_norm: Float | None = Field(
        default=None, gt=0, le=1e6, description="Central DP: update clipping norm"
    )
    noise_multiplier: Float = Field(default=0.0, ge=0, le=1000, description="Central DP: Gaussian noise")
    hierarchical: StrictBool = Field(default=False, description="One update per site per round upstream")
    federated_evaluation: StrictBool = True
    min_samples: Int = Field(default=20, ge=1, le=MAX_ID, description="A node with fewer declines")
    max_samples: Int = Field(default=5000, ge=1, le=MAX_SAMPLES, description="Records a node trains on")
    target_accuracy: Float | None = Field(default=None, gt=0, le=1, description="Stop once reached")
    patience: Int | None = Field(
        default=None, ge=1, le=1000, description="Stop after this many rounds without gain"
    )
    groups: list[ResourceId] = Field(default_factory=list, max_length=1000, description="Sites taking part")
    num_cpus: Int = Field(
        default=2,
        ge=1,
        le=MAX_NUM_CPUS,
        description="CPUs the federation's simulation takes on the worker; at most 8 (the API cannot know"
        " the worker's cores, so the bound is fixed; the worker uses fewer when it has fewer)",
    )

    @model_validator(mode="after")
    def _check(self) -> FederatedParams:
        if self.engine == "deployment" and self.federation is None:
            raise ValueError(
                "engine deployment needs federation: {superlink: host:port of the SuperLink's Control API,"
                " ca_file: its CA certificate on the worker}"
            )
        if self.engine == "simulation" and self.federation is not None:
            raise ValueError("federation is for engine deployment; the simulation engine runs in the worker")
        if self.strategy == "fedprox" and self.mu == 0:
            raise ValueError("fedprox needs mu > 0 (mu = 0 is fedavg)")
        if self.noise_multiplier > 0 and self.clip_norm is None:
            raise ValueError("noise_multiplier needs clip_norm (noise is scaled to the clipping norm)")
        return self


class JobParams(_Strict):
    """How a job runs; every field has a default."""

    window_s: Float = Field(
        default=7 * 86_400,
        gt=0,
        le=365 * 86_400,
        description="Labelled records whose ts is within this many seconds before the job's dataset step",
    )
    min_samples: Int = Field(
        default=200, ge=10, le=MAX_ID, description="Fewer labelled records than this fail the dataset step"
    )
    max_samples: Int = Field(
        default=200_000,
        ge=10,
        le=MAX_SAMPLES,
        description="The newest this many labelled records are used (at most 500,000: the worker holds"
        " them in memory)",
    )
    holdout: Float = Field(
        default=0.2,
        ge=0.05,
        le=0.5,
        description="Share of records held out (by a hash of device and seq); half of them validate (a"
        " federated job's best round, the build's measurements), the other half test the candidate"
        " against production (evaluate) and nothing else",
    )
    sites: list[ResourceId] | None = Field(
        default=None,
        max_length=1000,
        description="Only labelled records of these sites (default: every site); a site whose meaning"
        " drifted apart from the others' is retrained on its own data",
    )
    epochs: Int | None = Field(default=None, ge=1, le=10_000, description="Overrides the recipe's epochs")
    margin: Float = Field(
        default=0.02,
        ge=0,
        le=1,
        description="Held-out accuracy the candidate must gain over production to be rolled out",
    )
    rollout: StrictBool = Field(default=True, description="False: stop once the candidate is registered")
    group: GroupName | None = Field(
        default=None,
        description="The device group to roll out to; default: the group whose deployment is production",
    )
    waves: list[JobPercentWave | JobCountWave] | None = Field(
        default=None, min_length=1, max_length=20, description="Default: 10%, 50%, 100%"
    )
    soak_s: Float = Field(default=60, ge=0, le=30 * 86_400)
    shadow_s: Float = Field(default=0, ge=0, le=7 * 86_400)
    gates: JobGates | None = None
    federated: FederatedParams | None = Field(
        default=None, description="A federated job's settings (default: FederatedParams' defaults)"
    )

    @model_validator(mode="after")
    def _waves_are_cumulative(self) -> JobParams:
        if self.waves is not None:
            waves = [w.model_dump() for w in self.waves]
            try:  # the rollout's own rule, checked when the job is asked for rather than at its end
                RolloutCreate.model_validate(
                    {"model_id": "m", "version": "1.0.0", "group": "g", "waves": waves}
                )
            except ValidationError as exc:
                raise ValueError(
                    "; ".join(str(e.get("ctx", {}).get("error", e["msg"])) for e in exc.errors())
                ) from None
        return self


class JobCreate(_Strict):
    kind: JobKind = JobKind.RETRAIN
    model_id: ModelId
    params: JobParams = Field(default_factory=JobParams)


class AlarmJobCreate(_Strict):
    """An operator's job for an open alarm: its kind, and how it runs (scoped to the alarm)."""

    kind: JobKind = Field(description="retrain: central training; federated: Flower rounds")
    params: JobParams = Field(
        default_factory=JobParams,
        description="As a job's, but for sites: the job trains on the alarm's site. Without window_s,"
        " its data window is the alarm policy's window_s before the alarm fired, until the job runs",
    )

    @model_validator(mode="after")
    def _no_sites(self) -> AlarmJobCreate:
        if self.params.sites is not None:
            raise ValueError(
                "params.sites cannot be set: a job for an alarm trains on the alarm's site"
                " (POST /api/v1/jobs trains on other sites)"
            )
        return self


# -- what the API answers ------------------------------------------------------------------


class RecipePublic(BaseModel):
    model_id: str
    recipe: dict[str, Any] = Field(description="A fleet_learning.TrainingRecipe")
    updated_by: str
    updated_at: float


class StepPublic(BaseModel):
    name: str
    state: StepState
    log: list[str]
    started_at: float | None
    ended_at: float | None


class RoundPublic(BaseModel):
    round: int
    loss: float | None
    accuracy: float | None
    sampled: int
    responded: int
    declined: int
    failed: int
    seconds: float | None


class JobPublic(BaseModel):
    id: str
    kind: JobKind
    model_id: str
    state: JobState
    trigger: JobTrigger
    trigger_ref: str | None
    params: dict[str, Any]
    step: str | None
    error: str | None
    outcome: str | None
    cancel_requested: bool
    worker_id: str | None
    attempts: int
    created_by: str
    created_at: float
    updated_at: float
    started_at: float | None
    ended_at: float | None


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class JobStatus(JobPublic):
    steps: list[StepPublic]
    artifacts: dict[str, Any] = Field(
        description="By step: dataset window and counts, trained loss, candidate version and bundles, "
        "evaluation, registered version id, rollout id"
    )
    rounds: list[RoundPublic]
