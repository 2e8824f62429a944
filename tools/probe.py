"""Step 1a: probe a model (Hub id or local folder) for the facts the later steps decide on.

huggingface_hub 2.4 API read from site-packages/huggingface_hub (hf_api.HfApi.model_info, ModelInfo.safetensors,
file_download.hf_hub_download, errors.*); its ENDPOINT/HF_HUB_OFFLINE/HF_HUB_CACHE are module constants read at import,
so `hub_env` re-reads them from the environment for the duration of a probe.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml
from huggingface_hub import HfApi, constants, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tao_finetune.agent.facts import ModelFacts
from tao_finetune.tools.base import NoArgs, ToolError, tool

DEFAULT_ENDPOINT = "https://huggingface.co"
SIDE_FILES = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json", "README.md")
AUTOMODEL = re.compile(r"\b(AutoModel(?:For[A-Za-z]+)?|[A-Z][A-Za-z0-9]+For[A-Z][A-Za-z]+)\b")
GITHUB_LINK = re.compile(r"https?://github\.com/[\w.\-]+/[\w.\-]+[^\s)\]\"'>]*")
PIPELINE = re.compile(r"pipeline\(\s*(?:task\s*=\s*)?[\"']([a-z\-]+)[\"']")
TRUTHY = ("1", "true", "yes", "on")
try:  # huggingface_hub 2.x talks through httpx2
    import httpx2

    _NET_ERRORS: tuple[type[Exception], ...] = (httpx2.ConnectError, httpx2.TimeoutException)
except ImportError:
    _NET_ERRORS = ()
OFFLINE_ERRORS = (OfflineModeIsEnabled, httpx.ConnectError, httpx.TimeoutException, LocalEntryNotFoundError, *_NET_ERRORS)


def endpoint() -> str:
    """The Hub endpoint as the environment says now."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def offline() -> bool:
    return (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").lower() in TRUTHY


def hub_cache() -> str:
    home = os.path.expanduser(os.environ.get("HF_HOME", "~/.cache/huggingface"))
    return os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")


@contextmanager
def hub_env(extra: dict[str, str] | None = None) -> Iterator[None]:
    """Make huggingface_hub and datasets follow the current HF_* environment (plus `extra` vars) inside the block."""
    saved_env = {k: os.environ.get(k) for k in extra or {}}
    os.environ.update(extra or {})
    targets: list[tuple[Any, str, Any]] = [
        (constants, "ENDPOINT", endpoint()),
        (constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint() + "/{repo_id}/resolve/{revision}/{filename}"),
        (constants, "HF_HUB_OFFLINE", offline()),
        (constants, "HF_HUB_CACHE", hub_cache()),
        (constants, "HF_HUB_DISABLE_XET", os.environ.get("HF_HUB_DISABLE_XET", "").lower() in TRUTHY),
    ]
    try:
        import datasets.config as dcfg

        home = os.path.expanduser(os.environ.get("HF_HOME", "~/.cache/huggingface"))
        targets += [
            (dcfg, "HF_ENDPOINT", endpoint()),
            (dcfg, "HUB_DATASETS_URL", endpoint() + "/datasets/{repo_id}/resolve/{revision}/{path}"),
            (dcfg, "HF_HUB_OFFLINE", offline()),
            (dcfg, "HF_DATASETS_OFFLINE", offline()),
            (dcfg, "HF_DATASETS_CACHE", Path(os.environ.get("HF_DATASETS_CACHE") or os.path.join(home, "datasets"))),
        ]
    except ImportError:
        pass
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in targets]
    for obj, name, value in targets:
        setattr(obj, name, value)
    try:
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def is_local_ref(ref: str) -> bool:
    """Whether a model/dataset reference names a local path rather than a Hub id."""
    return ref.startswith(("/", "./", "../", "~")) or Path(ref).expanduser().exists()


def _read_json(path: Path | None) -> dict[str, Any]:
    if path is None or not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """A model card's YAML front matter and its body."""
    if text.startswith("---"):
        parts = text.split("---", 2)
        if len(parts) == 3:
            try:
                meta = yaml.safe_load(parts[1])
            except yaml.YAMLError:
                meta = None
            return (meta if isinstance(meta, dict) else {}), parts[2]
    return {}, text


