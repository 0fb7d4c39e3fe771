"""Kubernetes manifests under infra/ and jobs/: they parse, KubeRay kinds match the KubeRay 1.7 CRD schemas
(../shared/kuberay-crds, made strict), built-in kinds and pod templates match Kubernetes' own schemas
(kubernetes-validate, offline), the training config a RayJob points at loads, and no credential is written in."""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT.parent / "shared" / "kuberay-crds"
KUBERAY_KINDS = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml",
                 "RayCronJob": "ray.io_raycronjobs.yaml"}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

YAML_FILES = sorted(p for d in ("infra", "jobs") for p in (ROOT / d).rglob("*") if p.suffix in {".yaml", ".yml"})
# Kubernetes objects (apiVersion + kind) as opposed to Helm values, job specs and training configs.
MANIFESTS = [(p, i, doc) for p in YAML_FILES for i, doc in enumerate(yaml.load_all(p.read_text(), Loader))
             if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc]


def _id(item) -> str:
    path, i, doc = item
    return f"{path.relative_to(ROOT)}#{i}:{doc['kind']}"


def _of_kind(*kinds):
    return [pytest.param(m, id=_id(m)) for m in MANIFESTS if m[2]["kind"] in kinds]


# --- parsing -------------------------------------------------------------------------------------------------

def test_yaml_files_found():
    names = {p.relative_to(ROOT).as_posix() for p in YAML_FILES}
    assert {"infra/kuberay/raycluster.yaml", "infra/kuberay/operator-values.yaml",
            "jobs/kuberay/train-rayjob.yaml", "jobs/examples/train.yaml"} <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_parses(path):
    docs = list(yaml.safe_load_all(path.read_text()))
    assert docs and all(d is not None for d in docs), f"{path}: empty document"


# --- KubeRay kinds against the CRDs ---------------------------------------------------------------------------

