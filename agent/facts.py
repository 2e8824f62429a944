"""The typed facts Steps 1-2 hand to every later step: ModelFacts, DatasetFacts, HostFacts and HostAudit.

One producer and one reader each:
- ModelFacts: produced by tools/probe.py (`probe_model_facts`), stored as `config.yaml: model_facts`, read through
  `RunConfig.model_facts` (validated on assignment, so a producer that writes a key no reader knows fails at once).
- DatasetFacts: produced by tools/dataset.py (`probe_*_dataset`), stored as `config.yaml: dataset_facts`.
- HostFacts: raw command outputs of the GPU host, produced by tools/hardware.py (`collect_facts`) or replayed from a
  recorded JSON file (`TAO_HOST_FACTS`, `load_host_facts`); HostAudit is the audit's verdict, stored in the run state
  under `records.audit` and read back with `audit_of`.

The models forbid unknown keys: a reader asking for a key the producer never writes is caught by the test that
checks every `model_facts.get("...")` / compat-rule path against these fields.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

HOST_FACTS_ENV = "TAO_HOST_FACTS"


class Facts(BaseModel):
    """Base of every facts model: unknown keys are an error; `get` keeps dict-style readers working during the move."""

    model_config = ConfigDict(extra="forbid")

    def get(self, key: str, default: Any = None) -> Any:
        """Mapping-style read of a field (only fields that exist; a typo is a KeyError, never a silent None)."""
        if key not in type(self).model_fields:
            raise KeyError(f"{type(self).__name__} has no field {key!r}")
        value = getattr(self, key)
        return default if value is None else value

    def __getitem__(self, key: str) -> Any:
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in type(self).model_fields and getattr(self, key) is not None


# ---------------------------------------------------------------- model
class ModelFacts(Facts):
    """What probe_model found out about the model (Hub id or local folder)."""

    source: Literal["hub", "cache", "local"] | None = None
    model_id: str | None = None
    sha: str | None = None
    tags: list[str] = Field(default_factory=list)
    pipeline_tag: str | None = None
    library_name: str | None = None
    license: str | None = None
    gated: bool | str | None = None
    files: list[str] = Field(default_factory=list)
    param_count: int | None = Field(None, description="total parameters (safetensors headers / Hub metadata / meta-device init)")
    param_source: str | None = None
    lora_targets: int | None = Field(None, description="nn.Linear layers inside repeated blocks (LoRA targets; 0 = no LoRA; None = not counted yet, counted when LoRA is decided on)")
    bf16_bytes: int | None = None
    bf16_gb: float | None = None
    model_type: str | None = None
    architectures: list[str] = Field(default_factory=list)
    text_model_type: str | None = None
    vision_model_type: str | None = None
    num_attention_heads: int | list[int] | None = None  # hierarchical models (SegFormer, Swin) list one per stage
    num_key_value_heads: int | list[int] | None = None  # hierarchical models (SegFormer, Swin) list one per stage
    gqa: bool = False
    hidden_size: int | list[int] | None = None  # hierarchical models (SegFormer, Swin) list one per stage
    num_hidden_layers: int | list[int] | None = None  # hierarchical models (SegFormer, Swin) list one per stage
    image_size: int | None = None
    max_position_embeddings: int | None = None
    max_length: int | None = Field(None, description="tokenizer limit, else position embeddings")
    num_labels: int | None = None
    label_names: list[str] = Field(default_factory=list)
    torch_dtype: str | None = None
    auto_map: list[str] = Field(default_factory=list)
    attn_implementation: str | None = None
    transformers_version: str | None = None
    processor_class: str | None = None
    image_processor_type: str | None = None
    tokenizer_class: str | None = None
    processor_image_size: int | None = None
    tokenizer_max_length: int | None = None
    card_classes: list[str] = Field(default_factory=list)
    card_pipelines: list[str] = Field(default_factory=list)
    card_links: list[str] = Field(default_factory=list, description="GitHub links the model card names (author code, Step 3 priority 3)")
    has_card: bool = False

    @property
    def params(self) -> int | None:
        """The parameter count (the one name every reader uses)."""
        return self.param_count


# ---------------------------------------------------------------- dataset
class DatasetIssue(Facts):
    """A dataset problem with its count: warn = handled and reported, ask = a user decision, error = unusable."""

    level: Literal["warn", "ask", "error"]
    kind: str
    count: int
    message: str


class ColumnInfo(Facts):
    """One column as the probe saw it: type, value statistics, and what its content suggests."""

    type: str
    mixed_types: dict[str, int] | None = None
    image_modes: list[str] | None = None
    image_sizes: dict[str, Any] | None = None
    text_chars: dict[str, float] | None = None
    text_words: float | None = Field(None, description="mean whitespace-separated words per value (sentences vs class names)")
    boxes_per_sample: dict[str, float] | None = None
    distinct: int | None = Field(None, description="distinct values among the sampled rows (scalar columns)")
    sampled: int | None = Field(None, description="non-null values sampled")
    values: dict[str, int] | None = Field(None, description="value -> count over every row (local) or the sample (Hub); low-cardinality scalar columns only")


class DatasetFacts(Facts):
    """What probe_dataset found out about the dataset (Hub id or local path)."""

    source: Literal["hub", "local"] | None = None
    dataset_id: str | None = None
    path: str | None = None
    config_name: str | None = None
    configs: list[str] = Field(default_factory=list)
    license: str | None = None
    gated: bool | str | None = None
    format: str = ""
    format_evidence: str = ""
    splits: dict[str, int | None] = Field(default_factory=dict)
    columns: dict[str, ColumnInfo] = Field(default_factory=dict)
    label_names: list[str] = Field(default_factory=list)
    label_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    image_modes: list[str] = Field(default_factory=list)
    issues: list[DatasetIssue] = Field(default_factory=list)
    samples: list[dict[str, Any]] = Field(default_factory=list)
    sampled_rows: int | None = None
    skip_files: list[str] = Field(default_factory=list, description="unreadable files the probe skipped (prepare_data.py skips exactly these)")
    data_files: dict[str, list[str]] = Field(default_factory=dict, description="local data: split -> files (or class-folder roots) as the probe read them")
    images_checked: int | None = None
    bbox_format: str | None = None
    label_names_from: str | None = None
    mask_values: list[int] | None = None
    layout: dict[str, Any] = Field(default_factory=dict, description="what qualify decided: columns per role, split plan")

    def issues_at(self, level: str) -> list[DatasetIssue]:
        return [i for i in self.issues if i.level == level]


# ---------------------------------------------------------------- host
class HostFacts(BaseModel):
    """Raw observations of the host; None means the command or daemon was not available."""

    model_config = ConfigDict(extra="forbid")
    docker_version: str | None = None
    docker_error: str = ""
    docker_info: dict[str, Any] = Field(default_factory=dict)
    smi_query: str | None = Field(None, description="nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader,nounits")
    smi_banner: str | None = Field(None, description="plain nvidia-smi output")
    nvcc_output: str | None = None
    ctk_output: str | None = None
    gpu_smoke: tuple[bool | None, str] | None = None
    free_disk_gb: float | None = None
    disk_path: str = ""


class AuditItem(BaseModel):
    """One audit line: what was checked, the verdict, and how to fix a failure."""

    model_config = ConfigDict(extra="forbid")
    name: str
    status: Literal["pass", "warn", "fail", "skip"]
    detail: str
    fix: str = ""


class HostSummary(BaseModel):
    """The host facts later steps decide on (image selection)."""

    model_config = ConfigDict(extra="forbid")
    driver_version: str | None = None
    driver_major: int | None = None
    cuda: str | None = None
    cuda_toolkit: str | None = None
    container_toolkit: str | None = None
    docker: str | None = None
    gpu_runtime: str | None = None
    platform: str | None = Field(None, description="set for a cluster audit: 'slurm'")
    container: str | None = Field(None, description="slurm: pyxis | apptainer | venv")


class HostAudit(BaseModel):
    """The Step 2 audit as recorded in the run state (`records.audit`)."""

    model_config = ConfigDict(extra="forbid")
    passed: bool
    items: list[AuditItem] = Field(default_factory=list)
    host: HostSummary = Field(default_factory=HostSummary)
    replayed_from: str | None = Field(None, description="the recorded host-facts file, when the audit replayed one")
    slurm: dict[str, Any] | None = Field(None, description="the SLURM audit record (partition, GPU type/count, container mode)")


class FactsError(ValueError):
    """A facts file that does not hold what its model says; one line."""


def load_host_facts(path: Path) -> HostFacts:
    """Recorded host facts (the JSON `collect_facts` would produce) from a file."""
    try:
        return HostFacts.model_validate(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        raise FactsError(f"host facts file {str(path)!r} not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise FactsError(f"host facts file {str(path)!r} is not JSON: {err}") from None
    except ValidationError as err:
        e = err.errors()[0]
        raise FactsError(f"host facts file {str(path)!r}: {'.'.join(map(str, e['loc']))}: {e['msg']}") from None


def recorded_host_path() -> Path | None:
    """The recorded host facts to replay instead of running the commands ($TAO_HOST_FACTS), if set."""
    value = os.environ.get(HOST_FACTS_ENV)
    return Path(value).expanduser() if value else None


def audit_of(records: dict[str, Any]) -> HostAudit | None:
    """The recorded audit of a run state's records, or None when there is none."""
    raw = records.get("audit")
    if not raw:
        return None
    return HostAudit.model_validate(raw)
