"""deploy/: the KubeRay manifests, the local cluster script and the Dockerfile, checked for
structure and for agreeing with the code (no Kubernetes, Docker daemon or cluster here)."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from factory.dive.spec import GenerateSpec
from factory.spec import load_spec
from manifests.schema import MODALITIES

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERAY = DEPLOY / "kuberay"
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(KUBERAY.glob("*.y*ml")):
        docs += [(path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return docs


def by_kind(kind: str) -> dict:
    (doc,) = [doc for _, doc in manifests() if doc["kind"] == kind]
    return doc


def cluster_specs() -> list[dict]:
    """Every Ray cluster the manifests describe: the RayCluster's and the RayJob's own."""
    return [by_kind("RayCluster")["spec"], by_kind("RayJob")["spec"]["rayClusterSpec"]]


def ray_container(pod_template: dict) -> dict:
    return pod_template["spec"]["containers"][0]  # KubeRay's Ray container is the first


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def dockerfile_arg(name: str) -> str:
    (value,) = [
        args.split("=", 1)[1] for op, args in dockerfile_instructions() if op == "ARG" and args.startswith(f"{name}=")
    ]
    return value


def entrypoint() -> list[str]:
    return shlex.split(by_kind("RayJob")["spec"]["entrypoint"])


# --- KubeRay manifests ---------------------------------------------------------------


def test_every_manifest_is_a_ray_io_v1_raycluster_or_rayjob():
    docs = manifests()
    assert {path.name for path, _ in docs} == {"raycluster.yaml", "rayjob.yaml"}
    for path, doc in docs:
        assert doc["apiVersion"] == "ray.io/v1", path
        assert doc["kind"] in {"RayCluster", "RayJob"}, path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", doc["metadata"]["name"]), path
    assert sorted(doc["kind"] for _, doc in docs) == ["RayCluster", "RayJob"]


@pytest.mark.parametrize("which", [0, 1], ids=["raycluster", "rayjob"])
def test_cluster_shape(which):
    spec = cluster_specs()[which]
    assert spec["rayVersion"] == dockerfile_arg("RAY_VERSION")
    assert spec["enableInTreeAutoscaling"] is True
    assert isinstance(spec["autoscalerOptions"]["idleTimeoutSeconds"], int)

    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "dashboard-host" in head["rayStartParams"]
    head_container = ray_container(head["template"])
    assert "nvidia.com/gpu" not in head_container["resources"].get("limits", {})
    assert 8265 in [port["containerPort"] for port in head_container["ports"]]

    (group,) = spec["workerGroupSpecs"]
    assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    worker = ray_container(group["template"])
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1  # one whole GPU a pod
    assert worker["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
    tolerated = [t for t in group["template"]["spec"]["tolerations"] if t["key"] == "nvidia.com/gpu"]
    assert tolerated and tolerated[0]["operator"] == "Exists"

    groups = [head, group]
    for g in groups:
        # KubeRay's rayStartParams is map[string]string: a bare YAML number is rejected.
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        container = ray_container(g["template"])
        assert container["image"] == head_container["image"]
        assert "ray stop" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        pod = g["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/models"]["readOnly"] is True
        assert "persistentVolumeClaim" in volumes[mounts["/models"]["name"]]


@pytest.mark.parametrize("which", [0, 1], ids=["raycluster", "rayjob"])
def test_s3_credentials_come_from_a_secret_on_the_driver(which):
    head = ray_container(cluster_specs()[which]["headGroupSpec"]["template"])
    env = {e["name"]: e for e in head["env"]}
    secrets = set()
    for name in SECRET_ENV:
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == name and not ref.get("optional", False)
        secrets.add(ref["name"])
    endpoint = env["AWS_ENDPOINT_URL"]["valueFrom"]["secretKeyRef"]
    assert endpoint["optional"] is True  # absent for AWS itself
    secrets.add(endpoint["name"])
    assert len(secrets) == 1
    assert int(env["AWS_MAX_ATTEMPTS"]["value"]) >= 1


def test_rayjob_lifecycle_fields():
    spec = by_kind("RayJob")["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    assert isinstance(spec["activeDeadlineSeconds"], int) and spec["activeDeadlineSeconds"] > 0
    assert spec["submissionMode"] == "K8sJobMode"
    assert isinstance(spec["backoffLimit"], int) and spec["backoffLimit"] >= 0
    if spec["backoffLimit"] > 0:  # a retry reruns the entrypoint: without --resume it is refused
        assert "--resume" in entrypoint()


def test_rayjob_entrypoint_runs_the_generate_job_on_a_spec_of_this_repository():
    raw = by_kind("RayJob")["spec"]["entrypoint"]
    # KubeRay pastes the entrypoint unquoted into the submitter's shell command.
    assert "\n" not in raw.strip() and not re.search(r"[;&|`$<>()]", raw)
    argv = entrypoint()
    assert argv[:2] == ["python", "jobs/generate.py"]
    assert (ROOT / argv[1]).is_file()
    spec_path = argv[2]
    assert spec_path.startswith("jobs/specs/") and (ROOT / spec_path).is_file()
    spec = load_spec(ROOT / spec_path, GenerateSpec)  # it validates

    # Every option the entrypoint passes is one `factory generate` has.
    import typer

    from factory.cli import app

    generate = typer.main.get_command(app).commands["generate"]
    known = {opt for param in generate.params for opt in param.opts}
    assert {arg for arg in argv[3:] if arg.startswith("--")} <= known
    if "--out" in argv:
        assert argv[argv.index("--out") + 1].startswith("s3://")

    # The worker group has a whole GPU for each generator actor the spec asks for.
    (group,) = by_kind("RayJob")["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    actors = sum(spec.side(m).actors for m in MODALITIES if spec.side(m).source == "generate")
    assert spec.resources.gpus_per_actor == 1
    assert group["maxReplicas"] >= actors
    cpus = float(ray_container(group["template"])["resources"]["limits"]["cpu"])
    assert cpus >= spec.resources.cpus_per_actor
    # The spec's paths are where the pods mount them.
    head_mounts = {
        m["mountPath"]
        for m in ray_container(by_kind("RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["template"])["volumeMounts"]
    }
    assert spec.model.path.startswith("/models/") and "/models" in head_mounts
    assert spec.identities.dataset.startswith("/data/") and "/data" in head_mounts


def test_the_documented_resume_edit_appends_resume_and_changes_nothing_else():
    text = (KUBERAY / "rayjob.yaml").read_text()
    (sed,) = re.findall(r"sed '(s\|[^']*)'", text)
    _, old, new, _ = sed.split("|")
    edited = yaml.safe_load(text.replace(old, new))
    original = yaml.safe_load(text)
    assert shlex.split(edited["spec"]["entrypoint"]) == [*entrypoint()[:3], "--resume", *entrypoint()[3:]]
    edited["spec"]["entrypoint"] = original["spec"]["entrypoint"]
    assert edited == original


# --- the local cluster script --------------------------------------------------------


def test_local_cluster_script_parses_and_stays_on_loopback():
    script = DEPLOY / "local_cluster.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    assert "set -euo pipefail" in text
    assert "--dashboard-host 127.0.0.1" in text and "--node-ip-address 127.0.0.1" in text
    assert "0.0.0.0" not in text


def local_cluster(*args: str) -> subprocess.CompletedProcess:
    script = DEPLOY / "local_cluster.sh"
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30, check=False)


def test_local_cluster_script_usage_and_submit_command(tmp_path):
    result = local_cluster()
    assert result.returncode == 2 and "usage:" in result.stderr
    result = local_cluster("--help")
    assert result.returncode == 0 and "stop" in result.stdout
    result = local_cluster("submit-command", "--dashboard-port", "8299", "--dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if "ray job submit" in line]
    argv = shlex.split(line.split("&&", 1)[1])
    assert "http://127.0.0.1:8299" in argv
    entry = argv[argv.index("--") + 1 :]
    assert entry[:3] == ["python", "jobs/generate.py", "jobs/specs/demo.yaml"]
    assert (ROOT / entry[2]).is_file()
    # With --working-dir the driver runs in an unpacked copy: the output must be absolute.
    assert Path(entry[entry.index("--out") + 1]).is_absolute()
    result = local_cluster("stop", "--dir", str(tmp_path))
    assert result.returncode == 0  # nothing of ours running: nothing to do


# --- the Dockerfile ------------------------------------------------------------------


def test_dockerfile_installs_torch_before_the_package_and_works_offline():
    steps = dockerfile_instructions()
    runs = [args for op, args in steps if op == "RUN"]
    torch_step = next(i for i, args in enumerate(runs) if "torch==" in args)
    package_step = next(i for i, args in enumerate(runs) if '-e ".[factory]"' in args)
    assert torch_step < package_step
    assert "ray[default]" in runs[package_step]

    env = " ".join(args for op, args in steps if op == "ENV")
    assert "HF_HUB_OFFLINE=1" in env and "TRANSFORMERS_OFFLINE=1" in env

    users = [args.split(":")[0] for op, args in steps if op == "USER"]
    assert users and users[-1] not in {"root", "0"}

    readme_torch = re.search(r"pip install torch==([\w.]+)", (ROOT / "README.md").read_text()).group(1)
    assert dockerfile_arg("TORCH_VERSION") == readme_torch
    assert (ROOT / dockerfile_arg("MODELS_DIR")).is_dir()  # the default COPY source exists
    # No weights by default: the default folder holds no weight files.
    default_models = ROOT / dockerfile_arg("MODELS_DIR")
    assert not [p for p in default_models.rglob("*") if p.suffix in {".safetensors", ".bin", ".ckpt", ".pt"}]
