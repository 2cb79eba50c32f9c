"""cluster.yaml and cluster-onprem.yaml along the path `ray up` takes before it touches a host:
Ray's own `prepare_config` (the local provider's node type, every default) then `validate_config`
(the schema and the checks after it). No cloud and no SSH needed; tests/test_cluster_up.py runs
`ray up` for real on the on-premises file."""

import copy
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = ["cluster.yaml", "cluster-onprem.yaml"]


def load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def check(config: dict) -> dict:
    """What `ray up` does first: fill the provider's defaults, then validate the result."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_files_pass_rays_preparation_and_validation(name):
    prepared = check(load(name))
    assert "cluster_synced_files" in prepared  # the field a file skipping preparation lacks
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # the dashboard stays on the head's localhost
    assert not any(k in (REPO / name).read_text().lower() for k in ("aws_secret", "password", "begin rsa"))


def test_onprem_file_leaves_the_node_type_to_the_local_provider():
    config = load("cluster-onprem.yaml")
    assert "available_node_types" not in config and "head_node_type" not in config
    workers = check(config)["available_node_types"]["local.cluster.node"]
    assert workers["min_workers"] == workers["max_workers"] == len(config["provider"]["worker_ips"])


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_files_install_classit_from_the_synced_checkout(name):
    config = load(name)
    mounts = config["file_mounts"]
    # The package's sources, relative to the checkout `ray up` runs from, land in ~/classit ...
    assert {mounts["~/classit/pyproject.toml"], mounts["~/classit/classit"]} == {"pyproject.toml", "classit"}
    assert all((REPO / local).exists() for remote, local in mounts.items() if remote.startswith("~/classit/"))
    setup = config["setup_commands"]
    installs = [cmd for cmd in setup if "pip install" in cmd and "classit" in cmd.split("pip install", 1)[1]]
    # ... and are installed from there, after torch, never from a remote repository.
    assert len(installs) == 1 and "-e ~/classit" in installs[0]
    assert not any("git+" in cmd or "github.com" in cmd for cmd in setup)
    assert [i for i, cmd in enumerate(setup) if "install -q torch==" in cmd][0] < setup.index(installs[0])
    # Ray's token travels with the files, and every node starts Ray with token authentication.
    assert mounts["~/.ray/auth_token"] == "~/.ray/auth_token"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in cmd for cmd in starts if "ray start" in cmd)


@pytest.mark.parametrize("name", CLUSTER_FILES)
def test_cluster_nodes_get_the_ray_the_launcher_runs(name):
    # `ray up` and `ray job submit` need the cluster's Ray version; docs/cluster.md's launcher
    # install names the same one.
    pin = f'"ray[default,tune,train]=={ray.__version__}"'
    assert any(pin in cmd for cmd in load(name)["setup_commands"]), pin
    assert f'"ray[default]=={ray.__version__}"' in (REPO / "docs" / "cluster.md").read_text()


def test_aws_cluster_routes_training_and_evaluation_to_their_nodes():
    types = load("cluster.yaml")["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert "train_slot" in types["train_gpu"]["resources"] and "eval_slot" in types["eval_gpu"]["resources"]
    paper = load("sweeps/configs/class_it_paper.yaml")
    assert paper["distributed"]["worker_resources"] == {"train_slot": 1}
    assert paper["evaluation"]["actor_resources"] == {"eval_slot": 1}


@pytest.mark.parametrize("name, breakage, key", [
    ("cluster.yaml", lambda c: c.update(max_wrkers=3), "max_wrkers"),
    ("cluster.yaml", lambda c: c["available_node_types"]["train_gpu"].update(min_wrkers=0), "min_wrkers"),
    ("cluster.yaml", lambda c: c["available_node_types"]["train_gpu"]["resources"].update(train_slot=0.5), "train_slot"),
    ("cluster-onprem.yaml", lambda c: c["auth"].update(ssh_usr="classit"), "ssh_usr"),
    ("cluster-onprem.yaml", lambda c: c.update(file_mount={}), "file_mount"),
])
def test_a_broken_copy_fails_naming_the_key(name, breakage, key):
    config = load(name)
    breakage(config)
    with pytest.raises(jsonschema.ValidationError) as err:
        check(config)
    assert key in str(err.value).splitlines()[0] or key in list(map(str, err.value.absolute_path))
