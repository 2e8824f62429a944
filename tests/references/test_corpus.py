import dataclasses
import inspect
import re

import pytest

from tao_finetune.agent import gates
from tao_finetune.agent.config import Hyperparameters
from tao_finetune.tools import research

MINE = ("core-rules.md", "research-priorities.md", "recipes.yaml", "hub-push.md", "pipeline-skill-template.md", "reference-index.md")
TASKS = ("image-classification", "text-classification", "object-detection", "semantic-segmentation", "image-text-to-text")
PEFT_HINTS = {"lora_alpha", "lora_dropout", "warmup_steps_in_source"}


@pytest.mark.parametrize("name", MINE)
def test_file_ships_and_cites_its_sources(name):
    text = research.read_reference_text(name)
    head = "\n".join(text.splitlines()[:15])
    if name == "pipeline-skill-template.md":
        assert text.startswith("---\n")
    elif name != "reference-index.md":
        assert re.search(r"https://\S+", head), f"{name} must cite its source URL at the top"


OTHERS = ("model-discovery.md", "hardware-container.md")  # listed ahead of the helpers that write them


def test_index_lists_reference_files_that_exist():
    index = research.read_reference_text("reference-index.md")
    listed = set(re.findall(r"^\| ([\w.\-]+\.(?:md|yaml|json)) \|", index, re.M))
    assert set(MINE) <= listed
    names = set(research.reference_names())
    assert listed - names <= set(OTHERS), f"index names missing files: {sorted(listed - names - set(OTHERS))}"


@pytest.mark.parametrize("task", TASKS)
def test_recipe_has_every_slot_with_a_source(task):
    entry = research.reference_recipe(task)
    for slot in gates.RECIPE_SLOTS:
        assert entry.get(slot), f"{task}: {slot} missing"
    assert entry["source"].startswith("https://")
    for url in (entry.get("sources") or {}).values():
        assert url.startswith("https://")
    hp = dict(entry["hyperparameters"])
    assert hp.pop("n_epochs") > 0
    Hyperparameters.model_validate(hp)
    assert isinstance(hp["learning_rate"], float)
    assert entry["primary_metric"]


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="image-classification"):
        research.reference_recipe("speech-recognition")


def test_recipes_match_the_installed_transformers():
    transformers = pytest.importorskip("transformers")
    fields = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    assert "eval_strategy" in fields and "evaluation_strategy" not in fields
    assert "warmup_ratio" not in fields and "warmup_steps" in fields
    assert "processing_class" in inspect.signature(transformers.Trainer.__init__).parameters
    for task in TASKS:
        entry = research.reference_recipe(task)
        for key in ("model_class", "processor_class"):
            assert hasattr(transformers, entry[key]), f"{task}: transformers has no {entry[key]}"
        for key in ("collator",):
            cls = re.split(r"[\s(]", entry[key])[0]
            if cls != "custom:":
                assert hasattr(transformers, cls), f"{task}: transformers has no {cls}"
        unknown = set(entry.get("hints") or {}) - fields - PEFT_HINTS
        assert not unknown, f"{task}: hints that are not TrainingArguments fields: {unknown}"


def test_template_has_the_required_structure():
    text = research.read_reference_text("pipeline-skill-template.md")
    missing = gates.check_skill_text(text)
    assert missing and all(m.startswith("placeholders left") for m in missing)
    assert "NVIDIA CORPORATION" in text.split("-->")[0]


def test_rules_and_priorities_cover_the_spec():
    rules = research.read_reference_text("core-rules.md")
    for needle in ("user", "live", "reference", "memory", "halve", "÷ 10", "3 times", "≤ 3B", "70B+", "60 %"):
        assert needle in rules
    prios = research.read_reference_text("research-priorities.md")
    rows = re.findall(r"^\| (\d) \| ([^|]+)\|", prios, re.M)
    assert [int(p) for p, _ in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0][1].strip() == "model card" and rows[5][1].strip() == "paper"
