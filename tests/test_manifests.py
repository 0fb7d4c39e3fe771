"""Kubernetes manifests under infra/ and jobs/: they parse, KubeRay kinds match the KubeRay 1.7 CRD schemas
(tests/schemas/kuberay-crds, made strict), built-in kinds and pod templates match Kubernetes' own schemas
(kubernetes-validate, offline), the training config a RayJob points at loads, the batch RayJob and its two
weekly schedules (RayCronJob; CronJob + RBAC creating a RayJob) agree with each other and with the job spec they
mount, the layout of issue 21 holds (one item per node: GPU workers sized for the spec's items, scratch on the
workers with STACSR_SCRATCH_LIMIT equal to its sizeLimit, a head with num-cpus 0 that holds no pixels and no
scratch), and no credential is written in. Manifests embedded as YAML text in ConfigMaps (the RayJob the CronJob
creates) are checked like the others; `job_specs()` lists the `stacsr batch` job specs the ConfigMaps hold."""

from __future__ import annotations

import copy
import functools
import re
import shlex
import shutil
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from stacsr.io.sink import disk_fraction

ROOT = Path(__file__).resolve().parents[1]
CRD_DIR = ROOT / "tests" / "schemas" / "kuberay-crds"  # KubeRay v1.7.0's CRDs (tests/schemas/kuberay-crds/README.md)
KUBERAY_KINDS = {
    "RayCluster": "ray.io_rayclusters.yaml",
    "RayJob": "ray.io_rayjobs.yaml",
    "RayCronJob": "ray.io_raycronjobs.yaml",
}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

YAML_FILES = sorted(p for d in ("infra", "jobs") for p in (ROOT / d).rglob("*") if p.suffix in {".yaml", ".yml"})
# Kubernetes objects (apiVersion + kind) as opposed to Helm values, job specs and training configs.
MANIFESTS = [
    (p, i, doc)
    for p in YAML_FILES
    for i, doc in enumerate(yaml.load_all(p.read_text(), Loader))
    if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc
]


def _id(item) -> str:
    path, i, doc = item
    return f"{path.relative_to(ROOT)}#{i}:{doc['kind']}"


def _of_kind(*kinds):
    return [pytest.param(m, id=_id(m)) for m in MANIFESTS if m[2]["kind"] in kinds]


BATCH_RAYJOB = "jobs/kuberay/batch-rayjob.yaml"
RAYCRONJOB = "jobs/kuberay/alps-weekly-raycronjob.yaml"
CRONJOB = "jobs/kuberay/alps-weekly-cronjob.yaml"
BATCH_FILES = (BATCH_RAYJOB, RAYCRONJOB, CRONJOB)


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _embedded_manifests():
    """Kubernetes objects written as YAML text in a ConfigMap (a `*.yaml` key), as (path, source, object): e.g.
    the RayJob manifest the CronJob's pod passes to `kubectl create -f`."""
    out = []
    for path, i, doc in MANIFESTS:
        if doc["kind"] != "ConfigMap":
            continue
        for key, text in (doc.get("data") or {}).items():
            if key.endswith((".yaml", ".yml")):
                for j, inner in enumerate(yaml.safe_load_all(text)):
                    if isinstance(inner, dict) and "apiVersion" in inner and "kind" in inner:
                        out.append((path, f"{_rel(path)}#{i}:ConfigMap/{doc['metadata']['name']}/{key}#{j}", inner))
    return out


EMBEDDED = _embedded_manifests()


def rayjob_specs():
    """Every RayJob spec that can run, as (path, source, spec): RayJob objects, RayCronJob jobTemplates and RayJobs
    embedded in ConfigMaps."""
    out = []
    for path, i, doc in MANIFESTS:
        if doc["kind"] == "RayJob":
            out.append((path, f"{_rel(path)}#{i}:RayJob", doc["spec"]))
        elif doc["kind"] == "RayCronJob":
            out.append((path, f"{_rel(path)}#{i}:RayCronJob.jobTemplate", doc["spec"]["jobTemplate"]))
    out += [(path, source, doc["spec"]) for path, source, doc in EMBEDDED if doc["kind"] == "RayJob"]
    return out


def _of_specs(pred=lambda spec: True):
    return [pytest.param(item, id=item[1]) for item in rayjob_specs() if pred(item[2])]


