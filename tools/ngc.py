"""Step 2b-2d: pick the NGC PyTorch image from NVIDIA's live support matrix, re-check hardware compat rules, check model fit.

Page format: https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html (one column per
container release, rows CUDA / Driver Requirements / PyTorch) and the per-release tables of
https://docs.nvidia.com/deeplearning/frameworks/pytorch-release-notes/ (one row per release); both parse.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any

import httpx
import yaml
from bs4 import BeautifulSoup
from pydantic import BaseModel, Field

from tao_finetune.agent.facts import audit_of
from tao_finetune.agent.authority import record_live_attempt
from tao_finetune.agent.config import atomic_write_text
from tao_finetune.agent.context import RunContext
from tao_finetune.tools.base import NeedsUser, NoArgs, ToolError, tool

SUPPORT_MATRIX_URL = "https://docs.nvidia.com/deeplearning/frameworks/support-matrix/index.html"
URL_ENV = "TAO_NGC_SUPPORT_MATRIX_URL"
CURATED = "ngc_images.yaml"
CURATED_SOURCE = f"references/{CURATED}"
SLOT = "ngc_image"
FIT_FRACTION = 0.6
# Minimum driver branch per CUDA minor, for pages that give CUDA but no driver row.
CUDA_MIN_DRIVER = {
    (13, 1): 590, (13, 0): 580, (12, 9): 575, (12, 8): 570, (12, 6): 560, (12, 5): 555,
    (12, 4): 550, (12, 3): 545, (12, 2): 535, (12, 1): 530, (12, 0): 525, (11, 8): 520,
}
RELEASE = re.compile(r"^\s*(\d{2})\.(\d{2})(?:-py3)?\s*$")
VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class NgcImage:
    """One NGC PyTorch container release."""

    version: str
    cuda: str
    min_driver: int
    pytorch: str = ""

    @property
    def tag(self) -> str:
        return f"nvcr.io/nvidia/pytorch:{self.version}-py3"

    @property
    def key(self) -> tuple[int, int]:
        yy, mm = self.version.split(".")
        return int(yy), int(mm)

    @property
    def cuda_minor(self) -> tuple[int, int]:
        m = VERSION.search(self.cuda)
        return (int(m.group(1)), int(m.group(2))) if m else (99, 99)


def _cells(row: Any) -> list[str]:
    return [" ".join(c.get_text(" ", strip=True).split()) for c in row.find_all(["th", "td"])]


def _driver(text: str, cuda: str) -> int | None:
    m = re.search(r"\b(\d{3})(?:\.\d+)*\b", text or "")
    if m:
        return int(m.group(1))
    v = VERSION.search(cuda or "")
    if not v:
        return None
    key = (int(v.group(1)), int(v.group(2)))
    if key in CUDA_MIN_DRIVER:
        return CUDA_MIN_DRIVER[key]
    newest = max(CUDA_MIN_DRIVER)
    if key > newest:
        return CUDA_MIN_DRIVER[newest] + 1  # newer than any CUDA we know: needs a newer driver than we know
    lower = [k for k in CUDA_MIN_DRIVER if k < key]
    return CUDA_MIN_DRIVER[max(lower)] if lower else None


def _image(version: str, cuda_text: str, driver_text: str, pytorch_text: str) -> NgcImage | None:
    cuda = VERSION.search(cuda_text or "")
    if not cuda:
        return None
    if pytorch_text and "not supported" in pytorch_text.lower():
        return None
    driver = _driver(driver_text, cuda.group(0))
    if driver is None:
        return None
    torch = VERSION.search(pytorch_text or "")
    pytorch = pytorch_text.split()[-1] if torch else ""
    return NgcImage(version=version, cuda=cuda.group(0), min_driver=driver, pytorch=pytorch)


def _label(text: str) -> str | None:
    t = text.lower()
    if "driver" in t:
        return "driver"
    if t.startswith("cuda") or t in ("nvidia cuda", "cuda toolkit"):
        return "cuda"
    if "pytorch" in t:
        return "pytorch"
    return None


def parse_support_matrix(html: str) -> list[NgcImage]:
    """Every PyTorch container release found in the page's tables (column- or row-oriented)."""
    soup = BeautifulSoup(html, "html.parser")
    found: dict[str, NgcImage] = {}
    for table in soup.find_all("table"):
        rows = [_cells(r) for r in table.find_all("tr")]
        rows = [r for r in rows if r]
        if len(rows) < 2:
            continue
        header = rows[0]
        releases = [RELEASE.match(h) for h in header[1:]]
        if header[0].lower().startswith("container") and any(releases):
            by_label: dict[str, list[str]] = {}
            for r in rows[1:]:
                label = _label(r[0])
                if label and label not in by_label:
                    by_label[label] = r[1:]
            for i, m in enumerate(releases):
                if not m:
                    continue
                def cell(label: str) -> str:
                    vals = by_label.get(label, [])
                    return vals[i] if i < len(vals) else ""
                img = _image(f"{m.group(1)}.{m.group(2)}", cell("cuda"), cell("driver"), cell("pytorch"))
                if img:
                    found.setdefault(img.version, img)
            continue
        cols = {_label(h): j for j, h in enumerate(header) if _label(h)}
        ver_col = next((j for j, h in enumerate(header) if "container" in h.lower() or "release" in h.lower()), None)
        if ver_col is None or "cuda" not in cols:
            continue
        for r in rows[1:]:
            m = RELEASE.match(r[ver_col]) if ver_col < len(r) else None
            if not m:
                continue
            get = lambda k: r[cols[k]] if k in cols and cols[k] < len(r) else ""  # noqa: E731
            img = _image(f"{m.group(1)}.{m.group(2)}", get("cuda"), get("driver"), get("pytorch"))
            if img:
                found.setdefault(img.version, img)
    return sorted(found.values(), key=lambda i: i.key, reverse=True)


