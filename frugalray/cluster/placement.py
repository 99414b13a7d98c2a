"""Where trials run: the GPU cards a cluster has or can start, and each trial's share sized for its card.

A sweep declares whether its trials use GPUs (``ResourceRule.gpus``); the demand never depends on which
nodes happen to be alive when it starts. The cards come from the live nodes and from the node types the
autoscaler may start (what it reported to Ray, or the launcher's config). A node type names its card with
Ray's ``accelerator_type:<MODEL>`` resource and its memory with ``gpu_memory_gib:<N>`` (cluster.yaml
declares both); a card model known here gives its memory when the second is missing.

Each trial asks for a share of one card, sized from its memory estimate and that card's memory, and is
pinned to that card model (``accelerator_type:<MODEL>``: 0.001, as Ray's own ``accelerator_type`` option
does), so the share it gets is the share that was sized for it and its CUDA allocator cap follows the card.
Among the cards a trial fits, the driver picks the one least loaded by the trials it has placed, relative
to how many such GPUs the cluster can have; ties go to the smaller card. A trial too big for a card is
never placed on it.

>>> cards = [Card("A10G", 24, 1, 8), Card("H100", 80, 1, 2)]
>>> placer = GpuPlacer(ResourceRule(gpus=True), cards, estimate=lambda planned: 10.0)
>>> [round(share, 2) for _, share in placer.options(None)]
[0.65, 0.2]
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from frugalray._registry import FrugalrayError
from frugalray.config import ResourceRule

ACCELERATOR = "accelerator_type:"
MEMORY = "gpu_memory_gib:"
PIN = 0.001  # what a trial takes of its card's accelerator_type resource: a constraint, not a quantity
# Memory (GiB) of card models Ray names in accelerator_type, for node types that do not declare gpu_memory_gib:N.
# A100 comes in 40 and 80 GiB: the smaller one here; declare gpu_memory_gib:80 on nodes with the larger one.
KNOWN_GPU_MEMORY_GIB = {"T4": 16, "V100": 16, "A10G": 24, "A10": 24, "L4": 24, "L40S": 48, "A100": 40,
                        "A100-40G": 40, "A100-80G": 80, "H100": 80, "H200": 141, "B200": 180}
BOOTSTRAP_CONFIG = "~/ray_bootstrap_config.yaml"  # where `ray up` leaves the launcher's config on the head


@dataclass(frozen=True)
class Card:
    """One kind of GPU node of a cluster: its card model, the card's memory, GPUs per node, and how many
    such GPUs the cluster can have (live ones, or the autoscaler's max_workers of their node types)."""

    model: str | None  # accelerator_type, None when the nodes do not say
    memory_gib: float
    gpus_per_node: float
    max_gpus: float
    node_types: tuple[str, ...] = ()
    memory_declared: bool = False  # the node type has a gpu_memory_gib:N resource (pinned by it when no model)
    cpus_per_node: float = math.inf

    @property
    def pin(self) -> dict[str, float]:
        if self.model:
            return {ACCELERATOR + self.model: PIN}
        if self.memory_declared:
            return {f"{MEMORY}{self.memory_gib:g}": PIN}
        return {}

    def describe(self) -> str:
        return f"{self.model or 'GPU'} ({self.memory_gib:g} GiB)"


@dataclass(frozen=True)
class Placement:
    """What a trial asks of Ray (``resources``) and the card it was sized for."""

    resources: dict[str, float]
    card: Card | None = None

    def columns(self) -> dict:
        """The row columns the driver knows before the trial runs (the worker adds where it ran)."""
        card = self.card
        return {"node_type": ",".join(card.node_types) or None if card else None,
                "accelerator_type": card.model if card else None,
                "gpu_memory_gib": card.memory_gib if card else None}


def node_cards(resources: dict[str, float], default_memory_gib: float) -> tuple[str | None, float, bool] | None:
    """(card model, card memory, memory declared) of a node with these resources; None without GPUs."""
    if resources.get("GPU", 0) <= 0:
        return None
    model = next((key[len(ACCELERATOR):] for key in resources if key.startswith(ACCELERATOR)), None)
    declared = [float(key[len(MEMORY):]) for key in resources if key.startswith(MEMORY)]
    if declared:
        return model, declared[0], True
    return model, float(KNOWN_GPU_MEMORY_GIB.get(model or "", default_memory_gib)), False


def cards_of(live: list[dict[str, float]], node_types: dict[str, tuple[dict[str, float], int]],
             default_memory_gib: float) -> list[Card]:
    """The cluster's cards from its live nodes' resources and its node types (name -> (resources, max
    count; -1: no limit)). Live nodes of a kind no node type has count as they are (a static cluster)."""
    kinds: dict[tuple, dict] = {}
    for name, (resources, count) in node_types.items():
        card = node_cards(resources, default_memory_gib)
        if card is None or count == 0:
            continue
        entry = kinds.setdefault((card, resources["GPU"], resources.get("CPU", math.inf)),
                                 {"types": [], "max": 0, "live": 0})
        entry["types"].append(name)
        entry["max"] = math.inf if count < 0 or entry["max"] == math.inf else entry["max"] + count
    for resources in live:
        card = node_cards(resources, default_memory_gib)
        if card is not None:
            key = (card, resources["GPU"], resources.get("CPU", math.inf))
            kinds.setdefault(key, {"types": [], "max": 0, "live": 0})["live"] += 1
    return sorted((Card(model, memory, gpus, gpus * max(entry["max"], entry["live"]), tuple(entry["types"]),
                        declared, cpus)
                   for ((model, memory, declared), gpus, cpus), entry in kinds.items()),
                  key=lambda card: (card.memory_gib, card.model or ""))


class GpuPlacer:
    """Trials' GPU demand, per card: a trial goes to the least loaded card it fits (the driver's own count of
    the shares it has placed and not yet released, over the GPUs of that kind the cluster can have)."""

    def __init__(self, rule: ResourceRule, cards: list[Card], estimate: Callable[[object], float]):
        self.rule, self.cards, self.estimate = rule, cards, estimate
        self.load = {card: 0.0 for card in cards}
        self.placed: dict[int, tuple[Card, float]] = {}

    def options(self, planned) -> list[tuple[Card, float]]:
        """(card, share) for every card that can hold the trial; a share above 1 is whole GPUs of one node."""
        estimate = self.estimate(planned)
        found = []
        for card in self.cards:
            share = self.rule.gpu_fraction(estimate, card.memory_gib)
            if share <= card.gpus_per_node and self.rule.cpus_per_trial <= card.cpus_per_node:
                found.append((card, share))
        return found

    def __call__(self, planned) -> Placement:
        options = self.options(planned)
        if not options:
            raise FrugalrayError(self.too_big(planned))
        card, share = min(options, key=lambda option: ((self.load[option[0]] + option[1]) / option[0].max_gpus,
                                                       option[0].memory_gib))
        self.load[card] += share
        self.placed[id(planned)] = (card, share)
        return Placement({"CPU": self.rule.cpus_per_trial, "GPU": share, **card.pin}, card)

    def release(self, planned) -> None:
        card, share = self.placed.pop(id(planned), (None, 0.0))
        if card is not None:
            self.load[card] = max(0.0, self.load[card] - share)

    def check(self, planned_trials) -> None:
        """Fail before scheduling when some trial fits no card of the cluster."""
        for planned in planned_trials:
            if not self.options(planned):
                raise FrugalrayError(self.too_big(planned))

    def too_big(self, planned) -> str:
        estimate = self.estimate(planned)
        return (f"A trial needs about {estimate * self.rule.safety:.1f} GiB of GPU memory (estimate "
                f"{estimate:.1f} GiB x safety {self.rule.safety:g}) and {self.rule.cpus_per_trial:g} CPU(s), and no "
                f"GPU node of the cluster holds it: "
                f"{', '.join(f'{c.describe()} x{c.gpus_per_node:g}, {c.cpus_per_node:g} CPUs' for c in self.cards)}. "
                f"Add a node type with a larger card (cluster.yaml), lower resources.cpus_per_trial, the batch size "
                f"or max_length, or use LoRA")


class CpuPlacer:
    """Every trial on CPUs."""

    def __init__(self, rule: ResourceRule):
        self.rule = rule

    def __call__(self, planned) -> Placement:
        return Placement(self.rule.cpu_demand())

    def release(self, planned) -> None:
        pass

    def check(self, planned_trials) -> None:
        pass


def where_it_runs(placement: dict) -> dict:
    """The row columns that say where a trial runs: the node, its host, the card it was placed for, the GPU ids
    and share Ray granted, the CPUs."""
    import socket

    import ray

    context = ray.get_runtime_context()
    granted = context.get_assigned_resources()
    gpus = context.get_accelerator_ids().get("GPU", []) if granted.get("GPU") else []
    return {"node_type": placement.get("node_type"), "accelerator_type": placement.get("accelerator_type"),
            "gpu_memory_gib": placement.get("gpu_memory_gib"), "node_id": context.get_node_id(),
            "node_host": socket.gethostname(), "gpu_ids": [str(g) for g in gpus],
            "gpu_share": granted.get("GPU"), "cpus": granted.get("CPU")}


# -- what the cluster has and can start ----------------------------------------------------------------
def launcher_node_types(config: dict) -> dict[str, tuple[dict[str, float], int]]:
    """Node types of a cluster launcher config: name -> (resources, most nodes of that type)."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    overall = config.get("max_workers")
    found = {}
    for name, spec in types.items():
        spec = spec or {}
        count = 1 if name == head else spec.get("max_workers", overall if overall is not None else -1)
        found[name] = ({k: float(v) for k, v in (spec.get("resources") or {}).items()}, int(count))
    return found


def reported_node_types() -> dict[str, tuple[dict[str, float], int]] | None:
    """The node types the autoscaler reported to Ray (its v2 reports them); None when it reported none."""
    try:
        import ray._private.state as state

        config = state.state.get_cluster_config()
    except Exception:  # an older Ray, or no autoscaler
        return None
    if not config or not config.node_group_configs:
        return None
    return {group.name: ({k: float(v) for k, v in group.resources.items()}, int(group.max_count))
            for group in config.node_group_configs}


def read_launcher_config(path: str) -> dict:
    """A launcher config (YAML or JSON), as a dict; a clear error when it cannot be read."""
    import yaml

    file = Path(path).expanduser()
    try:
        values = yaml.safe_load(file.read_text())
    except OSError as error:
        raise FrugalrayError(f"resources.autoscaling_config {path!r} cannot be read: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise FrugalrayError(f"resources.autoscaling_config {path!r} is not YAML/JSON: {error}") from None
    if not isinstance(values, dict):
        raise FrugalrayError(f"resources.autoscaling_config {path!r} holds no mapping of settings")
    return values


def cluster_node_types(rule: ResourceRule) -> dict[str, tuple[dict[str, float], int]]:
    """The node types the cluster's autoscaler can start: from ``rule.autoscaling_config`` when set, else
    what the autoscaler reported to Ray, else the launcher's config on the head; empty without autoscaler."""
    if rule.autoscaling_config:
        return launcher_node_types(read_launcher_config(rule.autoscaling_config))
    reported = reported_node_types()
    if reported is not None:
        return reported
    bootstrap = Path(BOOTSTRAP_CONFIG).expanduser()
    if bootstrap.is_file() and os.environ.get("RAY_ADDRESS"):  # on the head of a launched cluster
        return launcher_node_types(read_launcher_config(str(bootstrap)))
    return {}


def live_nodes() -> list[dict[str, float]]:
    import ray

    return [node["Resources"] for node in ray.nodes() if node["Alive"]]


def placer_for(rule: ResourceRule, estimate: Callable[[object], float], *, say: Callable[[str], None] = print,
               live: Callable[[], list[dict]] = live_nodes, node_types=None):
    """The sweep's placer: on CPUs unless ``rule.gpus``; with it, on the cards the cluster has or can start,
    and an error (or, with ``rule.cpu_fallback``, CPUs and a line saying so) when it can never have one."""
    if not rule.gpus:
        return CpuPlacer(rule)
    types = cluster_node_types(rule) if node_types is None else node_types
    cards = cards_of(live(), types, rule.gpu_memory_gib)
    if cards:
        return GpuPlacer(rule, cards, estimate)
    where = (f"its node types ({', '.join(sorted(types))}) have no GPU" if types else
             "it has no autoscaler that could start GPU nodes")
    if rule.cpu_fallback:
        say(f"frugalray: this sweep runs on GPUs, but the cluster has no GPU and {where}: its trials run on CPUs "
            f"instead (resources.cpu_fallback)")
        return CpuPlacer(rule)
    raise FrugalrayError(
        f"This sweep runs its trials on GPUs (resources.gpus), but the cluster has no GPU node and {where}. Run it "
        f"on a cluster with GPU workers (ray submit cluster.yaml ...), or on CPUs: --resources.cpu-fallback (keeps "
        f"GPUs where there are some) or --resources.no-gpus")
