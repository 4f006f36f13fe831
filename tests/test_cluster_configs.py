"""Offline checks of cluster_configs/: Ray's own config validation, KubeRay shape, security rules.

Nothing here starts a cluster, calls a cloud API or opens a socket, and nothing of grokschedule
is used but its Ray compatibility module: the configs are data, checked with the validators
Ray 2.60 itself runs on them (reached through grokschedule.adapters.ray_compat).
Each rule is a function returning findings that name the offending field, so every rule has
a negative test that feeds it a broken copy.
"""

from __future__ import annotations

import copy
import json
import os
import re
import runpy
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import click
import jsonschema
import pytest
import ray
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ray.scripts.scripts import cli as ray_cli

from grokschedule.adapters.ray_compat import (
    kuberay_autoscaling_config as _derive_autoscaling_config_from_ray_cr,
)
from grokschedule.adapters.ray_compat import prepare_cluster_config as prepare_config
from grokschedule.adapters.ray_compat import validate_cluster_config as validate_config

Config = dict[str, Any]
Mutation = Callable[[Config], object]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "cluster_configs"
RAY_UP_CONFIGS = ("aws-p5-h100.yaml", "gcp-a3-h100.yaml", "local.yaml")
KUBERAY_MANIFESTS = ("kuberay/raycluster.yaml", "kuberay/rayjob.yaml")
ALL_FILES = sorted(p for p in CONFIG_DIR.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
RAY_SCHEMA = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())

RAY_PORTS = (6379, 8265, 10001)  # GCS, dashboard / job API, Ray Client
PUBLIC_CIDRS = {"0.0.0.0/0", "::/0"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
TOKEN_FILE = "~/.ray/auth_token"
SWEEP_ENTRYPOINT = "grokschedule sweep /app/sweeps/h100.yaml"
GPUS_PER_WORKER_POD = 8


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which PyYAML (and so Ray) resolve silently to
    the last one: a second ``env:`` or ``resources:`` would otherwise drop the first unseen."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(name: str) -> Config:
    """One YAML document from cluster_configs/, as ``ray up`` / ``kubectl`` would read it."""
    return yaml.load((CONFIG_DIR / name).read_text(), Loader=_UniqueKeyLoader)


def prepared(config: Config) -> Config:
    """The config as ``ray up`` validates it, after Ray's offline default filling.

    ``ray up`` then runs ``fillout_available_node_types_resources`` and the provider's
    ``bootstrap_config``; both call cloud APIs (EC2 instance types, subnets, security
    groups, IAM; GCP projects, service accounts, subnets), so they are not run here. The
    configs state their node resources explicitly, so the schema's required ``resources``
    holds without them.
    """
    return prepare_config(copy.deepcopy(config))


def test_loader_rejects_duplicate_keys() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate key 'env'"):
        yaml.load("env: [a]\nimage: x\nenv: [b]\n", Loader=_UniqueKeyLoader)


# --- Ray's own cluster-config validation --------------------------------------------------


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_matches_rays_schema(name: str) -> None:
    jsonschema.validate(load(name), RAY_SCHEMA)


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_passes_validate_config_after_defaults(name: str) -> None:
    validate_config(prepared(load(name)))


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda c: c.pop("provider"), "provider"),
        (lambda c: c["available_node_types"]["ray.worker.p5"]["resources"].update(GPU="8"), "GPU"),
        (lambda c: c.update(idle_timeout_minute=15), "idle_timeout_minute"),
    ],
    ids=["required-field-removed", "wrong-type", "misspelt-field"],
)
def test_rays_schema_rejects_broken_config(mutate: Mutation, field: str) -> None:
    config = load("aws-p5-h100.yaml")
    mutate(config)
    with pytest.raises(jsonschema.ValidationError, match=field):
        jsonschema.validate(config, RAY_SCHEMA)


def test_validate_config_rejects_unknown_head_node_type() -> None:
    config = load("aws-p5-h100.yaml")
    config["head_node_type"] = "ray.head.gpu"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(prepared(config))


# --- Security rules for the `ray up` configs ------------------------------------------------


def ray_start_context(config: Config, role: Literal["head", "worker"]) -> str:
    """Everything that sets the environment of ``ray start`` on a node of this role: the
    Docker run options (the container's environment) and the start commands themselves."""
    docker = config.get("docker") or {}
    options = [*docker.get("run_options", []), *docker.get(f"{role}_run_options", [])]
    in_docker = bool(docker.get("container_name"))  # Ray ignores docker: without it
    return " ".join([*(options if in_docker else []), *config[f"{role}_start_ray_commands"]])