def job_specs() -> list[tuple[str, dict]]:
    """The `stacsr batch` job specs under jobs/kuberay: the `job.yaml` key of every ConfigMap there, as
    (source, parsed dict) — source names the file, the document and the ConfigMap. For checking them with the
    job-spec loader."""
    out = []
    for path, i, doc in MANIFESTS:
        if doc["kind"] == "ConfigMap" and path.is_relative_to(ROOT / "jobs" / "kuberay"):
            text = (doc.get("data") or {}).get("job.yaml")
            if text is not None:
                out.append((f"{_rel(path)}#{i}:ConfigMap/{doc['metadata']['name']}", yaml.safe_load(text)))
    return out


# --- parsing -------------------------------------------------------------------------------------------------


def test_yaml_files_found():
    names = {p.relative_to(ROOT).as_posix() for p in YAML_FILES}
    assert {
        "infra/kuberay/raycluster.yaml",
        "infra/kuberay/operator-values.yaml",
        "jobs/kuberay/train-rayjob.yaml",
        "jobs/examples/train.yaml",
        *BATCH_FILES,
    } <= names


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
    out = {
        k: (strict_schema(v) if k not in ("enum", "default", "example", "required") else v) for k, v in schema.items()
    }
    if "properties" in out:
        # `properties` maps field names to schemas: rewrite each, not the mapping itself as a schema
        out["properties"] = {k: strict_schema(v) for k, v in schema["properties"].items()}
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
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
    target = {
        "spec": lambda d: d["spec"],
        "head-container": lambda d: d["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0],
        "worker-group": lambda d: d["spec"]["workerGroupSpecs"][0],
        "autoscaler": lambda d: d["spec"]["autoscalerOptions"],
    }[where](doc)
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
    schema = {
        "type": "object",
        "properties": {
            "open": {"type": "object", "x-kubernetes-preserve-unknown-fields": True, "properties": {"a": {}}},
            "map": {"type": "object", "additionalProperties": {"type": "string"}},
            "q": {"x-kubernetes-int-or-string": True},
            "properties": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
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
    """The Ray pod templates (head, then worker groups) of a RayCluster, RayJob or RayCronJob."""
    spec = doc["spec"]
    if doc["kind"] == "RayCronJob":
        spec = spec["jobTemplate"]
    if doc["kind"] in ("RayJob", "RayCronJob"):
        spec = spec.get("rayClusterSpec") or {}
    groups = [spec.get("headGroupSpec")] + list(spec.get("workerGroupSpecs", []))
    return [g["template"] for g in groups if g]


def _validate_pod_template(kv, version, template):
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "t", **template.get("metadata", {})},
        "spec": template["spec"],
    }
    kv.validate(pod, version, strict=True)


@pytest.mark.parametrize("item", _of_kind(*KUBERAY_KINDS))
def test_kuberay_pod_templates_valid_pods(item):
    """The CRDs embed PodSpec; Kubernetes' own (newer) schema checks it again, strictly."""
    kv, version = _kv()
    for template in _pod_templates(item[2]):
        _validate_pod_template(kv, version, template)


def test_builtin_validation_rejects_unknown_key():
    kv, version = _kv()
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "t"},
        "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicyy": "Always"}]},
    }
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
    spec = (
        doc["spec"]
        if doc["kind"] == "RayCluster"
        else (doc["spec"].get("jobTemplate", doc["spec"]).get("rayClusterSpec"))
    )
    if spec:
        assert spec["rayVersion"] == _ray_pin()


def test_raycluster_layout():
    spec = _raycluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert "nvidia.com/gpu" not in str(head)
    _check_small_head(head)
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu = groups["gpu"]
    _check_gpu_group(gpu)
    assert gpu["replicas"] == 10  # the example's starting size; the operator sets their own
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 50  # idle GPU nodes go; queued items bring up to 50
    for g in groups.values():
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert _scratch(g["template"]), f"group {g['groupName']}: items run on workers, which need scratch"
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
    gpus = sum(
        g["replicas"] * g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)
        for g in spec["rayClusterSpec"]["workerGroupSpecs"]
    )
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
        mounts = [
            m
            for c in tpl["spec"]["containers"]
            for m in c.get("volumeMounts", [])
            if PurePosixPath(m["mountPath"]) == cfg.parent
        ]
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