def load_curated() -> list[NgcImage]:
    """The curated fallback table from references/ngc_images.yaml."""
    text = resources.files("tao_finetune.references").joinpath(CURATED).read_text()
    data = yaml.safe_load(text) or {}
    return [
        NgcImage(version=str(e["version"]), cuda=str(e["cuda"]), min_driver=int(e["min_driver"]), pytorch=str(e.get("pytorch", "")))
        for e in data.get("images", [])
    ]


def parse_cuda(text: str | None) -> tuple[int, int] | None:
    """'13.0' -> (13, 0)."""
    m = VERSION.search(text or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


def choose_image(images: list[NgcImage], driver_major: int, host_cuda: tuple[int, int] | None) -> NgcImage | None:
    """The highest release with min driver <= the host's branch and CUDA <= the host's (pre-release PyTorch is fine)."""
    ok = [
        i for i in images
        if i.min_driver <= driver_major and (host_cuda is None or i.cuda_minor <= host_cuda)
    ]
    return max(ok, key=lambda i: i.key, default=None)


def fetch_page(url: str, timeout: float = 20.0) -> str:
    """GET the page; raises httpx.HTTPError (including HTTP status errors)."""
    resp = httpx.get(url, timeout=timeout, follow_redirects=True, headers={"User-Agent": "tao-finetune"})
    resp.raise_for_status()
    return resp.text


def live_images(ctx: RunContext, url: str) -> tuple[list[NgcImage], str]:
    """Fetch and parse the live page, saving it under meta/sources/; ([], why) when unusable."""
    try:
        html = fetch_page(url)
    except httpx.HTTPStatusError as err:
        return [], f"HTTP {err.response.status_code}"
    except httpx.HTTPError as err:
        return [], f"fetch failed: {type(err).__name__}: {err}"
    atomic_write_text(ctx.run_dir / "meta" / "sources" / "ngc-support-matrix.html", html)
    images = parse_support_matrix(html)
    return (images, "") if images else ([], "no PyTorch container table found in the page")


def _reevaluate_compat(ctx: RunContext) -> list[str] | None:
    """Re-run the hardware-phase compat rules (tools/compat.py) now that the image is known; None if that module is absent."""
    try:
        from tao_finetune.tools import compat
    except ImportError:
        return None
    matches = compat.apply_matches(ctx.config, "hardware")
    ids = [m["id"] for m in matches]
    ctx.state.record("compat_hardware", ids)
    return ids


class SelectImageArgs(BaseModel):
    url: str | None = Field(None, description="support-matrix / release-notes page to parse instead of the default NVIDIA page")


@tool(step=2)
def select_image(ctx: RunContext, args: SelectImageArgs) -> dict:
    """Pick the newest NGC PyTorch image this host's driver and CUDA support (live support matrix, curated fallback); sets ngc_image and re-checks hardware compat rules."""
    cfg, state = ctx.config, ctx.state
    if cfg.image:
        cfg.ngc_image = cfg.image
        cfg.user_set = sorted(set(cfg.user_set) | {"ngc_image"})
        state.record("image", {"image": cfg.image, "rank": "user", "source": "user (--image)"})
        compat = _reevaluate_compat(ctx)
        ctx.save()
        return {"ngc_image": cfg.image, "source": "user (--image)", "compat": compat}
    if cfg.platform == "local":
        compat = _reevaluate_compat(ctx)
        ctx.save()
        return {"ngc_image": None, "skipped": "platform local runs without a container image", "compat": compat}
    if cfg.driver_major is None:
        raise ToolError("driver_major is not recorded: run audit_hardware first")
    if not cfg.gpu_count:
        raise NeedsUser(
            "This host has no GPU, so no NGC image can be chosen by driver; which container image should the CPU run use?",
            "rerun with --image NAME (a local image with Python 3 and pip, e.g. tao-base-torch:cpu)",
        )
    audit = audit_of(state.records)
    host_cuda = parse_cuda(audit.host.cuda if audit else None)
    url = args.url or os.environ.get(URL_ENV) or SUPPORT_MATRIX_URL
    images, why = live_images(ctx, url)
    rank, source = "live", url
    if images:
        record_live_attempt(state, SLOT, url, f"parsed {len(images)} releases")
    else:
        record_live_attempt(state, SLOT, url, why)
        cfg.note(f"NGC image: live page {url} unusable ({why}); fell back to {CURATED_SOURCE}")
        images, rank, source = load_curated(), "reference", CURATED_SOURCE
    chosen = choose_image(images, cfg.driver_major, host_cuda)
    if chosen is None:
        ctx.save()
        newest = images[0] if images else None
        need = f"; the newest ({newest.version}) needs driver {newest.min_driver} and CUDA {newest.cuda}" if newest else ""
        raise ToolError(
            f"no NGC PyTorch image in {source} supports driver {cfg.driver_major} / CUDA "
            f"{'.'.join(map(str, host_cuda)) if host_cuda else '?'}{need}; upgrade the driver or pass --image"
        )
    cfg.ngc_image = chosen.tag
    if rank == "live" and url not in cfg.research_sources:
        cfg.research_sources = [*cfg.research_sources, url]
    state.record("image", {"image": chosen.tag, "rank": rank, "source": source, **asdict(chosen)})
    compat = _reevaluate_compat(ctx)
    ctx.save()
    return {
        "ngc_image": chosen.tag,
        "source": source,
        "rank": rank,
        "container_cuda": chosen.cuda,
        "min_driver": chosen.min_driver,
        "pytorch": chosen.pytorch,
        "compat": compat,
    }


def fit(param_count: int, vram_gb: float) -> tuple[float, float, bool]:
    """(bf16 weight GB, limit GB = 60% of one GPU, fits)."""
    need = 2 * param_count / 1e9
    limit = FIT_FRACTION * vram_gb
    return round(need, 2), round(limit, 2), need <= limit


@tool(step=2)
def check_model_fit(ctx: RunContext, args: NoArgs) -> dict:
    """Check that the model's bf16 weights (2 bytes per parameter) fit in 60% of one GPU's memory; recommends LoRA otherwise."""
    cfg = ctx.config
    params = cfg.model_facts.param_count if cfg.model_facts else None
    if not cfg.gpu_count:
        cfg.note("model-fit check skipped: CPU run (no GPU)")
        ctx.state.record("model_fit", {"skipped": "cpu"})
        ctx.save()
        return {"skipped": "CPU run: no GPU memory to check against"}
    if not isinstance(params, int) or params <= 0:
        raise ToolError("model_facts.param_count is not recorded: run probe_model first")
    if cfg.vram_gb_per_gpu is None:
        raise ToolError("vram_gb_per_gpu is not recorded: run audit_hardware first")
    need, limit, ok = fit(params, cfg.vram_gb_per_gpu)
    method = cfg.hyperparameters.training_method
    record = {"bf16_gb": need, "limit_gb": limit, "fits": ok, "training_method": method}
    ctx.state.record("model_fit", record)
    ctx.save()
    if not ok and method != "lora":
        from tao_finetune.tools.task import lora_unavailable

        no_lora = lora_unavailable(cfg)
        if no_lora:  # not offered: one line saying why
            raise NeedsUser(f"{cfg.model_id} needs about {need} GB for its bf16 weights alone, more than 60% of one "
                            f"{cfg.gpu_name} ({cfg.vram_gb_per_gpu} GB -> {limit} GB), and {no_lora}.",
                            "run on a host with larger GPUs (or choose a smaller model), then start the run again")
        raise NeedsUser(
            f"{cfg.model_id} needs about {need} GB for its bf16 weights alone, more than 60% of one "
            f"{cfg.gpu_name} ({cfg.vram_gb_per_gpu} GB -> {limit} GB). Recommended: LoRA (hyperparameters.training_method=lora). "
            "Switch to LoRA?",
            "re-run with --answer lora to switch (or --set training_method=lora), or keep full fine-tuning on more/larger GPUs",
            choices={"lora": {"hyperparameters.training_method": "lora"}},
        )
    return record
