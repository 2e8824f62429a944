"""The run config: one pydantic model that is `output_dir/config.yaml`, the single source of truth."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tao_finetune.agent.facts import DatasetFacts, ModelFacts

TaskType = Literal[
    "image-classification",
    "object-detection",
    "semantic-segmentation",
    "image-text-to-text",
    "text-classification",
]
DatasetFormat = Literal["auto", "imagefolder", "coco", "voc", "jsonl", "arrow", "parquet", "csv"]
Platform = Literal["docker", "local", "slurm"]
Rank = Literal["user", "live", "reference", "memory"]
RANKS: dict[str, int] = {"user": 1, "live": 2, "reference": 3, "memory": 4}


class ConfigError(ValueError):
    """A bad config value or file; the message is one line naming the field."""


class Sourced(BaseModel):
    """A recipe value with where it came from and its rank in the authority order."""

    model_config = ConfigDict(extra="forbid")
    value: Any
    rank: Rank
    source: str = Field(description="URL for live research, references/<file> for curated, 'user' or 'memory'")
    reason: str = ""


class Hyperparameters(BaseModel):
    """Training hyperparameters; each can be overridden by the user."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # learning_rate=inf passes gt=0 and diverges at step 1
    learning_rate: float = Field(5e-5, gt=0)
    per_device_train_batch_size: int = Field(32, ge=1)
    per_device_eval_batch_size: int = Field(64, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = 42
    precision: Literal["bf16", "fp16", "fp32", "auto"] = "auto"
    gradient_checkpointing: bool = False
    max_steps: int = -1
    logging_steps: int = Field(10, ge=1)
    dataloader_num_workers: int = Field(-1, ge=-1, description="-1 = derive from CPU count")
    torch_compile: bool = False
    training_method: Literal["full", "lora"] = "full"


class Columns(BaseModel):
    """Which source column plays which role (after renames); None = the task does not use the role."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = None
    text: str | None = None
    text_pair: str | None = None
    label: str | None = None
    objects: str | None = Field(None, description="object-detection: the column holding boxes + categories")
    mask: str | None = Field(None, description="semantic-segmentation: the mask image column")
    question: str | None = None
    answer: str | None = None
    evidence: dict[str, str] = Field(default_factory=dict, description="role -> why this column was chosen")


class SplitPlan(BaseModel):
    """How the source splits become the project's train and eval sets (Step 1 decides, prepare_data.py obeys)."""

    model_config = ConfigDict(extra="forbid")
    train_split: str | None = None
    eval_split: str | None = Field(None, description="a source split used for eval; None = hold out eval_fraction of train")
    eval_fraction: float = Field(0.1, gt=0, lt=1)
    stratify_by: str | None = Field(None, description="column to stratify the hold-out by (the label for classification)")
    seed: int = 42
    n_train: int = Field(10000, ge=1, description="cap on training examples (a seeded subset when the split is larger)")
    n_eval: int = Field(1000, ge=1, description="cap on eval examples")
    expected_train: int | None = Field(None, description="train rows prepare_data.py must produce (Step 1's count; None = unknown before reading)")
    expected_eval: int | None = Field(None, description="eval rows prepare_data.py must produce")


class LoraSpec(BaseModel):
    """LoRA settings; target_modules None = derived from the loaded model's modules at run time."""

    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | None = None


class ProjectSpec(BaseModel):
    """Everything the generated project reads (config.yaml's `project:` section); Steps 1-3 fill it, code only reads it."""

    model_config = ConfigDict(extra="forbid")
    task_type: TaskType | None = None
    model_id: str = ""
    dataset_source: Literal["hf", "local"] | None = None
    dataset_id: str | None = None
    dataset_config: str | None = None
    local_dataset_path: str | None = None
    local_dataset_format: DatasetFormat = "auto"
    columns: Columns = Field(default_factory=Columns)
    column_renames: dict[str, str] = Field(default_factory=dict)
    label_names: list[str] = Field(default_factory=list)
    splits: SplitPlan = Field(default_factory=SplitPlan)
    skip_files: list[str] = Field(default_factory=list, description="files Step 1 found unreadable; prepare_data.py skips exactly these")
    image_size: int | None = Field(None, description="input resolution from the model's processor/config")
    max_length: int | None = Field(None, description="text: token cap")
    bbox_format: str | None = Field(None, description="object-detection: coco (xywh) | pascal_voc (xyxy) | ...")
    ignore_index: int = Field(255, description="semantic-segmentation: label ignored by the loss and metrics")
    reduce_labels: bool = Field(False, description="semantic-segmentation: background 0 dropped, labels shifted by -1")
    training_method: Literal["full", "lora"] = "full"
    lora: LoraSpec = Field(default_factory=LoraSpec)
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    n_epochs: float = Field(3, gt=0)
    wandb: bool = False
    data_files: dict[str, list[str]] = Field(default_factory=dict, description="local data: split -> files (or class-folder roots) exactly as Step 1 read them")
    recipe: dict[str, Any] = Field(default_factory=dict, description="slot -> value actually used (sources stay in RunConfig.recipe)")


SLURM_TIME = re.compile(r"\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}|UNLIMITED|INFINITE", re.IGNORECASE)


class SlurmSpec(BaseModel):
    """The `slurm:` section: the batch request of every job on --platform slurm (each key settable with --set slurm.<key>=...)."""

    model_config = ConfigDict(extra="forbid")
    partition: str | None = Field(None, description="None = the cluster's default partition")
    account: str | None = None
    qos: str | None = None
    constraint: str | None = Field(None, description="node features, e.g. 'h100|a100'")
    nodes: int = Field(1, ge=1, description="nodes of the training job (the other jobs use one)")
    gpus_per_node: int | None = Field(None, ge=0, description="None = every GPU the audit found on the partition's nodes")
    cpus_per_task: int | None = Field(None, ge=1, description="one task per node; None = the cluster default")
    mem: str | None = Field(None, description="memory per node, e.g. '64G'; None = the cluster default")
    time: str = Field("04:00:00", description="time limit of the training job ([D-]HH:MM:SS or minutes)")
    job_time: str = Field("01:00:00", description="time limit of every other job")
    container: Literal["auto", "pyxis", "apptainer", "venv"] = Field("auto", description="auto = what the audit detected")
    python: str | None = Field(None, description="venv mode: the Python on the compute nodes (default: this one)")
    requeue: bool = Field(True, description="training: --requeue, checkpoint and requeue before the time limit")
    signal_s: int = Field(120, ge=10, description="seconds before the limit at which training checkpoints")
    rdzv_port: int = Field(29500, ge=1024, le=65535)

    @field_validator("time", "job_time", mode="before")
    @classmethod
    def _time_limit(cls, value: Any) -> Any:
        """sbatch's --time forms (minutes, MM:SS, HH:MM:SS, D-HH[:MM[:SS]], UNLIMITED): checked here, not by sbatch at Step 4."""
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # --set slurm.time=60 parses as a number: minutes
        if isinstance(value, str) and not SLURM_TIME.fullmatch(value.strip()):
            raise ValueError(f"{value!r} is not a SLURM time limit: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM:SS or UNLIMITED")
        return value.strip() if isinstance(value, str) else value


class RunConfig(BaseModel):
    """Every input of the spec with its default, plus what the steps record."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)  # n_epochs=inf: training forever

    model_id: str = Field(min_length=1, description="Hub model id (org/name) or a local model folder")
    dataset_id: str | None = Field(None, description="Hub dataset id; omit both dataset inputs to get recommendations")
    dataset_config: str | None = Field(None, description="the Hub dataset's configuration (subset) name")
    local_dataset_path: str | None = Field(None, description="a local dataset folder or file instead of dataset_id")
    local_dataset_format: DatasetFormat = Field("auto", description="format of local_dataset_path")
    dataset_source: Literal["hf", "local", "recommend"] | None = None
    task_type: TaskType | None = Field(None, description="the task; detected from the model and dataset when omitted")
    n_train: int = Field(10000, ge=1, description="training examples at most (a seeded subset)")
    n_eval: int = Field(1000, ge=1, description="eval examples at most (a seeded subset)")
    n_epochs: float = Field(3, gt=0, description="passes over the training subset")
    lora_r: int = Field(16, ge=1, description="LoRA rank when training_method is lora")
    output_dir: str | None = Field(None, description="run directory (default ./output/<model short name>)")
    hf_model_repo: str | None = Field(None, description="Hub repo to push to (default <your user>/<short name>-finetuned)")
    push_to_hub: bool = Field(True, description="push the model, card and project to the Hub at the end")
    hub_private: bool = Field(False, description="create the Hub repo private (a repo that exists keeps its visibility)")
    skip_baseline: bool = Field(False, description="skip evaluating the base model before training")
    emit_progress_log: bool = Field(False, description="keep PROGRESS.md, one line per event")
    emit_report: bool = Field(False, description="write reports/report.html and reports/report.pdf")
    emit_unit_tests: bool = Field(False, description="render tests/test_project.py and require it to pass (gate 4)")
    wandb: bool = Field(False, description="log training to Weights & Biases: on by default when WANDB_API_KEY is set (WANDB_MODE=disabled or --no-wandb turns it off); without the key the run is logged offline (wandb sync uploads it)")
    platform: Platform = Field("docker", description="where jobs run: docker containers, the local Python or a SLURM cluster")
    allow_cpu: bool = Field(False, description="allow a run without an NVIDIA GPU (small models only)")
    image: str | None = Field(None, description="user-chosen container image; overrides NGC selection")
    license: str | None = Field(None, description="license of the pushed model (Hub license id); default: the base model's")
    slurm: SlurmSpec = Field(default_factory=SlurmSpec)

    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)

    # recorded by the steps
    model_facts: ModelFacts | None = Field(None, description="Step 1 probe of the model (agent/facts.py)")
    dataset_facts: DatasetFacts | None = Field(None, description="Step 1 probe of the dataset (agent/facts.py)")
    column_renames: dict[str, str] = Field(default_factory=dict)
    label_names: list[str] = Field(default_factory=list)
    applicable_workarounds: list[str] | None = None
    gpu_count: int | None = None
    gpu_name: str | None = None
    driver_major: int | None = None
    vram_gb_per_gpu: float | None = None
    ngc_image: str | None = None
    recipe: dict[str, Sourced] = Field(default_factory=dict)
    research_sources: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    user_set: list[str] = Field(default_factory=list, description="dotted keys the user set explicitly")
    project: ProjectSpec = Field(default_factory=ProjectSpec, description="the generated project's only input")

    @field_validator("hf_model_repo")
    @classmethod
    def _hub_repo_id(cls, repo: str | None) -> str | None:
        """The Hub's own repo-id rules (huggingface_hub.utils.validate_repo_id), checked before the run, not at its push."""
        if repo is not None:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(repo)
            except HFValidationError as err:
                raise ValueError(" ".join(str(err).split())) from None
        return repo

    @model_validator(mode="after")
    def _one_dataset(self) -> "RunConfig":
        if self.dataset_id and self.local_dataset_path:
            raise ValueError("give dataset_id or local_dataset_path, not both")
        if self.dataset_source is None:
            src = "hf" if self.dataset_id else "local" if self.local_dataset_path else "recommend"
            object.__setattr__(self, "dataset_source", src)
        if self.output_dir is None:
            object.__setattr__(self, "output_dir", f"./output/{self.short_name}")
        return self

    @property
    def short_name(self) -> str:
        """The model's short name: the part after the last '/', lower-cased."""
        return self.model_id.rstrip("/").split("/")[-1].lower()

    @property
    def out(self) -> Path:
        return Path(self.output_dir or f"./output/{self.short_name}").resolve()

    def note(self, text: str) -> None:
        """Append a note (deduplicated)."""
        if text not in self.notes:
            self.notes = [*self.notes, text]


def _one_line(err: ValidationError) -> str:
    e = err.errors()[0]
    loc = ".".join(str(p) for p in e["loc"]) or "config"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"invalid config value for {loc!r}: {e['msg']}{more}"


def parse_value(raw: str) -> Any:
    """Parse a --set value as YAML (so 1e-4, true, [a, b] work), keeping plain strings and clock times (1:30:00)."""
    if re.fullmatch(r"\s*\d+(-\d+)?(:\d+)+\s*", raw):
        return raw.strip()  # YAML 1.1 reads 00:30:00 as the base-60 integer 1800
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], sets: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Apply `a.b=c` overrides to a raw config dict; returns the dict and the keys set."""
    keys = []
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip().replace("-", "_")
        if key in Hyperparameters.model_fields and key not in RunConfig.model_fields:
            key = f"hyperparameters.{key}"
        if key.startswith("columns."):
            key = f"project.{key}"
        if key.startswith("recipe."):
            slot = key.removeprefix("recipe.")
            from tao_finetune.agent.gates import OPTIONAL_SLOTS, RECIPE_SLOTS  # (gates imports this module)

            slots = (*RECIPE_SLOTS, *OPTIONAL_SLOTS, *Hyperparameters.model_fields)
            if slot not in slots:  # a typo would pin nothing: research fills the real slot
                raise ConfigError(f"--set {key!r}: {slot!r} is not a recipe slot: one of {', '.join(slots)}")
            data.setdefault("recipe", {})[slot] = {"value": parse_value(raw), "rank": "user", "source": "user"}
            keys.append(key)
            continue
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key!r}: {p!r} is not a section")
        node[parts[-1]] = parse_value(raw)
        keys.append(key)
    return data, keys


def build_config(data: dict[str, Any]) -> RunConfig:
    """Validate a raw dict into a RunConfig, with a one-line error."""
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def load_config(path: Path) -> RunConfig:
    """Read config.yaml; a missing or malformed file is a ConfigError."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {str(path)!r}") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory: give a YAML file") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping")
    return build_config(data)


