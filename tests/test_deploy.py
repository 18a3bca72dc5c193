"""deploy/ checked for real, offline: yamllint, hadolint, kustomize + kubernetes-validate, the Prometheus
Operator CRD models, promtool (config, rules, rule unit tests), the Grafana dashboard and the systemd unit.

Every tool check is also run on a copy of deploy/ broken on purpose, to prove that it can fail.
The tools come from `make test`: the `dev` extras (kubectl with kustomize, kubernetes-validate, hadolint,
yamllint) and .ci/install-tools (promtool/prometheus, node + the CRD models, systemd-analyze). A missing
tool fails the test; nothing is skipped.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
OVERLAYS = ("dev", "prod")
K8S_VERSIONS = ("1.30.0", "1.37.0")  # the oldest supported (native sleep preStop, gRPC probes) and the newest
DOCKERFILES = ("Dockerfile", "cuda.Dockerfile")
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
TOOLS_DIR = Path(os.environ.get("FEDSER_TOOLS_DIR", Path(sys.prefix) / "fedser-tools"))
CRD_CHECK = TOOLS_DIR / "crd-check" / "validate.mjs"
INSTALL_HINT = "run `make test` (it installs the deploy tools), or .ci/install-tools " + str(TOOLS_DIR)


# ---------------------------------------------------------------- helpers

def tool(name: str) -> str:
    """The venv's copy of a tool (dev extras) or one on PATH (.ci/install-tools); missing fails the test."""
    here = Path(sys.executable).parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: {INSTALL_HINT}")
    return found


def run(*cmd: str | Path, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, input=input, capture_output=True, text=True, timeout=120)


def output(p: subprocess.CompletedProcess[str]) -> str:
    return p.stdout + p.stderr


def copy_deploy(tmp_path: Path) -> Path:
    """A copy of deploy/ to break on purpose."""
    dst = tmp_path / "deploy"
    shutil.copytree(DEPLOY, dst, ignore=shutil.ignore_patterns("node_modules"))
    return dst


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def kustomize(overlay_dir: Path) -> str:
    p = run(tool("kubectl"), "kustomize", overlay_dir)
    assert p.returncode == 0, output(p)
    return p.stdout


@lru_cache(maxsize=None)
def rendered(overlay: str) -> str:
    return kustomize(K8S / "overlays" / overlay)