def safetensors_param_count(files: list[Path]) -> int | None:
    """Total parameter count from safetensors headers (no tensor data read)."""
    total = 0
    for f in files:
        try:
            with f.open("rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            return None
        for key, t in header.items():
            if key != "__metadata__":
                size = 1
                for d in t.get("shape", []):
                    size *= d
                total += size
    return total or None


def meta_param_count(config: dict[str, Any]) -> int | None:
    """Parameter count by building the model on the meta device from its config (no weights)."""
    try:
        import torch
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModel.from_config(cfg)
        return sum(p.numel() for p in model.parameters())
    except (ImportError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        return None


def meta_lora_targets(config: dict[str, Any]) -> int | None:
    """How many LoRA targets the model offers: its nn.Linear layers inside repeated (numbered) blocks, counted on the
    backbone (AutoModel, no task head) built on the meta device from config.json — the rule the scaffolds'
    common.derive_lora_targets applies to the loaded model. 0 = the model cannot take LoRA here; None = not buildable."""
    try:
        import torch
        from transformers import AutoConfig, AutoModel

        cfg = AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = AutoModel.from_config(cfg)
        return sum(1 for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and any(p.isdigit() for p in name.split(".")[:-1]))
    except (ImportError, ValueError, KeyError, TypeError, AttributeError, RuntimeError):
        return None


_LORA_COUNTS: dict[tuple[str, str | None], int | None] = {}


def lora_target_count(facts: ModelFacts) -> int | None:
    """The model's LoRA target count, counted when a decision needs it (a LoRA request, a LoRA offer, a model too big
    for full fine-tuning), not at probe time: `meta_lora_targets` imports torch and transformers and builds the
    backbone on the meta device, which cost 17 s of the probe on a cold H200 host (bench_gpu, 2026-12-01) in every run,
    LoRA or not. Reads config.json from the local folder or the Hub cache that probe_model filled; the count is kept
    on `facts` (and so in config.yaml's model_facts once saved). None when it cannot be counted."""
    if facts.lora_targets is not None or not facts.model_id:
        return facts.lora_targets
    key = (facts.model_id, facts.sha)
    if key not in _LORA_COUNTS:
        config = None
        try:
            if facts.source == "local":
                config = json.loads((Path(facts.model_id) / "config.json").read_text())
            else:
                path = _download(facts.model_id, "config.json", True)
                config = _read_json(path) if path else None
        except (OSError, ValueError, HfHubHTTPError, HFValidationError, *OFFLINE_ERRORS):
            config = None
        _LORA_COUNTS[key] = meta_lora_targets(config) if isinstance(config, dict) else None
    facts.lora_targets = _LORA_COUNTS[key]
    return facts.lora_targets


def _first(*values: Any) -> Any:
    return next((v for v in values if v is not None), None)


def config_facts(config: dict[str, Any]) -> dict[str, Any]:
    """Architecture facts from config.json, looking into text_config / vision_config for composite models."""
    text = config.get("text_config") or {}
    vision = config.get("vision_config") or {}
    heads = _first(config.get("num_attention_heads"), text.get("num_attention_heads"))
    kv = _first(config.get("num_key_value_heads"), text.get("num_key_value_heads"), heads)
    id2label = config.get("id2label") or {}
    label_names = [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))] if id2label else []
    default_labels = all(re.fullmatch(r"LABEL_\d+", n) for n in label_names)
    image_size = _first(config.get("image_size"), vision.get("image_size"))
    if isinstance(image_size, dict):
        image_size = _first(image_size.get("height"), image_size.get("shortest_edge"))
    if isinstance(image_size, (list, tuple)):
        image_size = image_size[0] if image_size else None
    return {
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures") or [],
        "text_model_type": text.get("model_type"),
        "vision_model_type": vision.get("model_type"),
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "gqa": bool(heads and kv and kv < heads),
        "hidden_size": _first(config.get("hidden_size"), text.get("hidden_size")),
        "num_hidden_layers": _first(config.get("num_hidden_layers"), text.get("num_hidden_layers")),
        "image_size": image_size,
        "max_position_embeddings": _first(config.get("max_position_embeddings"), text.get("max_position_embeddings")),
        "num_labels": len(label_names) if label_names else None,
        "label_names": [] if default_labels else label_names,
        "torch_dtype": _first(config.get("torch_dtype"), config.get("dtype")),
        "auto_map": sorted((config.get("auto_map") or {}).keys()),
        "attn_implementation": config.get("_attn_implementation") or config.get("attn_implementation"),
        "transformers_version": config.get("transformers_version"),
    }


def side_facts(pre: dict[str, Any], proc: dict[str, Any], tok: dict[str, Any]) -> dict[str, Any]:
    """Processor and tokenizer classes from their config files."""
    size = pre.get("size") or pre.get("crop_size")
    if isinstance(size, dict):
        size = _first(size.get("height"), size.get("shortest_edge"), size.get("longest_edge"))
    if isinstance(size, (list, tuple)):
        size = size[0] if size else None
    tok_max = tok.get("model_max_length")
    return {
        "processor_class": _first(proc.get("processor_class"), pre.get("processor_class"), tok.get("processor_class")),
        "image_processor_type": _first(pre.get("image_processor_type"), pre.get("feature_extractor_type")),
        "tokenizer_class": tok.get("tokenizer_class"),
        "processor_image_size": size,
        "tokenizer_max_length": tok_max if isinstance(tok_max, int) and tok_max < 10**9 else None,
    }


