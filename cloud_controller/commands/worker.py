"""``cloud-controller worker``: runs pipeline jobs from the controller's database."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from cloud_controller.exceptions import ConfigError


def add(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = commands.add_parser(
        "worker",
        help="run retraining jobs (dataset, train, build, evaluate, register, rollout) from the database",
        description="Claim queued jobs from the controller's database (the API queues them: POST "
        "/api/v1/jobs, `cloud-controller job start`) and run their steps in this process, one job at a "
        "time; start a retraining job for each open alarm whose model's policy is auto. A job is held "
        "by a lease this worker renews: when a worker dies, another resumes its job at its first "
        "unfinished step once the lease has passed. Run several workers on PostgreSQL: a job runs once. "
        "SIGTERM or Ctrl-C puts the running job back in the queue. Bundles are signed with "
        "signing_key (EDGEFLEET_CONTROLLER__SIGNING_KEY); job files go under job_dir. One line is "
        "printed per step.",
    )
    p.add_argument("--config", help="controller YAML (EDGEFLEET_CONTROLLER__* variables override it)")
    p.add_argument("--id", dest="worker_id", help="this worker's name in the jobs it runs (default host:pid)")
    p.add_argument(
        "--lease",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a job stays this worker's without a renewal; renewed every third of it (default 30)",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between looks at the queue (2)",
    )
    p.add_argument("--once", action="store_true", help="run the jobs queued now, then exit")
    p.add_argument("--max-jobs", type=int, metavar="N", help="exit after N jobs")
    p.add_argument("--no-alarms", action="store_true", help="do not start jobs for alarms")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        metavar="N",
        help="threads torch trains with (default 1: the fleet's small models train 20x faster on one "
        "thread than on two busy cores; raise it for large models on a machine of their own)",
    )
    p.add_argument(
        "--schedule",
        action="append",
        default=[],
        metavar="MODEL=SECONDS",
        help="start a retraining job of MODEL once every SECONDS (one per period, however many workers "
        "say so); repeat for several models",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.lease <= 0 or args.poll <= 0:
        raise ConfigError("--lease and --poll must be positive")
    if args.torch_threads < 1:
        raise ConfigError("--torch-threads must be at least 1")
    schedules = []
    for text in args.schedule:
        model_id, _, seconds = text.rpartition("=")
        try:
            every = float(seconds)
        except ValueError:
            every = 0.0
        if not model_id or not every > 0:
            raise ConfigError(f"--schedule {text!r}: expected MODEL=SECONDS, e.g. sensor-mlp=86400")
        schedules.append((model_id, every))
    import logging

    import torch

    from cloud_controller.db import make_engine
    from cloud_controller.settings import load_settings
    from cloud_controller.worker import Worker, WorkerOptions, default_worker_id

    torch.set_num_threads(args.torch_threads)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config)
    engine = make_engine(settings.database_url)
    options = WorkerOptions(
        worker_id=args.worker_id or default_worker_id(),
        lease_s=args.lease,
        poll_s=args.poll,
        max_jobs=args.max_jobs,
        once=args.once,
        alarms=not args.no_alarms,
        schedules=tuple(schedules),
    )

    def say(line: str) -> None:
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}", flush=True)

    worker = Worker(settings, engine, options, say=say)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: worker.stop())
    try:
        ran = worker.run()
    finally:
        engine.dispose()
    say(f"worker {options.worker_id} stopped after {ran} job(s)")
    sys.stdout.flush()
    return 0