def token_auth_findings(config: Config) -> list[str]:
    """Every ``ray start`` runs with RAY_AUTH_MODE=token, and remote nodes get the token file.

    Explicit because Ray 2.60 enables token auth on its own only for a bare ``ray.init()``:
    ``ray start`` without it runs an open cluster.
    """
    findings = [
        f"{role}: no RAY_AUTH_MODE=token in docker run options or {role}_start_ray_commands"
        for role in ("head", "worker")
        if not re.search(r"\bRAY_AUTH_MODE=token\b", ray_start_context(config, role))
    ]
    if config["provider"]["type"] != "local" and TOKEN_FILE not in config["file_mounts"].values():
        findings.append(f"file_mounts: {TOKEN_FILE} is not copied to the nodes")
    return findings


def open_ray_port_rules(ip_permissions: list[Config]) -> list[str]:
    """Security-group rules that let the whole internet reach a Ray port."""
    findings = []
    for rule in ip_permissions:
        cidrs = {r.get("CidrIp") for r in rule.get("IpRanges", [])}
        cidrs |= {r.get("CidrIpv6") for r in rule.get("Ipv6Ranges", [])}
        public = sorted(cidrs & PUBLIC_CIDRS)
        low, high = rule.get("FromPort", 0), rule.get("ToPort", 65535)
        ports = [p for p in RAY_PORTS if str(rule.get("IpProtocol")) == "-1" or low <= p <= high]
        if public and ports:
            findings.append(f"provider.security_group.IpPermissions: {public} reaches {ports}")
    return findings


def aws_node_findings(name: str, node: Config) -> list[str]:
    """A node names its security groups (Ray's auto-created group opens SSH to 0.0.0.0/0),
    directly or on each interface, and no interface asks for a public IP."""
    interfaces = node.get("NetworkInterfaces", [])
    findings = []
    if not node.get("SecurityGroupIds") and not (
        interfaces and all(i.get("Groups") for i in interfaces)
    ):
        findings.append(f"{name}: no SecurityGroupIds, Ray would create an open group")
    if any(i.get("AssociatePublicIpAddress") for i in interfaces):
        findings.append(f"{name}: NetworkInterfaces.AssociatePublicIpAddress is set")
    return findings


def gcp_node_findings(name: str, node: Config) -> list[str]:
    """A node sets its networkInterfaces, without accessConfigs: otherwise Ray attaches an
    external NAT IP."""
    interfaces = node.get("networkInterfaces")
    if not interfaces:
        return [f"{name}: no networkInterfaces, Ray would add an external IP"]
    if any("accessConfigs" in i for i in interfaces):
        return [f"{name}: networkInterfaces.accessConfigs gives an external IP"]
    return []


def network_exposure_findings(config: Config) -> list[str]:
    """No public IP on any node and no internet-wide ingress, as far as the config decides."""
    provider = config["provider"]
    findings = open_ray_port_rules(provider.get("security_group", {}).get("IpPermissions", []))
    if provider["type"] in ("aws", "gcp") and provider.get("use_internal_ips") is not True:
        findings.append("provider.use_internal_ips must be true (private subnets only)")
    node_findings = {"aws": aws_node_findings, "gcp": gcp_node_findings}.get(provider["type"])
    for name, node_type in config["available_node_types"].items():
        findings += node_findings(name, node_type["node_config"]) if node_findings else []
    return findings


