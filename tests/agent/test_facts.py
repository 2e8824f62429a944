"""One typed contract for the facts: every reader asks only for fields the producers write."""

import re
from pathlib import Path

import yaml

from servers import step1_data as D
from tao_finetune.agent.config import RunConfig, load_config, save_config
from tao_finetune.agent.facts import DatasetFacts, HostAudit, ModelFacts
from tao_finetune.tools.dataset import probe_local_dataset
from tao_finetune.tools.probe import probe_model_facts

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [p for d in ("agent", "tools", "evals") for p in (ROOT / d).rglob("*.py")]


def _fact_paths(cond) -> list[str]:
    if isinstance(cond, dict):
        out = [cond["fact"]] if "fact" in cond else []
        return out + [p for v in cond.values() for p in _fact_paths(v)]
    if isinstance(cond, list):
        return [p for c in cond for p in _fact_paths(c)]
    return []


def test_compat_rules_read_only_fields_the_probes_write():
    rules = yaml.safe_load((ROOT / "references" / "compat_rules.yaml").read_text())
    paths = {p for r in rules["rules"] for p in _fact_paths(r["detect"])}
    assert paths, "no fact paths found"
    for path in paths:
        head, _, field = path.partition(".")
        model = {"model": ModelFacts, "dataset": DatasetFacts}.get(head)
        if model is not None:
            assert field.split(".")[0] in model.model_fields, f"compat rule reads {path!r}: no such {model.__name__} field"


def test_code_reads_only_fields_the_probes_write():
    pattern = re.compile(r"model_facts(?:\.get\(|\[)[\"'](\w+)[\"']|model_facts\.(\w+)")
    for path in SOURCES:
        for m in pattern.finditer(path.read_text()):
            field = m.group(1) or m.group(2)
            if field in ("model_dump", "get"):
                continue
            assert field in ModelFacts.model_fields, f"{path.relative_to(ROOT)} reads model_facts.{field}, which nothing writes"


def test_a_misspelt_key_fails_loudly():
    facts = ModelFacts(param_count=7)
    assert facts.get("param_count") == 7
    try:
        facts.get("num_parameters")
    except KeyError as err:
        assert "num_parameters" in str(err)
    else:
        raise AssertionError("an unknown key read as None")


def test_probed_facts_round_trip_through_config_yaml(tmp_path):
    model = D.save_vit(tmp_path / "vit")
    cfg = RunConfig(model_id=str(model), local_dataset_path=str(D.imagefolder(tmp_path / "d", bad=True)), output_dir=str(tmp_path / "run"))
    cfg.model_facts = probe_model_facts(str(model), False)
    cfg.dataset_facts = probe_local_dataset(cfg.local_dataset_path)
    assert isinstance(cfg.model_facts, ModelFacts) and cfg.model_facts.param_count > 0
    assert len(cfg.dataset_facts.skip_files) == 2 and cfg.dataset_facts.data_files == {"train": [str(Path(cfg.local_dataset_path) / "train")]}
    save_config(cfg, cfg.out / "config.yaml")
    back = load_config(cfg.out / "config.yaml")
    assert back.model_facts == cfg.model_facts and back.dataset_facts == cfg.dataset_facts


def test_host_audit_record_is_typed():
    audit = HostAudit.model_validate({"passed": True, "items": [{"name": "gpu", "status": "pass", "detail": "1 x H200"}],
                                      "host": {"cuda": "13.0", "driver_major": 580}})
    assert audit.host.cuda == "13.0" and audit.items[0].status == "pass"