def card_facts(text: str) -> dict[str, Any]:
    """What the model card says: front matter fields and the classes / pipeline tasks its body names."""
    meta, body = split_card(text)
    return {
        "card_license": meta.get("license"),
        "card_tags": meta.get("tags") if isinstance(meta.get("tags"), list) else [],
        "card_pipeline_tag": meta.get("pipeline_tag"),
        "card_library": meta.get("library_name"),
        "card_classes": sorted(set(AUTOMODEL.findall(body)))[:20],
        "card_pipelines": sorted(set(PIPELINE.findall(body)))[:10],
        "card_links": list(dict.fromkeys(GITHUB_LINK.findall(body)))[:10],
        "has_card": bool(text.strip()),
    }


def _finish(facts: dict[str, Any]) -> ModelFacts:
    n = facts.get("param_count")
    facts["bf16_bytes"] = 2 * n if n else None
    facts["bf16_gb"] = round(2 * n / 1e9, 3) if n else None
    facts["license"] = _first(facts.get("license"), facts.get("card_license"))
    facts["pipeline_tag"] = _first(facts.get("pipeline_tag"), facts.get("card_pipeline_tag"))
    facts["library_name"] = _first(facts.get("library_name"), facts.get("card_library"))
    facts["tags"] = sorted(set(facts.get("tags") or []) | set(facts.get("card_tags") or []))
    for k in ("card_license", "card_pipeline_tag", "card_library", "card_tags"):
        facts.pop(k, None)
    facts["image_size"] = _first(facts.get("image_size"), facts.get("processor_image_size"))
    facts["max_length"] = _first(facts.get("tokenizer_max_length"), facts.get("max_position_embeddings"))
    facts["torch_dtype"] = str(facts["torch_dtype"]) if facts.get("torch_dtype") is not None else None
    return ModelFacts.model_validate(facts)


def probe_local_model(path: Path) -> ModelFacts:
    """Facts for a model folder on disk."""
    if not path.is_dir():
        raise ToolError(f"local model path {str(path)!r} is not a folder")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        raise ToolError(f"local model folder {str(path)!r} has no config.json")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ToolError(f"local model folder {str(path)!r}: config.json is not valid JSON ({err})") from None
    if not isinstance(config, dict) or not (config.get("model_type") or config.get("architectures")):
        raise ToolError(f"local model folder {str(path)!r}: config.json names neither model_type nor architectures")
    shards = sorted(path.glob("*.safetensors"))
    count = safetensors_param_count(shards) if shards else None
    source = "safetensors headers" if count else None
    if count is None:
        count = meta_param_count(config)
        source = "config (meta-device init)" if count else None
    readme = path / "README.md"
    facts = {
        "source": "local",
        "model_id": str(path),
        "sha": None,
        "tags": [],
        "pipeline_tag": None,
        "library_name": "transformers" if config.get("transformers_version") else None,
        "license": None,
        "gated": False,
        "files": sorted(p.name for p in path.iterdir())[:50],
        "param_count": count,
        "param_source": source,
        "lora_targets": None,  # counted on demand (lora_target_count): building the model needs torch, ~15 s cold
        **config_facts(config),
        **side_facts(*(_read_json(path / f) for f in SIDE_FILES[:3])),
        **card_facts(readme.read_text(errors="replace") if readme.is_file() else ""),
    }
    return _finish(facts)


def _hub_error(model_id: str, err: Exception) -> ToolError:
    if isinstance(err, GatedRepoError):
        return ToolError(f"model {model_id!r} is gated: request access on its Hub page, then set HF_TOKEN")
    if isinstance(err, RepositoryNotFoundError):
        return ToolError(f"model {model_id!r} was not found on the Hub at {endpoint()} (check the id; private repos need HF_TOKEN)")
    if isinstance(err, RevisionNotFoundError):
        return ToolError(f"model {model_id!r}: revision not found on the Hub")
    if isinstance(err, HFValidationError):
        return ToolError(f"model id {model_id!r} is not a valid Hub id or an existing local folder")
    if isinstance(err, OFFLINE_ERRORS):
        return ToolError(f"model {model_id!r} is not in the local cache and the Hub at {endpoint()} cannot be reached (offline)")
    status = getattr(getattr(err, "response", None), "status_code", "?")
    return ToolError(f"model {model_id!r}: the Hub answered HTTP {status}")


