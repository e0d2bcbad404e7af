"""The deployment files in deploy/: Dockerfile, constraints, docker-compose, Kubernetes manifests.

Nothing here needs Docker or a cluster. The Kubernetes manifests are validated offline against the
Kubernetes OpenAPI schemas bundled with kubernetes-validate (strict: unknown fields are errors), the
compose file against the Compose Specification schema, and what no schema can see is checked by
hand: that the pieces agree with each other and with the gateway (ports, probe paths, grace periods,
names, the config loading with the project's own loader). Finally the gateway is run as a real
process exactly as the image and the Deployment start it, and the Dockerfile's HEALTHCHECK command
and the probes are exercised against it.
"""

from __future__ import annotations

import asyncio
import base64
import configparser
import importlib.metadata
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from gateway.cli import build_parser
from gateway.config import GatewaySettings, load_config
from gateway.server.app import client_keys
from tests.conftest import ROOT, free_port
from tests.fake_vllm import FakeVLLM

DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
CONSTRAINTS = DEPLOY / "constraints.txt"
COMPOSE = DEPLOY / "docker-compose.yaml"
K8S = DEPLOY / "kubernetes"

# The oldest Kubernetes the manifests promise to work on; the newest schemas bundled with
# kubernetes-validate are checked as well (deprecations show up there first).
MIN_KUBERNETES = "1.30"


# ---------------------------------------------------------------------------------------------------
# Reading the files
# ---------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue  # comments (also inside continuations, as Docker allows) and blank lines
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        current = ""
    assert not current, "the Dockerfile ends inside a continuation line"
    return instructions


def dockerfile(keyword: str) -> list[str]:
    return [rest for kw, rest in dockerfile_instructions() if kw == keyword]


def exec_form(arguments: str) -> list[str]:
    """A JSON-array (exec form) argument list; fails for the shell form."""
    value = json.loads(arguments)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), arguments
    return value


def global_args() -> dict[str, str]:
    """ARG defaults declared before the first FROM (the ones FROM may use)."""
    args: dict[str, str] = {}
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            args[name.strip()] = value.strip().strip("\"'")
    return args


def constraints() -> dict[str, tuple[str, str]]:
    """canonical name -> (name as written, the line)."""
    pins: dict[str, tuple[str, str]] = {}
    for line in CONSTRAINTS.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = Requirement(line).name
        assert canonicalize_name(name) not in pins, f"{name} is listed twice in constraints.txt"
        pins[canonicalize_name(name)] = (name, line)
    return pins


def pinned_versions() -> dict[str, Version]:
    versions = {}
    for key, (_, line) in constraints().items():
        (specifier,) = Requirement(line).specifier
        versions[key] = Version(specifier.version)
    return versions


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg", encoding="utf-8")
    return parser


def requirement_lines(text: str) -> list[Requirement]:
    return [Requirement(line.strip()) for line in text.splitlines() if line.strip()]


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def manifest_files() -> list[Path]:
    return sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path, doc))
    return docs


