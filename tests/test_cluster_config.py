"""cluster.yaml and cluster-onprem.yaml against Ray's own autoscaler config schema (no cloud needed)."""

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def check(config: dict) -> None:
    """What `ray up` does before touching a cloud: fill the provider's defaults, validate the schema."""
    jsonschema.validate(prepare_config(copy.deepcopy(config)), SCHEMA)


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-onprem.yaml"])
def test_cluster_files_validate(name):
    config = yaml.safe_load((REPO / name).read_text())
    check(config)
    start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in start  # the dashboard stays on the head's localhost
    assert not any(k in (REPO / name).read_text().lower() for k in ("aws_secret", "password", "begin rsa"))


def test_aws_cluster_routes_training_and_evaluation_to_their_nodes():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    types = config["available_node_types"]
    assert types["head"]["resources"] == {"CPU": 0}
    assert "train_slot" in types["train_gpu"]["resources"] and "eval_slot" in types["eval_gpu"]["resources"]
    paper = yaml.safe_load((REPO / "sweeps" / "configs" / "class_it_paper.yaml").read_text())
    assert paper["distributed"]["worker_resources"] == {"train_slot": 1}
    assert paper["evaluation"]["actor_resources"] == {"eval_slot": 1}


@pytest.mark.parametrize("breakage, key", [
    (lambda c: c.update(max_wrkers=3), "max_wrkers"),
    (lambda c: c["available_node_types"]["train_gpu"].update(min_wrkers=0), "min_wrkers"),
    (lambda c: c["available_node_types"]["train_gpu"]["resources"].update(train_slot=0.5), "train_slot"),
])
def test_a_broken_copy_fails_naming_the_key(breakage, key):
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    breakage(config)
    with pytest.raises(jsonschema.ValidationError) as err:
        check(config)
    assert key in str(err.value).splitlines()[0] or key in list(map(str, err.value.absolute_path))
