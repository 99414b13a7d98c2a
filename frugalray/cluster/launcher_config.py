"""Checks a Ray cluster-launcher file (``cluster.yaml``) before ``ray up``: the ``REPLACE_ME_...`` values left to
fill, each GPU node type's card, the head's GPUs, frugalray's install on every node, and the local folders
``file_mounts`` copies. No Ray, no network: it reads the file only.

    frugalray cluster-check cluster.yaml

A GPU node type declares its card in ``resources``, the way sweeps size GPU shares from it::

    resources: {CPU: 8, GPU: 1, "accelerator_type:A10G": 1, "gpu_memory_gib:24": 1}

>>> check_launcher_config("cluster.yaml")[0]  # doctest: +SKIP
'line 64: provider.region: fill in REPLACE_ME_REGION (e.g. eu-west-3; the AMI below is per region)'
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any

import tyro
import yaml

from frugalray._registry import FrugalrayError

PLACEHOLDER = re.compile(r"REPLACE_ME_[A-Za-z0-9_]+")
ACCELERATOR, MEMORY = "accelerator_type:", "gpu_memory_gib:"

# The card of AWS GPU instance families and the memory of one of its GPUs (GiB): a node type must declare these.
AWS_GPU_CARDS = {
    "g4dn": ("T4", 16), "g5": ("A10G", 24), "g6": ("L4", 24), "g6e": ("L40S", 48), "p3": ("V100", 16),
    "p3dn": ("V100", 32), "p4d": ("A100", 40), "p4de": ("A100", 80), "p5": ("H100", 80), "p5e": ("H200", 141),
    "p5en": ("H200", 141),
}

# pip installing frugalray itself (a folder ending in frugalray, or the package), not a file named frugalray-*.
_INSTALLS_FRUGALRAY = re.compile(r"pip3? install\b.*(?:^|[\s/\"'])frugalray(?:\[[\w,\s-]*\])?(?=[\s\"'=<>~!;&|]|$)")


@dataclasses.dataclass(frozen=True)
class Placeholder:
    """A ``REPLACE_ME_...`` value in the file: where it is (``path``, ``line``) and the comment beside it."""

    path: str
    line: int
    token: str
    hint: str = ""
    also: tuple[str, ...] = ()  # other paths sharing the same value (a YAML alias)

    def __str__(self) -> str:
        text = f"line {self.line}: {self.path}: fill in {self.token}"
        if self.hint:
            text += f" ({self.hint})"
        if self.also:  # a YAML alias: one value in the text, several places in the settings
            text += f"; filled here, it fills {', '.join(self.also)} too"
        return text


@dataclasses.dataclass(frozen=True)
class NodeType:
    """One node type as the cluster check summarises it."""

    name: str
    instance_type: str
    gpus: int
    card: str | None
    memory_gib: int | None
    min_workers: int
    max_workers: int
    head: bool = False

    def __str__(self) -> str:
        gpus = f"{self.gpus}x {self.card or '?'} {self.memory_gib or '?'} GiB" if self.gpus else "no GPU"
        workers = "head" if self.head else f"{self.min_workers}-{self.max_workers} workers"
        return f"{self.name} {self.instance_type} ({gpus}, {workers})"


def load_launcher_config(path: str | Path) -> tuple[dict, yaml.Node]:
    """The file's settings and its YAML node tree (for lines); a missing file or bad YAML is a FrugalrayError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FrugalrayError(f"{path}: no such file (give the cluster launcher's file, e.g. cluster.yaml)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise FrugalrayError(f"{path}: cannot read it ({error})") from None
    try:
        tree = yaml.compose(text, Loader=yaml.SafeLoader)
        config = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(error, "problem", None) or str(error)
        raise FrugalrayError(f"{where}: not valid YAML ({problem})") from None
    if not isinstance(config, dict) or not isinstance(tree, yaml.MappingNode):
        raise FrugalrayError(f"{path}: a cluster launcher file is a YAML mapping (cluster_name:, provider:, ...)")
    return config, tree


def unfilled_placeholders(path: str | Path) -> list[Placeholder]:
    """Every ``REPLACE_ME_...`` left in the file, once per place in the text, in file order.

    >>> [p.path for p in unfilled_placeholders("cluster.yaml")][:2]  # doctest: +SKIP
    ['provider.region', 'available_node_types.head.node_config.ImageId']
    """
    _, tree = load_launcher_config(path)
    return _placeholders(tree, Path(path).read_text(encoding="utf-8").splitlines())