RUN_MARKS = ("config.yaml", "session.jsonl", ".tao")  # what a run dir holds from its first moment (lock, log, config)


def check_output_dir(out: Path) -> None:
    """The output dir must be a writable folder (or creatable under a writable one); ConfigError in one line otherwise.
    The one check of `run`, `inspect --output-dir` (tools/step1.py) and the other commands that write a run dir."""
    if "\x00" in str(out) or any(len(part.encode()) > 255 for part in out.parts):
        raise ConfigError(f"--output-dir {str(out)[:80]!r}: not a usable path (a NUL byte or a name over 255 bytes)")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {str(out)!r} is a file, not a folder: choose another path")
    if out.is_dir() and not any((out / mark).exists() for mark in RUN_MARKS):
        # a run renders train.py, Dockerfile, README.md ... here and pushes every top-level source: never into a folder
        # of the user's own files, which would be overwritten and uploaded
        foreign = sorted(p.name for p in out.iterdir())
        if foreign:
            listed = ", ".join(map(repr, foreign[:3])) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(f"--output-dir {str(out)!r} holds files that are not a tao-finetune run ({listed}): "
                              "choose a new or empty folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"--output-dir {str(out)!r} cannot be created: {err.strerror}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"--output-dir {str(out)!r} is not writable by this user: choose another path or fix its permissions")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via temp file + fsync + rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


