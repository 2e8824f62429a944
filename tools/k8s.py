"""`tao-finetune render-k8s DIR`: Kubernetes manifests for a run's jobs, from its config.yaml (rendered and validated, not run).

Writes DIR/k8s/: a Kubeflow `PyTorchJob` for training (kubeflow.org/v1: one Master pod on one node, or an elastic group of
Worker pods with a c10d rendezvous over several nodes), a plain `batch/v1` `Job` for each single-pod job (prepare, smoke,
baseline, eval, infer), and two `PersistentVolumeClaim`s: the output dir (project, data, checkpoints; mounted at
/workspace like the Docker platform's bind mount) and the Hugging Face cache. Credentials come from a Secret by
`secretKeyRef` (never a value in a manifest); /dev/shm is a memory-backed emptyDir for data-loader workers.

Sources: https://www.kubeflow.org/docs/components/trainer/legacy-v1/user-guides/pytorch/ (PyTorchJob, the container
named "pytorch", elasticPolicy with rdzvBackend c10d, the operator setting PET_* variables that torchrun reads),
kubeflow-training 1.9.4 (kubeflow/training/models: KubeflowOrgV1PyTorchJobSpec, KubeflowOrgV1ElasticPolicy,
KubeflowOrgV1ReplicaSpec, KubeflowOrgV1RunPolicy), https://kubernetes.io/docs/concepts/workloads/controllers/job/,
https://kubernetes.io/docs/concepts/storage/volumes/#emptydir (medium: Memory),
https://kubernetes.io/docs/concepts/configuration/secret/#using-secrets-as-environment-variables.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import yaml

from tao_finetune.agent.config import ConfigError, RunConfig, atomic_write_text, load_config

WORKDIR = "/workspace"
HF_HOME = "/root/.cache/huggingface"
SINGLE_POD_JOBS = ("prepare", "smoke", "baseline", "eval", "infer")
SECRET = "tao-credentials"


def k8s_name(text: str) -> str:
    """An RFC 1123 label: lower-case alphanumerics and '-', at most 63 characters."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (name or "run")[:63].rstrip("-")


def _env(cfg: RunConfig, kind: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}, {"name": "HF_HOME", "value": HF_HOME},
                                 {"name": "TAO_PROJECT_DIR", "value": WORKDIR}]
    if kind != "prepare":
        env += [{"name": "HF_HUB_OFFLINE", "value": "1"}, {"name": "HF_DATASETS_OFFLINE", "value": "1"}]
    names = ["HF_TOKEN", *(["WANDB_API_KEY", "WANDB_PROJECT"] if cfg.wandb else [])]
    if not cfg.wandb:
        env.append({"name": "WANDB_MODE", "value": "disabled"})
    env += [{"name": n, "valueFrom": {"secretKeyRef": {"name": SECRET, "key": n, "optional": True}}} for n in names]
    return env


def _pod(cfg: RunConfig, kind: str, command: list[str], image: str, gpus: int, *, container: str, restart: str,
         names: dict[str, str], shm: str, cpu: str | None, memory: str | None) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    requests: dict[str, Any] = {}
    if gpus:
        limits["nvidia.com/gpu"] = gpus
    if cpu:
        requests["cpu"] = cpu
    if memory:
        requests["memory"] = limits["memory"] = memory
    resources = {k: v for k, v in (("limits", limits), ("requests", requests)) if v}
    spec: dict[str, Any] = {
        "restartPolicy": restart,
        "containers": [{
            "name": container, "image": image, "imagePullPolicy": "IfNotPresent", "workingDir": WORKDIR,
            "command": command, "env": _env(cfg, kind),
            "volumeMounts": [{"name": "output", "mountPath": WORKDIR}, {"name": "hf-cache", "mountPath": HF_HOME},
                             {"name": "dshm", "mountPath": "/dev/shm"}],
            **({"resources": resources} if resources else {}),
        }],
        "volumes": [{"name": "output", "persistentVolumeClaim": {"claimName": names["output"]}},
                    {"name": "hf-cache", "persistentVolumeClaim": {"claimName": names["cache"]}},
                    {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}],
    }
    if gpus:
        spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return {"metadata": {"labels": {"app.kubernetes.io/name": "tao-finetune", "tao-finetune/run": names["run"],
                                    "tao-finetune/job": kind}},
            "spec": spec}


def _script(kind: str) -> list[str]:
    from tao_finetune.tools.jobs import SCRIPTS

    return list(SCRIPTS[kind])