def strings(node: Any) -> Iterator[str]:
    """Every key and string value in a parsed YAML document (comments are not data)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)
    elif isinstance(node, str):
        yield node


def public_cidr_findings(document: Any) -> list[str]:
    """Any value naming the whole internet, wherever a rule or option might use it."""
    return [s for s in strings(document) if any(cidr in s for cidr in PUBLIC_CIDRS)]


@pytest.mark.parametrize("name", [*RAY_UP_CONFIGS, *KUBERAY_MANIFESTS])
def test_yaml_opens_nothing_to_the_internet(name: str) -> None:
    assert public_cidr_findings(load(name)) == []


def dashboard_findings(config: Config) -> list[str]:
    """``ray up`` heads serve the dashboard and job API on loopback only (``ray dashboard``
    tunnels to it), so a security-group mistake cannot expose the job API."""
    commands = " ".join(config["head_start_ray_commands"])
    hosts = re.findall(r"--dashboard-host[=\s]+(\S+)", commands)
    if "--head" not in commands:
        return ["head_start_ray_commands: no `ray start --head`"]
    if not hosts or set(hosts) - LOOPBACK_HOSTS:
        return [f"head_start_ray_commands: --dashboard-host {hosts or 'unset'} is not loopback"]
    return []


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_starts_every_node_with_token_auth(name: str) -> None:
    assert token_auth_findings(prepared(load(name))) == []


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_exposes_nothing_publicly(name: str) -> None:
    assert network_exposure_findings(prepared(load(name))) == []


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_head_binds_dashboard_to_loopback(name: str) -> None:
    assert dashboard_findings(prepared(load(name))) == []


@pytest.mark.parametrize("name", RAY_UP_CONFIGS)
def test_ray_up_config_holds_no_inline_cloud_credentials(name: str) -> None:
    """Ray accepts credentials inline in ``provider``; they must come from the environment."""
    assert not {"aws_credentials", "gcp_credentials"} & set(load(name)["provider"])


def test_token_auth_rule_catches_missing_auth_mode() -> None:
    config = load("aws-p5-h100.yaml")
    config["docker"]["run_options"].remove("--env RAY_AUTH_MODE=token")
    config["file_mounts"] = {}
    findings = token_auth_findings(prepared(config))
    assert [f.split(":")[0] for f in findings] == ["head", "worker", "file_mounts"]


def test_open_port_rule_catches_internet_wide_ingress() -> None:
    rules = [
        {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "10.0.0.0/8"}]},
        {
            "IpProtocol": "tcp",
            "FromPort": 8000,
            "ToPort": 9000,
            "IpRanges": [{"CidrIp": "0.0.0.0/0"}],
        },
        {"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]},
    ]
    assert open_ray_port_rules(rules) == [
        "provider.security_group.IpPermissions: ['0.0.0.0/0'] reaches [8265]",
        "provider.security_group.IpPermissions: ['::/0'] reaches [6379, 8265, 10001]",
    ]
    assert public_cidr_findings({"provider": {"security_group": {"IpPermissions": rules}}}) == [
        "0.0.0.0/0",
        "::/0",
    ]


def test_exposure_rule_catches_default_security_group_and_external_ip() -> None:
    aws = load("aws-p5-h100.yaml")
    del aws["available_node_types"]["ray.head.cpu"]["node_config"]["SecurityGroupIds"]
    gcp = load("gcp-a3-h100.yaml")
    gcp["available_node_types"]["ray_worker_a3"]["node_config"]["networkInterfaces"][0][
        "accessConfigs"
    ] = [{"name": "External NAT", "type": "ONE_TO_ONE_NAT"}]
    assert network_exposure_findings(prepared(aws)) == [
        "ray.head.cpu: no SecurityGroupIds, Ray would create an open group"
    ]
    assert network_exposure_findings(prepared(gcp)) == [
        "ray_worker_a3: networkInterfaces.accessConfigs gives an external IP"
    ]


@pytest.mark.parametrize("name", ["aws-p5-h100.yaml", "gcp-a3-h100.yaml"])
def test_dashboard_rule_catches_rays_default_public_bind(name: str) -> None:
    """Without our start commands, Ray's provider defaults bind the dashboard to 0.0.0.0:
    the reason the rule runs on the config after defaults are filled in."""
    config = load(name)
    del config["head_start_ray_commands"]
    assert dashboard_findings(prepared(config)) == [
        "head_start_ray_commands: --dashboard-host ['0.0.0.0'] is not loopback"
    ]


# --- Rules for every file: token auth never off, no secrets ------------------------------

SECRET_PATTERNS = {
    "AWS access key id": r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",
    "AWS secret or session key": r"(?i)\baws_(?:secret_access_key|session_token)\b\s*[=:]",
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "GCP service-account key": r"\"type\"\s*:\s*\"service_account\"",
    "literal Ray token": r"\bRAY_AUTH_TOKEN\b\s*[=:]\s*[\"']?(?![$\s\"'])\S",
    "bearer token": r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{16,}",
    "GitHub token": r"\bgh[pousr]_[A-Za-z0-9]{36}\b",
}


def secret_findings(text: str) -> list[str]:
    """Credentials written into a file: cloud keys, private keys, tokens."""
    return [kind for kind, pattern in SECRET_PATTERNS.items() if re.search(pattern, text)]


def auth_disabled_findings(text: str) -> list[str]:
    """Any setting that switches Ray's token auth off (env var, Docker option, k8s value)."""
    pattern = r"RAY_AUTH_MODE[\"']?\s*(?:=|:|\n\s*value:)\s*[\"']?disabled"
    return [m.group(0) for m in re.finditer(pattern, text)]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_file_holds_no_secret_and_keeps_token_auth_on(path: Path) -> None:
    text = path.read_text()
    assert secret_findings(text) == []
    assert auth_disabled_findings(text) == []


