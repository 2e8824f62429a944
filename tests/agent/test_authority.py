import pytest

from tao_finetune.agent.authority import AuthorityError, record_fetch, record_live_attempt, set_recipe, specificity, user_recipe
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.state import RunState

CARD = "https://huggingface.co/google/vit-base-patch16-224"
DOCS = "https://huggingface.co/docs/transformers/tasks/image_classification"


def setup():
    state = RunState()
    for url in (CARD, DOCS):  # what fetch_docs records for each page it fetched
        record_fetch(state, url, url, "0" * 64)
    return RunConfig(model_id="google/vit-base-patch16-224", dataset_id="beans"), state


def test_live_must_cite_a_page_fetched_in_this_run():
    cfg, state = setup()
    with pytest.raises(AuthorityError, match="not fetched in this run"):
        set_recipe(cfg, state, "collator", "x", "live", "https://example.com/never-fetched")
    set_recipe(cfg, state, "collator", "x", "live", DOCS + "#data-collator")
    assert "collator" in cfg.recipe


def test_memory_needs_a_failed_live_attempt_and_a_reference_read():
    cfg, state = setup()
    with pytest.raises(AuthorityError, match="no failed live attempt"):
        set_recipe(cfg, state, "collator", "DefaultDataCollator", "memory", "memory")
    record_live_attempt(state, "collator", CARD, "failed: HTTP 404")
    with pytest.raises(AuthorityError, match="no curated reference was read"):
        set_recipe(cfg, state, "collator", "DefaultDataCollator", "memory", "memory")
    state.reference_reads.append("recipes.yaml")
    set_recipe(cfg, state, "collator", "DefaultDataCollator", "memory", "memory")
    assert cfg.recipe["collator"].rank == "memory" and any("fallback to memory" in n for n in cfg.notes)


def test_reference_fallback_needs_a_logged_live_attempt():
    cfg, state = setup()
    with pytest.raises(AuthorityError, match="no failed live attempt"):
        set_recipe(cfg, state, "collator", "DefaultDataCollator", "reference", "references/recipes.yaml")
    record_live_attempt(state, "collator", CARD, "failed: ConnectError")
    set_recipe(cfg, state, "collator", "DefaultDataCollator", "reference", "references/recipes.yaml")
    assert cfg.recipe["collator"].rank == "reference" and "ConnectError" in cfg.recipe["collator"].reason
    assert any("fallback to reference for collator" in n for n in cfg.notes)


def test_live_needs_a_url_and_is_recorded_as_a_source():
    cfg, state = setup()
    with pytest.raises(AuthorityError, match="URL"):
        set_recipe(cfg, state, "collator", "x", "live", "my memory")
    set_recipe(cfg, state, "collator", "x", "live", DOCS)
    assert cfg.research_sources == [DOCS]


def test_lower_rank_cannot_overwrite_higher():
    cfg, state = setup()
    set_recipe(cfg, state, "model_class", "ViTForImageClassification", "live", CARD)
    record_live_attempt(state, "*", CARD, "ok")
    with pytest.raises(AuthorityError, match="cannot overwrite"):
        set_recipe(cfg, state, "model_class", "AutoModel", "reference", "references/recipes.yaml")
    with pytest.raises(AuthorityError):
        set_recipe(cfg, state, "model_class", "AutoModel", "memory", "memory")
    set_recipe(cfg, state, "model_class", "Override", "user", "user")
    with pytest.raises(AuthorityError):
        set_recipe(cfg, state, "model_class", "Again", "live", CARD)
    assert cfg.recipe["model_class"].value == "Override"


def test_live_conflict_is_logged_and_the_model_card_wins():
    cfg, state = setup()
    set_recipe(cfg, state, "hyperparameters.learning_rate", 2e-4, "live", CARD)
    msg = set_recipe(cfg, state, "hyperparameters.learning_rate", 5e-5, "live", DOCS)
    assert "kept" in msg and cfg.recipe["hyperparameters.learning_rate"].value == 2e-4
    assert any(n.startswith("conflict on") for n in cfg.notes)
    cfg2, state2 = setup()
    set_recipe(cfg2, state2, "hyperparameters.learning_rate", 5e-5, "live", DOCS)
    set_recipe(cfg2, state2, "hyperparameters.learning_rate", 2e-4, "live", CARD)
    assert cfg2.recipe["hyperparameters.learning_rate"].value == 2e-4


def test_specificity_ranks_model_sources_first():
    mid = "google/vit-base-patch16-224"
    assert specificity(CARD, mid) > specificity("https://github.com/huggingface/transformers/tree/main/examples", mid) > specificity(DOCS, mid)


def test_user_values_rank_first():
    cfg, state = setup()
    cfg.hyperparameters.learning_rate = 1e-3
    user_recipe(cfg, ["hyperparameters.learning_rate"])
    assert cfg.recipe["hyperparameters.learning_rate"].rank == "user" and cfg.recipe["hyperparameters.learning_rate"].value == 1e-3
    with pytest.raises(AuthorityError):
        set_recipe(cfg, state, "hyperparameters.learning_rate", 5e-5, "live", CARD)