def _placeholders(tree: yaml.Node, lines: list[str]) -> list[Placeholder]:
    found: dict[int, tuple[yaml.Node, list[str]]] = {}  # id(node) -> (node, its paths): an alias is one place

    def walk(node: yaml.Node, where: str) -> None:
        if isinstance(node, yaml.ScalarNode):
            if PLACEHOLDER.search(str(node.value)):
                found.setdefault(id(node), (node, []))[1].append(where)
        elif isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                walk(key, where)
                walk(value, f"{where}.{key.value}" if where else str(key.value))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                walk(item, f"{where}[{index}]")

    walk(tree, "")
    placeholders = []
    for node, paths in sorted(found.values(), key=lambda item: (item[0].start_mark.line, item[0].start_mark.column)):
        line = lines[node.end_mark.line] if node.end_mark.line < len(lines) else ""
        rest = line[node.end_mark.column:].strip() if node.start_mark.line == node.end_mark.line else ""
        hint = rest[1:].strip() if rest.startswith("#") else ""
        for token in dict.fromkeys(PLACEHOLDER.findall(str(node.value))):
            placeholders.append(Placeholder(paths[0], node.start_mark.line + 1, token, hint, tuple(paths[1:])))
    return placeholders


def check_launcher_config(path: str | Path) -> list[str]:
    """What stops ``path`` from starting a working cluster, one line each; empty when it is ready.

    >>> check_launcher_config("cluster.yaml")  # doctest: +SKIP
    ['line 64: provider.region: fill in REPLACE_ME_REGION (e.g. eu-west-3; the AMI below is per region)', ...]
    """
    try:
        config, tree = load_launcher_config(path)
    except FrugalrayError as error:
        return [str(error)]
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    problems = [str(placeholder) for placeholder in _placeholders(tree, lines)]
    problems += _node_type_problems(config)
    problems += _setup_problems(config)
    problems += _file_mount_problems(config)
    return problems


