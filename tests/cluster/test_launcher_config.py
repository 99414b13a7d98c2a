"""cluster.yaml as shipped names exactly the values a user fills (REPLACE_ME_...); filled, it passes the check and
Ray's own schema; each GPU node type's card, the head's GPUs, frugalray's install and file_mounts' folders are
checked. The file is only read: no Ray starts, nothing reaches AWS."""

from pathlib import Path

import pytest
import yaml

from frugalray.cli import main
from frugalray.cluster.launcher_config import (
    check_launcher_config,
    load_launcher_config,
    node_types,
    unfilled_placeholders,
)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "cluster.yaml"

# Every value a user fills, and the text-level place of each (an alias fills the worker types' copies).
PLACEHOLDERS = {
    "provider.region": "REPLACE_ME_REGION",
    "available_node_types.head.node_config.ImageId": "REPLACE_ME_GPU_AMI_ID",
    "available_node_types.head.node_config.IamInstanceProfile.Arn": "REPLACE_ME_HEAD_INSTANCE_PROFILE_ARN",
    "available_node_types.gpu_a10g.node_config.IamInstanceProfile.Arn": "REPLACE_ME_WORKER_INSTANCE_PROFILE_ARN",
    "file_mounts.~/data/ftb": "REPLACE_ME_LOCAL_FTB_FOLDER",
    "setup_commands[7]": "REPLACE_ME_RESULTS_BUCKET",
}


@pytest.fixture(autouse=True)
def _from_the_checkout(monkeypatch):
    monkeypatch.chdir(ROOT)  # `ray up cluster.yaml` runs here: file_mounts' "." is this checkout


def _filled(tmp_path: Path) -> Path:
    """cluster.yaml with a user's values in place of its placeholders, and a local FTB folder."""
    ftb = tmp_path / "ftb"
    (ftb / "ner").mkdir(parents=True)
    values = {
        "REPLACE_ME_REGION": "eu-west-3", "REPLACE_ME_GPU_AMI_ID": "ami-0123456789abcdef0",
        "REPLACE_ME_HEAD_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/frugalray-head",
        "REPLACE_ME_WORKER_INSTANCE_PROFILE_ARN": "arn:aws:iam::123456789012:instance-profile/frugalray-worker",
        "REPLACE_ME_LOCAL_FTB_FOLDER": str(ftb), "REPLACE_ME_RESULTS_BUCKET": "my-frugalray-results",
    }
    text = SHIPPED.read_text()
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    filled = tmp_path / "cluster.yaml"
    filled.write_text(text)
    return filled


def _edited(tmp_path: Path, edit) -> Path:
    config = yaml.safe_load(_filled(tmp_path).read_text())
    edit(config)
    path = tmp_path / "edited.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_shipped_file_names_exactly_its_placeholders():
    placeholders = unfilled_placeholders(SHIPPED)
    assert {p.path: p.token for p in placeholders} == PLACEHOLDERS
    assert [p.path for p in placeholders] == list(PLACEHOLDERS)  # in file order
    lines = SHIPPED.read_text().splitlines()
    assert all(p.token in lines[p.line - 1] for p in placeholders)  # the line named holds it
    image = next(p for p in placeholders if p.token == "REPLACE_ME_GPU_AMI_ID")
    assert image.also == tuple(f"available_node_types.{name}.node_config.ImageId"
                               for name in ("gpu_a10g", "gpu_a100", "gpu_h100"))
    assert "Deep Learning Base GPU AMI" in image.hint
    assert check_launcher_config(SHIPPED) == [str(p) for p in placeholders]  # nothing else is wrong
    assert all(p.token.startswith("REPLACE_ME_") for p in placeholders)


