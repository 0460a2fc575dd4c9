"""The Kubernetes manifests (deploy/kubernetes) against Kubernetes, the CRDs and the server itself.

Every kustomization is rendered with kubectl's built-in kustomize; every built-in object is
validated by kubernetes-validate (strict, one pinned Kubernetes version); every custom object
against its CRD's vendored schema (crd_schemas/); and the ports, probes, settings, images and
timings are compared with what the server parses, registers and exports, and what the
Dockerfiles build. No cluster is needed.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import gzip
import json
import os
import re
import secrets
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest
import yaml
from deploytools import (
    EXPORT_DOCKERFILE,
    ROOT,
    SERVER_DOCKERFILE,
    check_python_command,
    parse_dockerfile,
    parse_server_settings,
    setting_names,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc

from server.app import create_server
from server.metrics import Metrics
from server.settings import ENV_PREFIX, Settings

sys.path.insert(0, str(ROOT / "tests" / "server"))

from server_testlib import publish_tiny

KUBERNETES = ROOT / "deploy" / "kubernetes"
CRD_SCHEMAS = Path(__file__).parent / "crd_schemas"
#: The Kubernetes release every built-in object must be valid for (kubernetes-validate's schemas).
KUBERNETES_VERSION = "1.37.0"
#: What the tests render: a directory, or a directory plus components, which the test adds in a
#: throwaway overlay, the way an operator turns a component on.
RENDERS = (
    "overlays/cpu",
    "overlays/gpu",
    "overlays/cpu+components/pending-requests-hpa",
    "overlays/cpu+components/models-from-object-storage",
    "base",
    "models",
    "kserve",
    "prometheus-adapter",
)
SERVER_RENDERS = ("overlays/cpu", "overlays/gpu")
SERVER = "cnnserve-server"
#: The container port name for each port setting; a new port setting fails the port tests
#: until it is named here and declared in the manifests.
PORT_NAMES = {"port": "grpc", "http_port": "http", "metrics_port": "metrics"}
#: What the server needs after its grace period: closing sessions and exiting.
SHUTDOWN_MARGIN_S = 5
#: Where KServe puts the storageUri's contents in the predictor container.
KSERVE_MODEL_DIR = "/mnt/models"
#: Stands in for the auth token Secret's value wherever the manifests reference it.
TOKEN = secrets.token_hex(32)
SERVING = health_pb2.HealthCheckResponse.SERVING

Object = dict[str, Any]


# -- tools and rendering --


def tool(name: str) -> str:
    """An executable of the test's own environment (requirements/dev.txt installs both)."""
    path = Path(sys.executable).parent / name
    assert path.is_file(), f"{name} is not in {path.parent}; run `make install`"
    return str(path)