# --- batch: the RayJob, its two weekly schedules, the job spec they mount ------------------------------------


def _rayjob_doc(spec, name="t"):
    return {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": name}, "spec": spec}


def _batch(spec) -> bool:
    return shlex.split(spec.get("entrypoint", ""))[:2] == ["stacsr", "batch"]


def _docs(rel: str):
    return [d for p, _, d in MANIFESTS if _rel(p) == rel]


def _one(rel: str, kind: str, name: str | None = None):
    (doc,) = [d for d in _docs(rel) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


def test_embedded_rayjob_found():
    assert [s for p, s, d in EMBEDDED if _rel(p) == CRONJOB and d["kind"] == "RayJob"]
    sources = {s.split("#")[0] for _, s, _ in rayjob_specs()}
    assert set(BATCH_FILES) <= sources


@pytest.mark.parametrize("item", [pytest.param(e, id=e[1]) for e in EMBEDDED if e[2]["kind"] in KUBERAY_KINDS])
def test_embedded_kuberay_kind_matches_crd(item):
    doc = copy.deepcopy(item[2])
    doc["metadata"].setdefault("name", doc["metadata"].get("generateName", "") + "abcde")
    assert crd_errors(doc) == [], item[1]


@pytest.mark.parametrize("item", _of_specs())
def test_rayjob_spec_matches_crd(item):
    """Each RayJob spec — a RayCronJob's jobTemplate and a RayJob kept as text included — is a valid RayJob."""
    _, source, spec = item
    assert crd_errors(_rayjob_doc(spec)) == [], source
    if spec.get("rayClusterSpec"):
        assert spec["rayClusterSpec"]["rayVersion"] == _ray_pin()


@pytest.mark.parametrize("item", _of_specs())
def test_rayjob_spec_pods_valid(item):
    kv, version = _kv()
    spec = item[2]
    templates = _pod_templates(_rayjob_doc(spec)) + [t for t in [spec.get("submitterPodTemplate")] if t]
    for template in templates:
        _validate_pod_template(kv, version, template)
    if spec.get("submitterPodTemplate"):  # KubeRay takes it as it is: a Job's pod must not restart
        assert spec["submitterPodTemplate"]["spec"]["restartPolicy"] == "Never"


def test_crd_check_sees_a_broken_raycronjob_template():
    doc = copy.deepcopy(_one(RAYCRONJOB, "RayCronJob"))
    assert crd_errors(doc) == []
    doc["spec"]["jobTemplate"]["shutdownAfterJobFinish"] = True  # typo
    doc["spec"]["concurrencyPolicy"] = "Forbid"  # a CronJob field RayCronJob does not have
    errors = crd_errors(doc)
    assert any("shutdownAfterJobFinish" in e for e in errors) and any("concurrencyPolicy" in e for e in errors)


def test_rayjob_names_fit_kuberay_limits():
    """RayJob names are DNS-1035 labels of at most 47 characters (KubeRay appends 6 for the RayCluster);
    generateName and RayCronJob add 5 random characters (after a '-' for the RayCronJob)."""
    names = [d["metadata"]["name"] for _, _, d in MANIFESTS if d["kind"] == "RayJob"]
    names += [d["metadata"]["name"] + "-abcde" for _, _, d in MANIFESTS if d["kind"] == "RayCronJob"]
    names += [
        d["metadata"].get("name") or d["metadata"]["generateName"] + "abcde"
        for _, _, d in EMBEDDED
        if d["kind"] == "RayJob"
    ]
    assert names
    for name in names:
        assert len(name) <= 47 and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name), name


def test_job_specs_found():
    specs = job_specs()
    by_file = {source.split("#")[0] for source, _ in specs}
    assert set(BATCH_FILES) <= by_file
    for source, spec in specs:
        assert isinstance(spec, dict) and spec.get("name"), source


def test_same_configmap_same_data():
    """A ConfigMap repeated in several files (the job spec, so each file applies on its own) is the same
    everywhere: applying one file must not change what another runs."""
    seen: dict[str, tuple[str, dict]] = {}
    for path, _, doc in MANIFESTS:
        if doc["kind"] == "ConfigMap":
            name = doc["metadata"]["name"]
            first = seen.setdefault(name, (_rel(path), doc["data"]))
            assert doc["data"] == first[1], f"ConfigMap {name}: {_rel(path)} differs from {first[0]}"
    assert "stacsr-alps-weekly" in seen


def test_weekly_rayjob_specs_identical():
    """The one-off RayJob, the RayCronJob's jobTemplate and the RayJob the CronJob creates run the same thing."""
    once = _one(BATCH_RAYJOB, "RayJob")["spec"]
    assert _one(RAYCRONJOB, "RayCronJob")["spec"]["jobTemplate"] == once
    (embedded,) = [d for p, _, d in EMBEDDED if _rel(p) == CRONJOB and d["kind"] == "RayJob"]
    assert embedded["spec"] == once


def _mounted_configmap(path: Path, spec, file: PurePosixPath):
    """The ConfigMap (defined in the same manifest file) that every Ray pod of a RayJob spec mounts at
    file's folder; returns (configmap, key)."""
    names = set()
    for tpl in _pod_templates(_rayjob_doc(spec)):
        volumes = {v["name"]: v for v in tpl["spec"].get("volumes", [])}
        for c in tpl["spec"]["containers"]:
            mounts = [m for m in c.get("volumeMounts", []) if PurePosixPath(m["mountPath"]) == file.parent]
            assert mounts, f"{file.parent} is not mounted in container {c['name']}"
            names.add(volumes[mounts[0]["name"]]["configMap"]["name"])
    (name,) = names
    (cm,) = [d for p, _, d in MANIFESTS if p == path and d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    assert file.name in cm["data"], f"ConfigMap {name} has no key {file.name}"
    return cm, file.name


def _cpu(quantity) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


_SUFFIX = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}


def _bytes(quantity) -> float:
    """A Kubernetes quantity of bytes ("64Gi", "512M", "1073741824") as a number."""
    m = re.fullmatch(r"([0-9.]+)([KMGT]i|[kMGT])?", str(quantity))
    assert m, quantity
    return float(m[1]) * _SUFFIX.get(m[2] or "", 1)


# Scratch disk per whole Sentinel-2 tile in flight, as the sink reserves it: its compressed blocks, the COGs
# streaming to object storage from them (stacsr.io.sink.disk_fraction: 7.7 GB of 15.4 GB raw).
SCRATCH_PER_WHOLE_TILE = 43920**2 * 4 * 2 * disk_fraction("deflate", remote=True)
EXAMPLE_GPU_NODES = 10  # the GPU workers the examples start with (README, "A week over Europe, on paper")


def _limits(group) -> dict:
    return group["template"]["spec"]["containers"][0]["resources"]["limits"]


def _scratch(template) -> float | None:
    """The scratch disk of a Ray pod template, in bytes (None without one). Where there is one, every container
    mounts it at STACSR_SCRATCH and says its size in STACSR_SCRATCH_LIMIT, equal to the volume's sizeLimit (so
    items wait for scratch instead of overrunning it); a pod without one sets neither."""
    volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
    sizes = set()
    for c in template["spec"]["containers"]:
        env = {e["name"]: e for e in c.get("env", [])}
        if "STACSR_SCRATCH" not in env:
            assert "STACSR_SCRATCH_LIMIT" not in env, c["name"]
            sizes.add(None)
            continue
        path = env["STACSR_SCRATCH"]["value"]
        (mount,) = [m for m in c.get("volumeMounts", []) if m["mountPath"] == path]
        volume = volumes[mount["name"]]
        assert "emptyDir" in volume and volume["emptyDir"].get("medium") != "Memory", volume  # disk, not RAM
        assert "sizeLimit" in volume["emptyDir"], f"{c['name']}: scratch volume {mount['name']} has no sizeLimit"
        size = volume["emptyDir"]["sizeLimit"]
        limit = env.get("STACSR_SCRATCH_LIMIT", {}).get("value")
        assert limit == size, f"{c['name']}: STACSR_SCRATCH_LIMIT {limit} ≠ sizeLimit {size}"
        sizes.add(_bytes(size))
    (size,) = sizes
    return size


def _check_small_head(head):
    """A head that takes no item and holds no pixels: num-cpus 0, modest resources, no scratch disk."""
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert _scratch(head["template"]) is None
    assert not [v for v in head["template"]["spec"].get("volumes", []) if v["name"] == "scratch"]
    for c in head["template"]["spec"]["containers"]:
        assert _cpu(c["resources"]["limits"]["cpu"]) <= 2 and _bytes(c["resources"]["limits"]["memory"]) <= 8 * 2**30


def _check_gpu_group(group):
    """A GPU worker group as issue 21 sizes it: one GPU, 16 CPUs, about 64 GB per node, Ray told of the GPU,
    the GPU taint tolerated, a scratch disk for two whole tiles."""
    limits = _limits(group)
    assert limits["nvidia.com/gpu"] == 1
    assert group["rayStartParams"]["num-gpus"] == "1"
    assert _cpu(limits["cpu"]) == 16 and _bytes(limits["memory"]) == 64 * 2**30
    assert any(t["key"] == "nvidia.com/gpu" for t in group["template"]["spec"]["tolerations"])
    assert _scratch(group["template"]) >= 2 * SCRATCH_PER_WHOLE_TILE


@pytest.mark.parametrize("item", _of_specs(_batch))
def test_batch_rayjob(item):
    path, source, spec = item
    args = shlex.split(spec["entrypoint"])
    assert len(args) == 3 and "--address" not in spec["entrypoint"], args  # RAY_ADDRESS comes from Ray
    cm, key = _mounted_configmap(path, spec, PurePosixPath(args[2]))
    job = yaml.safe_load(cm["data"][key])

    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0 and spec["preRunningDeadlineSeconds"] > 0
    assert "clusterSelector" not in spec

    cluster = spec["rayClusterSpec"]
    _check_small_head(cluster["headGroupSpec"])  # items go to the workers; the driver holds no pixels
    workers = cluster["workerGroupSpecs"]
    assert workers
    res = job["resources"]
    assert "actors" not in res and "gpus_per_actor" not in res  # the keys of the tile-actor engine are gone
    gpus_per_item = res.get("gpus_per_item", 0)
    for g in workers:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        if g["minReplicas"] != g["maxReplicas"]:
            assert cluster["enableInTreeAutoscaling"] is True, f"{source}: {g['groupName']} scales, no autoscaler"
        limits = _limits(g)
        gpus, cpus = limits.get("nvidia.com/gpu", 0), _cpu(limits["cpu"])
        if gpus_per_item:
            assert gpus, f"{source}: group {g['groupName']} has no GPU for items asking {gpus_per_item}"
            items = int(gpus / gpus_per_item + 1e-9)  # items a node takes at once
            assert items >= 1
            # the node's CPUs and GPU run out together: none idle while items wait
            assert items * (res.get("cpus_per_item") or 1) == cpus, f"{source}: {items} items × CPUs ≠ {cpus}"
        else:
            assert not gpus, f"{source}: GPU workers the job spec does not use"
            items = 1 if not res.get("cpus_per_item") else int(cpus // res["cpus_per_item"])
        scratch = _scratch(g["template"])
        assert scratch is not None, f"{source}: group {g['groupName']} runs items and has no scratch"
        if res.get("tile_size"):
            # whole MGRS tiles may be in the areas: each item a node takes needs a whole tile's scratch
            assert scratch >= items * SCRATCH_PER_WHOLE_TILE, f"{source}: {scratch / 1e9:.0f} GB for {items} items"

    templates = _pod_templates(_rayjob_doc(spec)) + [spec["submitterPodTemplate"]]
    for tpl in templates:
        assert tpl["spec"]["securityContext"]["runAsNonRoot"] is True
        for c in tpl["spec"]["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert {"requests", "limits"} <= set(c["resources"])
    if job["output"].startswith("s3://"):  # credentials, from the Secret, on every Ray pod: workers upload COGs,
        for tpl in templates[:-1]:  # the driver on the head writes the run report
            for c in tpl["spec"]["containers"]:
                assert {"secretRef": {"name": "stacsr-object-store"}} in c["envFrom"], source


def test_batch_rayjob_example_sizes():
    """The example's cluster (issue 21): 10 GPU nodes of 1 GPU, 16 CPUs, 64 GiB and 16Gi of scratch each, two
    whole tiles per node (gpus_per_item 0.5, cpus_per_item 8), items in flight left to the cluster, a head of at
    most 2 CPUs / 8 GiB with num-cpus 0 and no CPU worker group."""
    spec = _one(BATCH_RAYJOB, "RayJob")["spec"]
    cluster = spec["rayClusterSpec"]
    (gpu,) = cluster["workerGroupSpecs"]  # the CPU group of the tile-actor layout is gone
    _check_gpu_group(gpu)
    assert gpu["replicas"] == EXAMPLE_GPU_NODES
    assert _scratch(gpu["template"]) == _bytes("16Gi")
    _check_small_head(cluster["headGroupSpec"])
    cm, key = _mounted_configmap(ROOT / BATCH_RAYJOB, spec, PurePosixPath(shlex.split(spec["entrypoint"])[2]))
    res = yaml.safe_load(cm["data"][key])["resources"]
    assert (res["gpus_per_item"], res["cpus_per_item"], res["items_in_flight"]) == (0.5, 8, None)


def test_scratch_check_catches_mismatch():
    tpl = copy.deepcopy(_one(BATCH_RAYJOB, "RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"])
    assert _scratch(tpl) == _bytes("16Gi")
    (c,) = tpl["spec"]["containers"]
    (limit,) = [e for e in c["env"] if e["name"] == "STACSR_SCRATCH_LIMIT"]
    limit["value"] = "100Gi"  # more than the volume holds: the kubelet would evict the pod
    with pytest.raises(AssertionError, match="STACSR_SCRATCH_LIMIT"):
        _scratch(tpl)
    limit["value"] = "16Gi"
    (c["env"][[e["name"] for e in c["env"]].index("STACSR_SCRATCH")])["value"] = "/tmp/ray"  # no sizeLimit there
    with pytest.raises(AssertionError, match="sizeLimit"):
        _scratch(tpl)
    head = copy.deepcopy(_one(BATCH_RAYJOB, "RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"])
    pod = head["template"]["spec"]
    pod["volumes"].append({"name": "scratch", "emptyDir": {"sizeLimit": "64Gi"}})
    pod["containers"][0]["volumeMounts"].append({"name": "scratch", "mountPath": "/scratch"})
    pod["containers"][0]["env"] += [
        {"name": "STACSR_SCRATCH", "value": "/scratch"},
        {"name": "STACSR_SCRATCH_LIMIT", "value": "64Gi"},
    ]
    with pytest.raises(AssertionError, match="is None"):
        _check_small_head(head)  # a head with scratch: items (pixels) on the head


WEEK = 7 * 24 * 3600


def _weekly(schedule: str) -> bool:
    minute, hour, dom, month, dow = schedule.split()
    return dom == month == "*" and all(re.fullmatch(r"\d+", f) for f in (minute, hour, dow))


def test_raycronjob_schedule():
    doc = _one(RAYCRONJOB, "RayCronJob")
    spec = doc["spec"]
    assert doc["apiVersion"] == "ray.io/v1"
    assert _weekly(spec["schedule"]) and "TZ" not in spec["schedule"]  # KubeRay: the zone goes in timeZone
    assert spec["timeZone"] == "UTC"
    assert spec.get("suspend") is not True
    job = spec["jobTemplate"]
    # RayCronJob has no concurrencyPolicy: a run must give up (every attempt) before the next one starts
    assert (job["preRunningDeadlineSeconds"] + job["activeDeadlineSeconds"]) * (job["backoffLimit"] + 1) < WEEK


def _script(container) -> str:
    assert container["command"][:2] == ["/bin/bash", "-c"], container["command"]
    return (container["args"][0] if len(container["command"]) == 2 else container["command"][2]).replace("\\\n", " ")


def _kubectl_calls(script: str) -> list[list[str]]:
    return [shlex.split(m.group(1)) for m in re.finditer(r"\bkubectl\s+([^\n;|>&]+)", script)]


def _needed_verbs(calls, manifests) -> dict[tuple[str, str], set[str]]:
    """RBAC verbs the kubectl calls need, per (apiGroup, resource): `get TYPE -l …` lists, `get TYPE NAME` gets,
    `create -f FILE` creates what FILE holds, `delete TYPE NAME… --wait=false` deletes (no get, no watch)."""
    plural = {"rayjob": "rayjobs", "rayjobs": "rayjobs"}
    need: dict[tuple[str, str], set[str]] = {}
    for call in calls:
        verb, rest = call[0], call[1:]
        if verb == "create":
            target = rest[rest.index("-f") + 1]
            (doc,) = [yaml.safe_load(text) for file, text in manifests.items() if file == target]
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            need.setdefault((group, doc["kind"].lower() + "s"), set()).add("create")
            continue
        resource = plural[rest[0]]
        names = [a for a in rest[1:] if not a.startswith("-")]
        if verb == "get":
            verbs = {"list"} if ("-l" in rest or any(a.startswith("--selector") for a in rest)) else {"get"}
            verbs |= {"watch"} if ("-w" in rest or "--watch" in rest) else set()
        elif verb == "delete":
            assert "--wait=false" in rest, "kubectl delete waits with get+watch by default"
            verbs = {"delete"} | ({"list"} if "-l" in rest else set())
        else:
            raise AssertionError(f"kubectl {verb}: add its verbs here")
        assert resource == "rayjobs" and (names or "-l" in rest or verb == "get"), call
        need.setdefault(("ray.io", resource), set()).update(verbs)
    return need


def _cronjob_parts():
    docs = _docs(CRONJOB)
    cron = _one(CRONJOB, "CronJob")
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    manifests = {}  # path in the container → text, for every ConfigMap key mounted
    for m in container.get("volumeMounts", []):
        cm_ref = volumes[m["name"]].get("configMap")
        if cm_ref:
            cm = _one(CRONJOB, "ConfigMap", cm_ref["name"])
            for key, text in cm["data"].items():
                manifests[f"{m['mountPath'].rstrip('/')}/{key}"] = text
    return docs, cron, pod, container, manifests


def test_cronjob_fallback():
    docs, cron, pod, container, manifests = _cronjob_parts()
    assert cron["apiVersion"] == "batch/v1"
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    raycron = _one(RAYCRONJOB, "RayCronJob")["spec"]
    assert (spec["schedule"], spec["timeZone"]) == (raycron["schedule"], raycron["timeZone"])
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "kubectl" in container["image"]

    script = _script(container)
    calls = _kubectl_calls(script)
    assert ["create", "-f", "/manifests/rayjob.yaml"] == calls[[c[0] for c in calls].index("create")][:3]
    rayjob = yaml.safe_load(manifests["/manifests/rayjob.yaml"])
    assert rayjob["kind"] == "RayJob" and "name" not in rayjob["metadata"] and rayjob["metadata"]["generateName"]

    # the selector the script lists earlier runs by is a label every created RayJob carries
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    key, _, value = env["SELECTOR"].partition("=")
    assert rayjob["metadata"]["labels"][key] == value
    assert int(env["KEEP"]) >= 1


def test_cronjob_rbac_is_exactly_what_the_script_needs():
    docs, cron, pod, container, manifests = _cronjob_parts()
    sa = _one(CRONJOB, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    (binding,) = [
        d
        for d in docs
        if d["kind"] == "RoleBinding"
        and any(s["kind"] == "ServiceAccount" and s["name"] == sa["metadata"]["name"] for s in d["subjects"])
    ]
    assert all("namespace" not in s for s in binding["subjects"])  # the binding's namespace, wherever applied
    assert binding["roleRef"]["kind"] == "Role"  # namespaced: no ClusterRole
    role = _one(CRONJOB, "Role", binding["roleRef"]["name"])

    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                assert "*" not in (group, resource) and "*" not in rule["verbs"]
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    needed = _needed_verbs(_kubectl_calls(_script(container)), manifests)
    assert granted == needed == {("ray.io", "rayjobs"): {"create", "list", "delete"}}


@pytest.mark.skipif(
    not (shutil.which("bash") and shutil.which("awk") and shutil.which("head")), reason="needs bash, awk, head"
)
@pytest.mark.parametrize(
    "runs, created, deleted, code",
    [
        ([], True, [], 0),
        ([("w-1", "Complete")], True, [], 0),
        (
            [
                ("w-1", "Failed"),
                ("w-2", "ValidationFailed"),
                ("w-3", "Complete"),
                ("w-4", "Complete"),
                ("w-5", "Complete"),
            ],
            True,
            ["w-1", "w-2"],
            0,
        ),
        ([("w-1", "Complete"), ("w-2", "Running")], False, [], 3),
        ([("w-1", "<none>")], False, [], 3),  # just created: no status yet
    ],
    ids=["first", "one-earlier", "prune", "running", "new"],
)
def test_cronjob_script(tmp_path, runs, created, deleted, code):
    """The CronJob's script against a stand-in kubectl: one run at a time, then create, then prune."""
    _, _, _, container, _ = _cronjob_parts()
    env = {e["name"]: e["value"] for e in container["env"]}
    (tmp_path / "runs.txt").write_text("".join(f"{n}   {s}\n" for n, s in runs))
    fake = tmp_path / "bin" / "kubectl"
    fake.parent.mkdir()
    fake.write_text('#!/bin/bash\necho "$*" >> "$CALLS"\nif [ "$1" = get ]; then cat "$RUNS"; fi\n')
    fake.chmod(0o755)
    script = container["args"][0].replace("/tmp/", f"{tmp_path}/")
    result = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=30,
        env={
            **env,
            "HOME": str(tmp_path),
            "PATH": f"{fake.parent}:/usr/bin:/bin",
            "CALLS": str(tmp_path / "calls"),
            "RUNS": str(tmp_path / "runs.txt"),
        },
    )
    assert result.returncode == code, result.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0].startswith(f"get rayjobs -l {env['SELECTOR']} ")
    assert any(c.startswith("create -f /manifests/rayjob.yaml") for c in calls) is created
    deletes = [c.split() for c in calls if c.startswith("delete")]
    assert [n for d in deletes for n in d[2:] if not n.startswith("-")] == deleted
    if code == 3:
        assert "not finished" in result.stderr


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
        if isinstance(doc, dict) and doc.get("kind") == "ConfigMap":  # manifests kept as text in a ConfigMap
            for key, value in (doc.get("data") or {}).items():
                if key.endswith((".yaml", ".yml")):
                    problems += [f"{key}: {p}" for p in secret_problems(value)]
    return problems


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_literal_secrets(path):
    assert secret_problems(path.read_text()) == [], path


def _secret_refs(node) -> set[str]:
    refs = set()
    for n in _walk(node):
        for key in ("secretRef", "secretKeyRef"):
            if isinstance(n.get(key), dict):
                refs.add(n[key]["name"])
    return refs


def test_credentials_only_by_reference():
    """No Secret is defined in the repository (operators create them, infra/README.md); pods name them through
    envFrom.secretRef or valueFrom.secretKeyRef only, and the job specs (which Ray's arguments carry) hold none."""
    docs = [d for _, _, d in MANIFESTS] + [d for _, _, d in EMBEDDED]
    assert not [d for d in docs if d["kind"] == "Secret"]
    refs = _secret_refs(docs)
    assert refs == {"stacsr-object-store", "stacsr-stac-api"}, refs
    for source, spec in job_specs():  # the spec loader also refuses anything that looks like a key (test below)
        assert not _secret_refs(spec), source
    for _, source, spec in rayjob_specs():  # the GPU workers that upload have the object-store Secret
        for g in (spec.get("rayClusterSpec") or {}).get("workerGroupSpecs", []):
            for c in g["template"]["spec"]["containers"]:
                assert "stacsr-object-store" in _secret_refs(c.get("envFrom", [])), source


@pytest.mark.parametrize(
    "bad",
    [
        {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}]},
        {"env": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": {"k": "v"}},
        {"aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
        {"id": "AKIAIOSFODNN7EXAMPLE"},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "m"},
            "data": {"rayjob.yaml": yaml.safe_dump({"env": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "x"}]})},
        },
    ],
)
def test_secret_check_catches_literal(bad):
    assert secret_problems(yaml.safe_dump(bad))


def test_job_specs_in_configmaps_load_with_the_spec_loader():
    from stacsr.batch import spec as J

    found = job_specs()
    assert len(found) >= 3
    example = J.load(ROOT / "jobs" / "examples" / "alps-weekly.yaml")
    for source, data in found:
        spec = J.from_dict(data)
        assert spec == example, source  # the scheduled job runs exactly the documented example