def _download(model_id: str, filename: str, local_only: bool) -> Path | None:
    """A repo file from the Hub or cache; None when the repo has no such file."""
    try:
        return Path(hf_hub_download(model_id, filename, endpoint=endpoint(), cache_dir=hub_cache(), local_files_only=local_only))
    except RemoteEntryNotFoundError:
        return None
    except LocalEntryNotFoundError:
        if local_only:
            return None
        raise


def _files_present(siblings: list[str] | None, name: str) -> bool:
    return siblings is None or name in siblings


def probe_hub_model(model_id: str, token_present: bool) -> ModelFacts:
    """Facts for a Hub model id, or from the local cache when the Hub cannot be reached."""
    api = HfApi(endpoint=endpoint())
    info = None
    try:
        if not offline():
            info = api.model_info(model_id)
    except OFFLINE_ERRORS:
        info = None
    except (HfHubHTTPError, HFValidationError) as err:
        raise _hub_error(model_id, err) from None
    if info is not None and info.gated and not token_present:
        raise ToolError(f"model {model_id!r} is gated ({info.gated}) and HF_TOKEN is not set: request access on its Hub page, then set HF_TOKEN")
    local_only = info is None
    siblings = [s.rfilename for s in info.siblings] if info and info.siblings is not None else None
    try:
        cfg_path = _download(model_id, "config.json", local_only) if _files_present(siblings, "config.json") else None
        if cfg_path is None:
            if local_only:
                raise ToolError(f"model {model_id!r} is not in the local cache and the Hub at {endpoint()} cannot be reached (offline)")
            raise ToolError(f"model {model_id!r} has no config.json on the Hub (not a transformers model?)")
        side = [_download(model_id, f, local_only) if _files_present(siblings, f) else None for f in SIDE_FILES]
    except (HfHubHTTPError, HFValidationError, *OFFLINE_ERRORS) as err:
        raise _hub_error(model_id, err) from None
    config = _read_json(cfg_path)
    if not (config.get("model_type") or config.get("architectures")):
        raise ToolError(f"model {model_id!r}: config.json names neither model_type nor architectures")
    count, source = None, None
    if info is not None and info.safetensors:
        count, source = info.safetensors.total, "hub safetensors metadata"
    if count is None:
        count = meta_param_count(config)
        source = "config (meta-device init)" if count else None
    card = side[3].read_text(errors="replace") if side[3] else ""
    tags = list(info.tags or []) if info else []
    license_tag = next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), None)
    facts = {
        "source": "hub" if info else "cache",
        "model_id": model_id,
        "sha": info.sha if info else None,
        "tags": [t for t in tags if not t.startswith(("license:", "region:", "endpoints_compatible"))][:40],
        "pipeline_tag": info.pipeline_tag if info else None,
        "library_name": info.library_name if info else None,
        "license": license_tag,
        "gated": (info.gated or False) if info else None,
        "files": (siblings or [])[:50],
        "param_count": count,
        "param_source": source,
        "lora_targets": None,  # counted on demand (lora_target_count): building the model needs torch, ~15 s cold
        **config_facts(config),
        **side_facts(*(_read_json(p) for p in side[:3])),
        **card_facts(card),
    }
    return _finish(facts)


def probe_model_facts(model_id_or_path: str, token_present: bool) -> ModelFacts:
    """Probe a Hub id or a local model folder; raises ToolError with a one-line reason."""
    ref = model_id_or_path.strip()
    if not ref:
        raise ToolError("model id is empty")
    if is_local_ref(ref):
        path = Path(ref).expanduser().resolve()
        if not path.exists():
            raise ToolError(f"local model path {ref!r} does not exist")
        return probe_local_model(path)
    return probe_hub_model(ref, token_present)


def compact_model_facts(facts: ModelFacts) -> dict[str, Any]:
    """The facts without long lists, for the model to read."""
    out = facts.model_dump()
    labels = out.get("label_names") or []
    if len(labels) > 20:
        out["label_names"] = [*labels[:20], f"... {len(labels) - 20} more"]
    out["files"] = (out.get("files") or [])[:15]
    return out


@tool(step=1)
def probe_model(ctx, args: NoArgs) -> dict:
    """Probe the configured model (Hub id or local folder): model_type, architectures, tags, pipeline_tag, license, gated, parameter count and bf16 size, heads / kv heads, image size or max length, label map, processor class. Records config.model_facts."""
    with hub_env(ctx.creds.env(["HF_TOKEN"])):
        facts = probe_model_facts(ctx.config.model_id, ctx.creds.present("HF_TOKEN"))
    ctx.config.model_facts = facts
    ctx.session.event("probe_model", model_id=ctx.config.model_id, model_type=facts.model_type)
    ctx.save()
    return compact_model_facts(facts)