# Kubernetes' own formats (apimachinery: validation.IsDNS1123Label/Subdomain, resource.Quantity), checked before rendering:
# the JSON schemas type these as plain strings, so a value kubectl apply refuses would otherwise render "validated"
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE]\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")


def check_inputs(*, image: str, namespace: str, gpus_per_node: int | None, storage_class: str | None,
                 sizes: dict[str, str | None], cpu: str | None) -> None:
    """ConfigError (one line, naming the flag) for a value the cluster's API server would refuse."""
    if not image.strip() or any(ch.isspace() for ch in image):
        raise ConfigError(f"--image {image!r} is not an image reference (REGISTRY/NAME:TAG, no spaces)")
    if not DNS1123_LABEL.fullmatch(namespace):
        raise ConfigError(f"--namespace {namespace!r} is not a Kubernetes name (lower-case letters, digits, '-', at most 63)")
    if storage_class is not None and not DNS1123_SUBDOMAIN.fullmatch(storage_class):
        raise ConfigError(f"--storage-class {storage_class!r} is not a Kubernetes name (lower-case letters, digits, '-', '.')")
    if gpus_per_node is not None and gpus_per_node < 0:
        raise ConfigError(f"--gpus-per-node {gpus_per_node} must be 0 or more")
    for flag, value in {**sizes, "--cpu": cpu}.items():
        if value is not None and not QUANTITY.fullmatch(str(value)):
            raise ConfigError(f"{flag} {value!r} is not a Kubernetes quantity (e.g. 16, 500m, 128Gi, 64G)")


def render_manifests(cfg: RunConfig, *, image: str, namespace: str = "default", nodes: int = 1, gpus_per_node: int | None = None,
                     output_size: str = "200Gi", cache_size: str = "100Gi", storage_class: str | None = None,
                     shm: str = "16Gi", cpu: str | None = None, memory: str | None = None,
                     max_restarts: int = 3) -> dict[str, dict[str, Any]]:
    """File name -> manifest: PVCs, a Job per single-pod job, the training PyTorchJob."""
    if nodes < 1:
        raise ConfigError("--nodes must be at least 1")
    check_inputs(image=image, namespace=namespace, gpus_per_node=gpus_per_node, storage_class=storage_class,
                 sizes={"--output-size": output_size, "--cache-size": cache_size, "--shm": shm, "--memory": memory}, cpu=cpu)
    run = k8s_name(f"tao-{cfg.short_name}")
    names = {"run": run, "output": f"{run}-output", "cache": f"{run}-hf-cache"}
    gpus = int(cfg.gpu_count or 0) if gpus_per_node is None else gpus_per_node
    labels = {"app.kubernetes.io/name": "tao-finetune", "tao-finetune/run": run}
    meta = lambda name: {"name": k8s_name(name), "namespace": namespace, "labels": dict(labels)}  # noqa: E731
    out: dict[str, dict[str, Any]] = {}
    for key, size in (("output", output_size), ("cache", cache_size)):
        pvc: dict[str, Any] = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": meta(names[key]),
                               "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": size}}}}
        if storage_class:
            pvc["spec"]["storageClassName"] = storage_class
        out[f"pvc-{key}.yaml"] = pvc
    common = dict(names=names, shm=shm, cpu=cpu, memory=memory)
    for kind in SINGLE_POD_JOBS:
        if kind == "baseline" and cfg.skip_baseline:
            continue
        out[f"job-{kind}.yaml"] = {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": meta(f"{run}-{kind}"),
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 86400,
                     "template": _pod(cfg, kind, ["python", *_script(kind)], image, 0 if kind == "prepare" else min(gpus, 1),
                                      container=kind, restart="Never", **common)},
        }
    train = _script("train")
    if nodes == 1:
        command = ["python", *train] if gpus <= 1 else ["torchrun", "--standalone", f"--nproc_per_node={gpus}", *train]
        spec: dict[str, Any] = {"pytorchReplicaSpecs": {"Master": {
            "replicas": 1, "restartPolicy": "OnFailure",
            "template": _pod(cfg, "train", command, image, gpus, container="pytorch", restart="OnFailure", **common)}}}
    else:
        # elastic: the operator sets PET_NNODES, PET_NPROC_PER_NODE, PET_RDZV_ENDPOINT ... that torchrun reads
        spec = {"elasticPolicy": {"rdzvBackend": "c10d", "minReplicas": nodes, "maxReplicas": nodes, "maxRestarts": max_restarts,
                                  "nProcPerNode": max(gpus, 1)},
                "nprocPerNode": str(max(gpus, 1)),
                "pytorchReplicaSpecs": {"Worker": {
                    "replicas": nodes, "restartPolicy": "OnFailure",
                    "template": _pod(cfg, "train", ["torchrun", *train], image, gpus, container="pytorch", restart="OnFailure",
                                     **common)}}}
    spec["runPolicy"] = {"cleanPodPolicy": "None", "backoffLimit": max_restarts}
    out["pytorchjob-train.yaml"] = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": meta(f"{run}-train"),
                                    "spec": spec}
    return out