def strict_schema(schema):
    """A Kubernetes structural schema rewritten for jsonschema: objects with `properties` are closed
    (additionalProperties false) unless they carry x-kubernetes-preserve-unknown-fields or already say what
    extra keys may be; x-kubernetes-int-or-string accepts an integer or a string."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (strict_schema(v) if k not in ("enum", "default", "example", "required") else v)
           for k, v in schema.items()}
    if "properties" in out:
        # `properties` maps field names to schemas: rewrite each, not the mapping itself as a schema
        out["properties"] = {k: strict_schema(v) for k, v in schema["properties"].items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str, version: str = "v1"):
    jsonschema = pytest.importorskip("jsonschema")
    if not CRD_DIR.is_dir():
        pytest.skip(f"KubeRay CRDs not present ({CRD_DIR})")
    crd = yaml.load((CRD_DIR / KUBERAY_KINDS[kind]).read_text(), Loader)
    assert crd["spec"]["names"]["kind"] == kind
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict_schema(ver["schema"]["openAPIV3Schema"])
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


def crd_errors(doc) -> list[str]:
    group, _, version = doc["apiVersion"].partition("/")
    assert group == "ray.io", doc["apiVersion"]
    errors = crd_validator(doc["kind"], version).iter_errors(doc)
    return sorted(f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors)


@pytest.mark.parametrize("item", _of_kind(*KUBERAY_KINDS))
def test_kuberay_kind_matches_crd(item):
    path, _, doc = item
    assert crd_errors(doc) == [], path


def _raycluster():
    docs = [d for p, _, d in MANIFESTS if d["kind"] == "RayCluster"]
    assert docs
    return copy.deepcopy(docs[0])


@pytest.mark.parametrize("where", ["spec", "head-container", "worker-group", "autoscaler"])
def test_unknown_key_rejected(where):
    doc = _raycluster()
    target = {"spec": lambda d: d["spec"],
              "head-container": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0],
              "worker-group": lambda d: d["spec"]["workerGroupSpecs"][0],
              "autoscaler": lambda d: d["spec"]["autoscalerOptions"]}[where](doc)
    target["replicaz"] = 3  # a typo the API server would prune silently
    errors = crd_errors(doc)
    assert errors and any("replicaz" in e for e in errors), errors


def test_wrong_type_rejected_and_int_or_string_accepted():
    doc = _raycluster()
    gpu = doc["spec"]["workerGroupSpecs"][-1]
    assert crd_errors(doc) == []
    gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "1"  # int or string
    assert crd_errors(doc) == []
    gpu["maxReplicas"] = "four"
    assert any("maxReplicas" in e for e in crd_errors(doc))


def test_strict_schema_rewrite():
    schema = {"type": "object", "properties": {
        "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
        "map": {"type": "object", "additionalProperties": {"type": "string"}},
        "q": {"x-kubernetes-int-or-string": True},
        "properties": {"type": "object", "properties": {"x": {"type": "string"}}}}}
    s = strict_schema(schema)
    assert s["additionalProperties"] is False
    assert "additionalProperties" not in s["properties"]["open"]
    assert s["properties"]["map"]["additionalProperties"] == {"type": "string"}
    assert s["properties"]["q"]["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert s["properties"]["properties"]["additionalProperties"] is False  # a field named "properties"


# --- built-in kinds and pod templates with kubernetes-validate ----------------------------------------------

def _kv():
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate not installed (test extra)")
    return kv, kv.utils.latest_version()  # schemas ship inside the package: no network


@pytest.mark.parametrize("item", [m for m in _of_kind(*{d["kind"] for _, _, d in MANIFESTS} - set(KUBERAY_KINDS))])
def test_builtin_kind_valid(item):
    kv, version = _kv()
    kv.validate(item[2], version, strict=True)


def _pod_templates(doc):
    spec = doc["spec"]
    if doc["kind"] == "RayCronJob":
        spec = spec["jobTemplate"]
    if doc["kind"] in ("RayJob", "RayCronJob"):
        spec = spec.get("rayClusterSpec") or {}
    groups = [spec.get("headGroupSpec")] + list(spec.get("workerGroupSpecs", []))
    return [g["template"] for g in groups if g]


@pytest.mark.parametrize("item", _of_kind(*KUBERAY_KINDS))
def test_kuberay_pod_templates_valid_pods(item):
    """The CRDs embed PodSpec; Kubernetes' own (newer) schema checks it again, strictly."""
    kv, version = _kv()
    for template in _pod_templates(item[2]):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t", **template.get("metadata", {})},
               "spec": template["spec"]}
        kv.validate(pod, version, strict=True)


def test_builtin_validation_rejects_unknown_key():
    kv, version = _kv()
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "t"},
           "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]}}
    with pytest.raises(kv.ValidationError):
        kv.validate(pod, version, strict=True)


# --- what the manifests say ------------------------------------------------------------------------------------

def _ray_pin() -> str:
    m = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (ROOT / "pyproject.toml").read_text())
    assert m
    return m.group(1)


@pytest.mark.parametrize("item", _of_kind(*KUBERAY_KINDS))
def test_ray_version_matches_package_pin(item):
    doc = item[2]
    spec = doc["spec"] if doc["kind"] == "RayCluster" else (
        doc["spec"].get("jobTemplate", doc["spec"]).get("rayClusterSpec"))
    if spec:
        assert spec["rayVersion"] == _ray_pin()


