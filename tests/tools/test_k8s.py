"""render-k8s: manifests validated against published schemas (kubernetes-validate's Kubernetes JSON schemas, strict; the
Kubeflow training SDK's PyTorchJob API models); rendered and validated, not run."""

import re
from pathlib import Path

import pytest
import yaml

from tao_finetune.agent.cli import main
from tao_finetune.agent.config import RunConfig, save_config
from tao_finetune.tools import k8s

kubernetes_validate = pytest.importorskip("kubernetes_validate")
kf_models = pytest.importorskip("kubeflow.training.models")

K8S_VERSION = "1.33"
TOKEN = "hf_" + "K" * 30


def validate_k8s(doc: dict) -> None:
    """A built-in kind against the Kubernetes OpenAPI-derived JSON schema (strict: unknown fields fail)."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _check(value, type_name: str, path: str) -> None:
    """Walk a manifest against the Kubeflow SDK's generated models (openapi_types / attribute_map): unknown keys and wrong
    types fail; Kubernetes core types inside (pod templates, object meta) go to the Kubernetes schema."""
    m = re.fullmatch(r"dict\(str, (.+)\)", type_name)
    if m:
        assert isinstance(value, dict), path
        for k, v in value.items():
            _check(v, m.group(1), f"{path}.{k}")
        return
    m = re.fullmatch(r"list\[(.+)\]", type_name)
    if m:
        assert isinstance(value, list), path
        for i, v in enumerate(value):
            _check(v, m.group(1), f"{path}[{i}]")
        return
    scalar = {"str": str, "int": int, "bool": bool}
    if type_name in scalar:
        assert isinstance(value, scalar[type_name]) and not (type_name == "int" and isinstance(value, bool)), f"{path}: {value!r} is not {type_name}"
        return
    if type_name == "V1PodTemplateSpec":
        validate_k8s({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": value})
        return
    if type_name == "V1ObjectMeta":
        validate_k8s({"apiVersion": "v1", "kind": "ConfigMap", "metadata": value})
        return
    model = getattr(kf_models, type_name)
    assert isinstance(value, dict), path
    by_json = {j: a for a, j in model.attribute_map.items()}
    unknown = set(value) - set(by_json)
    assert not unknown, f"{path}: fields unknown to {type_name}: {sorted(unknown)}"
    for key, v in value.items():
        _check(v, model.openapi_types[by_json[key]], f"{path}.{key}")


def validate_pytorchjob(doc: dict) -> None:
    assert doc["apiVersion"] == "kubeflow.org/v1" and doc["kind"] == "PyTorchJob"
    _check(doc, "KubeflowOrgV1PyTorchJob", "PyTorchJob")
    for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
        assert role in ("Master", "Worker")
        assert replica["restartPolicy"] in ("Always", "OnFailure", "Never", "ExitCode")
        assert [c["name"] for c in replica["template"]["spec"]["containers"]] == ["pytorch"]  # the operator's container name


def validate(doc: dict) -> None:
    validate_pytorchjob(doc) if doc["kind"] == "PyTorchJob" else validate_k8s(doc)


def test_the_validators_reject_bad_manifests():
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "spec": {"backoffLimit": "zero", "template": {}}})
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_k8s({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
                      "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "i", "gpus": 1}]}}}})
    with pytest.raises(AssertionError, match="unknown"):
        validate_pytorchjob({"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "x"},
                             "spec": {"elasticPolicy": {"rdzvBackend": "c10d", "nprocs": 2}, "pytorchReplicaSpecs": {}}})


def cfg(tmp_path, **kw) -> RunConfig:
    return RunConfig(**{"model_id": "google/vit-base-patch16-224", "dataset_id": "AI-Lab-Makerere/beans", "output_dir": str(tmp_path / "run"),
                        "gpu_count": 8, "gpu_name": "NVIDIA H100 80GB HBM3", **kw})


@pytest.mark.parametrize("nodes", [1, 4])
def test_every_manifest_validates(tmp_path, nodes):
    docs = k8s.render_manifests(cfg(tmp_path, wandb=True), image="registry.example/run-vit:1", namespace="ml", nodes=nodes,
                                storage_class="fast", cpu="16", memory="128Gi")
    assert set(docs) == {"pvc-output.yaml", "pvc-cache.yaml", "job-prepare.yaml", "job-smoke.yaml", "job-baseline.yaml",
                         "job-eval.yaml", "job-infer.yaml", "pytorchjob-train.yaml"}
    for name, doc in docs.items():
        validate(doc)
    job = docs["pytorchjob-train.yaml"]
    role = "Master" if nodes == 1 else "Worker"
    replica = job["spec"]["pytorchReplicaSpecs"][role]
    pod = replica["template"]["spec"]
    c = pod["containers"][0]
    assert replica["replicas"] == nodes and c["resources"]["limits"]["nvidia.com/gpu"] == 8 and c["image"] == "registry.example/run-vit:1"
    assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {docs["pvc-output.yaml"]["metadata"]["name"], docs["pvc-cache.yaml"]["metadata"]["name"]}
    secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert set(secrets) == {"HF_TOKEN", "WANDB_API_KEY", "WANDB_PROJECT"} and all(s["name"] == k8s.SECRET for s in secrets.values())
    if nodes == 1:
        assert c["command"] == ["torchrun", "--standalone", "--nproc_per_node=8", "train.py"] and "elasticPolicy" not in job["spec"]
    else:
        assert c["command"] == ["torchrun", "train.py"]
        assert job["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 4, "maxReplicas": 4, "maxRestarts": 3, "nProcPerNode": 8}
    eval_pod = docs["job-eval.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert eval_pod["command"] == ["python", "run_eval.py"] and eval_pod["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in docs["job-prepare.yaml"]["spec"]["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})


def test_cpu_single_pod_training_and_skip_baseline(tmp_path):
    docs = k8s.render_manifests(cfg(tmp_path, gpu_count=0, skip_baseline=True), image="img:1")
    assert "job-baseline.yaml" not in docs
    c = docs["pytorchjob-train.yaml"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "train.py"] and "resources" not in c
    for doc in docs.values():
        validate(doc)


def test_render_k8s_command_writes_validated_files_and_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    c = cfg(tmp_path, ngc_image="nvcr.io/nvidia/pytorch:25.10-py3", slurm={"nodes": 2})
    c.out.mkdir(parents=True)
    save_config(c, c.out / "config.yaml")
    assert main(["render-k8s", str(c.out), "--image", "registry.example/run-vit:1"]) == 0
    files = sorted((c.out / "k8s").glob("*.yaml"))
    assert len(files) == 8 and (c.out / "k8s" / "README.md").is_file()
    for f in files:
        text = f.read_text()
        assert TOKEN not in text
        validate(yaml.safe_load(text))
    job = yaml.safe_load((c.out / "k8s" / "pytorchjob-train.yaml").read_text())
    assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 2  # slurm.nodes from config.yaml


def test_render_k8s_without_an_image_is_a_one_line_error(tmp_path, capsys):
    c = cfg(tmp_path)
    c.out.mkdir(parents=True)
    save_config(c, c.out / "config.yaml")
    assert main(["render-k8s", str(c.out)]) == 2
    err = capsys.readouterr().err
    assert "no image" in err and len(err.strip().splitlines()) == 1
    assert main(["render-k8s", str(tmp_path / "nothing")]) == 2


@pytest.mark.parametrize("flags,needle", [(["--namespace", "BAD_NS"], "--namespace 'BAD_NS'"),
                                          (["--memory", "lots"], "--memory 'lots'"), (["--shm", "-1"], "--shm '-1'"),
                                          (["--cpu", "many"], "--cpu 'many'"), (["--output-size", "200 GB"], "--output-size '200 GB'"),
                                          (["--image", "a b"], "--image 'a b'"), (["--gpus-per-node", "-2"], "--gpus-per-node -2"),
                                          (["--storage-class", "Fast SSD"], "--storage-class 'Fast SSD'")])
def test_a_value_kubernetes_would_refuse_is_a_one_line_error_and_nothing_is_written(tmp_path, capsys, flags, needle):
    """These rendered 'validated' manifests that kubectl apply refuses: refused here, before any file is written."""
    c = cfg(tmp_path)
    c.out.mkdir(parents=True)
    save_config(c, c.out / "config.yaml")
    argv = ["render-k8s", str(c.out), "--image", "registry.example/run:1", *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1 and "internal error" not in err, err
    assert not (c.out / "k8s").exists()