def test_the_command_lists_the_placeholders_and_exits_2(capsys):
    assert main(["cluster-check", str(SHIPPED)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"frugalray: {SHIPPED}: 6 problems:\n")
    for path, token in PLACEHOLDERS.items():
        assert f": {path}: fill in {token}" in err
    assert "Traceback" not in err


def test_a_filled_copy_is_ok_and_valid_for_ray(tmp_path, capsys):
    from ray.autoscaler._private.util import validate_config

    filled = _filled(tmp_path)
    assert check_launcher_config(filled) == []
    assert main(["cluster-check", str(filled)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"ok: {filled}: head m6i.xlarge (no GPU, head); gpu_a10g g5.2xlarge (1x A10G 24 GiB, 0-8 workers); "
        "gpu_a100 p4d.24xlarge (8x A100 40 GiB, 0-0 workers); gpu_h100 p5.48xlarge (8x H100 80 GiB, 0-0 workers)")
    validate_config(yaml.safe_load(filled.read_text()))  # Ray's launcher schema takes it (raises otherwise)


def test_every_gpu_node_type_declares_its_card_and_memory():
    config, _ = load_launcher_config(SHIPPED)
    kinds = {t.name: (t.gpus, t.card, t.memory_gib) for t in node_types(config)}
    assert kinds == {"head": (0, None, None), "gpu_a10g": (1, "A10G", 24), "gpu_a100": (8, "A100", 40),
                     "gpu_h100": (8, "H100", 80)}
    for name, spec in config["available_node_types"].items():
        resources = spec["resources"]
        assert resources["GPU"] == kinds[name][0] and "CPU" in resources
        if name != "head":
            assert resources[f"accelerator_type:{kinds[name][1]}"] == 1
            assert resources[f"gpu_memory_gib:{kinds[name][2]}"] == 1


def _resources(name: str):
    return lambda config: config["available_node_types"][name]["resources"]


def _without_nones(edit):
    """``edit``, then keys set to None removed (a lambda cannot delete)."""
    def edited(config):
        edit(config)
        for spec in config["available_node_types"].values():
            spec["resources"] = {k: v for k, v in spec["resources"].items() if v is not None}
    return edited


A10G_FORM = 'E.g. resources: {CPU: <n>, GPU: <n>, "accelerator_type:A10G": 1, "gpu_memory_gib:24": 1}'
MEMORY_ONCE = "one GPU's memory once, in whole GiB, as"


@pytest.mark.parametrize("edit,message", [
    (lambda c: _resources("head")(c).update(GPU=1),
     "available_node_types.head.resources: the head runs no trial: declare GPU: 0 (it declares 1)"),
    (lambda c: _resources("head")(c).pop("GPU"),
     "available_node_types.head.resources: the head runs no trial: declare GPU: 0 (it declares none)"),
    (lambda c: _resources("gpu_a10g")(c).pop("gpu_memory_gib:24"),
     f'available_node_types.gpu_a10g.resources: declare {MEMORY_ONCE} "gpu_memory_gib:24": 1. {A10G_FORM}'),
    (lambda c: c["available_node_types"]["gpu_a10g"].update(resources={}),
     ("available_node_types.gpu_a10g.resources: declare CPU (the instance's vCPUs); GPU (the instance's GPUs, at "
      f'least 1); the card once, as "accelerator_type:A10G": 1; {MEMORY_ONCE} "gpu_memory_gib:24": 1. {A10G_FORM}')),
    (lambda c: _resources("gpu_a10g")(c).pop("GPU"),
     "available_node_types.gpu_a10g.resources: declare GPU (the instance's GPUs, at least 1)"),
    (lambda c: c["available_node_types"]["gpu_a10g"]["node_config"].update(InstanceType="p4d.24xlarge"),
     ("available_node_types.gpu_a10g.resources: a GPU of p4d.24xlarge is an A100 of 40 GiB, not A10G of 24 GiB. "
      'E.g. resources: {CPU: <n>, GPU: <n>, "accelerator_type:A100": 1, "gpu_memory_gib:40": 1}')),
    (lambda c: _resources("gpu_a10g")(c).update({"gpu_memory_gib:48": 1, "gpu_memory_gib:24": None}),
     f"available_node_types.gpu_a10g.resources: a GPU of g5.2xlarge is an A10G of 24 GiB, not 48 GiB. {A10G_FORM}"),
    (lambda c: _resources("gpu_h100")(c).update({"gpu_memory_gib:80": 2}),
     f'available_node_types.gpu_h100.resources: declare {MEMORY_ONCE} "gpu_memory_gib:80": 1'),
    (lambda c: c["available_node_types"]["gpu_a100"].update(min_workers=2),
     "available_node_types.gpu_a100: min_workers 2 is above max_workers 0"),
    (lambda c: c["file_mounts"].update({"~/data/other": "no/such/folder"}),
     "file_mounts.~/data/other: the local path 'no/such/folder' does not exist here"),
    (lambda c: c.update(head_node_type="boss"), "head_node_type: 'boss' is not one of available_node_types"),
])
def test_a_wrong_setting_is_named(tmp_path, edit, message):
    problems = check_launcher_config(_edited(tmp_path, _without_nones(edit)))
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_the_installs_of_other_files_are_not_frugalrays(tmp_path):
    def only_torch(config):
        config["setup_commands"] = [c for c in config["setup_commands"] if "frugalray[cluster]" not in c]
        config["setup_commands"].append("python -m pip install -c ~/frugalray-constraints.txt torch")

    problems = check_launcher_config(_edited(tmp_path, only_torch))
    assert [p.split(":")[0] for p in problems] == ["setup_commands / head_setup_commands",
                                                  "setup_commands / worker_setup_commands"]


def test_malformed_yaml_and_a_missing_file_are_clear_errors(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("cluster_name: frugalray\nprovider:\n  type: aws\n  region: [eu-west-3\nauth: {}\n")
    assert main(["cluster-check", str(broken)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"frugalray: error: {broken}:") and "not valid YAML" in err and "Traceback" not in err
    assert check_launcher_config(broken)[0].startswith(f"{broken}:")

    missing = tmp_path / "nope.yaml"
    assert main(["cluster-check", str(missing)]) == 2
    err = capsys.readouterr().err
    assert err == f"frugalray: error: {missing}: no such file (give the cluster launcher's file, e.g. cluster.yaml)\n"

    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert main(["cluster-check", str(listed)]) == 2
    assert "a cluster launcher file is a YAML mapping" in capsys.readouterr().err