def test_secret_and_auth_rules_catch_leaks() -> None:
    leaks = "\n".join(
        [
            "aws_access_key_id = " + "AKIA" + "Q" * 16,
            "AWS_SECRET_ACCESS_KEY: x",
            "-----BEGIN RSA " + "PRIVATE KEY-----",
            '{"type": "service_account"}',
            "export RAY_AUTH_TOKEN=" + "f" * 32,
            "Authorization: Bearer " + "a" * 24,
            "gh" + "p_" + "b" * 36,
        ]
    )
    assert secret_findings(leaks) == list(SECRET_PATTERNS)
    assert secret_findings("RAY_AUTH_TOKEN=$(cat ~/.ray/auth_token) RAY_AUTH_TOKEN_PATH=/x") == []
    disabled = "--env RAY_AUTH_MODE=disabled\n- name: RAY_AUTH_MODE\n  value: disabled"
    assert len(auth_disabled_findings(disabled)) == 2


# --- KubeRay: typed model of the fields KubeRay requires ----------------------------------


class _Model(BaseModel):
    """Base of the KubeRay model; unmodelled fields pass, modelled ones are type-strict."""

    model_config = ConfigDict(extra="allow", strict=True)


class SecretKeyRef(_Model):
    name: str
    key: str


class EnvVarSource(_Model):
    secretKeyRef: SecretKeyRef | None = None


class EnvVar(_Model):
    name: str
    value: str | None = None
    valueFrom: EnvVarSource | None = None


class Resources(_Model):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class Container(_Model):
    name: str
    image: str = Field(min_length=1)
    env: list[EnvVar] = Field(default_factory=list)
    resources: Resources = Field(default_factory=Resources)


class PodSpec(_Model):
    containers: list[Container] = Field(min_length=1)


class PodTemplate(_Model):
    spec: PodSpec


class HeadGroupSpec(_Model):
    rayStartParams: dict[str, str]
    template: PodTemplate


class WorkerGroupSpec(_Model):
    groupName: str = Field(min_length=1)
    replicas: int = Field(ge=0)
    minReplicas: int = Field(ge=0)
    maxReplicas: int = Field(ge=1)
    rayStartParams: dict[str, str]
    template: PodTemplate

    @model_validator(mode="after")
    def _replicas_in_range_and_eight_gpus(self) -> WorkerGroupSpec:
        if not self.minReplicas <= self.replicas <= self.maxReplicas:
            raise ValueError("replicas must lie within minReplicas..maxReplicas")
        gpus = self.template.spec.containers[0].resources.limits.get("nvidia.com/gpu")
        if gpus is None or int(gpus) != GPUS_PER_WORKER_POD:
            raise ValueError(f"limits nvidia.com/gpu is {gpus}, want {GPUS_PER_WORKER_POD}")
        return self


class AuthOptions(_Model):
    mode: Literal["token"]
    secretName: str = Field(min_length=1)


class RayClusterSpec(_Model):
    rayVersion: str
    headGroupSpec: HeadGroupSpec
    workerGroupSpecs: list[WorkerGroupSpec] = Field(min_length=1)
    authOptions: AuthOptions


class ObjectMeta(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)


class RayCluster(_Model):
    """The RayCluster fields KubeRay (ray.io/v1) requires, plus this project's 8-GPU pods
    and token auth.

    A typed model rather than the CRD's OpenAPI schema because no installed package ships
    the KubeRay CRDs (site-packages only has Ray's own KubeRay autoscaler code, which reads
    a RayCluster but does not validate it) and nothing may be fetched. ``kubectl apply
    --dry-run=server`` against a cluster with the operator is the authoritative check.
    """

    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayCluster"]
    metadata: ObjectMeta
    spec: RayClusterSpec


class RayJobSpec(_Model):
    entrypoint: str = Field(min_length=1)
    shutdownAfterJobFinishes: bool
    ttlSecondsAfterFinished: int = Field(ge=0)
    rayClusterSpec: RayClusterSpec


