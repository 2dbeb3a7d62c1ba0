"""The shipped cluster manifests parse, pass Ray's own launcher validation, and run this project's sweep."""

import copy
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import fillout_defaults, validate_config

from sweep.run_grid import build_parser

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _run_grid_args(command: str):
    words = shlex.split(command)
    assert words[:2] == ["python", "sweep/run_grid.py"], words
    return build_parser().parse_args(words[2:])  # every flag exists and parses


def test_cluster_launcher_yaml_passes_rays_validator():
    config = yaml.safe_load((DEPLOY / "cluster-gpu.yaml").read_text())
    validate_config(fillout_defaults(copy.deepcopy(config)))
    gpu = config["available_node_types"]["gpu_worker"]
    assert gpu["resources"]["GPU"] >= 1 and config["head_node_type"] in config["available_node_types"]
    broken = copy.deepcopy(config)
    broken["available_node_types"]["gpu_worker"]["min_wokers"] = 1  # a typo: the validator must catch it
    with pytest.raises(jsonschema.ValidationError):
        validate_config(fillout_defaults(broken))


def test_launcher_header_command_is_a_valid_sweep_on_shared_storage():
    text = (DEPLOY / "cluster-gpu.yaml").read_text()
    line = " ".join(ln.lstrip("# ").rstrip("\\") for ln in text.splitlines()[2:4])
    command = line.split('"', 1)[1].rsplit('"', 1)[0].split("&&", 1)[1]
    args = _run_grid_args(command)
    assert args.address == "auto" and args.storage.startswith("s3://") and args.gpus_per_trial == 1


def test_rayjob_manifest_structure():
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    args = _run_grid_args(spec["entrypoint"])
    assert args.address == "auto" and "://" in args.storage  # every pod must reach the storage
    cluster = spec["rayClusterSpec"]
    import ray

    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
