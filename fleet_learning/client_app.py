"""edgefleet's Flower ``ClientApp``: trains the global model on a node's own labelled samples.

On a device it runs in a ``flower-supernode`` beside the agent, with node config
``buffer-path="/var/lib/edge-agent/training.sqlite" site="site-a"``; it only reads the buffer.
On a site gateway (node config ``site-superlink="HOST:PORT"``) it runs the round over the site's
devices on the gateway's own SuperLink and replies with one site update (``gateway_round``).
In a simulation each virtual node's ``partition-id`` picks a :class:`NodeSource`.
Raw features never leave the node: replies carry weights, counts and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from pydantic import ValidationError
from torch import nn

from fleet_learning import messages as m
from fleet_learning.exceptions import DataError, RecipeError
from fleet_learning.gateway_round import Gateway, gateway_from_config, site_reply
from fleet_learning.local_data import LocalData, read_local
from fleet_learning.recipes import TrainingRecipe, build_model
from fleet_learning.trainer import Standardisation, evaluate, fit


@dataclass(frozen=True)
class NodeSource:
    """Who a node is and where its labelled samples are (a buffer ``.sqlite`` or an ``.npz``)."""

    name: str
    site: str
    data_path: Path


def node_from_config(context: Context) -> NodeSource:
    """A SuperNode's identity from its ``--node-config``."""
    config = context.node_config
    if "buffer-path" not in config:
        raise DataError("node config has no 'buffer-path' (the agent's training.sqlite)")
    return NodeSource(
        name=str(config.get("node-name", context.node_id)),
        site=str(config.get("site", "")),
        data_path=Path(str(config["buffer-path"])),
    )


log = logging.getLogger(__name__)


def refused_recipe(msg: Message, handle: Callable[[], RecordDict]) -> Message:
    """The reply of ``handle()``, or an error reply if the instruction's recipe is not allowed.

    A recipe naming anything but an architecture of ``fleet_learning.models.ARCHITECTURES`` (or
    out-of-bounds arguments) is refused before any model is built; nothing named in a message is
    imported. The server counts the error reply as failed.
    """
    try:
        return Message(handle(), reply_to=msg)
    except (ValidationError, RecipeError) as exc:
        reason = f"refused the instruction's training recipe: {exc}"
        log.warning("%s", reason)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)


@dataclass
class _Round:
    node: NodeSource
    recipe: TrainingRecipe
    config: ConfigRecord
    data: LocalData | None = None
    reason: str = ""


def _prepare(msg: Message, node: NodeSource) -> _Round:
    config = msg.content[m.CONFIG]
    recipe = TrainingRecipe.model_validate_json(str(config[m.RECIPE]))
    groups = [g for g in str(config.get(m.GROUPS, "")).split(",") if g]
    current = _Round(node, recipe, config)
    if groups and node.site not in groups:
        current.reason = f"site {node.site!r} is not in this job's groups"
        return current
    limit = int(config.get(m.MAX_SAMPLES, 0)) or None
    data = read_local(node.data_path, recipe.feature_names, limit=limit)
    minimum = int(config.get(m.MIN_SAMPLES, 1))
    if len(data) < minimum:
        current.reason = f"{len(data)} labelled samples, fewer than {minimum}"
    current.data = data
    return current


def _model(msg: Message, recipe: TrainingRecipe) -> nn.Module:
    model = build_model(recipe)
    model.load_state_dict(msg.content[m.ARRAYS].to_torch_state_dict())
    return model


def _standardisation(config: ConfigRecord) -> Standardisation:
    return Standardisation(
        np.asarray(config[m.MEAN], dtype=np.float32), np.asarray(config[m.SCALE], dtype=np.float32)
    )


def _node_record(node: NodeSource) -> ConfigRecord:
    return ConfigRecord({"site": node.site, "node": node.name})


def train_reply(msg: Message, node: NodeSource) -> RecordDict:
    """Local epochs on the node's training split from the global weights (FedProx if mu > 0)."""
    current = _prepare(msg, node)
    if current.reason or current.data is None:
        return m.declined(current.reason, node.site, len(current.data or []))
    train, _ = current.data.split()
    model = _model(msg, current.recipe)
    anchor = {name: value.detach().clone() for name, value in model.state_dict().items()}
    config = current.config
    server_round = int(config.get("server-round", 0))
    hp = current.recipe.hyperparameters
    stats = fit(
        model,
        train.x,
        train.y,
        hp.model_copy(update={"seed": hp.seed * 10_000 + server_round}),
        standardisation=_standardisation(config),
        epochs=int(config.get(m.LOCAL_EPOCHS, 1)),
        proximal_to=anchor,
        mu=float(config.get(m.PROXIMAL_MU, 0.0)),
    )
    return RecordDict(
        {
            m.ARRAYS: ArrayRecord(model.state_dict()),
            m.METRICS: MetricRecord({m.NUM_EXAMPLES: stats.n, "train-loss": stats.loss}),
            m.NODE: _node_record(node),
        }
    )


def evaluate_reply(msg: Message, node: NodeSource) -> RecordDict:
    """The global model on the node's held-out split (samples it never trains on)."""
    current = _prepare(msg, node)
    if current.reason or current.data is None:
        return m.declined(current.reason, node.site, len(current.data or []))
    _, held_out = current.data.split()
    if len(held_out) == 0:
        return m.declined("no held-out samples", node.site, len(current.data))
    stats = evaluate(
        _model(msg, current.recipe), held_out.x, held_out.y, standardisation=_standardisation(current.config)
    )
    return RecordDict(
        {
            m.METRICS: MetricRecord(
                {m.NUM_EXAMPLES: stats.n, "eval-loss": stats.loss, "eval-acc": stats.accuracy}
            ),
            m.NODE: _node_record(node),
        }
    )


def make_client_app(nodes: Sequence[NodeSource] | None = None) -> ClientApp:
    """The ClientApp; ``nodes`` (simulation) maps each virtual node's partition-id to its data."""
    app = ClientApp()

    def resolve(context: Context) -> NodeSource:
        if nodes is None:
            return node_from_config(context)
        return nodes[int(context.node_config["partition-id"])]

    def gateway(context: Context) -> Gateway | None:
        return gateway_from_config(context) if nodes is None else None

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        site = gateway(context)
        if site is not None:
            return refused_recipe(msg, lambda: site_reply(msg, site))
        return refused_recipe(msg, lambda: train_reply(msg, resolve(context)))

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        site = gateway(context)
        if site is not None:  # its devices evaluate in their own rounds; the cloud has its held-out set
            return Message(m.declined("a gateway does not evaluate", site.site), reply_to=msg)
        return refused_recipe(msg, lambda: evaluate_reply(msg, resolve(context)))

    return app


#: What ``flwr run`` loads on a SuperNode (``clientapp = "fleet_learning.client_app:app"``).
app = make_client_app()