def one(kind: str) -> dict[str, Any]:
    found = [doc for _, doc in manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes/, found {len(found)}"
    return found[0]


def gateway_container() -> dict[str, Any]:
    containers = one("Deployment")["spec"]["template"]["spec"]["containers"]
    (container,) = [c for c in containers if c["name"] == "gateway"]
    return container


def container_port(port: int | str) -> int:
    """A probe's or Service's port, named or numbered, as the gateway container's port number."""
    ports = gateway_container()["ports"]
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"port {port} is not a container port"
        return port
    (number,) = [p["containerPort"] for p in ports if p.get("name") == port]
    return number


def configmap_config_text() -> str:
    return one("ConfigMap")["data"]["config.yaml"]


def configmap_gateway_section() -> dict[str, Any]:
    return yaml.safe_load(configmap_config_text())["gateway"]


def secret_data() -> dict[str, str]:
    secret = one("Secret")
    data = dict(secret.get("stringData") or {})
    for key, value in (secret.get("data") or {}).items():
        data[key] = base64.b64decode(value).decode()
    return data


def deployment_environ() -> dict[str, str]:
    """The gateway container's environment as the kubelet would set it (Secret values resolved)."""
    secrets = secret_data()
    environ = {}
    for entry in gateway_container().get("env", []):
        if "value" in entry:
            environ[entry["name"]] = entry["value"]
        else:
            ref = entry["valueFrom"]["secretKeyRef"]
            assert ref["name"] == one("Secret")["metadata"]["name"]
            assert ref["key"] in secrets, f"the Secret has no key {ref['key']}"
            environ[entry["name"]] = secrets[ref["key"]]
    return environ


def mounted_file(path: str) -> tuple[dict[str, Any], str]:
    """The volume and the key inside it that a file path in the container comes from."""
    spec = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    for mount in gateway_container()["volumeMounts"]:
        root = PurePosixPath(mount["mountPath"])
        target = PurePosixPath(path)
        if root in target.parents:
            volume = volumes[mount["name"]]
            relative = str(target.relative_to(root))
            source = volume.get("configMap") or volume.get("secret")
            assert source is not None, f"{path} is on volume {mount['name']}, which is no ConfigMap/Secret"
            items = {item["path"]: item["key"] for item in source.get("items", [])}
            return volume, items.get(relative, relative)
    raise AssertionError(f"no volume is mounted at {path}")


def duration_s(text: str) -> float:
    """A compose duration such as 40s, 1m30s or 30m."""
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+)s)?(?:(\d+)ms)?", str(text))
    assert parts and any(parts.groups()), f"not a duration: {text!r}"
    h, m, s, ms = (int(g or 0) for g in parts.groups())
    return h * 3600 + m * 60 + s + ms / 1000


def prestop_sleep_s() -> float:
    """The preStop hook's sleep (exec `sleep N` or the native sleep action), 0 without one."""
    pre_stop = gateway_container().get("lifecycle", {}).get("preStop")
    if not pre_stop:
        return 0
    if "sleep" in pre_stop:
        return float(pre_stop["sleep"]["seconds"])
    command = pre_stop["exec"]["command"]
    assert command[0] == "sleep" and len(command) == 2, command
    return float(command[1])


# ---------------------------------------------------------------------------------------------------
# Dockerfile
# ---------------------------------------------------------------------------------------------------


def test_base_image_is_pinned_to_a_full_version() -> None:
    args = global_args()
    stages: set[str] = set()
    images = []
    for rest in dockerfile("FROM"):
        words = rest.split()
        image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
        if len(words) == 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if image in stages:
            continue  # FROM an earlier stage
        images.append(image)
    assert images, "no FROM"
    for image in images:
        name, _, tag = image.partition("@")[0].rpartition(":")
        assert name and tag, f"{image}: no tag"
        assert tag != "latest"
        assert re.match(r"\d+\.\d+\.\d+-", tag), f"{image}: pin the full version, e.g. python:3.11.13-slim-bookworm"
        assert "slim" in tag, f"{image}: use a slim base"


def test_image_runs_as_a_fixed_non_root_user() -> None:
    users = dockerfile("USER")
    assert users, "the image must not run as root: no USER"
    user = users[-1]
    uid, _, gid = user.partition(":")
    # Numeric: Kubernetes' runAsNonRoot can only verify a numeric user.
    assert uid.isdigit() and int(uid) >= 1000, user
    assert not gid or (gid.isdigit() and int(gid) != 0), user
    # The user exists in the image (useradd with that uid) and is the one the Deployment runs as.
    assert any(f"--uid {uid}" in run for run in dockerfile("RUN")), f"no useradd --uid {uid}"
    pod_security = one("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsUser"] == int(uid)
    if gid:
        assert pod_security["runAsGroup"] == int(gid)
    # USER comes after everything that needs root.
    keywords = [kw for kw, _ in dockerfile_instructions()]
    last_user = len(keywords) - 1 - keywords[::-1].index("USER")
    assert "RUN" not in keywords[last_user:], "RUN after the final USER runs as the gateway user: reorder"


def test_exposes_the_gateway_port() -> None:
    exposed = " ".join(dockerfile("EXPOSE")).split()
    default_port = GatewaySettings().port
    assert default_port == 8300
    assert f"{default_port}" in exposed or f"{default_port}/tcp" in exposed