class RayJob(_Model):
    """The RayJob fields this project relies on; the cluster is created from the inline spec."""

    apiVersion: Literal["ray.io/v1"]
    kind: Literal["RayJob"]
    metadata: ObjectMeta
    spec: RayJobSpec


def cluster_specs() -> dict[str, RayClusterSpec]:
    """The RayCluster spec of each manifest, validated on the way."""
    return {
        "raycluster": RayCluster.model_validate(load("kuberay/raycluster.yaml")).spec,
        "rayjob": RayJob.model_validate(load("kuberay/rayjob.yaml")).spec.rayClusterSpec,
    }


def kuberay_security_findings(spec: RayClusterSpec) -> list[str]:
    """Token auth from the Secret in every Ray container; the head only on a ClusterIP Service.

    The head binds the dashboard to 0.0.0.0 because the operator and the RayJob submitter
    reach it through the head Service; that is acceptable only while the Service stays
    cluster-internal.
    """
    head = spec.headGroupSpec.model_extra or {}
    service_types = {
        head.get("serviceType", "ClusterIP"),
        head.get("headService", {}).get("spec", {}).get("type", "ClusterIP"),
    }
    findings = []
    if service_types != {"ClusterIP"} or head.get("enableIngress"):
        findings.append("headGroupSpec: head Service must be ClusterIP without ingress")
    templates = {"headGroupSpec": spec.headGroupSpec.template}
    templates |= {group.groupName: group.template for group in spec.workerGroupSpecs}
    for group, template in templates.items():
        env = {e.name: e for e in template.spec.containers[0].env}
        mode, token = env.get("RAY_AUTH_MODE"), env.get("RAY_AUTH_TOKEN")
        if mode is None or mode.value != "token":
            findings.append(f"{group}: RAY_AUTH_MODE is not token")
        ref = token.valueFrom.secretKeyRef if token and token.valueFrom else None
        if token is None or token.value is not None or ref is None:
            findings.append(f"{group}: RAY_AUTH_TOKEN must come from a secretKeyRef")
        elif (ref.name, ref.key) != (spec.authOptions.secretName, "auth_token"):
            findings.append(f"{group}: RAY_AUTH_TOKEN secretKeyRef is not authOptions' Secret")
    return findings


@pytest.mark.parametrize(
    ("name", "model"), zip(KUBERAY_MANIFESTS, (RayCluster, RayJob), strict=True)
)
def test_kuberay_manifest_matches_the_typed_model(name: str, model: type[_Model]) -> None:
    model.model_validate(load(name))


def test_rayjob_runs_the_sweep_and_cleans_up() -> None:
    job = RayJob.model_validate(load("kuberay/rayjob.yaml")).spec
    assert job.entrypoint == SWEEP_ENTRYPOINT
    assert job.shutdownAfterJobFinishes is True
    assert job.ttlSecondsAfterFinished > 0


def test_rayjob_cluster_is_the_raycluster() -> None:
    """One cluster definition in two files: a drift would give RayJobs another cluster."""
    assert (
        load("kuberay/rayjob.yaml")["spec"]["rayClusterSpec"]
        == load("kuberay/raycluster.yaml")["spec"]
    )


@pytest.mark.parametrize("kind", ["raycluster", "rayjob"])
def test_kuberay_cluster_is_token_authenticated_and_internal(kind: str) -> None:
    assert kuberay_security_findings(cluster_specs()[kind]) == []


def test_rays_kuberay_autoscaler_reads_eight_gpu_workers_and_idle_head() -> None:
    """Ray's in-cluster autoscaler derives its config from the RayCluster (and runs
    validate_config on it); check what it will plan with."""
    cluster = load("kuberay/raycluster.yaml")
    cluster["metadata"]["namespace"] = "default"
    node_types = _derive_autoscaling_config_from_ray_cr(cluster)["available_node_types"]
    assert node_types["headgroup"]["resources"]["CPU"] == 0
    assert node_types["h100x8"]["resources"]["GPU"] == GPUS_PER_WORKER_POD