def test_raycluster_layout():
    spec = _raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in str(head)
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["tolerations"])
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for tpl in _pod_templates({"kind": "RayCluster", "spec": spec}):
        assert tpl["spec"]["securityContext"]["runAsUser"] == 1000
        assert tpl["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in tpl["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in c["env"]}
            assert env["RAY_USAGE_STATS_ENABLED"] == "0"
            assert env["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert {"requests", "limits"} <= set(c["resources"])
            assert any("secretRef" in e for e in c["envFrom"])


def test_operator_values_enable_raycronjob():
    values = yaml.safe_load((ROOT / "infra/kuberay/operator-values.yaml").read_text())
    gates = {g["name"]: g["enabled"] for g in values["featureGates"]}
    assert gates["RayCronJob"] is True


def _train_rayjobs():
    return [m for m in MANIFESTS if m[2]["kind"] == "RayJob" and "stacsr train" in m[2]["spec"]["entrypoint"]]


def test_train_rayjob_settings():
    (item,) = _train_rayjobs()
    spec = item[2]["spec"]
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    for key in ("ttlSecondsAfterFinished", "activeDeadlineSeconds", "backoffLimit", "entrypointNumCpus"):
        assert key in spec
    args = shlex.split(spec["entrypoint"])
    assert args[:2] == ["stacsr", "train"]
    for opt in ("--pairs", "--storage", "--name", "--workers", "--config"):
        assert opt in args
    assert "--gpu" in args
    workers = int(args[args.index("--workers") + 1])
    gpus = sum(g["replicas"] * g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
               for g in spec["rayClusterSpec"]["workerGroupSpecs"])
    assert gpus >= workers


def _config_file(item, tmp_path) -> Path:
    """The --config of a train RayJob as a local file: a repository path (/opt/stacsr/… in the image) or a key
    of a ConfigMap from the same file mounted at the config's folder on every Ray pod."""
    path, _, doc = item
    args = shlex.split(doc["spec"]["entrypoint"])
    cfg = PurePosixPath(args[args.index("--config") + 1])
    if cfg.is_relative_to("/opt/stacsr"):
        return ROOT / cfg.relative_to("/opt/stacsr")
    templates = _pod_templates(doc)
    assert templates
    names = set()
    for tpl in templates:
        volumes = {v["name"]: v for v in tpl["spec"].get("volumes", [])}
        mounts = [m for c in tpl["spec"]["containers"] for m in c.get("volumeMounts", [])
                  if PurePosixPath(m["mountPath"]) == cfg.parent]
        assert mounts, f"{cfg.parent} is not mounted in every Ray pod"
        names.add(volumes[mounts[0]["name"]]["configMap"]["name"])
    (name,) = names
    (cm,) = [d for p, _, d in MANIFESTS if p == path and d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    out = tmp_path / cfg.name
    out.write_text(cm["data"][cfg.name])
    return out


def test_train_config_of_rayjob_loads(tmp_path):
    from stacsr.train.config import load_config

    for item in _train_rayjobs():
        config = _config_file(item, tmp_path)
        assert config.is_file()
        load_config(config)  # ValueError (naming the key) on unknown keys or wrong types
    load_config(ROOT / "jobs/examples/train.yaml")


# --- no credentials in manifests -----------------------------------------------------------------------------

SECRET_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|ACCOUNT_KEY|SAS", re.I)
LITERAL_KEY = [
    re.compile(r"aws_secret_access_key\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{16,}", re.I),
    re.compile(r"aws_secret\w*\s*[:=]\s*['\"]?[A-Za-z0-9/+=]{8,}", re.I),
    re.compile(r"\b(AKIA|ASIA)[A-Z0-9]{16}\b"),  # AWS access key ids
]


def _walk(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def secret_problems(text: str) -> list[str]:
    """Credentials written into a YAML text: key-looking literals, Secrets with values, and secret-named env
    vars with a literal value (only valueFrom.secretKeyRef, or envFrom, may bring them in)."""
    problems = [f"literal credential ({p.pattern})" for p in LITERAL_KEY if p.search(text)]
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            problems.append("Secret with values")
        for node in _walk(doc):
            if "name" in node and ("value" in node or "valueFrom" in node) and SECRET_ENV.search(str(node["name"])):
                if "value" in node or "secretKeyRef" not in (node.get("valueFrom") or {}):
                    problems.append(f"{node['name']} not from a Secret")
    return problems


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_literal_secrets(path):
    assert secret_problems(path.read_text()) == [], path


@pytest.mark.parametrize("bad", [
    {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}]},
    {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
    {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}},
    {"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
    {"id": "AKIAIOSFODNN7EXAMPLE"},
])
def test_secret_check_catches_literal(bad):
    assert secret_problems(yaml.safe_dump(bad))