def test_healthcheck_asks_the_gateway_health_endpoint() -> None:
    (healthcheck,) = dockerfile("HEALTHCHECK")
    options, _, command = healthcheck.partition("CMD ")
    timeout = re.search(r"--timeout=(\d+)s", options)
    # The gateway's /health waits up to 3 s for vLLM before answering.
    assert timeout and int(timeout.group(1)) > 3, "HEALTHCHECK --timeout must exceed /health's 3 s"
    argv = exec_form(command)
    assert argv[0] == "python", "slim images have no curl: use the image's Python"
    url = dict(kv.split("=", 1) for kv in shlex.split(" ".join(dockerfile("ENV"))) if "=" in kv)
    health_url = url["VLLM_GATEWAY_HEALTHCHECK_URL"]
    assert urlsplit(health_url).path == "/health"
    assert urlsplit(health_url).port == GatewaySettings().port


def test_dependencies_are_installed_from_the_constraints_file() -> None:
    runs = dockerfile("RUN")
    installs = [run for run in runs if "pip install" in run]
    assert installs
    for run in installs:
        for command in run.split("&&"):
            if "pip install" in command:
                assert "-c deploy/constraints.txt" in command, f"unconstrained pip install: {command.strip()}"
    project = [run for run in installs if "'.[fast]'" in run or '".[fast]"' in run or " .[fast]" in run]
    assert project, "the project is installed with its fast extra (uvloop)"
    assert any("--no-cache-dir" in run for run in project)
    assert any(rest.split()[0] == "deploy/constraints.txt" for rest in dockerfile("COPY"))


def test_copies_the_project_from_the_repository_root() -> None:
    sources = set()
    for rest in dockerfile("COPY"):
        words = [w for w in rest.split() if not w.startswith("--")]
        if rest.startswith("--from"):
            continue
        sources.update(w.rstrip("/") for w in words[:-1])
    for needed in ("setup.cfg", "pyproject.toml", "README.md", "gateway", "config"):
        assert needed in sources, f"the image build needs {needed}"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
    # The ignore file must not drop what the build copies.
    ignored = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for source in sources:
        assert source not in ignored, f"{source} is copied but excluded by Dockerfile.dockerignore"
    assert ".venv" in ignored and ".git" in ignored and "env.yaml" in ignored


def test_entrypoint_and_cmd_start_the_gateway_with_the_shipped_config() -> None:
    (entrypoint,) = dockerfile("ENTRYPOINT")
    (cmd,) = dockerfile("CMD")
    scripts = setup_cfg()["options.entry_points"]["console_scripts"]
    assert exec_form(entrypoint) == ["vllm-gateway"] and "vllm-gateway = gateway.cli:main" in scripts
    argv = exec_form(cmd)
    args = build_parser().parse_args(argv)  # the CLI accepts it as written
    assert args.command == "serve" and args.host == "0.0.0.0"
    # The config it names is where the image puts config/vllm_model.yaml.
    copies = {rest.split()[-1]: rest.split()[-2] for rest in dockerfile("COPY") if not rest.startswith("--")}
    assert copies[args.config[0]] == "config/vllm_model.yaml"
    # ...and that config, with the POLICY_* variables `docker run -e` would give, loads.
    config = load_config(
        [ROOT / copies[args.config[0]]],
        overrides=[f"gateway.host={args.host}"],
        environ={"POLICY_BASE_URL": "http://gpu:8000/v1", "POLICY_MODEL_NAME": "Qwen/Qwen3-8B",
                 "POLICY_API_KEY": "EMPTY"},
    )
    assert config.model_server.base_url == ["http://gpu:8000/v1"] and config.gateway.host == "0.0.0.0"


# ---------------------------------------------------------------------------------------------------
# constraints.txt
# ---------------------------------------------------------------------------------------------------


def test_every_constraint_is_an_exact_pin() -> None:
    for _, line in constraints().values():
        requirement = Requirement(line)
        assert not requirement.marker and not requirement.extras and not requirement.url, line
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"{line}: pin with =="
        assert "*" not in specifiers[0].version, f"{line}: no wildcards"


