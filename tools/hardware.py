"""Step 2a: a check-only audit of the GPU host (Docker, driver, CUDA, Container Toolkit, GPUs, disk, credentials).

Decisions are pure functions over recorded command outputs (`HostFacts`); `collect_facts` is the thin
layer that runs the real commands. Nothing here installs anything: a hard failure stops the run with
the exact steps to run, and the user decides.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from tao_finetune.agent.context import RunContext
from tao_finetune.agent.errors import ExitCode
from tao_finetune.agent.facts import AuditItem, FactsError, HostAudit, HostFacts, HostSummary, load_host_facts, recorded_host_path
from tao_finetune.tools.base import NeedsUser, NoArgs, ToolError, tool

EXPECTED_DRIVER_BRANCH = 580
EXPECTED_CUDA = (13, 0)
EXPECTED_CTK = (1, 19, 0)
DEFAULT_MIN_DISK_GB = 100.0
SMI_QUERY = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
SMOKE_IMAGE = "ubuntu:24.04"
DOCTOR_EXIT_FAIL = ExitCode.GATE_FAILED

Status = Literal["pass", "warn", "fail", "skip"]

DRIVER_FIX = (
    "Install the NVIDIA driver 580 branch (Ubuntu): sudo apt-get update && "
    "sudo apt-get install -y nvidia-driver-580-server-open && sudo reboot "
    "(or the CUDA repo's cuda-drivers-580); then check with: nvidia-smi"
)
CTK_FIX = (
    "Install NVIDIA Container Toolkit 1.19.0: add the repo "
    "(curl -fsSL https://nvidia.github.io/libnvidia-container/gpgkey | sudo gpg --dearmor -o "
    "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg && curl -s -L "
    "https://nvidia.github.io/libnvidia-container/stable/deb/nvidia-container-toolkit.list | sed "
    "'s#deb https://#deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] https://#g' | "
    "sudo tee /etc/apt/sources.list.d/nvidia-container-toolkit.list), then: sudo apt-get update && "
    "sudo apt-get install -y nvidia-container-toolkit=1.19.0-1 && "
    "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker"
)
RUNTIME_FIX = "sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker"
DOCKER_FIX = (
    "Install and start Docker Engine (https://docs.docker.com/engine/install/): "
    "sudo apt-get install -y docker.io && sudo systemctl enable --now docker, "
    "and make sure this user can reach the socket (sudo usermod -aG docker $USER; log in again)"
)
CUDA_TOOLKIT_FIX = "Optional (containers bring their own CUDA): sudo apt-get install -y cuda-toolkit-13-0"


@dataclass(frozen=True)
class Item:
    """One audit line: what was checked, the verdict, and how to fix a failure."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class GPU:
    """One GPU as nvidia-smi reports it."""

    name: str
    memory_mib: int
    driver_version: str

    @property
    def vram_gb(self) -> float:
        return round(self.memory_mib * 1024 * 1024 / 1e9, 1)


def parse_version(text: str | None, pattern: str = r"(\d+(?:\.\d+)+)") -> tuple[int, ...] | None:
    """First dotted version in text as a tuple of ints."""
    if not text:
        return None
    m = re.search(pattern, text)
    return tuple(int(p) for p in m.group(1).split(".")) if m else None


def fmt_version(v: tuple[int, ...] | None) -> str:
    return ".".join(map(str, v)) if v else "unknown"