def objects(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kubernetes_validate(path: Path, version: str) -> subprocess.CompletedProcess[str]:
    return run(tool("kubernetes-validate"), "--strict", "-k", version, path)


def crd_check(items: list[dict], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    if not CRD_CHECK.exists() or shutil.which("node") is None:
        pytest.fail(f"the CRD checker ({CRD_CHECK}) or node is missing: {INSTALL_HINT}")
    data = tmp_path / "crd-objects.json"
    data.write_text(json.dumps(items))
    return run("node", CRD_CHECK, data)


# ---------------------------------------------------------------- yamllint

def test_yamllint_passes_on_deploy() -> None:
    p = run(tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint", DEPLOY)
    assert p.returncode == 0, output(p)


def test_yamllint_fails_on_a_duplicate_key(tmp_path: Path) -> None:
    d = copy_deploy(tmp_path)
    # A duplicated key: YAML parsers silently keep the last one; yamllint refuses it.
    edit(d / "kubernetes/base/service.yaml", "  type: ClusterIP\n", "  type: ClusterIP\n  type: NodePort\n")
    p = run(tool("yamllint"), "--strict", "-c", d / ".yamllint", d)
    assert p.returncode != 0 and "duplication of key" in output(p), output(p)


# ---------------------------------------------------------------- Dockerfiles

@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_passes(dockerfile: str) -> None:
    p = run(tool("hadolint"), "--config", DEPLOY / "docker/.hadolint.yaml", "--no-color", DEPLOY / "docker" / dockerfile)
    assert p.returncode == 0, output(p)


@pytest.mark.parametrize(("dockerfile", "old", "new", "rule"), [
    ("Dockerfile", "FROM python:3.11.14-slim-bookworm AS runtime", "FROM python:latest AS runtime", "DL3007"),
    ("cuda.Dockerfile", "apt-get install -y --no-install-recommends python3 python3-venv",
     "apt-get install -y python3 python3-venv", "DL3015"),
    ("cuda.Dockerfile", "USER 10001:10001", "USER root", "DL3002"),
    ("Dockerfile", "torch==2.11.0 torchaudio==2.11.0", "torch torchaudio", "DL3013"),
])
def test_hadolint_fails_on_a_broken_dockerfile(tmp_path: Path, dockerfile: str, old: str, new: str, rule: str) -> None:
    d = copy_deploy(tmp_path)
    edit(d / "docker" / dockerfile, old, new)
    p = run(tool("hadolint"), "--config", d / "docker/.hadolint.yaml", "--no-color", d / "docker" / dockerfile)
    assert p.returncode != 0 and rule in p.stdout, output(p)


def dockerfile_stages(text: str) -> dict[str, list[str]]:
    """Instructions (continuation lines joined) of each stage, by stage name."""
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if m:
            current = stages.setdefault(m.group(2) or f"stage{len(stages)}", [])
        if current is not None:
            current.append(line)
    return stages


BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "python3-venv", "python3-pip", "python3-dev", "git", "curl")
FINAL_STAGES = {"Dockerfile": ("aggregator", "client-cpu"), "cuda.Dockerfile": ("client-cuda",)}


def dockerfile_problems(text: str, finals: tuple[str, ...]) -> list[str]:
    """What hadolint does not check: pinned bases, and for each final image non-root, a health check,
    no build tools and nothing but the built venv taken from the build stage."""
    problems = []
    stages = dockerfile_stages(text)
    for line in re.findall(r"^FROM\s+(\S+)", text, re.M):
        if line in stages:
            continue  # FROM an earlier stage
        if not re.search(r":\d+\.\d+\.\d+[-\w.]*(@sha256:[0-9a-f]{64})?$", line):
            problems.append(f"base {line} is not pinned to an exact version")
    for name in finals:
        if name not in stages:
            problems.append(f"no stage {name}")
            continue
        chain, lines = name, []
        while chain in stages:  # the stage and the stages it is built FROM
            lines = stages[chain] + lines
            chain = stages[chain][0].split()[1]
        users = [ln.split()[1] for ln in lines if ln.upper().startswith("USER ")]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            problems.append(f"{name}: does not end as a non-root USER")
        if not any(ln.upper().startswith("HEALTHCHECK ") and "NONE" not in ln.upper() for ln in stages[name]):
            problems.append(f"{name}: no HEALTHCHECK")
        for ln in lines:
            if "apt-get install" in ln:
                for pkg in BUILD_TOOLS:
                    if re.search(rf"\s{re.escape(pkg)}(\s|$)", ln):
                        problems.append(f"{name}: installs build tool {pkg}")
            if ln.upper().startswith("COPY --FROM=") and "/opt/venv" not in ln:
                problems.append(f"{name}: copies more than the venv from another stage: {ln}")
        if not any(ln.upper().startswith("ENTRYPOINT ") for ln in stages[name]):
            problems.append(f"{name}: no ENTRYPOINT")
    return problems


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_images_are_small_non_root_and_checked(dockerfile: str) -> None:
    text = (DEPLOY / "docker" / dockerfile).read_text()
    assert dockerfile_problems(text, FINAL_STAGES[dockerfile]) == []


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("USER 10001:10001\nWORKDIR /tmp\nHEALTHCHECK", "WORKDIR /tmp\nHEALTHCHECK", "client-cuda: does not end as a non-root USER"),
    ("HEALTHCHECK --interval=60s", "# HEALTHCHECK --interval=60s", "client-cuda: no HEALTHCHECK"),
    ("--no-install-recommends python3 \\", "--no-install-recommends python3 gcc \\", "client-cuda: installs build tool gcc"),
    ("FROM nvidia/cuda:13.0.0-base-ubuntu24.04 AS client-cuda", "FROM nvidia/cuda:13.0-base AS client-cuda",
     "base nvidia/cuda:13.0-base is not pinned to an exact version"),
])
def test_dockerfile_checks_fail_on_a_broken_dockerfile(old: str, new: str, problem: str) -> None:
    text = (DEPLOY / "docker/cuda.Dockerfile").read_text()
    assert old in text
    assert problem in dockerfile_problems(text.replace(old, new, 1), FINAL_STAGES["cuda.Dockerfile"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_every_package_and_the_context_allows_it(dockerfile: str) -> None:
    """Every top-level source folder pyproject.toml packages is copied, and the .dockerignore allow-list lets it in."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    package_dir = project["tool"]["setuptools"].get("package-dir", {})
    needed = {"pyproject.toml", "README.md"}
    for pkg in project["tool"]["setuptools"]["packages"]:
        top = pkg.split(".")[0]
        needed.add(package_dir.get(top, top).split("/")[0])
    text = (DEPLOY / "docker" / dockerfile).read_text()
    copied = set()
    for line in re.findall(r"^COPY\s+(?!--from)(.+)$", text, re.M):
        copied.update(s.rstrip("/") for s in line.split()[:-1])
    assert needed <= copied, f"not copied into the image: {sorted(needed - copied)}"
    allowed = {ln[1:].rstrip("/") for ln in (DEPLOY / "docker" / f"{dockerfile}.dockerignore").read_text().splitlines()
               if ln.startswith("!")}
    assert copied <= allowed, f"copied but excluded from the build context: {sorted(copied - allowed)}"
    for src in copied:
        assert (REPO / src).exists(), src


def aggregator_flags() -> set[str]:
    from aggregator_service.config import build_parser

    return {s for a in build_parser({})._actions for s in a.option_strings if s.startswith("--")}


def env_problems(names: set[str]) -> list[str]:
    flags = aggregator_flags()
    return [f"{n} is not an aggregator flag ({'--' + n[7:].lower().replace('_', '-')} unknown)"
            for n in sorted(names) if n.startswith("FEDSER_") and "--" + n[7:].lower().replace("_", "-") not in flags]


def test_dockerfile_environment_names_real_aggregator_flags() -> None:
    names = set(re.findall(r"\b(FEDSER_[A-Z_]+)=", (DEPLOY / "docker/Dockerfile").read_text()))
    assert names and env_problems(names) == []


def load_healthcheck():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fedser_healthcheck", DEPLOY / "docker/healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_healthcheck_script_against_a_real_aggregator(aggregator) -> None:
    script = DEPLOY / "docker/healthcheck.py"
    target = f"127.0.0.1:{aggregator.port}"
    ok = run(sys.executable, script, "grpc", "--target", target, "--service", "fedser.v1.Aggregator")
    assert ok.returncode == 0, output(ok)
    unknown = run(sys.executable, script, "grpc", "--target", target, "--service", "no.such.Service")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr, output(unknown)
    aggregator.stop(grace_s=1)
    down = run(sys.executable, script, "grpc", "--target", target, "--timeout", "2")
    assert down.returncode == 1 and "unhealthy" in down.stderr, output(down)
    hc = load_healthcheck()
    assert hc.default_target({"FEDSER_PORT": "50051", "FEDSER_HEALTH_PORT": "50052"}) == "127.0.0.1:50052"
    assert hc.default_target({"FEDSER_PORT": "6000"}) == "127.0.0.1:6000"
    assert hc.check_process("pytest", Path(f"/proc/{os.getpid()}")) is None
    assert "is not fedser-client" in hc.check_process("fedser-client", Path(f"/proc/{os.getpid()}"))


# ---------------------------------------------------------------- Kubernetes: render and validate

EXPECTED_KINDS = {"Namespace", "ServiceAccount", "ConfigMap", "Service", "StatefulSet", "NetworkPolicy",
                  "PodDisruptionBudget", "ServiceMonitor", "PrometheusRule"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kustomize_renders_overlay(overlay: str) -> None:
    objs = objects(rendered(overlay))
    assert {o["kind"] for o in objs} == EXPECTED_KINDS
    namespaces = {o["metadata"].get("namespace") for o in objs if o["kind"] != "Namespace"}
    assert namespaces == {one(objs, "Namespace")["metadata"]["name"]}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_overlay_validates_against_kubernetes_schemas(tmp_path: Path, overlay: str, version: str) -> None:
    path = tmp_path / f"{overlay}.yaml"
    path.write_text(rendered(overlay))
    p = kubernetes_validate(path, version)
    assert p.returncode == 0, output(p)
    # kubernetes-validate has no schemas for CRDs and only warns: exactly the two checked below.
    skipped = set(re.findall(r"Couldn't find schema for kind (\w+)", output(p)))
    assert skipped == CRD_KINDS, output(p)
    passed = re.findall(r"passed for resource", output(p))
    assert len(passed) == len(objects(rendered(overlay))) - len(CRD_KINDS)


def test_secret_templates_validate() -> None:
    for path in sorted((K8S / "secrets").glob("*.yaml")):
        p = kubernetes_validate(path, K8S_VERSIONS[0])
        assert p.returncode == 0 and "passed for resource secret/" in output(p), output(p)


@pytest.mark.parametrize(("file", "old", "new", "message"), [
    # A misspelt field: strict validation refuses unknown properties.
    ("base/statefulset.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFileSystem: true",
     "'readOnlyRootFileSystem' was unexpected"),
    # A wrong type.
    ("base/statefulset.yaml", "terminationGracePeriodSeconds: 90", "terminationGracePeriodSeconds: ninety",
     "'ninety' is not of type 'integer'"),
    # A probe with a named port: gRPC probes need a number.
    ("base/statefulset.yaml", "grpc:\n              port: 50052\n              service: fedser.v1.Aggregator\n"
     "            periodSeconds: 5", "grpc:\n              port: grpc-health\n              service: fedser.v1.Aggregator\n"
     "            periodSeconds: 5", "'grpc-health' is not of type 'integer'"),
])
def test_kubernetes_validate_fails_on_a_broken_manifest(tmp_path: Path, file: str, old: str, new: str, message: str) -> None:
    d = copy_deploy(tmp_path)
    edit(d / "kubernetes" / file, old, new)
    path = tmp_path / "broken.yaml"
    path.write_text(kustomize(d / "kubernetes/overlays/prod"))
    p = kubernetes_validate(path, K8S_VERSIONS[0])
    assert p.returncode != 0 and message in output(p), output(p)


def test_kustomize_fails_on_a_broken_kustomization(tmp_path: Path) -> None:
    d = copy_deploy(tmp_path)
    edit(d / "kubernetes/base/kustomization.yaml", "  - networkpolicy.yaml\n", "  - network-policy.yaml\n")
    p = run(tool("kubectl"), "kustomize", d / "kubernetes/overlays/dev")
    assert p.returncode != 0 and "network-policy.yaml" in output(p), output(p)


# ---------------------------------------------------------------- Prometheus Operator CRDs

def crd_items(overlay: str) -> list[dict]:
    return [{"source": overlay, "object": o} for o in objects(rendered(overlay)) if o["kind"] in CRD_KINDS]


def test_servicemonitor_and_prometheusrule_validate_against_crd_models(tmp_path: Path) -> None:
    items = crd_items("dev") + crd_items("prod")
    assert len(items) == 4
    p = crd_check(items, tmp_path)
    assert p.returncode == 0, output(p)
    assert p.stdout.count("ok ") == 4 and "error" not in p.stdout, output(p)


BROKEN_CRD_OBJECTS = {
    # Not a Prometheus duration: the CRD's pattern refuses it.
    "bad-duration": ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(interval="15 seconds"),
                     "must match pattern"),
    # A misspelt field: the models' TypeScript interfaces refuse unknown properties.
    "misspelt-field": ("ServiceMonitor", lambda o: o["spec"]["endpoints"][0].update(intervall="15s"),
                       "'\"intervall\"' does not exist"),
    "no-selector": ("ServiceMonitor", lambda o: o["spec"].pop("selector"), "selector"),
    # A rule without an expression.
    "no-expr": ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].pop("expr"),
                "must have required property expr"),
    "misspelt-labels": ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update(labelz={"a": "b"}),
                        "'\"labelz\"' does not exist"),
}


@pytest.fixture(scope="module")
def broken_crd_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[str]]:
    """All broken objects in one run of the checker (it type-checks with tsc: seconds per run)."""
    items = []
    for case, (kind, mutate, _) in BROKEN_CRD_OBJECTS.items():
        (obj,) = [copy.deepcopy(i["object"]) for i in crd_items("prod") if i["object"]["kind"] == kind]
        mutate(obj)
        items.append({"source": case, "object": obj})
    p = crd_check(items, tmp_path_factory.mktemp("crd"))
    assert p.returncode == 1, output(p)
    return {case: [ln for ln in p.stdout.splitlines() if f"({case})" in ln] for case in BROKEN_CRD_OBJECTS}


@pytest.mark.parametrize("case", BROKEN_CRD_OBJECTS)
def test_crd_check_fails_on_a_broken_object(broken_crd_results: dict[str, list[str]], case: str) -> None:
    lines = broken_crd_results[case]
    message = BROKEN_CRD_OBJECTS[case][2]
    assert lines and all(ln.startswith("error ") for ln in lines), lines
    assert any(message in ln for ln in lines), lines


def test_prometheusrule_carries_exactly_the_rule_file() -> None:
    rule = yaml.safe_load((K8S / "components/prometheus-operator/prometheusrule.yaml").read_text())
    plain = yaml.safe_load((DEPLOY / "prometheus/rules/fedser-alerts.yml").read_text())
    assert rule["spec"] == plain


# ---------------------------------------------------------------- the manifests do what the issue asks

def statefulset_problems(objs: list[dict]) -> list[str]:
    """Policy the schemas cannot see: one replica with a checkpoint volume, restricted security context,
    gRPC probes on the health port, requests and limits, graceful termination, wired Secrets/Services."""
    p: list[str] = []
    sts = one(objs, "StatefulSet", "fedser-aggregator")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {}
    for ref in c.get("envFrom", []):
        cm = one(objs, "ConfigMap", ref["configMapRef"]["name"])
        env.update(cm["data"])
    if spec.get("replicas") != 1:
        p.append("replicas must be 1")
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") and psc.get("runAsUser", 0) > 0 and csc.get("runAsNonRoot", True)):
        p.append("must run as non-root")
    if csc.get("readOnlyRootFilesystem") is not True:
        p.append("root filesystem must be read-only")
    if csc.get("allowPrivilegeEscalation") is not False or csc.get("privileged"):
        p.append("privilege escalation must be off")
    if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get("capabilities", {}).get("add"):
        p.append("capabilities must drop ALL and add none")
    if csc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") != "RuntimeDefault":
        p.append("seccomp must be RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        p.append("no service account token")
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(c.get("resources", {}).get(kind, {})):
            p.append(f"cpu and memory {kind} missing")
    ports = {pt["name"]: pt["containerPort"] for pt in c["ports"]}
    health_port = int(env.get("FEDSER_HEALTH_PORT", -1))
    if ports.get("grpc") != int(env.get("FEDSER_PORT", -1)) or ports.get("metrics") != int(env.get("FEDSER_METRICS_PORT", -1)):
        p.append("container ports grpc/metrics must match FEDSER_PORT/FEDSER_METRICS_PORT")
    if env.get("FEDSER_HOST") != "0.0.0.0" or env.get("FEDSER_METRICS_HOST") != "0.0.0.0":
        p.append("must listen on 0.0.0.0")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        grpc = c.get(probe, {}).get("grpc")
        if not grpc or grpc.get("port") != health_port:
            p.append(f"{probe} must be a native gRPC probe on FEDSER_HEALTH_PORT")
        elif grpc.get("service", "") not in ("", "fedser.v1.Aggregator"):
            p.append(f"{probe} asks about an unknown service {grpc['service']}")
    if pod.get("terminationGracePeriodSeconds", 30) < 60:
        p.append("terminationGracePeriodSeconds must leave time for a checkpoint write (>= 60)")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    ckpt = env.get("FEDSER_CHECKPOINT_DIR", "")
    holder = [m for path, m in mounts.items() if ckpt == path or ckpt.startswith(path.rstrip("/") + "/")]
    if not holder or holder[0]["name"] not in claims:
        p.append("FEDSER_CHECKPOINT_DIR must be on a volumeClaimTemplate (PersistentVolumeClaim)")
    if "/tmp" not in mounts or "emptyDir" not in volumes.get(mounts["/tmp"]["name"], {}):
        p.append("/tmp must be an emptyDir")
    for var in ("FEDSER_TLS_CERT", "FEDSER_TLS_KEY", "FEDSER_TOKENS_FILE"):
        path = env.get(var, "")
        m = next((m for mp, m in mounts.items() if path.startswith(mp.rstrip("/") + "/")), None)
        secret = volumes.get(m["name"], {}).get("secret") if m else None
        if not secret:
            p.append(f"{var} must point into a mounted Secret")
            continue
        template = K8S / "secrets" / f"{secret['secretName']}.template.yaml"
        key = path[len(m["mountPath"].rstrip("/")) + 1:]
        if not template.exists() or key not in yaml.safe_load(template.read_text())["stringData"]:
            p.append(f"{var}: no template of Secret {secret['secretName']} with key {key}")
    svc = one(objs, "Service", "fedser-aggregator")
    svc_ports = {pt["name"]: pt for pt in svc["spec"]["ports"]}
    if set(svc_ports) != {"grpc", "metrics"} or any(pt["targetPort"] not in ports for pt in svc_ports.values()):
        p.append("Service needs named ports grpc and metrics that target the container's")
    labels = sts["spec"]["template"]["metadata"]["labels"]
    if not all(labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
        p.append("Service does not select the pod")
    if spec.get("serviceName") not in {o["metadata"]["name"] for o in objs if o["kind"] == "Service"}:
        p.append("serviceName must be a Service")
    for kind in ("NetworkPolicy", "PodDisruptionBudget"):
        sel = one(objs, kind)["spec"]["podSelector" if kind == "NetworkPolicy" else "selector"]["matchLabels"]
        if not all(labels.get(k) == v for k, v in sel.items()):
            p.append(f"{kind} does not select the pod")
    np = one(objs, "NetworkPolicy")["spec"]
    if set(np.get("policyTypes", [])) != {"Ingress", "Egress"}:
        p.append("NetworkPolicy must govern ingress and egress")
    open_ports = {pt["port"] for rule in np.get("ingress", []) for pt in rule.get("ports", [])}
    if not open_ports <= {"grpc", "metrics"} or "grpc" not in open_ports:
        p.append(f"NetworkPolicy must admit exactly gRPC and metrics, admits {sorted(open_ports)}")
    sm = one(objs, "ServiceMonitor")["spec"]
    if not all(svc["metadata"]["labels"].get(k) == v for k, v in sm["selector"]["matchLabels"].items()):
        p.append("ServiceMonitor does not select the Service")
    if any(ep["port"] not in svc_ports for ep in sm["endpoints"]):
        p.append("ServiceMonitor scrapes a port the Service does not name")
    if svc["metadata"]["labels"].get(sm.get("jobLabel", "")) != "fedser-aggregator":
        p.append('ServiceMonitor must yield job="fedser-aggregator" (the alert rules select it)')
    return p


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rendered_manifests_meet_the_deployment_policy(overlay: str) -> None:
    assert statefulset_problems(objects(rendered(overlay))) == []


@pytest.mark.parametrize(("file", "old", "new", "problem"), [
    ("base/statefulset.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "root filesystem must be read-only"),
    ("base/statefulset.yaml", "            - name: checkpoints\n              mountPath: /var/lib/fedser\n", "",
     "FEDSER_CHECKPOINT_DIR must be on a volumeClaimTemplate"),
    ("base/kustomization.yaml", "FEDSER_HEALTH_PORT=50052", "FEDSER_HEALTH_PORT=50053",
     "livenessProbe must be a native gRPC probe on FEDSER_HEALTH_PORT"),
    ("base/statefulset.yaml", "terminationGracePeriodSeconds: 90", "terminationGracePeriodSeconds: 10",
     "terminationGracePeriodSeconds must leave time"),
    ("base/statefulset.yaml", "              drop:\n                - ALL\n", "              add:\n                - NET_ADMIN\n",
     "capabilities must drop ALL and add none"),
    ("components/prometheus-operator/servicemonitor.yaml", "    - port: metrics", "    - port: http-metrics",
     "ServiceMonitor scrapes a port the Service does not name"),
])
def test_deployment_policy_fails_on_a_broken_manifest(tmp_path: Path, file: str, old: str, new: str, problem: str) -> None:
    d = copy_deploy(tmp_path)
    edit(d / "kubernetes" / file, old, new)
    problems = statefulset_problems(objects(kustomize(d / "kubernetes/overlays/prod")))
    assert any(problem in x for x in problems), problems


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_is_understood_by_the_aggregator(overlay: str) -> None:
    """Every FEDSER_* variable is a real flag and every value parses as the aggregator parses it."""
    from aggregator_service.config import parse_config

    objs = objects(rendered(overlay))
    env = one(objs, "ConfigMap", one(objs, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
              ["envFrom"][0]["configMapRef"]["name"])["data"]
    assert env_problems(set(env)) == []
    config = parse_config([], env)  # exits (SystemExit) with the parser's message on a bad value
    assert config.host == "0.0.0.0" and config.metrics_host == "0.0.0.0"
    assert config.rounds.min_clients <= config.rounds.clients_per_round


def test_configmap_check_fails_on_an_unknown_variable() -> None:
    assert env_problems({"FEDSER_CLIENT_PER_ROUND", "FEDSER_PORT"}) == [
        "FEDSER_CLIENT_PER_ROUND is not an aggregator flag (--client-per-round unknown)"]


# ---------------------------------------------------------------- promtool

def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return run(tool("promtool"), *args)


def test_promtool_check_config() -> None:
    p = promtool("check", "config", DEPLOY / "prometheus/prometheus.yml")
    assert p.returncode == 0 and "SUCCESS" in output(p), output(p)


def test_promtool_check_rules() -> None:
    p = promtool("check", "rules", DEPLOY / "prometheus/rules/fedser-alerts.yml")
    assert p.returncode == 0 and "SUCCESS: 4 rules found" in output(p), output(p)


def test_promtool_alert_unit_tests() -> None:
    p = promtool("test", "rules", DEPLOY / "prometheus/tests/fedser-alerts.test.yml")
    assert p.returncode == 0 and "SUCCESS" in output(p), output(p)


def test_promtool_check_config_fails_on_a_broken_config(tmp_path: Path) -> None:
    d = copy_deploy(tmp_path)
    edit(d / "prometheus/prometheus.yml", "scrape_interval: 15s", "scrape_interval: 15")
    p = promtool("check", "config", d / "prometheus/prometheus.yml")
    assert p.returncode != 0 and "not a valid duration" in output(p), output(p)


def test_promtool_check_rules_fails_on_a_broken_rule(tmp_path: Path) -> None:
    d = copy_deploy(tmp_path)
    edit(d / "prometheus/rules/fedser-alerts.yml", 'fedser_round_overdue{job="fedser-aggregator"} == 1',
         'fedser_round_overdue{job="fedser-aggregator"} == = 1')
    p = promtool("check", "rules", d / "prometheus/rules/fedser-alerts.yml")
    assert p.returncode != 0 and "parse error" in output(p), output(p)


@pytest.mark.parametrize(("old", "new", "alert"), [
    ("            > 0.25\n", "            > 0.75\n", "FedserRejectionRateHigh"),  # threshold changed
    ('expr: fedser_round_overdue{job="fedser-aggregator"} == 1', 'expr: fedser_round_overdue{job="fedser-aggregator"} == 0',
     "FedserTooFewParticipants"),  # condition inverted
    ("        for: 2m\n", "        for: 10m\n", "FedserAggregatorDown"),  # alert too slow
])
def test_alert_unit_tests_fail_on_a_broken_rule(tmp_path: Path, old: str, new: str, alert: str) -> None:
    d = copy_deploy(tmp_path)
    edit(d / "prometheus/rules/fedser-alerts.yml", old, new)
    p = promtool("test", "rules", d / "prometheus/tests/fedser-alerts.test.yml")
    assert p.returncode != 0 and "FAILED" in output(p) and alert in output(p), output(p)


# ---------------------------------------------------------------- metrics used by alerts and the dashboard

def exported_metric_names() -> set[str]:
    from aggregator_service.metrics import AggregatorMetrics

    names = set()
    for family in AggregatorMetrics().registry.collect():
        names.add(family.name)
        for suffix in ("_total", "_bucket", "_count", "_sum", "_info", "_created"):
            names.add(family.name + suffix)
    return names


def metric_problems(exprs: list[str]) -> list[str]:
    known = exported_metric_names()
    used = {m for e in exprs for m in re.findall(r"\b(fedser_[a-z0-9_]+)", e)}
    return [f"{m} is not exported by the aggregator" for m in sorted(used - known)]


def dashboard() -> dict:
    return json.loads((DEPLOY / "grafana/fedser-dashboard.json").read_text())


def dashboard_exprs(d: dict) -> dict[str, str]:
    return {f"{p['title']} [{t['refId']}]": t["expr"] for p in d["panels"] for t in p.get("targets", [])}


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus/rules/fedser-alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_alerts_and_dashboard_use_only_exported_metrics() -> None:
    exprs = alert_exprs() + list(dashboard_exprs(dashboard()).values())
    assert metric_problems(exprs) == []
    assert metric_problems(["rate(fedser_bytes_recieved_total[5m])"]) == [
        "fedser_bytes_recieved_total is not exported by the aggregator"]


# ---------------------------------------------------------------- Grafana dashboard

DASHBOARD_VARS = {"$job": "fedser-aggregator", "$window": "5m", "$__rate_interval": "1m"}


def substitute(expr: str) -> str:
    for var, value in DASHBOARD_VARS.items():
        expr = expr.replace(var, value)
    return expr


def test_dashboard_shows_what_the_issue_asks() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    for p in d["panels"]:
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], p["title"]
    variables = {v["name"] for v in d["templating"]["list"]}
    assert variables == {"datasource", "job", "window"}
    exprs = " ".join(dashboard_exprs(d).values())
    for needed in ("fedser_round{", "fedser_round_participants", "fedser_round_samples", "fedser_global_accuracy",
                   "fedser_global_uar", "fedser_global_loss", "fedser_round_duration_seconds_bucket",
                   'status="rejected"', "by (reason)", "fedser_bytes_received_total", "fedser_bytes_sent_total"):
        assert needed in exprs, needed
    assert exprs.count("histogram_quantile(") == 3
    for e in dashboard_exprs(d).values():
        assert not re.search(r"\$(?!job\b|window\b|__rate_interval\b)\w+", e), f"unknown variable in {e}"


def dashboard_as_rules(d: dict) -> str:
    rules = [{"record": f"dashboard:panel_{i}", "expr": substitute(e)} for i, e in enumerate(dashboard_exprs(d).values())]
    return yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(dashboard_as_rules(dashboard()))
    p = promtool("check", "rules", path)
    assert p.returncode == 0, output(p)


def test_dashboard_promql_check_fails_on_a_broken_query(tmp_path: Path) -> None:
    d = dashboard()
    d["panels"][1]["targets"][0]["expr"] = "max(fedser_round{job=\"$job\"}"  # unclosed
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(dashboard_as_rules(d))
    p = promtool("check", "rules", path)
    assert p.returncode != 0 and "parse error" in output(p), output(p)


def test_grafana_component_ships_the_dashboard() -> None:
    for overlay in OVERLAYS:
        cm = one(objects(rendered(overlay)), "ConfigMap", "fedser-grafana-dashboard")
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(cm["data"]["fedser-dashboard.json"]) == dashboard()


# ---------------------------------------------------------------- the edge client on devices

def client_flags() -> set[str]:
    from edge_client.main import build_parser

    return {s for a in build_parser()._actions for s in a.option_strings if s.startswith("--")}


def unit_problems(unit: Path) -> list[str]:
    """systemd-analyze verify (unknown keys and bad values are only warnings there: counted as problems),
    and the flags of ExecStart must be fedser-client's."""
    text = unit.read_text()
    exec_start = re.search(r"^ExecStart=(.*?)(?<!\\)$", text, re.M | re.S).group(1).replace("\\\n", " ")
    program = exec_start.split()[0]
    probe = unit.parent / "verify" / unit.name
    probe.parent.mkdir(exist_ok=True)
    # Verify against this machine: the program from the venv, the user root (the unit's user need not exist here).
    fake = Path(sys.executable).parent / Path(program).name
    probe.write_text(text.replace(program, str(fake)).replace("User=fedser", "User=root").replace("Group=fedser", "Group=root"))
    p = run(tool("systemd-analyze"), "verify", probe)
    problems = [ln for ln in output(p).splitlines() if ln.strip() and "Special user" not in ln]
    if p.returncode != 0 and not problems:
        problems.append(f"systemd-analyze exited {p.returncode}")
    flags = client_flags()
    for flag in re.findall(r"(?<!\S)(--[a-z][a-z0-9-]*)", exec_start):
        if flag not in flags:
            problems.append(f"ExecStart: fedser-client has no flag {flag}")
    return problems


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    unit = tmp_path / "fedser-client.service"
    shutil.copy(DEPLOY / "edge/fedser-client.service", unit)
    assert unit_problems(unit) == []
    env = dict(ln.split("=", 1) for ln in (DEPLOY / "edge/fedser-client.env").read_text().splitlines()
               if ln and not ln.startswith("#"))
    used = set(re.findall(r"\$\{(FEDSER_\w+)\}", unit.read_text()))
    assert used <= set(env), f"the unit uses variables the env file does not set: {sorted(used - set(env))}"


@pytest.mark.parametrize(("old", "new", "problem"), [
    ("RestartSec=30", "RestartSecs=30", "Unknown key"),
    ("--token-file", "--tokenfile", "fedser-client has no flag --tokenfile"),
])
def test_systemd_unit_check_fails_on_a_broken_unit(tmp_path: Path, old: str, new: str, problem: str) -> None:
    unit = tmp_path / "fedser-client.service"
    unit.write_text((DEPLOY / "edge/fedser-client.service").read_text().replace(old, new, 1))
    problems = unit_problems(unit)
    assert any(problem in x for x in problems), problems