def _worker(manifest: Config) -> Config:
    return manifest["spec"]["workerGroupSpecs"][0]


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda m: _worker(m).pop("groupName"), "groupName"),
        (lambda m: _worker(m)["rayStartParams"].update({"num-cpus": 0}), "rayStartParams"),
        (lambda m: m["spec"].pop("rayVersion"), "rayVersion"),
        (
            lambda m: m["spec"]["headGroupSpec"]["template"]["spec"].update(containers=[]),
            "containers",
        ),
        (
            lambda m: _worker(m)["template"]["spec"]["containers"][0]["resources"]["limits"].update(
                {"nvidia.com/gpu": "4"}
            ),
            "nvidia.com/gpu",
        ),
        (lambda m: m["spec"]["authOptions"].update(mode="disabled"), "authOptions.mode"),
        (lambda m: m.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
    ],
    ids=[
        "field-removed",
        "wrong-type",
        "no-ray-version",
        "no-container",
        "four-gpus",
        "auth-off",
        "old-api",
    ],
)
def test_typed_model_rejects_broken_raycluster(mutate: Mutation, field: str) -> None:
    manifest = load("kuberay/raycluster.yaml")
    mutate(manifest)
    with pytest.raises(ValidationError, match=re.escape(field)):
        RayCluster.model_validate(manifest)


def test_kuberay_security_rule_catches_literal_token_and_public_service() -> None:
    manifest = load("kuberay/raycluster.yaml")
    manifest["spec"]["headGroupSpec"]["serviceType"] = "LoadBalancer"
    _worker(manifest)["template"]["spec"]["containers"][0]["env"] = [
        {"name": "RAY_AUTH_MODE", "value": "token"},
        {"name": "RAY_AUTH_TOKEN", "value": "not-from-a-secret"},
    ]
    assert kuberay_security_findings(RayCluster.model_validate(manifest).spec) == [
        "headGroupSpec: head Service must be ClusterIP without ingress",
        "h100x8: RAY_AUTH_TOKEN must come from a secretKeyRef",
    ]


# --- One Ray version everywhere -----------------------------------------------------------


def test_image_and_kuberay_pin_the_tested_ray_version() -> None:
    """The image, its pip pin and KubeRay's rayVersion must be the Ray these tests ran with
    (pyproject pins it), or head, workers and laptop disagree on the wire protocol."""
    dockerfile = (CONFIG_DIR / "docker" / "Dockerfile").read_text()
    assert re.search(
        rf"^ARG RAY_IMAGE=rayproject/ray:{re.escape(ray.__version__)}-", dockerfile, re.M
    )
    assert f"=={ray.__version__}" in dockerfile
    assert {spec.rayVersion for spec in cluster_specs().values()} == {ray.__version__}


# --- README and the ray submit launcher ---------------------------------------------------


def readme_ray_commands() -> list[list[str]]:
    """Every ``ray ...`` command line in the README's shell blocks, as argv."""
    blocks = re.findall(r"```bash\n(.*?)```", (CONFIG_DIR / "README.md").read_text(), re.S)
    lines = (line for block in blocks for line in block.splitlines())
    return [argv for line in lines if (argv := shlex.split(line, comments=True))[:1] == ["ray"]]


def unknown_ray_flags(argv: list[str]) -> list[str]:
    """Flags in ``argv`` that its Ray CLI command does not define (up to the ``--`` that
    starts the entrypoint)."""
    command: click.Command = ray_cli
    words = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
    while isinstance(command, click.Group) and words and words[0] in command.commands:
        command, words = command.commands[words[0]], words[1:]
    if isinstance(command, click.Group):
        return [f"{' '.join(argv)}: no such ray command"]
    known = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    flags = (word.split("=", 1)[0] for word in words if word.startswith("-"))
    return [flag for flag in flags if flag not in known]


def test_readme_uses_only_flags_that_ray_260_has() -> None:
    commands = readme_ray_commands()
    assert len(commands) > 10
    assert [flag for argv in commands for flag in unknown_ray_flags(argv)] == []


def test_flag_check_catches_invented_flags() -> None:
    assert unknown_ray_flags(["ray", "up", "--yes", "--region=us-east-1", "c.yaml"]) == ["--region"]
    assert unknown_ray_flags(["ray", "job", "submit", "--no-wait", "--", "x", "--any"]) == []
    assert unknown_ray_flags(["ray", "job"]) == ["ray job: no such ray command"]


def test_submit_sweep_hands_over_to_grokschedule_sweep(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    monkeypatch.setattr(os, "execvp", lambda file, args: calls.append((file, args)))
    monkeypatch.setattr(sys, "argv", ["submit_sweep.py", "/app/sweeps/h100.yaml"])
    runpy.run_path(str(CONFIG_DIR / "submit_sweep.py"), run_name="__main__")
    assert calls == [("grokschedule", shlex.split(SWEEP_ENTRYPOINT))]