def parse_gpus(smi_query: str | None) -> list[GPU]:
    """GPUs from `nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits`."""
    gpus = []
    for line in (smi_query or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3 or not parts[1].isdigit():
            continue
        gpus.append(GPU(name=parts[0], memory_mib=int(parts[1]), driver_version=parts[2]))
    return gpus


def driver_version(facts: HostFacts) -> str | None:
    """The driver version string, from the query output or the nvidia-smi banner."""
    gpus = parse_gpus(facts.smi_query)
    if gpus:
        return gpus[0].driver_version
    m = re.search(r"Driver Version:\s*([\d.]+)", facts.smi_banner or "")
    return m.group(1) if m else None


def driver_major(facts: HostFacts) -> int | None:
    """The driver branch, e.g. 580 for 580.95.05."""
    v = parse_version(driver_version(facts))
    return v[0] if v else None


def driver_cuda(facts: HostFacts) -> tuple[int, ...] | None:
    """The highest CUDA version the driver supports (nvidia-smi banner 'CUDA Version: 13.0')."""
    return parse_version(facts.smi_banner, r"CUDA Version:\s*(\d+(?:\.\d+)+)")


def nvcc_cuda(facts: HostFacts) -> tuple[int, ...] | None:
    """The host CUDA toolkit version from `nvcc --version` ('release 13.0, V13.0.48')."""
    return parse_version(facts.nvcc_output, r"release\s+(\d+(?:\.\d+)+)")


def ctk_version(facts: HostFacts) -> tuple[int, ...] | None:
    """NVIDIA Container Toolkit version from `nvidia-ctk --version`."""
    return parse_version(facts.ctk_output, r"version\s+(\d+(?:\.\d+)+)")


def gpu_runtime(info: dict[str, Any]) -> str | None:
    """How the daemon can hand GPUs to containers: the 'nvidia' runtime, CDI specs, or None."""
    if "nvidia" in (info.get("Runtimes") or {}):
        return "nvidia runtime"
    if info.get("DefaultRuntime") == "nvidia":
        return "nvidia runtime (default)"
    if any("nvidia" in str(d) for d in info.get("DiscoveredDevices") or []):
        return "CDI"
    return None


def needed_credentials(push_to_hub: bool, gated: bool, wandb: bool) -> list[str]:
    """The credentials this run needs: HF_TOKEN for a push or a gated model, WANDB_API_KEY for wandb."""
    names = ["HF_TOKEN"] if push_to_hub or gated else []
    return [*names, "WANDB_API_KEY"] if wandb else names


def assess(
    facts: HostFacts,
    *,
    platform: Literal["docker", "local"] = "docker",
    allow_cpu: bool = False,
    min_disk_gb: float = DEFAULT_MIN_DISK_GB,
    credentials: dict[str, bool] | None = None,
) -> list[Item]:
    """Judge the facts against the expected host; every item is pass / warn / fail / skip."""
    items: list[Item] = []
    docker = platform == "docker"
    if not docker:
        items.append(Item("docker", "skip", "platform local: Docker not used"))
    elif facts.docker_version is None:
        items.append(Item("docker", "fail", f"Docker daemon not reachable: {facts.docker_error or 'no answer'}", DOCKER_FIX))
    else:
        items.append(Item("docker", "pass", f"Docker daemon {facts.docker_version}"))

    gpus = parse_gpus(facts.smi_query)
    has_gpu = bool(gpus)
    if has_gpu:
        names = sorted({g.name for g in gpus})
        vram = min(g.vram_gb for g in gpus)
        items.append(Item("gpu", "pass", f"{len(gpus)} x {' / '.join(names)}, {vram} GB each"))
    elif allow_cpu:
        items.append(Item("gpu", "warn", "no NVIDIA GPU found; running on CPU because allow_cpu is set"))
    else:
        why = "nvidia-smi not found" if facts.smi_query is None else "nvidia-smi lists no GPU"
        items.append(
            Item("gpu", "fail", f"no NVIDIA GPU: {why}", f"{DRIVER_FIX}; or rerun with --allow-cpu for a CPU-only run")
        )

    if has_gpu:
        major = driver_major(facts)
        ver = driver_version(facts)
        if major is None:
            items.append(Item("driver", "fail", "driver version unreadable from nvidia-smi", DRIVER_FIX))
        elif major < EXPECTED_DRIVER_BRANCH:
            items.append(
                Item("driver", "fail", f"driver {ver} (branch {major}) is older than branch {EXPECTED_DRIVER_BRANCH}", DRIVER_FIX)
            )
        else:
            items.append(Item("driver", "pass", f"driver {ver} (branch {major})"))
        cuda = driver_cuda(facts)
        if cuda is None:
            items.append(Item("cuda", "warn", "CUDA version of the driver unreadable from nvidia-smi"))
        elif cuda[:2] < EXPECTED_CUDA:
            items.append(
                Item("cuda", "fail", f"driver supports CUDA {fmt_version(cuda)} < {fmt_version(EXPECTED_CUDA)}", DRIVER_FIX)
            )
        else:
            items.append(Item("cuda", "pass", f"driver supports CUDA {fmt_version(cuda)}"))
    else:
        for name in ("driver", "cuda"):
            items.append(Item(name, "skip", "no GPU"))
    nvcc = nvcc_cuda(facts)
    if nvcc is None:
        status: Status = "warn" if has_gpu else "skip"
        items.append(Item("cuda_toolkit", status, "no host CUDA toolkit (nvcc); containers bring their own", CUDA_TOOLKIT_FIX))
    elif nvcc[:2] < EXPECTED_CUDA:
        items.append(Item("cuda_toolkit", "warn", f"host CUDA toolkit {fmt_version(nvcc)} < 13.0", CUDA_TOOLKIT_FIX))
    else:
        items.append(Item("cuda_toolkit", "pass", f"host CUDA toolkit {fmt_version(nvcc)}"))

    if docker and has_gpu:
        ctk = ctk_version(facts)
        if ctk is None:
            items.append(Item("container_toolkit", "fail", "nvidia-ctk not found", CTK_FIX))
        elif ctk < EXPECTED_CTK:
            items.append(
                Item("container_toolkit", "fail", f"NVIDIA Container Toolkit {fmt_version(ctk)} < {fmt_version(EXPECTED_CTK)}", CTK_FIX)
            )
        else:
            items.append(Item("container_toolkit", "pass", f"NVIDIA Container Toolkit {fmt_version(ctk)}"))
        if facts.docker_version is not None:
            rt = gpu_runtime(facts.docker_info)
            if rt:
                items.append(Item("gpu_runtime", "pass", f"Docker has the {rt}"))
            else:
                items.append(Item("gpu_runtime", "warn", "Docker lists no 'nvidia' runtime or CDI devices", RUNTIME_FIX))
        if facts.gpu_smoke is None:
            items.append(Item("gpu_smoke", "skip", "GPU smoke in a container not run"))
        elif facts.gpu_smoke[0] is None:
            items.append(Item("gpu_smoke", "warn", f"GPU smoke not run: {facts.gpu_smoke[1][:200]}", "rerun doctor with --smoke-image NAME (any local image)"))
        elif facts.gpu_smoke[0]:
            items.append(Item("gpu_smoke", "pass", f"container sees the GPU: {facts.gpu_smoke[1][:120]}"))
        else:
            detail = facts.gpu_smoke[1][-300:]
            fix = RUNTIME_FIX if "could not select device driver" in detail else CTK_FIX
            items.append(Item("gpu_smoke", "fail", f"GPU smoke in a container failed: {detail}", fix))
    else:
        why = "platform local" if not docker else "no GPU"
        for name in ("container_toolkit", "gpu_runtime", "gpu_smoke"):
            items.append(Item(name, "skip", why))

    if facts.free_disk_gb is None:
        items.append(Item("disk", "warn", "free disk unknown"))
    elif facts.free_disk_gb < min_disk_gb:
        items.append(
            Item(
                "disk",
                "warn",
                f"{facts.free_disk_gb:.0f} GB free at {facts.disk_path or '?'} < {min_disk_gb:.0f} GB (MIN_DISK_GB)",
                "free space or set MIN_DISK_GB",
            )
        )
    else:
        items.append(Item("disk", "pass", f"{facts.free_disk_gb:.0f} GB free at {facts.disk_path or '?'}"))

    items += [credential_item(name, present) for name, present in (credentials or {}).items()]
    return items


def credential_item(name: str, present: bool) -> Item:
    """A needed credential: pass when set; a missing WANDB_API_KEY only warns (W&B then logs offline), any other fails."""
    if present:
        return Item(f"credential {name}", "pass", f"{name} is set")
    if name == "WANDB_API_KEY":
        return Item(f"credential {name}", "warn", "WANDB_API_KEY is not set: W&B logs offline (logs/wandb/, `wandb sync` uploads it later)",
                    f"add {name}=... to ~/.config/tao/.env for an online run")
    return Item(f"credential {name}", "fail", f"{name} is needed by this run and not set", f"add {name}=... to ~/.config/tao/.env")


def passed(items: list[Item]) -> bool:
    """No item failed."""
    return not any(i.status == "fail" for i in items)


def hardware_record(facts: HostFacts, allow_cpu: bool) -> dict[str, Any]:
    """The values Step 2 records in config.yaml (gpu_count, gpu_name, driver_major, vram_gb_per_gpu)."""
    gpus = parse_gpus(facts.smi_query)
    if not gpus:
        return {"gpu_count": 0, "gpu_name": "cpu", "driver_major": 0, "vram_gb_per_gpu": 0.0} if allow_cpu else {}
    return {
        "gpu_count": len(gpus),
        "gpu_name": gpus[0].name,
        "driver_major": driver_major(facts) or 0,
        "vram_gb_per_gpu": min(g.vram_gb for g in gpus),
    }


def _run(argv: list[str], timeout: float = 30) -> str | None:
    """stdout+stderr of a command, or None if it is missing or fails to run."""
    exe = shutil.which(argv[0])
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout + proc.stderr


def _free_gb(path: Path) -> tuple[float | None, str]:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free / 1e9, str(p)
    except OSError:
        return None, str(p)


def gpu_smoke(client: Any, image: str) -> tuple[bool | None, str]:
    """Run nvidia-smi -L in a container with all GPUs; (ok, output or error), ok None when the image is unavailable."""
    import docker
    import requests

    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(image)
        except docker.errors.DockerException as err:
            return None, f"image {image!r} not available: {str(err)[:200]}"
    except docker.errors.DockerException as err:
        return None, str(err)[:200]
    container = None
    try:
        container = client.containers.create(
            image,
            ["nvidia-smi", "-L"],
            device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu", "utility"]])],
            network_mode="none",
        )
        container.start()
        code = container.wait(timeout=120).get("StatusCode", -1)
        out = container.logs().decode(errors="replace").strip()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as err:
        return False, str(err)
    finally:
        if container is not None:
            container.remove(force=True)
    return code == 0, out


def collect_facts(
    platform: Literal["docker", "local"] = "docker",
    disk_path: Path | None = None,
    smoke_image: str | None = SMOKE_IMAGE,
) -> HostFacts:
    """Run the real commands and gather the observations (check-only)."""
    facts = HostFacts()
    client = None
    if platform == "docker":
        import docker

        try:
            client = docker.from_env(timeout=20)
            facts.docker_version = client.version().get("Version", "unknown")
            facts.docker_info = client.info()
        except docker.errors.DockerException as err:
            facts.docker_error = str(err).splitlines()[0][:300]
            client = None
    facts.smi_query = _run(SMI_QUERY)
    facts.smi_banner = _run(["nvidia-smi"])
    nvcc = "nvcc" if shutil.which("nvcc") else "/usr/local/cuda/bin/nvcc"
    facts.nvcc_output = _run([nvcc, "--version"]) if Path(nvcc).exists() or shutil.which(nvcc) else None
    facts.ctk_output = _run(["nvidia-ctk", "--version"])
    if client is not None and parse_gpus(facts.smi_query) and smoke_image:
        facts.gpu_smoke = gpu_smoke(client, smoke_image)
    root = facts.docker_info.get("DockerRootDir") if facts.docker_info else None
    facts.free_disk_gb, facts.disk_path = _free_gb(Path(root) if root else (disk_path or Path.cwd()))
    return facts


def min_disk_gb() -> float:
    """MIN_DISK_GB from the environment, else 100."""
    try:
        return float(os.environ.get("MIN_DISK_GB", DEFAULT_MIN_DISK_GB))
    except ValueError:
        return DEFAULT_MIN_DISK_GB


def host_summary(facts: HostFacts) -> HostSummary:
    """Facts later steps use (image selection): driver and CUDA versions."""
    return HostSummary(
        driver_version=driver_version(facts),
        driver_major=driver_major(facts),
        cuda=fmt_version(driver_cuda(facts)) if driver_cuda(facts) else None,
        cuda_toolkit=fmt_version(nvcc_cuda(facts)) if nvcc_cuda(facts) else None,
        container_toolkit=fmt_version(ctk_version(facts)) if ctk_version(facts) else None,
        docker=facts.docker_version,
        gpu_runtime=gpu_runtime(facts.docker_info) if facts.docker_info else None,
    )


def host_facts(platform: Literal["docker", "local"], disk_path: Path, smoke_image: str | None) -> tuple[HostFacts, str | None]:
    """The host's facts: replayed from $TAO_HOST_FACTS when set (a recorded host), else collected by running the commands."""
    recorded = recorded_host_path()
    if recorded is None:
        return collect_facts(platform, disk_path=disk_path, smoke_image=smoke_image), None
    try:
        return load_host_facts(recorded), str(recorded)
    except FactsError as err:
        raise ToolError(str(err)) from None


def failure_question(items: list[Item]) -> str:
    """What is missing and the exact steps, for the user to authorize."""
    lines = ["The hardware audit failed; nothing was installed. Missing or wrong:"]
    for i in items:
        if i.status == "fail":
            lines.append(f"- {i.name}: {i.detail}")
            if i.fix:
                lines.append(f"  fix: {i.fix}")
    return "\n".join(lines)


@tool(step=2)
def audit_hardware(ctx: RunContext, args: NoArgs) -> dict:
    """Check-only audit of this host (Docker, NVIDIA driver/CUDA, Container Toolkit, GPUs, disk, needed credentials); records gpu_count, gpu_name, driver_major, vram_gb_per_gpu."""
    cfg = ctx.config
    creds = needed_credentials(cfg.push_to_hub, bool(cfg.model_facts and cfg.model_facts.gated), cfg.wandb)
    if cfg.platform == "slurm":
        return _audit_slurm(ctx, creds)
    facts, replayed = host_facts(cfg.platform, cfg.out, cfg.image or SMOKE_IMAGE)
    items = assess(
        facts,
        platform=cfg.platform,
        allow_cpu=cfg.allow_cpu,
        min_disk_gb=min_disk_gb(),
        credentials={n: ctx.creds.present(n) for n in creds},
    )
    ok = passed(items)
    for key, value in hardware_record(facts, cfg.allow_cpu).items():
        setattr(cfg, key, value)
    audit = HostAudit(passed=ok, items=[AuditItem(**asdict(i)) for i in items], host=host_summary(facts), replayed_from=replayed)
    ctx.state.record("audit", audit.model_dump())
    ctx.save()
    ctx.session.event("audit", passed=ok, items=[f"{i.status} {i.name}" for i in items])
    if not ok:
        raise NeedsUser(
            failure_question(items),
            "Run the fix steps yourself (or authorize them), then resume the run; "
            "for a CPU-only run pass --allow-cpu.",
        )
    return {
        "passed": ok,
        "items": [f"{i.status} {i.name}: {i.detail}" for i in items if i.status != "skip"],
        **hardware_record(facts, cfg.allow_cpu),
    }


def _audit_slurm(ctx: RunContext, creds: list[str]) -> dict:
    """The slurm platform's audit: the cluster (sinfo/scontrol) instead of this host's GPUs; see tools/runtime/slurm.py."""
    from tao_finetune.tools.runtime import slurm

    cfg = ctx.config
    facts = slurm.collect_slurm_facts(cfg, disk_path=cfg.out)
    items, record = slurm.assess_slurm(facts, cfg, {n: ctx.creds.present(n) for n in creds}, min_disk_gb())
    ok = passed(items)
    values = slurm.slurm_hardware_record(facts, record, cfg)
    for key, value in values.items():
        setattr(cfg, key, value)
    ctx.state.record("audit", {"passed": ok, "items": [asdict(i) for i in items], "slurm": record,
                               "host": {"platform": "slurm", "container": record.get("container")}})
    ctx.save()
    ctx.session.event("audit", passed=ok, items=[f"{i.status} {i.name}" for i in items])
    if not ok:
        raise NeedsUser(failure_question(items), "Fix the cluster request (--set slurm.<key>=...) or the cluster, then resume the run; "
                                                 "for a CPU-only run pass --allow-cpu.")
    return {"passed": ok, "items": [f"{i.status} {i.name}: {i.detail}" for i in items if i.status != "skip"], **values}


def add_doctor_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `doctor`: the same audit, printed for a person."""
    p = subparsers.add_parser("doctor", help="check this host for GPU fine-tuning (check-only, installs nothing)")
    p.add_argument("--platform", choices=["docker", "local", "slurm"], default="docker")
    p.add_argument("--allow-cpu", action="store_true", help="a host without GPU is not a failure")
    p.add_argument("--smoke-image", default=SMOKE_IMAGE, help="image for the in-container GPU smoke")
    p.add_argument("--config", type=Path, default=None, help="a run's config.yaml: check the credentials it needs")
    p.add_argument("--json", action="store_true", help="print the items as JSON")
    p.set_defaults(func=doctor_command)
    return p


def _doctor_bad_input(args: argparse.Namespace, message: str) -> int:
    """A bad --config or TAO_HOST_FACTS: one line on stderr (no markup: paths may hold brackets), exit 2; with --json
    also one object on stdout."""
    from rich.console import Console

    line = " ".join(message.split())
    Console(stderr=True, soft_wrap=True).print(f"error: {line}", style="red", markup=False)
    if args.json:
        print(json.dumps({"passed": False, "error": line, "exit_code": 2, "items": []}, indent=1))
    return 2


def doctor_command(args: argparse.Namespace) -> int:
    """Print one pass/warn/fail line per item; 0 if nothing failed, 4 on a hard failure."""
    from rich.console import Console
    from rich.markup import escape

    from tao_finetune.agent.secrets import Credentials

    creds: dict[str, bool] = {}
    allow_cpu = args.allow_cpu
    if args.config:
        from tao_finetune.agent.config import ConfigError, load_config

        try:
            cfg = load_config(args.config)
        except ConfigError as err:
            return _doctor_bad_input(args, str(err))
        c = Credentials.load()
        allow_cpu = allow_cpu or cfg.allow_cpu
        names = needed_credentials(cfg.push_to_hub, bool(cfg.model_facts and cfg.model_facts.gated), cfg.wandb)
        creds = {n: c.present(n) for n in names}
    if args.platform == "slurm":  # the cluster from this login node: sinfo/scontrol (tools/runtime/slurm.py)
        from tao_finetune.agent.config import RunConfig
        from tao_finetune.tools.runtime import slurm

        run_cfg = cfg if args.config else RunConfig(model_id="doctor", platform="slurm")
        run_cfg = run_cfg.model_copy(update={"allow_cpu": allow_cpu})
        items, _ = slurm.assess_slurm(slurm.collect_slurm_facts(run_cfg), run_cfg, creds, min_disk_gb())
    else:
        try:
            facts, _ = host_facts(args.platform, Path.cwd(), args.smoke_image)
        except ToolError as err:
            return _doctor_bad_input(args, str(err))
        items = assess(facts, platform=args.platform, allow_cpu=allow_cpu, min_disk_gb=min_disk_gb(), credentials=creds)
    if args.json:
        print(json.dumps({"passed": passed(items), "items": [asdict(i) for i in items]}, indent=1))
    else:
        console = Console(highlight=False)
        style = {"pass": "green", "warn": "yellow", "fail": "red", "skip": "dim"}
        for i in items:
            # host text (paths, versions, GPU names) is printed as text, never read as rich markup
            console.print(f"[{style[i.status]}]{i.status:4}[/] {escape(f'{i.name:18}')} {escape(i.detail)}", soft_wrap=True)
            if i.fix and i.status in ("fail", "warn"):
                console.print(f"     {'':18} fix: {i.fix}", style="dim", soft_wrap=True, markup=False)
        verdict = "PASS" if passed(items) else "FAIL"
        console.print(f"[bold]{verdict}[/bold] (expected host: driver {EXPECTED_DRIVER_BRANCH} branch, CUDA 13.0, "
                      f"Container Toolkit {fmt_version(EXPECTED_CTK)})")
    return 0 if passed(items) else DOCTOR_EXIT_FAIL