def test_pins_satisfy_setup_cfg() -> None:
    cfg = setup_cfg()
    required = requirement_lines(cfg["options"]["install_requires"])
    required += requirement_lines(cfg["options.extras_require"]["fast"])
    versions = pinned_versions()
    names = {canonicalize_name(r.name) for r in required}
    assert {"aiohttp", "msgspec", "orjson", "pyyaml", "uvloop"} <= names
    for requirement in required:
        key = canonicalize_name(requirement.name)
        assert key in versions, f"{requirement.name} (setup.cfg) is not pinned in constraints.txt"
        assert requirement.specifier.contains(versions[key], prereleases=True), (
            f"constraints.txt pins {requirement.name}=={versions[key]}, outside setup.cfg's {requirement}")
    # The image ships the metrics client too, whether or not setup.cfg names it yet.
    assert "prometheus-client" in versions


def test_pins_cover_every_dependency() -> None:
    """Every package pip would install for '.[fast]' (and prometheus-client) is pinned: walk the
    requirements through the metadata of the packages installed here, where their version matches."""
    versions = pinned_versions()
    cfg = setup_cfg()
    environment = default_environment()
    todo = requirement_lines(cfg["options"]["install_requires"]) + requirement_lines(
        cfg["options.extras_require"]["fast"]) + [Requirement("prometheus-client")]
    seen: set[str] = set()
    while todo:
        requirement = todo.pop()
        key = canonicalize_name(requirement.name)
        if key in seen:
            continue
        seen.add(key)
        assert key in versions, f"{requirement.name} is installed into the image but not pinned"
        try:
            dist = importlib.metadata.distribution(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: its own dependencies cannot be read
        if Version(dist.version) != versions[key]:
            continue  # a different version's metadata says nothing about the pinned one
        for text in dist.requires or []:
            dependency = Requirement(text)
            if dependency.marker is None or dependency.marker.evaluate({**environment, "extra": ""}):
                todo.append(dependency)
    tooling = {"pip", "setuptools", "wheel"}
    unused = set(versions) - seen - tooling
    assert not unused, f"pinned but not needed by the image: {sorted(unused)}"


# ---------------------------------------------------------------------------------------------------
# docker-compose.yaml
# ---------------------------------------------------------------------------------------------------


def _vllm_argv() -> list[str]:
    service = compose()["services"]["vllm"]
    entrypoint = service.get("entrypoint") or []
    command = service.get("command") or []
    entrypoint = shlex.split(entrypoint) if isinstance(entrypoint, str) else entrypoint
    command = shlex.split(command) if isinstance(command, str) else command
    return [str(a) for a in [*entrypoint, *command]]


def test_compose_file_matches_the_compose_specification() -> None:
    try:
        import importlib.resources

        import jsonschema
        schema_text = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
            "compose-spec.json").read_text(encoding="utf-8")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema (which bundles the Compose Specification schema) is not installed")
    schema = json.loads(schema_text)
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(compose()), key=str)
    assert not errors, "\n".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_runs_vllm_with_tool_calling_and_without_a_reasoning_parser() -> None:
    service = compose()["services"]["vllm"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", service["image"]), "pin vLLM's image version"
    argv = _vllm_argv()
    line = " ".join(argv)
    assert argv[:3] == ["vllm", "serve", "Qwen/Qwen3-8B"], line
    assert "--enable-auto-tool-choice" in argv
    assert "--tool-call-parser hermes" in line or "--tool-call-parser=hermes" in argv
    everything = json.dumps(service)
    assert "--reasoning-parser" not in everything and "reasoning_parser" not in everything.lower()


def test_compose_reserves_an_nvidia_gpu_for_vllm() -> None:
    devices = compose()["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices), devices
    assert "deploy" not in compose()["services"]["gateway"] or "devices" not in json.dumps(
        compose()["services"]["gateway"]["deploy"]), "the gateway needs no GPU"


def test_compose_gateway_starts_after_vllm_and_points_at_it() -> None:
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["depends_on"]["vllm"]["condition"] == "service_healthy"
    assert services["vllm"]["healthcheck"]["test"], "service_healthy needs a vLLM healthcheck"
    argv = _vllm_argv()
    vllm_port = int(argv[argv.index("--port") + 1]) if "--port" in argv else 8000
    url = urlsplit(gateway["environment"]["POLICY_BASE_URL"])
    assert (url.hostname, url.port, url.path) == ("vllm", vllm_port, "/v1")
    # The image is built from the repository root with deploy/Dockerfile.
    build = gateway["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    # docker stop must wait for the gateway's own grace period.
    assert duration_s(gateway["stop_grace_period"]) > GatewaySettings().shutdown_grace_s
    # Its environment, as compose would substitute it (unset variables: their defaults), makes the
    # image's default config load.
    environ = {
        name: re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value)) for name, value in gateway["environment"].items()
    }
    config = load_config([ROOT / "config" / "vllm_model.yaml"], environ=environ)
    assert config.model_server.base_url == ["http://vllm:8000/v1"]
    assert config.model_server.model == _vllm_argv()[2]


# ---------------------------------------------------------------------------------------------------
# Kubernetes manifests
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kubernetes_validate() -> Any:
    try:
        import kubernetes_validate.utils as utils
    except ModuleNotFoundError:
        pytest.fail("kubernetes-validate is not installed; it is a test dependency: pip install -e '.[test]'")
    bundled = {utils.major_minor(v) for v in utils.all_versions()}
    assert MIN_KUBERNETES in bundled, f"this kubernetes-validate has no schemas for {MIN_KUBERNETES}: {bundled}"
    return utils


@pytest.mark.parametrize("version", [MIN_KUBERNETES, "latest"])
def test_manifests_validate_strictly_against_the_kubernetes_schemas(kubernetes_validate: Any, version: str) -> None:
    utils = kubernetes_validate
    if version == "latest":
        version = utils.major_minor(utils.latest_version())
    docs = manifests()
    assert len(manifest_files()) >= 5
    for path, doc in docs:
        where = f"{path.name} ({doc.get('kind')}/{doc.get('metadata', {}).get('name')})"
        try:
            utils.validate(doc, version, strict=True)
        except utils.ValidationError as e:
            pytest.fail(f"{where} against Kubernetes {version}: {'.'.join(map(str, e.path))}: {e.message}")
        except utils.SchemaNotFoundError as e:
            # The CLI only warns about this; an unknown kind or apiVersion is an error here.
            pytest.fail(f"{where}: {e.message}")


def test_the_validator_is_strict(kubernetes_validate: Any) -> None:
    """A misspelt field deep in the Deployment, a wrong type and an unknown apiVersion are all caught,
    so the test above really checks something."""
    utils = kubernetes_validate
    deployment = one("Deployment")
    typo = json.loads(json.dumps(deployment))
    container = typo["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["httpGett"] = container["readinessProbe"].pop("httpGet")
    with pytest.raises(utils.ValidationError, match="httpGett"):
        utils.validate(typo, MIN_KUBERNETES, strict=True)
    wrong_type = json.loads(json.dumps(deployment))
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "8300"
    with pytest.raises(utils.ValidationError):
        utils.validate(wrong_type, MIN_KUBERNETES, strict=True)
    unknown = {**deployment, "apiVersion": "apps/v2"}
    with pytest.raises(utils.SchemaNotFoundError):
        utils.validate(unknown, MIN_KUBERNETES, strict=True)


def test_manifests_are_the_expected_set_and_namespace_agnostic() -> None:
    kinds = sorted(doc["kind"] for _, doc in manifests())
    assert kinds == sorted(
        ["ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"])
    for path, doc in manifests():
        assert "namespace" not in doc["metadata"], f"{path.name}: leave the namespace to kubectl -n"


def test_service_and_pdb_select_the_deployment_pods() -> None:
    deployment = one("Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    service = one("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"].get("sessionAffinity", "None") == "None"
    (port,) = service["spec"]["ports"]
    assert port["port"] == 8300 and container_port(port["targetPort"]) == configmap_gateway_section()["port"]
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa = one("HorizontalPodAutoscaler")
    deployment = one("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], "Deployment", deployment["metadata"]["name"])
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    # CPU utilisation is relative to the request, which must therefore be set.
    assert gateway_container()["resources"]["requests"]["cpu"]
    assert deployment["spec"]["replicas"] == 2
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a PDB at minReplicas blocks every drain"


def test_deployment_is_locked_down() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = gateway_container()
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"] and not security["capabilities"].get("add")
    assert spec.get("automountServiceAccountToken") is False
    resources = container["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[kind].keys(), f"resources.{kind}"
    image = container["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), "pin the image tag"


def test_readiness_is_health_and_liveness_does_not_depend_on_vllm() -> None:
    container = gateway_container()
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/health"
    assert container_port(readiness["port"]) == configmap_gateway_section()["port"]
    # /health may take 3 s (it asks vLLM): the probe must wait longer than that.
    assert container["readinessProbe"]["timeoutSeconds"] > 3
    # /health is 503 whenever vLLM is down: a liveness probe on it would restart healthy gateways.
    liveness = container["livenessProbe"]
    assert "httpGet" not in liveness or liveness["httpGet"]["path"] != "/health"
    assert container_port(liveness["tcpSocket"]["port"]) == configmap_gateway_section()["port"]


def test_termination_grace_covers_the_gateway_shutdown() -> None:
    spec = one("Deployment")["spec"]["template"]["spec"]
    grace = configmap_gateway_section()["shutdown_grace_s"]
    assert spec["terminationGracePeriodSeconds"] > grace
    # The preStop sleep runs inside the same budget, before SIGTERM; after the grace period the
    # requests still running get SHUTDOWN_ANSWER_S to write their answer (response.failed, a 503),
    # and aiohttp a second to close the connections (tests/test_hostile.py measures the exit).
    from gateway.server.app import SHUTDOWN_ANSWER_S

    assert prestop_sleep_s() > 0, "a preStop sleep lets endpoint removal propagate before SIGTERM"
    assert spec["terminationGracePeriodSeconds"] >= prestop_sleep_s() + grace + SHUTDOWN_ANSWER_S + 1
    # The image's preStop command exists there: `sleep` is in the Debian base.
    assert gateway_container()["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"


def test_prometheus_scrape_annotations_point_at_the_gateway() -> None:
    annotations = one("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert int(annotations["prometheus.io/port"]) == configmap_gateway_section()["port"]


def test_configmap_config_loads_with_the_gateway_loader(tmp_path: Path) -> None:
    """The shipped config, with the environment the Deployment gives the container, is valid."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(configmap_config_text(), encoding="utf-8")
    environ = deployment_environ()
    assert "POLICY_API_KEY" in environ
    config = load_config([config_path], environ=environ)
    assert config.model_server.base_url == ["http://vllm:8000/v1"]
    assert config.model_server.api_key == secret_data()["POLICY_API_KEY"]
    assert config.model_server.model == "Qwen/Qwen3-8B"
    assert config.gateway.host == "0.0.0.0"
    assert config.gateway.port == container_port("http")
    # The Deployment starts the gateway on the mounted ConfigMap.
    args = build_parser().parse_args(gateway_container()["args"])
    assert args.command == "serve"
    volume, key = mounted_file(args.config[0])
    assert volume["configMap"]["name"] == one("ConfigMap")["metadata"]["name"] and key == "config.yaml"


def test_several_vllm_servers_example_loads(tmp_path: Path) -> None:
    """The commented-out list in the ConfigMap is valid config when uncommented."""
    text = configmap_config_text()
    example = re.search(r"#   base_url:\n((?:\s*#     - .*\n)+)", text)
    assert example, "the ConfigMap shows how to list several vLLM servers"
    urls = re.findall(r"- (http\S+)", example.group(1))
    assert len(urls) >= 2
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    config = load_config([path], environ=deployment_environ(),
                         overrides=["policy_model.responses_api_models.vllm_model.base_url=[" + ",".join(urls) + "]"])
    assert config.model_server.base_url == urls


def test_client_keys_file_comes_from_the_secret(tmp_path: Path) -> None:
    keys_path = configmap_gateway_section()["api_keys_file"]
    volume, key = mounted_file(keys_path)
    assert volume["secret"]["secretName"] == one("Secret")["metadata"]["name"]
    assert key in secret_data(), f"the Secret has no {key}"
    # The file is in the format the gateway reads: the placeholder lines are comments, not keys,
    # and a key added to it is one.
    file = tmp_path / "api_keys"
    file.write_text(secret_data()[key], encoding="utf-8")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(configmap_config_text(), encoding="utf-8")
    config = load_config([config_path], environ=deployment_environ(), overrides=[f"gateway.api_keys_file={file}"])
    assert client_keys(config) == []
    file.write_text(secret_data()[key] + "k-123456\n", encoding="utf-8")
    assert client_keys(config) == [b"k-123456"]


# ---------------------------------------------------------------------------------------------------
# The gateway started the way the image and the Deployment start it
# ---------------------------------------------------------------------------------------------------


async def _run(argv: list[str], env: dict[str, str], timeout: float = 15) -> int:
    process = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
    return await asyncio.wait_for(process.wait(), timeout)


async def _wait_listening(port: int, process: asyncio.subprocess.Process, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert process.returncode is None, "the gateway exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert time.monotonic() < deadline, "the gateway did not start listening"
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


def _launches(upstream_url: str, port: int, tmp_path: Path) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    """(name, argv, environment) of the gateway as docker run and as the Deployment start it,
    pointed at a fake vLLM on loopback."""
    cmd = exec_form(dockerfile("CMD")[0])
    cmd = [a if a != "0.0.0.0" else "127.0.0.1" for a in cmd]  # loopback in tests
    config = cmd[cmd.index("--config") + 1]
    cmd[cmd.index("--config") + 1] = str(ROOT / "config" / "vllm_model.yaml")  # what the image has at `config`
    assert config == "/etc/vllm-gateway/config.yaml"
    yield "docker run", [*cmd, "--port", str(port)], {
        "POLICY_BASE_URL": upstream_url, "POLICY_MODEL_NAME": "Qwen/Qwen3-8B"}

    config_path = tmp_path / "config.yaml"
    config_path.write_text(configmap_config_text(), encoding="utf-8")
    keys = tmp_path / "api_keys"
    keys.write_text(secret_data()["api_keys"], encoding="utf-8")
    args = list(gateway_container()["args"])
    args[args.index("--config") + 1] = str(config_path)
    yield "kubernetes", [*args, f"+policy_model.vllm_model.base_url={upstream_url}", "gateway.host=127.0.0.1",
                         f"gateway.port={port}", f"gateway.api_keys_file={keys}"], deployment_environ()


async def test_gateway_started_as_in_the_image_and_the_deployment(upstream: FakeVLLM, tmp_path: Path) -> None:
    """Run the real CLI with the image's CMD and with the Deployment's args and config; the
    Dockerfile's HEALTHCHECK command, the readiness and liveness probes and SIGTERM behave."""
    import aiohttp

    healthcheck = exec_form(dockerfile("HEALTHCHECK")[0].partition("CMD ")[2])
    healthcheck[0] = sys.executable
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] - prestop_sleep_s()
    base_env = {k: v for k, v in os.environ.items() if not k.upper().startswith("POLICY_")}
    for name, argv, env in _launches(upstream.url, free_port(), tmp_path):  # type: ignore[attr-defined]
        port = int(re.search(r"(?:--port |gateway\.port=)(\d+)", " ".join(argv)).group(1))  # type: ignore[union-attr]
        upstream.healthy = True
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway", *argv, cwd=tmp_path, env={**base_env, **env},
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await _wait_listening(port, process)
            check_env = {**base_env, "VLLM_GATEWAY_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/health"}
            assert await _run(healthcheck, check_env) == 0, f"{name}: HEALTHCHECK failed with vLLM up"
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    assert response.status == 200, name  # the readiness probe
                upstream.healthy = False
                async with session.get(f"http://127.0.0.1:{port}/health") as response:
                    assert response.status == 503, name  # not ready...
            await _wait_listening(port, process)  # ...but alive (the liveness probe's TCP connect)
            assert await _run(healthcheck, check_env) == 1, f"{name}: HEALTHCHECK passed with vLLM down"
            process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(process.wait(), grace)
            assert process.returncode == 0, f"{name}: exit {process.returncode}"
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
        stderr = (await process.stderr.read()).decode()  # type: ignore[union-attr]
        assert f"listening on http://127.0.0.1:{port}" in stderr, stderr


def test_compose_vllm_healthcheck_command_runs() -> None:
    """The vLLM healthcheck is a Python one-liner too (python3 is sure to be in the vLLM image, curl
    is not): check that it runs, and fails when nothing listens."""
    test = compose()["services"]["vllm"]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python3"
    code = test[3].replace("http://127.0.0.1:8000/health", f"http://127.0.0.1:{free_port()}/health")
    compile(test[3], "<healthcheck>", "exec")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "urlopen error" in result.stderr, result.stderr