README = """# Kubernetes manifests for {run} (rendered by `tao-finetune render-k8s`; validated against schemas, not run here)

1. Push the run's image (built from ../Dockerfile) to a registry the cluster pulls from: {image}
2. kubectl apply -f pvc-output.yaml -f pvc-cache.yaml, then copy the output dir (project files) into the
   `{output}` volume (e.g. a helper pod and kubectl cp).
3. Credentials by name only: kubectl -n {namespace} create secret generic {secret} --from-literal=HF_TOKEN=...
4. In order: job-prepare.yaml, job-smoke.yaml, {baseline}pytorchjob-train.yaml (needs the Kubeflow training operator),
   job-eval.yaml, job-infer.yaml; wait for each (kubectl wait --for=condition=complete job/NAME).
"""


def write_manifests(run_dir: Path, manifests: dict[str, dict[str, Any]], info: dict[str, str]) -> list[Path]:
    """Write each manifest atomically under run_dir/k8s/, plus a README with the order to apply them."""
    d = run_dir / "k8s"
    paths = []
    for name, doc in manifests.items():
        path = d / name
        atomic_write_text(path, yaml.safe_dump(doc, sort_keys=False))
        paths.append(path)
    atomic_write_text(d / "README.md", README.format(**info))
    return paths


def add_render_k8s_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("render-k8s", help="write Kubernetes manifests (PyTorchJob + Jobs + PVCs) for a run dir; rendered, not run",
                       description="Render DIR/k8s/*.yaml from DIR/config.yaml: a Kubeflow PyTorchJob for training and a Job per "
                                   "single-pod job. Nothing is applied to a cluster.")
    p.add_argument("dir", type=Path, help="the run's output dir (holds config.yaml)")
    p.add_argument("--image", default=None, help="registry image with the project's dependencies (default: config image / NGC image)")
    p.add_argument("--namespace", default="default")
    p.add_argument("--nodes", type=int, default=None, help="training pods (nodes); default: config.yaml slurm.nodes")
    p.add_argument("--gpus-per-node", type=int, default=None, help="default: the audit's gpu_count")
    p.add_argument("--storage-class", default=None)
    p.add_argument("--output-size", default="200Gi")
    p.add_argument("--cache-size", default="100Gi")
    p.add_argument("--shm", default="16Gi", help="size of the /dev/shm emptyDir")
    p.add_argument("--cpu", default=None, help="CPU request per pod, e.g. 16")
    p.add_argument("--memory", default=None, help="memory request and limit per pod, e.g. 128Gi")
    p.set_defaults(handler=render_k8s_command)


def render_k8s_command(args: argparse.Namespace) -> int:
    run_dir = args.dir.resolve()
    cfg = load_config(run_dir / "config.yaml")
    image = args.image or cfg.image or cfg.ngc_image
    if not image:
        raise ConfigError("no image: pass --image REGISTRY/NAME:TAG (the run's image pushed where the cluster can pull it)")
    nodes = args.nodes if args.nodes is not None else cfg.slurm.nodes
    manifests = render_manifests(cfg, image=image, namespace=args.namespace, nodes=nodes, gpus_per_node=args.gpus_per_node,
                                 output_size=args.output_size, cache_size=args.cache_size, storage_class=args.storage_class,
                                 shm=args.shm, cpu=args.cpu, memory=args.memory)
    run = k8s_name(f"tao-{cfg.short_name}")
    paths = write_manifests(run_dir, manifests, {"run": run, "image": image, "output": f"{run}-output", "namespace": args.namespace,
                                                 "secret": SECRET, "baseline": "" if cfg.skip_baseline else "job-baseline.yaml, "})
    for path in paths:
        print(path)
    print("rendered, not applied: see k8s/README.md for the order")
    return 0