def node_types(config: dict) -> list[NodeType]:
    """The node types of a loaded launcher file, the head first."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    found = []
    for name, spec in sorted(types.items(), key=lambda item: item[0] != head):
        spec = spec if isinstance(spec, dict) else {}
        resources = spec.get("resources") if isinstance(spec.get("resources"), dict) else {}
        card, memory = _declared_card(resources)
        instance = str((spec.get("node_config") or {}).get("InstanceType", "?"))
        found.append(NodeType(name, instance, _int(resources.get("GPU")) or 0, card, memory,
                              _int(spec.get("min_workers")) or 0, _int(spec.get("max_workers")) or 0, name == head))
    return found


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _declared_card(resources: dict) -> tuple[str | None, int | None]:
    cards = [key[len(ACCELERATOR):] for key in resources if str(key).startswith(ACCELERATOR)]
    memories = [key[len(MEMORY):] for key in resources if str(key).startswith(MEMORY)]
    memory = memories[0] if len(memories) == 1 else None
    return (cards[0] if len(cards) == 1 else None), (int(memory) if memory and memory.isdigit() else None)


def _node_type_problems(config: dict) -> list[str]:
    types = config.get("available_node_types")
    if (config.get("provider") or {}).get("type") == "local" and not types:
        return []  # the local provider makes its own node type from head_ip and worker_ips
    if not isinstance(types, dict) or not types:
        return ["available_node_types: missing; declare the head and the GPU worker types"]
    head = config.get("head_node_type")
    problems = []
    if head not in types:
        problems.append(f"head_node_type: {head!r} is not one of available_node_types: {sorted(types)}")
    for name, spec in types.items():
        where = f"available_node_types.{name}"
        if not isinstance(spec, dict):
            problems.append(f"{where}: a node type is a mapping (resources:, node_config:, ...)")
            continue
        resources = spec.get("resources")
        if not isinstance(resources, dict):
            problems.append(f"{where}.resources: missing; declare what the node has, e.g. {{CPU: 8, GPU: 1}}")
            continue
        if name == head:
            if resources.get("GPU") != 0:
                problems.append(f"{where}.resources: the head runs no trial: declare GPU: 0 (it declares "
                                f"{resources.get('GPU', 'none')}), e.g. resources: {{CPU: 4, GPU: 0}}")
            continue
        problems += _gpu_type_problems(where, spec, resources)
        low, high = _int(spec.get("min_workers")), _int(spec.get("max_workers"))
        if low is not None and high is not None and low > high:
            problems.append(f"{where}: min_workers {low} is above max_workers {high}")
    return problems


def _gpu_type_problems(where: str, spec: dict, resources: dict) -> list[str]:
    instance = str((spec.get("node_config") or {}).get("InstanceType", ""))
    expected = AWS_GPU_CARDS.get(instance.split(".")[0])
    cards = [key for key in resources if str(key).startswith(ACCELERATOR)]
    memories = [key for key in resources if str(key).startswith(MEMORY)]
    if not (expected or cards or memories or resources.get("GPU")):
        return []  # a CPU worker type
    card, memory = expected or ("<card>", "<GiB>")
    form = f'resources: {{CPU: <n>, GPU: <n>, "{ACCELERATOR}{card}": 1, "{MEMORY}{memory}": 1}}'
    missing = []
    if _int(resources.get("CPU")) is None:
        missing.append("CPU (the instance's vCPUs)")
    gpus = _int(resources.get("GPU"))
    if gpus is None or gpus < 1:
        missing.append("GPU (the instance's GPUs, at least 1)")
    if len(cards) != 1 or resources[cards[0]] != 1:
        missing.append(f'the card once, as "{ACCELERATOR}{card}": 1')
    if len(memories) != 1 or resources[memories[0]] != 1 or not str(memories[0])[len(MEMORY):].isdigit():
        missing.append(f'one GPU\'s memory once, in whole GiB, as "{MEMORY}{memory}": 1')
    problems = [f"{where}.resources: declare {'; '.join(missing)}. E.g. {form}"] if missing else []
    declared = _declared_card(resources)
    wrong = [f"{found}{unit}" for found, right, unit in zip(declared, expected or (), ("", " GiB"))
             if found is not None and found != right]
    if wrong:
        problems.append(f"{where}.resources: a GPU of {instance} is an {expected[0]} of {expected[1]} GiB, not "
                        f"{' of '.join(wrong)}. E.g. {form}")
    return problems


def _setup_problems(config: dict) -> list[str]:
    def commands(*keys: str) -> list[str]:
        return [str(c) for key in keys for c in (config.get(key) or []) if isinstance(config.get(key), list)]

    problems = []
    for node, keys in (("head", ("setup_commands", "head_setup_commands")),
                       ("workers", ("setup_commands", "worker_setup_commands"))):
        if not any(_INSTALLS_FRUGALRAY.search(command) for command in commands(*keys)):
            problems.append(f"{' / '.join(keys)}: no command installs frugalray on the {node}, e.g. "
                            f"python -m pip install -e \"$HOME/frugalray[cluster]\" (with file_mounts ~/frugalray: .)")
    return problems


def _file_mount_problems(config: dict) -> list[str]:
    mounts = config.get("file_mounts") or {}
    if not isinstance(mounts, dict):
        return ["file_mounts: a mapping of node path: local path"]
    problems = []
    for remote, local in mounts.items():
        if PLACEHOLDER.search(f"{remote} {local}"):
            continue  # named with the placeholders
        source = Path(os.path.expanduser(str(local)))
        if not source.exists():
            problems.append(f"file_mounts.{remote}: the local path {str(local)!r} does not exist here "
                            f"({source.absolute()}; `ray up` reads relative paths from the folder it runs in)")
    return problems


def cluster_check(file: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="FILE")] = "cluster.yaml") -> int:
    """Check a cluster launcher file before `ray up`: placeholders left to fill (REPLACE_ME_...), each GPU node
    type's declared card and memory, the head's 0 GPUs, frugalray's install, file_mounts' local folders.

    Example: frugalray cluster-check cluster.yaml

    Args:
        file: The Ray cluster launcher file (cluster.yaml).
    """
    try:
        config, _ = load_launcher_config(file)
    except FrugalrayError as error:
        print(f"frugalray: error: {error}", file=sys.stderr)
        return 2
    problems = check_launcher_config(file)
    if problems:
        count = f"{len(problems)} problem{'s' * (len(problems) > 1)}"
        print(f"frugalray: {file}: {count}:\n" + "\n".join(f"  {problem}" for problem in problems), file=sys.stderr)
        return 2
    print(f"ok: {file}: " + "; ".join(map(str, node_types(config))))
    return 0