def kustomize(directory: Path) -> list[Object]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(directory)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="session")
def render(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], list[Object]]:
    """Render one of RENDERS (each once per session)."""

    @functools.cache
    def render(name: str) -> list[Object]:
        directory, *components = name.split("+")
        if not components:
            return kustomize(KUBERNETES / directory)
        overlay = tmp_path_factory.mktemp("overlay")
        # kustomize refuses absolute paths.
        relative = [os.path.relpath(KUBERNETES / path, overlay) for path in (directory, *components)]
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": relative[:1],
            "components": relative[1:],
        }
        (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
        return kustomize(overlay)

    return render


def find(objects: list[Object], kind: str, name: str | None = None) -> list[Object]:
    return [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(objects: list[Object], kind: str, name: str | None = None) -> Object:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def type_key(obj: Object) -> tuple[str, str]:
    return obj["apiVersion"], obj["kind"]


def test_every_kustomization_is_rendered() -> None:
    """A new overlay or component cannot escape these tests."""
    rendered = {part for name in RENDERS for part in name.split("+")}
    used = set()
    for path in KUBERNETES.rglob("kustomization.yaml"):
        kustomization = yaml.safe_load(path.read_text())
        for component in kustomization.get("components", []):
            used.add((path.parent / component).resolve().relative_to(KUBERNETES).as_posix())
    for path in sorted(KUBERNETES.rglob("kustomization.yaml")):
        directory = path.parent.relative_to(KUBERNETES).as_posix()
        if yaml.safe_load(path.read_text())["kind"] == "Component":
            assert directory in rendered | used, f"component {directory} is used by no rendered kustomization"
        else:
            assert directory in rendered, f"{directory} is not in RENDERS"


@pytest.mark.parametrize("name", RENDERS)
def test_renders_objects_with_unique_names(render: Callable[[str], list[Object]], name: str) -> None:
    objects = render(name)
    assert objects, f"{name} renders nothing"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"{name} renders duplicates: {sorted(keys)}"


# -- kubernetes-validate for the built-in kinds, the vendored CRD schemas for the rest --


def kubernetes_validate(objects: list[Object], tmp_path: Path) -> None:
    """Every object passes kubernetes-validate --strict at KUBERNETES_VERSION."""
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(objects))
    result = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report = result.stdout + result.stderr
    # It only warns, and exits 0, for a kind it has no schema for: count the passes instead.
    version = ".".join(KUBERNETES_VERSION.split(".")[:2])
    passed = [line for line in report.splitlines() if line.endswith(f" against version {version}")]
    assert result.returncode == 0 and len(passed) == len(objects), (
        f"{len(objects) - len(passed)} of {len(objects)} objects did not pass:\n{report}"
    )


def strict(schema: Any) -> Any:
    """``schema`` rejecting unknown fields.

    A CRD schema lists the known fields but leaves ``additionalProperties`` out; the API server
    drops unknown fields of a custom object silently, or refuses them under kubectl's default
    strict field validation. Either way a misspelt field does not do what it says, so here every
    object schema with ``properties`` gets ``additionalProperties: false``, except where the CRD
    says ``x-kubernetes-preserve-unknown-fields`` (free-form on purpose). Objects without
    ``properties`` (such as ``metadata``, which the API server checks as ObjectMeta) stay open.
    """
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    return out


@functools.cache
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    """A validator for each vendored CRD schema, by (apiVersion, kind)."""
    validators = {}
    for path in sorted(CRD_SCHEMAS.glob("*.json.gz")):
        vendored = json.loads(gzip.decompress(path.read_bytes()))
        key = (f"{vendored['group']}/{vendored['version']}", vendored["kind"])
        # OpenAPI v3.0 schemas are draft 4 with extensions (x-kubernetes-*), which it ignores.
        validators[key] = jsonschema.Draft4Validator(strict(vendored["openAPIV3Schema"]))
    return validators


def crd_errors(obj: Object) -> list[str]:
    return [
        f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in crd_validators()[type_key(obj)].iter_errors(obj)
    ]


@pytest.mark.parametrize("name", RENDERS)
def test_builtin_objects_pass_kubernetes_validate_strict(
    render: Callable[[str], list[Object]], name: str, tmp_path: Path
) -> None:
    objects = render(name)
    builtin = [o for o in objects if type_key(o) not in crd_validators()]
    # kubernetes-validate has no CRDs; a custom object's metadata is checked as a ConfigMap's,
    # since the API server checks it as the same ObjectMeta.
    metadata = [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": o["metadata"]}
        for o in objects
        if type_key(o) in crd_validators()
    ]
    kubernetes_validate(builtin + metadata, tmp_path)


def test_secret_example_is_valid_and_what_the_server_refuses(
    render: Callable[[str], list[Object]], tmp_path: Path
) -> None:
    example = yaml.safe_load((KUBERNETES / "base" / "secret.example.yaml").read_text())
    kubernetes_validate([example], tmp_path)
    container = server_container(render("overlays/cpu"))
    refs = [
        v["valueFrom"]["secretKeyRef"] for v in container["env"] if "secretKeyRef" in v.get("valueFrom", {})
    ]
    assert refs == [{"name": example["metadata"]["name"], "key": next(iter(example["stringData"]))}]
    # Applied unchanged, the example must stop the server, not serve behind a published token.
    placeholder = next(iter(example["stringData"].values()))
    with pytest.raises(AssertionError, match="auth_token"):
        parse_server_settings(["python", "-m", "server"], {f"{ENV_PREFIX}AUTH_TOKEN": placeholder})


@pytest.mark.parametrize("name", [n for n in RENDERS if n not in ("models", "prometheus-adapter")])
def test_custom_objects_match_their_crd_schema(render: Callable[[str], list[Object]], name: str) -> None:
    custom = [o for o in render(name) if type_key(o) in crd_validators()]
    assert custom, f"{name} renders no custom object"
    for obj in custom:
        errors = crd_errors(obj)
        assert not errors, f"{obj['kind']} {obj['metadata']['name']}:\n" + "\n".join(errors)


def test_every_vendored_schema_is_used(render: Callable[[str], list[Object]]) -> None:
    # Every other kind must have a kubernetes-validate schema: kubernetes_validate counts passes.
    kinds = {type_key(o) for name in RENDERS for o in render(name)}
    unused = set(crd_validators()) - kinds
    assert not unused, f"crd_schemas/ holds schemas no manifest uses: {sorted(unused)}"


#: A plausible misspelling for each custom kind: the schema must refuse it.
TYPOS = {
    "ServingRuntime": (("spec", "containers", 0), "port", 8001),
    "InferenceService": (("spec", "predictor", "model"), "storageURI", "pvc://x"),
    "ServiceMonitor": (("spec", "endpoints", 0), "portName", "metrics"),
}


@pytest.mark.parametrize("kind", sorted(TYPOS))
def test_crd_schema_rejects_an_unknown_field(render: Callable[[str], list[Object]], kind: str) -> None:
    (good,) = [o for name in ("overlays/cpu", "kserve") for o in find(render(name), kind)]
    assert not crd_errors(good)
    bad = copy.deepcopy(good)
    path, field, value = TYPOS[kind]
    node: Any = bad
    for step in path:
        node = node[step]
    node[field] = value
    errors = crd_errors(bad)
    assert any(f"'{field}' was unexpected" in e for e in errors), errors


# -- the server's own settings, health services, images and metrics --


def container_environment(container: Object, objects: list[Object]) -> dict[str, str]:
    """The CNNSERVE_* variables the container sees: the image's ENV, then envFrom, then env."""
    image = parse_dockerfile(SERVER_DOCKERFILE).final.environment()
    environment = {k: v for k, v in image.items() if k.startswith(ENV_PREFIX)}
    for source in container.get("envFrom", []):
        config_map = one(objects, "ConfigMap", source["configMapRef"]["name"])
        environment.update({source.get("prefix", "") + k: v for k, v in config_map["data"].items()})
    for variable in container.get("env", []):
        if "value" in variable:
            environment[variable["name"]] = variable["value"]
        else:
            assert "secretKeyRef" in variable["valueFrom"], f"unexpected source in {variable}"
            environment[variable["name"]] = TOKEN
    return environment


def manifest_variable_names(container: Object, objects: list[Object]) -> set[str]:
    """The variable names the manifests themselves set (not the image's)."""
    names = {v["name"] for v in container.get("env", [])}
    for source in container.get("envFrom", []):
        names |= set(one(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
    return names


def deployment(objects: list[Object]) -> Object:
    return one(objects, "Deployment", SERVER)


def server_container(objects: list[Object]) -> Object:
    (container,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return container


def server_settings(objects: list[Object]) -> Settings:
    container = server_container(objects)
    return parse_server_settings(container["command"], container_environment(container, objects))


def stop_seconds(settings: Settings) -> float:
    """The longest the server takes from SIGTERM to its last admitted answer."""
    # The shutdown delay (serving on, health NOT_SERVING, before refusing), then the drain.
    return settings.shutdown_delay + settings.grace_period


def probes(container: Object) -> dict[str, Object]:
    kinds = ("startupProbe", "readinessProbe", "livenessProbe")
    return {kind: container[kind] for kind in kinds if kind in container}


def image_ids(dockerfile: Path) -> tuple[int, int]:
    """The uid and gid of the user the image creates."""
    text = dockerfile.read_text()
    uid, gid = re.search(r"--uid (\d+)", text), re.search(r"--gid (\d+)", text)
    assert uid and gid, f"{dockerfile.name} creates no user with a fixed uid and gid"
    return int(uid[1]), int(gid[1])


def dockerfile_command(dockerfile: Path) -> list[str] | None:
    return parse_dockerfile(dockerfile).final.all("CMD")[-1].exec_form()


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def pod_specs(objects: list[Object]) -> Iterator[tuple[str, Object]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield f"{obj['kind']} {obj['metadata']['name']}", obj["spec"]["template"]["spec"]


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_every_server_variable_is_a_setting_the_server_accepts(
    render: Callable[[str], list[Object]], name: str
) -> None:
    objects = render(name)
    container = server_container(objects)
    unknown = {n for n in manifest_variable_names(container, objects) if n.startswith(ENV_PREFIX)}
    unknown -= setting_names()
    assert not unknown, f"{name}: {sorted(unknown)} are not python -m server settings"
    settings = server_settings(objects)
    assert settings.auth_token == TOKEN, "the token must come from the Secret"
    assert settings.host == "0.0.0.0", f"host {settings.host} is not reachable from other pods"
    # Service links would add variables such as CNNSERVE_METRICS_PORT=tcp://... for a Service
    # named cnnserve-metrics: the server would read them as its settings.
    assert deployment(objects)["spec"]["template"]["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_container_ports_and_probes_are_the_server_ports(
    render: Callable[[str], list[Object]], name: str
) -> None:
    objects = render(name)
    settings = server_settings(objects)
    container = server_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    port_settings = [f.name for f in dataclasses.fields(Settings) if f.name.endswith("port")]
    expected = {PORT_NAMES[f]: getattr(settings, f) for f in port_settings if getattr(settings, f) >= 0}
    assert ports == expected, f"{name}: container ports {ports}; the server listens on {expected}"
    assert set(probes(container)) == {"startupProbe", "readinessProbe", "livenessProbe"}
    for kind, probe in probes(container).items():
        # Native gRPC probes take a number, not a port name.
        assert probe["grpc"]["port"] == settings.port, f"{name}: {kind} probes {probe['grpc']['port']}"


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_termination_grace_covers_prestop_and_the_drain(
    render: Callable[[str], list[Object]], name: str
) -> None:
    objects = render(name)
    pod = deployment(objects)["spec"]["template"]["spec"]
    pre_stop = server_container(objects)["lifecycle"]["preStop"]["sleep"]["seconds"]
    stop = stop_seconds(server_settings(objects))
    # The kubelet's countdown starts before preStop; SIGTERM (and the drain) only after it.
    needed = pre_stop + stop + SHUTDOWN_MARGIN_S
    assert pod["terminationGracePeriodSeconds"] >= needed, (
        f"{name}: terminationGracePeriodSeconds {pod['terminationGracePeriodSeconds']} < preStop "
        f"{pre_stop} + the server's stop {stop} s + {SHUTDOWN_MARGIN_S} s to exit"
    )
    assert pre_stop > 0, "endpoints need a moment to drop the pod before it stops accepting"


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_service_monitor_pdb_and_hpa_find_the_server(
    render: Callable[[str], list[Object]], name: str
) -> None:
    objects = render(name)
    pod_labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in server_container(objects)["ports"]}
    service = one(objects, "Service", SERVER)
    assert service["spec"]["selector"].items() <= pod_labels.items()
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in container_ports, f"Service port {port['name']} targets no container port"
        # Same number inside and out, so that clients and the settings speak of one port.
        assert port["port"] == container_ports[port["targetPort"]] and port["name"] == port["targetPort"]
    monitor = one(objects, "ServiceMonitor", SERVER)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports and endpoint["path"] == "/metrics"
    pdb = one(objects, "PodDisruptionBudget", SERVER)
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(objects, "HorizontalPodAutoscaler", SERVER)
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", SERVER)
    # With one replica, maxUnavailable 1 would let a node drain take the whole service down.
    assert hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"]
    assert "replicas" not in deployment(objects)["spec"], "the HPA owns the replica count"


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_export_job_writes_the_volume_the_servers_mount_read_only(
    render: Callable[[str], list[Object]], name: str
) -> None:
    objects = render(name)
    job_pod = one(objects, "Job", "cnnserve-export")["spec"]["template"]["spec"]
    (export,) = job_pod["containers"]
    repository = export["command"][export["command"].index("--repository") + 1]
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in job_pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    (mount,) = [m for m in export["volumeMounts"] if m["name"] in claims]
    assert mount["mountPath"] == repository and not mount.get("readOnly")
    claim = one(objects, "PersistentVolumeClaim", claims[mount["name"]])
    writable = [m["mountPath"] for m in export["volumeMounts"] if not m.get("readOnly")]
    torch_home = parse_dockerfile(EXPORT_DOCKERFILE).final.environment()["TORCH_HOME"]
    assert any(torch_home.startswith(p + "/") for p in writable), f"TORCH_HOME {torch_home} is read-only"

    pod = deployment(objects)["spec"]["template"]["spec"]
    container = server_container(objects)
    (volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim")]
    assert volume["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"], "readOnly": True}
    (server_mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert server_mount["readOnly"] is True
    assert server_mount["mountPath"] == str(server_settings(objects).repository) == repository


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_commands_are_the_images_own_entry_points(render: Callable[[str], list[Object]], name: str) -> None:
    objects = render(name)
    export = one(objects, "Job", "cnnserve-export")["spec"]["template"]["spec"]["containers"][0]
    for container, dockerfile in (
        (server_container(objects), SERVER_DOCKERFILE),
        (export, EXPORT_DOCKERFILE),
    ):
        check_python_command(container["command"], f"{name}: container {container['name']}")
        assert container["command"] == dockerfile_command(dockerfile), f"{name}: {container['name']}"


@pytest.mark.parametrize("name", [*SERVER_RENDERS, "kserve"])
def test_models_apply_alone_exactly_as_within(render: Callable[[str], list[Object]], name: str) -> None:
    """The README applies models/ first and waits for the Job: the overlay must not change it."""
    for obj in render("models"):
        assert obj in find(render(name), obj["kind"]), f"{name} renders {obj['kind']} differently"


def test_models_from_object_storage_replace_the_volume_and_the_job(
    render: Callable[[str], list[Object]],
) -> None:
    objects = render("overlays/cpu+components/models-from-object-storage")
    assert not find(objects, "Job") and not find(objects, "PersistentVolumeClaim")
    pod = deployment(objects)["spec"]["template"]["spec"]
    repository = str(server_settings(objects).repository)
    (server_mount,) = [m for m in server_container(objects)["volumeMounts"] if m["mountPath"] == repository]
    assert server_mount["readOnly"] is True
    volume = next(v for v in pod["volumes"] if v["name"] == server_mount["name"])
    assert set(volume) == {"name", "emptyDir"}, f"the models volume is {volume}"
    (fetch,) = pod["initContainers"]
    (target,) = [m for m in fetch["volumeMounts"] if m["name"] == volume["name"]]
    assert not target.get("readOnly") and target["mountPath"] == fetch["args"][-1]


@pytest.mark.parametrize("name", [n for n in RENDERS if n != "prometheus-adapter"])
def test_images_are_tagged_with_the_project_version(render: Callable[[str], list[Object]], name: str) -> None:
    # The images this project builds (an init container's is someone else's).
    containers = [c for _, pod in pod_specs(render(name)) for c in pod["containers"]]
    containers += [c for o in find(render(name), "ServingRuntime") for c in o["spec"]["containers"]]
    assert containers
    for container in containers:
        _image, _, tag = container["image"].rpartition(":")
        assert tag == project_version(), (
            f"{name}: {container['image']}; pyproject.toml says {project_version()}"
        )


#: The Dockerfile each of the project's images is built from.
DOCKERFILES = {
    SERVER: SERVER_DOCKERFILE,
    f"{SERVER}-gpu": SERVER_DOCKERFILE,
    "cnnserve-export": EXPORT_DOCKERFILE,
}


@pytest.mark.parametrize("name", [*SERVER_RENDERS, "overlays/cpu+components/models-from-object-storage"])
def test_pods_run_as_the_image_user_without_privileges(
    render: Callable[[str], list[Object]], name: str
) -> None:
    for where, pod in pod_specs(render(name)):
        (main,) = pod["containers"]
        uid, gid = image_ids(DOCKERFILES[main["image"].rpartition(":")[0]])
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True, where
        assert (security["runAsUser"], security["runAsGroup"], security["fsGroup"]) == (uid, gid, gid), where
        assert pod["automountServiceAccountToken"] is False, f"{where} needs no API access"
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod.get("initContainers", []) + pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"]["drop"] == ["ALL"], where
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp must be a writable emptyDir"


def test_gpu_overlay_asks_for_one_gpu_and_cuda(render: Callable[[str], list[Object]]) -> None:
    objects = render("overlays/gpu")
    container = server_container(objects)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert server_settings(objects).device == "cuda"
    assert container["image"].rpartition(":")[0] == "cnnserve-server-gpu"


@pytest.mark.parametrize("name", SERVER_RENDERS)
def test_onnx_runtime_threads_match_the_cpu_request(render: Callable[[str], list[Object]], name: str) -> None:
    # In a pod, os.cpu_count() is the node's; automatic threads would oversubscribe the request.
    objects = render(name)
    cpu = str(server_container(objects)["resources"]["requests"]["cpu"])
    cores = int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu)
    threads = server_settings(objects).intra_op_threads
    assert threads == max(1, int(cores)), f"{name}: {threads} intra-op threads for a CPU request of {cpu}"


def test_cpu_overlay_has_no_gpu(render: Callable[[str], list[Object]]) -> None:
    objects = render("overlays/cpu")
    for where, pod in pod_specs(objects):
        for container in pod["containers"]:
            for amounts in container.get("resources", {}).values():
                assert not [r for r in amounts if r.startswith("nvidia.com/")], f"{where} asks for a GPU"
    assert server_settings(objects).device == "cpu"
    assert server_container(objects)["image"].rpartition(":")[0] == SERVER


# -- the custom-metric autoscaler and the Prometheus Adapter rule --


def test_pending_requests_hpa_asks_for_the_adapter_metric_of_a_real_server_gauge(
    render: Callable[[str], list[Object]],
) -> None:
    hpa = one(render("overlays/cpu+components/pending-requests-hpa"), "HorizontalPodAutoscaler", SERVER)
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Resource", "Pods"], "CPU stays, pending is added"
    config = yaml.safe_load(one(render("prometheus-adapter"), "ConfigMap")["data"]["config.yaml"])
    (rule,) = config["rules"]
    assert rule["name"]["as"] == pods["metric"]["name"]
    series = re.match(r"\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", rule["seriesQuery"])
    assert series and re.fullmatch(rule["name"]["matches"], series[1])
    # The series the rule reads is one the server really exports, as a gauge (a current value).
    families = {m.name: m.type for m in Metrics().registry.collect()}
    assert families.get(series[1]) == "gauge", f"{series[1]} is not a gauge the server exports: {families}"
    # The adapter maps these labels to pods; the Prometheus Operator adds them to every target.
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


# -- KServe --


def test_kserve_runtime_serves_onnx_over_grpc_v2(render: Callable[[str], list[Object]]) -> None:
    objects = render("kserve")
    runtime = one(objects, "ServingRuntime")
    assert "onnx" in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert runtime["spec"]["protocolVersions"] == ["grpc-v2"], "REST (v2) only once the server has it"
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    unknown = {n for n in manifest_variable_names(container, objects) if n.startswith(ENV_PREFIX)}
    assert not unknown - setting_names(), f"{sorted(unknown - setting_names())} are not settings"
    settings = parse_server_settings(container["command"], container_environment(container, objects))
    assert str(settings.repository) == KSERVE_MODEL_DIR
    # Knative allows one port; its name (h2c) tells KServe and Knative it is HTTP/2.
    assert container["ports"] == [{"name": "h2c", "containerPort": settings.port, "protocol": "TCP"}]
    assert container["readinessProbe"]["grpc"]["port"] == settings.port
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(settings.metrics_port)

    service = one(objects, "InferenceService")
    predictor = service["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    claim = one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    assert model["storageUri"] == f"pvc://{claim}", "the models the export Job writes"
    assert predictor["enableServiceLinks"] is False
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert predictor["terminationGracePeriodSeconds"] >= pre_stop + stop_seconds(settings) + SHUTDOWN_MARGIN_S


# -- the probes against a real server --


async def test_probes_pass_against_a_real_server_without_a_token(
    render: Callable[[str], list[Object]], tmp_path: Path
) -> None:
    """Native gRPC probes send no credentials: health must answer SERVING for them with the token on."""
    containers = [server_container(render(name)) for name in SERVER_RENDERS]
    containers += [c for c in one(render("kserve"), "ServingRuntime")["spec"]["containers"]]
    services = {probe["grpc"]["service"] for c in containers for probe in probes(c).values()}
    settings = server_settings(render("overlays/cpu"))
    assert settings.auth_token
    publish_tiny(tmp_path, "tiny")
    # The manifest's settings, on a free local port, with a tiny model instead of the volume.
    local = dataclasses.replace(
        settings,
        repository=tmp_path,
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        device="cpu",
        intra_op_threads=1,
    )
    server, port = await create_server(local)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in sorted(services):
                response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
                assert response.status == SERVING, f"health service {service!r}: {response.status}"
    finally:
        await server.stop(0)