PROJECT_ROLES = ("image", "text", "text_pair", "label", "objects", "mask", "question", "answer")


def user_columns(cfg: RunConfig) -> dict[str, str]:
    """The column roles the user stated (--set columns.label=NAME ...): role -> column."""
    cols = cfg.project.columns
    return {r: getattr(cols, r) for r in PROJECT_ROLES if f"project.columns.{r}" in cfg.user_set and getattr(cols, r)}


def sync_project(cfg: RunConfig) -> None:
    """Refresh the `project:` section from the run's inputs, so the generated project reads one complete, current spec.

    Step 1 decisions (columns, split plan, skipped files, data files, detected format) live only in `project`; the
    user-facing inputs (model, dataset, hyperparameters, sizes, recipe values) are copied from the top level here.
    """
    p = cfg.project
    mf = cfg.model_facts
    fmt = cfg.local_dataset_format if cfg.local_dataset_format != "auto" else p.local_dataset_format
    cfg.project = p.model_copy(update={
        "task_type": cfg.task_type, "model_id": cfg.model_id, "dataset_source": cfg.dataset_source if cfg.dataset_source != "recommend" else None,
        "dataset_id": cfg.dataset_id, "dataset_config": cfg.dataset_config, "local_dataset_path": cfg.local_dataset_path,
        "local_dataset_format": fmt, "column_renames": dict(cfg.column_renames), "label_names": list(cfg.label_names),
        "training_method": cfg.hyperparameters.training_method, "lora": p.lora.model_copy(update={"r": cfg.lora_r}),
        "hyperparameters": cfg.hyperparameters, "n_epochs": cfg.n_epochs, "wandb": cfg.wandb,
        "splits": p.splits.model_copy(update={"n_train": cfg.n_train, "n_eval": cfg.n_eval, "seed": cfg.hyperparameters.seed}),
        "recipe": {slot: s.value for slot, s in cfg.recipe.items()},
        "image_size": p.image_size or (mf.image_size if mf else None),
        "max_length": p.max_length or (mf.max_length if mf else None),
    })


def save_config(cfg: RunConfig, path: Path) -> None:
    """Write config.yaml atomically (the `project:` section refreshed first)."""
    sync_project(cfg)
    data = cfg.model_dump(mode="json", exclude_none=False)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
