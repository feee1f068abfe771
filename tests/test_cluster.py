"""cluster/: every cluster-launcher file passes Ray's own validation offline (and a broken copy fails), the
node types' resources match their instances and roles, only SSH is exposed, and the KubeRay manifest parses
and names its images and resources."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import click
import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from sepo_ray.sweeps import read_sweep_yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
LAUNCHER_FILES = ("aws-gpu.yaml", "gcp-gpu.yaml", "onprem.yaml")
CLOUD_FILES = ("aws-gpu.yaml", "gcp-gpu.yaml")
KUBERAY_FILE = CLUSTER / "kuberay.yaml"

# vCPUs and GPUs of the instance types the cloud files use (provider documentation).
AWS_INSTANCES = {"m5.2xlarge": (8, 0), "g5.2xlarge": (8, 1), "g5.12xlarge": (48, 4)}
GCP_MACHINES = {"n2-standard-8": 8, "n1-standard-8": 8, "n1-standard-32": 32}


def load(name: str) -> dict:
    with open(CLUSTER / name) as f:
        return yaml.safe_load(f)


def validated(config: dict) -> dict:
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def torch_pin() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    match = re.search(r'"(torch==[0-9.]+)"', text)
    assert match, "pyproject.toml pins torch"
    return match.group(1)


def all_commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands")
    keys += ("head_start_ray_commands", "worker_start_ray_commands")
    return [cmd for key in keys for cmd in config.get(key) or []]


def gpu_node_types(config: dict) -> dict:
    return {k: v for k, v in config["available_node_types"].items() if v["resources"].get("GPU", 0) > 0}


# ------------------------------------------------------------------------------------ Ray's own validation
@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_launcher_file_passes_ray_validation(name):
    prepared = validated(load(name))
    assert prepared["available_node_types"] and prepared["head_node_type"] in prepared["available_node_types"]


def test_every_cluster_file_is_covered():
    files = {p.name for p in CLUSTER.glob("*.yaml")}
    assert files == set(LAUNCHER_FILES) | {KUBERAY_FILE.name}


def _extra_key(c):
    c["head_node_typo"] = "head"


def _bad_type(c):
    c["idle_timeout_minutes"] = "ten"


def _bad_auth(c):
    c["auth"]["ssh_password"] = "hunter2"  # the launcher authenticates with keys only


def _unknown_head(c):
    c["head_node_type"] = "no_such_type"


def _too_many_min_workers(c):
    for node_type in c["available_node_types"].values():
        node_type["min_workers"] = node_type.get("max_workers", 0) + 5


def _missing_resources(c):
    del next(iter(gpu_node_types(c).values()))["resources"]


def _local_node_types(c):
    c["available_node_types"] = {"gpu": {"resources": {"GPU": 1}, "node_config": {}}}
    c["head_node_type"] = "gpu"


def _local_no_workers(c):
    del c["provider"]["worker_ips"]


SCHEMA = jsonschema.ValidationError
BROKEN = [(name, f, SCHEMA) for name in LAUNCHER_FILES for f in (_extra_key, _bad_type, _bad_auth)]
BROKEN += [(name, f, ValueError) for name in CLOUD_FILES for f in (_unknown_head, _too_many_min_workers)]
BROKEN += [(name, _missing_resources, SCHEMA) for name in CLOUD_FILES]
BROKEN += [("onprem.yaml", _local_node_types, click.ClickException)]
BROKEN += [("onprem.yaml", _local_no_workers, click.ClickException)]


@pytest.mark.parametrize("name, breakage, error", BROKEN, ids=lambda x: getattr(x, "__name__", str(x)))
def test_broken_copy_fails_ray_validation(name, breakage, error):
    config = load(name)
    broken = copy.deepcopy(config)
    breakage(broken)
    with pytest.raises(error):
        validated(broken)
    validated(config)  # the file itself is untouched


# ----------------------------------------------------------------------------------------- roles and sizes
def test_aws_resources_match_instance_types():
    config = load("aws-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        cpus, gpus = AWS_INSTANCES[node_type["node_config"]["InstanceType"]]
        assert 0 < node_type["resources"]["CPU"] <= cpus, name
        assert node_type["resources"]["GPU"] == gpus, name


def test_gcp_resources_match_machines_and_accelerators():
    config = load("gcp-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert 0 < node_type["resources"]["CPU"] <= GCP_MACHINES[node["machineType"]], name
        accelerators = sum(a["acceleratorCount"] for a in node.get("guestAccelerators", []))
        assert node_type["resources"]["GPU"] == accelerators, name
        if accelerators:
            assert {"onHostMaintenance": "TERMINATE"} in node["scheduling"], name  # GCE needs it with GPUs


@pytest.mark.parametrize("name", CLOUD_FILES)
def test_roles_have_their_node_types(name):
    config = load(name)
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"]["GPU"] == 0  # head: driver, Tune, Algorithm processes
    gpu = gpu_node_types(config)
    learner = [t for t in gpu.values() if "learner_gpu" in t["resources"]]
    rollout = [t for t in gpu.values() if "rollout_gpu" in t["resources"]]
    assert len(learner) == 1 and learner[0]["resources"]["learner_gpu"] == learner[0]["resources"]["GPU"]
    assert len(rollout) == 1 and rollout[0]["resources"]["rollout_gpu"] == rollout[0]["resources"]["GPU"]
    assert (
        rollout[0]["resources"]["oracle"] >= 1
    )  # `--set oracle_resource=oracle` pins the oracle actors there
    assert sum(t.get("max_workers", 0) for t in gpu.values()) <= config["max_workers"]


def _cluster_capacity(name: str) -> tuple[float, float]:
    """(learner GPUs, rollout GPUs) at full scale."""
    if name == KUBERAY_FILE.name:
        cluster = kuberay_docs()["RayCluster"]
        groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}

        def gpus(group):
            limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
            return group["maxReplicas"] * float(limits.get("nvidia.com/gpu", 0))

        return gpus(groups["gpu-learner"]), gpus(groups["gpu-rollout"])
    types = load(name)["available_node_types"].values()
    learner = sum(t["max_workers"] * t["resources"]["GPU"] for t in types if "learner_gpu" in t["resources"])
    rollout = sum(t["max_workers"] * t["resources"]["GPU"] for t in types if "rollout_gpu" in t["resources"])
    return learner, rollout


@pytest.mark.parametrize("name", CLOUD_FILES + (KUBERAY_FILE.name,))
def test_cluster_sweep_fits_the_cluster(name):
    sweep = read_sweep_yaml(ROOT / "tune_configs" / "cluster_paper.yaml")
    c = sweep["base_config"]
    learner_per_trial = c["num_learners"] * c["num_gpus_per_learner"]
    rollout_per_trial = c["num_env_runners"] * c["num_gpus_per_env_runner"]
    rollout_per_trial += c["oracle_actors"] * c["oracle_num_gpus"]
    learner, rollout = _cluster_capacity(name)
    assert sweep["max_concurrent_trials"] * learner_per_trial <= learner
    assert sweep["max_concurrent_trials"] * rollout_per_trial <= rollout
    # whole trials per node: a learner never straddles two nodes
    assert math.isclose(c["num_gpus_per_learner"], 1.0)


# ------------------------------------------------------------------------------------------------ security
def test_aws_opens_ssh_only():
    config = load("aws-gpu.yaml")
    group = config["provider"]["security_group"]
    assert set(group) == {"GroupName"}  # no extra IpPermissions: Ray adds intra-cluster + SSH (22) only
    for node_type in config["available_node_types"].values():
        node = node_type["node_config"]
        assert "SecurityGroupIds" not in node and "NetworkInterfaces" not in node
        assert node["MetadataOptions"]["HttpTokens"] == "required"
        assert all(d["Ebs"]["Encrypted"] for d in node["BlockDeviceMappings"])


def test_gcp_nodes_sit_on_the_ssh_only_network():
    config = load("gcp-gpu.yaml")
    for name, node_type in config["available_node_types"].items():
        (interface,) = node_type["node_config"]["networkInterfaces"]
        assert interface["subnetwork"].endswith("/subnetworks/sepo-ray"), name
    text = (CLUSTER / "gcp-gpu.yaml").read_text()
    assert "--allow=tcp:22" in text  # the documented firewall: SSH from outside, nothing else


@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_dashboard_stays_on_localhost_and_token_auth_is_on(name):
    config = load(name)
    commands = all_commands(config)
    assert not any("0.0.0.0" in cmd for cmd in commands)
    assert any("--dashboard-host=127.0.0.1" in cmd for cmd in config["head_start_ray_commands"])
    starts = [
        c for c in config["head_start_ray_commands"] + config["worker_start_ray_commands"] if "start" in c
    ]
    assert starts and all("RAY_AUTH_MODE=token" in cmd for cmd in starts)
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


# -------------------------------------------------------------------------------------------------- setup
@pytest.mark.parametrize("name", LAUNCHER_FILES)
def test_setup_installs_this_package_with_pinned_torch(name):
    config = load(name)
    setup = " ; ".join(config["setup_commands"])
    assert f'"{torch_pin()}"' in setup
    assert re.search(r"pip install (-q )?-e ~/sepo_ray", setup)
    assert config["file_mounts"]["~/sepo_ray"] == "."
    assert ".venv" in config["rsync_exclude"]


@pytest.mark.parametrize("name", CLOUD_FILES)
def test_images_match_the_installed_ray(name):
    image = load(name)["docker"]["image"]
    assert image == f"rayproject/ray:{ray.__version__}-py311-gpu"


def test_dockerfile_builds_on_the_same_ray_with_pinned_torch():
    text = (CLUSTER / "Dockerfile").read_text()
    assert f"ARG RAY_IMAGE=rayproject/ray:{ray.__version__}-py311-gpu" in text
    assert f'pip install --no-cache-dir "{torch_pin()}"' in text
    assert "pip install --no-cache-dir -e ." in text


# ----------------------------------------------------------------------------------------------- KubeRay
def kuberay_docs() -> dict:
    with open(KUBERAY_FILE) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    return {d["kind"]: d for d in docs}


def _ray_start_resources(params: dict) -> dict:
    raw = params.get("resources")
    return json.loads(raw.strip('"').replace('\\"', '"')) if raw else {}


def test_kuberay_manifest_names_images_and_resources():
    docs = kuberay_docs()
    cluster = docs["RayCluster"]
    assert cluster["apiVersion"] == "ray.io/v1"
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP"
    head_container = head["template"]["spec"]["containers"][0]
    assert head_container["image"] == "sepo-ray:0.1.0-gpu"
    assert "nvidia.com/gpu" not in head_container["resources"]["limits"]

    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"gpu-learner", "gpu-rollout"}
    expected = {"gpu-learner": ({"learner_gpu": 1}, 1), "gpu-rollout": ({"rollout_gpu": 4, "oracle": 4}, 4)}
    for name, (custom, gpus) in expected.items():
        group = groups[name]
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == head_container["image"]
        for part in ("requests", "limits"):
            assert int(container["resources"][part]["nvidia.com/gpu"]) == gpus
        assert _ray_start_resources(group["rayStartParams"]) == custom


def test_kuberay_exposes_nothing_outside_the_cluster():
    docs = kuberay_docs()
    assert set(docs) == {"RayCluster", "NetworkPolicy"}  # no Service or Ingress of its own
    text = yaml.safe_dump(docs)  # the manifest without its comments
    assert not re.search(r"LoadBalancer|NodePort|hostNetwork|hostPort", text)
    policy = docs["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == {"ray.io/cluster": docs["RayCluster"]["metadata"]["name"]}
    assert policy["policyTypes"] == ["Ingress"]
    sources = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert sources == [{"podSelector": {"matchLabels": {"ray.io/cluster": "sepo-ray"}}}]
