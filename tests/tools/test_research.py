import json

import pytest

from tao_finetune.agent import authority, gates
from tao_finetune.agent.config import RunConfig, load_config
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import RunState
from tao_finetune.tools import research
from tao_finetune.tools.base import ToolError

from servers.pages import MODEL_ID, default_routes, serve_pages

DOCS = "/docs/transformers/tasks/image_classification"


def call(t, ctx, **raw):
    return t(ctx, t.validate(raw))


def body(out):
    """The page text inside the data block fetch_docs wraps it in."""
    head, rest = out["excerpt"].split(">>>\n", 1)
    assert head.startswith("<<<DATA origin='page ") and rest.endswith("\n<<<END DATA>>>")
    return rest[: -len("\n<<<END DATA>>>")]


@pytest.fixture
def pages(monkeypatch):
    with serve_pages() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setattr(research, "FETCHER", research.Fetcher(timeout_s=0.5, attempts=2, wait_s=0))
        yield server


@pytest.fixture
def ctx(tmp_path):
    cfg = RunConfig(
        model_id=MODEL_ID, dataset_id="acme/digits", task_type="image-classification", output_dir=str(tmp_path / "run")
    )
    creds = Credentials({})
    c = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", creds), creds)
    c.save()
    return c


def test_model_card_default_url_strips_chrome_and_keeps_code(pages, ctx):
    out = call(research.fetch_docs, ctx)
    assert out["url"] == f"{pages.url}/{MODEL_ID}"
    text = out["excerpt"]
    assert "learning rate of 3e-5" in text
    assert '```\nfrom transformers import AutoImageProcessor, AutoModelForImageClassification\n' in text
    assert '    "acme/vit-tiny-demo", num_labels=10' in text
    assert "validation | 0.812" in text
    for chrome in ("Pricing", "tracking", "__hubConfig", "Terms", "color:red"):
        assert chrome not in text
    folder = ctx.run_dir / out["saved"]
    assert (folder / "raw.html").read_text().startswith("<!doctype html>")
    assert "learning rate of 3e-5" in (folder / "text.md").read_text()
    assert json.loads((folder / "meta.json").read_text())["status"] == 200
    attempts = RunState.load(ctx.run_dir).live_attempts["*"]
    assert attempts[0]["url"] == out["url"] and attempts[0]["outcome"].startswith("ok:")


def test_query_keeps_matching_blocks_with_their_heading(pages, ctx):
    out = call(research.fetch_docs, ctx, url=pages.url + DOCS, query="DataCollator", slots=["collator"])
    assert out["matches"] == 2
    assert body(out).startswith("## Preprocess")
    assert "data_collator = DefaultDataCollator()" in out["excerpt"]
    assert "RandomResizedCrop" not in out["excerpt"]
    assert ctx.state.live_attempts["collator"][0]["outcome"].endswith("2 passages mention 'DataCollator'")


def test_query_without_match_says_so(pages, ctx):
    out = call(research.fetch_docs, ctx, url=pages.url + DOCS, query="mean_iou", slots=["compute_metrics"])
    assert out["matches"] == 0 and body(out) == ""
    assert out["outline"] == ["# Image classification", "## Preprocess", "## Evaluate", "## Train"]
    assert "nothing mentions 'mean_iou'" in ctx.state.live_attempts["compute_metrics"][0]["outcome"]


def test_markdown_readme_keeps_fences(pages, ctx):
    out = call(research.fetch_docs, ctx, url=f"{pages.url}/{MODEL_ID}/resolve/main/README.md", query="from_pretrained")
    assert body(out).startswith("# ViT tiny demo")
    assert "```python\nfrom transformers import AutoModelForImageClassification\n" in out["excerpt"]
    assert (ctx.run_dir / out["saved"] / "raw.md").is_file()


def test_raw_text_file_sent_as_octet_stream_is_read(pages, ctx):
    out = call(research.fetch_docs, ctx, url=pages.url + "/raw/README.md", query="learning rate")
    assert "The learning rate we used was 3e-5." in out["excerpt"]
    with pytest.raises(ToolError, match="binary content"):
        call(research.fetch_docs, ctx, url=pages.url + "/raw/blob.json")


def test_redirect_is_followed(pages, ctx):
    out = call(research.fetch_docs, ctx, url=pages.url + "/old/image_classification")
    assert out["final_url"] == pages.url + DOCS
    assert "DefaultDataCollator" in out["excerpt"]


@pytest.mark.parametrize(
    "path, reason, requests",
    [
        ("/missing", "HTTP 404", 1),
        ("/weights.bin", "not HTML or text (content-type 'application/octet-stream')", 1),
        ("/slow", "timeout after 0.5s", 2),
        ("/flaky", "HTTP 503", 2),
        ("/loop", "more than 5 redirects", 6),
    ],
)
def test_failures_are_one_line_logged_and_retried_only_when_transient(pages, ctx, path, reason, requests):
    url = pages.url + path
    with pytest.raises(ToolError) as err:
        call(research.fetch_docs, ctx, url=url, slots=["collator", "learning_rate"])
    msg = str(err.value)
    assert reason in msg and "\n" not in msg
    assert pages.requested.count(path) == requests
    state = RunState.load(ctx.run_dir)
    for key in ("collator", "hyperparameters.learning_rate"):
        assert state.live_attempts[key] == [{"url": url, "outcome": f"failed: {msg.split(': ', 2)[2]}"}]


def test_connect_error(ctx, monkeypatch):
    with serve_pages() as server:
        dead = server.url
    monkeypatch.setenv("TAO_DOCS_MIRRORS", f"https://docs.test={dead}")
    dead = "https://docs.test"
    monkeypatch.setattr(research, "FETCHER", research.Fetcher(timeout_s=0.5, attempts=1, wait_s=0))
    with pytest.raises(ToolError, match="connect error"):
        call(research.fetch_docs, ctx, url=dead + "/x")


def test_size_cap_truncates(pages, ctx, monkeypatch):
    monkeypatch.setattr(research, "FETCHER", research.Fetcher(timeout_s=0.5, attempts=1, max_bytes=300))
    out = call(research.fetch_docs, ctx, url=pages.url + DOCS)
    assert out["truncated"] is True
    assert len((ctx.run_dir / out["saved"] / "raw.html").read_text()) == 300


def test_card_page_missing_falls_back_to_raw_readme(ctx, monkeypatch):
    routes = default_routes()
    del routes[f"/{MODEL_ID}"]
    with serve_pages(routes) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        out = call(research.fetch_docs, ctx, slots=["model_class"])
    assert out["url"].endswith("/resolve/main/README.md")
    outcomes = [a["outcome"] for a in ctx.state.live_attempts["model_class"]]
    assert outcomes[0] == "failed: HTTP 404 Not Found" and outcomes[1].startswith("ok:")


def test_bad_scheme_is_refused(ctx):
    with pytest.raises(ToolError, match="http"):
        call(research.fetch_docs, ctx, url="file:///etc/passwd")


@pytest.mark.parametrize("url, reason", [
    ("http://example.com/docs", "only https URLs are fetched"),
    ("https://127.0.0.1/x", "loopback address"),
    ("https://localhost/x", "loopback address"),
    ("https://169.254.169.254/latest/meta-data", "link-local address"),
    ("https://10.0.0.7/x", "private address"),
    ("https://[::1]/x", "loopback address"),
])
def test_fetch_refuses_plain_http_and_non_public_addresses(pages, ctx, url, reason):
    with pytest.raises(ToolError, match=reason):
        call(research.fetch_docs, ctx, url=url)
    assert not ctx.state.fetches


def test_a_redirect_is_rechecked_at_every_hop(ctx, monkeypatch):
    from servers.pages import Route

    with serve_pages() as inner:
        routes = {"/hop": Route(status=302, headers={"Location": inner.url + DOCS}),
                  "/hop-https": Route(status=302, headers={"Location": "https://127.0.0.1:1/x"}),
                  "/ok": Route(status=301, headers={"Location": "/docs"}), "/docs": Route(body=b"<p>fine</p>")}
        with serve_pages(routes) as outer:
            monkeypatch.setenv("TAO_DOCS_MIRRORS", f"https://docs.test={outer.url}")
            for path, reason in (("/hop", "only https"), ("/hop-https", "loopback")):
                with pytest.raises(ToolError, match=reason):
                    call(research.fetch_docs, ctx, url="https://docs.test" + path)
            assert inner.requested == []
            out = call(research.fetch_docs, ctx, url="https://docs.test/ok")
            assert out["final_url"] == "https://docs.test/docs" and "fine" in body(out)


def test_reference_refused_until_a_live_attempt_is_logged(pages, ctx):
    with pytest.raises(ToolError, match="no failed live attempt"):
        call(research.record_recipe, ctx, slot="collator", value="DefaultDataCollator", rank="reference",
             source="references/recipes.yaml#image-classification")
    with pytest.raises(ToolError):
        call(research.fetch_docs, ctx, url=pages.url + "/missing", slots=["collator"])
    out = call(research.record_recipe, ctx, slot="collator", value="DefaultDataCollator", rank="reference",
               source="references/recipes.yaml#image-classification")
    assert out["result"].startswith("set 'collator' from reference")
    cfg = load_config(ctx.run_dir / "config.yaml")
    assert cfg.recipe["collator"].rank == "reference"
    assert "HTTP 404" in cfg.recipe["collator"].reason
    assert any(n.startswith("fallback to reference for collator") for n in cfg.notes)


def test_reference_source_must_exist(ctx):
    authority.record_live_attempt(ctx.state, "collator", "https://x", "failed: HTTP 404")
    with pytest.raises(ToolError, match="available:"):
        call(research.record_recipe, ctx, slot="collator", value="x", rank="reference", source="references/nope.md")


def test_live_beats_reference_and_reference_cannot_come_back(pages, ctx):
    with pytest.raises(ToolError):
        call(research.fetch_docs, ctx, url=pages.url + "/missing", slots=["learning_rate"])
    call(research.record_recipe, ctx, slot="learning_rate", value=1e-4, rank="reference", source="references/recipes.yaml")
    assert ctx.config.hyperparameters.learning_rate == 1e-4
    card = f"{pages.url}/{MODEL_ID}"
    call(research.fetch_docs, ctx, url=card, slots=["learning_rate"])
    call(research.record_recipe, ctx, slot="learning_rate", value=3e-5, rank="live", source=card)
    assert ctx.config.hyperparameters.learning_rate == 3e-5
    with pytest.raises(ToolError, match="cannot overwrite"):
        call(research.record_recipe, ctx, slot="learning_rate", value=1e-4, rank="reference", source="references/recipes.yaml")
    cfg = load_config(ctx.run_dir / "config.yaml")
    assert cfg.hyperparameters.learning_rate == 3e-5
    assert cfg.recipe["hyperparameters.learning_rate"].source == card
    assert card in cfg.research_sources


def test_user_values_are_never_overwritten(pages, ctx):
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(update={"learning_rate": 1e-3})
    ctx.config.n_epochs = 7
    authority.user_recipe(ctx.config, ["hyperparameters.learning_rate", "n_epochs"])
    card = f"{pages.url}/{MODEL_ID}"
    call(research.fetch_docs, ctx, url=card)
    with pytest.raises(ToolError, match="user"):
        call(research.record_recipe, ctx, slot="learning_rate", value=3e-5, rank="live", source=card)
    out = call(research.record_recipe, ctx, slot="hyperparameters", rank="live", source=card,
               value={"learning_rate": 3e-5, "batch_size": 64, "epochs": 3, "lr_scheduler_type": "cosine", "max_grad_norm": 1.0})
    assert set(out["skipped"]) == {"learning_rate", "epochs", "max_grad_norm"}
    assert out["skipped"]["max_grad_norm"].startswith("kept as a hint")
    assert out["skipped"]["epochs"].startswith("hint only: n_epochs is a run input")
    cfg = load_config(ctx.run_dir / "config.yaml")
    assert cfg.hyperparameters.learning_rate == 1e-3 and cfg.n_epochs == 7
    assert cfg.hyperparameters.per_device_train_batch_size == 64
    assert cfg.recipe["hyperparameters"].value["learning_rate"] == 3e-5
    assert cfg.recipe["hyperparameters.learning_rate"].rank == "user"


def test_user_set_without_recipe_entry_is_still_protected(ctx):
    ctx.config.user_set = ["hyperparameters.per_device_train_batch_size"]
    with pytest.raises(ToolError, match="set by the user"):
        call(research.record_recipe, ctx, slot="per_device_train_batch_size", value=8, rank="live", source="https://docs.example/x")
    assert ctx.config.hyperparameters.per_device_train_batch_size == 32


@pytest.mark.parametrize("card_first", [True, False])
def test_live_conflict_model_card_wins_and_is_noted(pages, ctx, card_first):
    card, docs = f"{pages.url}/{MODEL_ID}", pages.url + DOCS
    order = [(card, 3e-5), (docs, 5e-5)] if card_first else [(docs, 5e-5), (card, 3e-5)]
    for url, lr in order:
        call(research.fetch_docs, ctx, url=url, slots=["learning_rate"])
        call(research.record_recipe, ctx, slot="learning_rate", value=lr, rank="live", source=url)
    cfg = load_config(ctx.run_dir / "config.yaml")
    assert cfg.hyperparameters.learning_rate == 3e-5
    assert cfg.recipe["hyperparameters.learning_rate"].source == card
    assert any(n.startswith("conflict on 'hyperparameters.learning_rate'") for n in cfg.notes)


def test_invalid_values_and_live_without_url_are_refused(ctx):
    with pytest.raises(ToolError, match="invalid value -1"):
        call(research.record_recipe, ctx, slot="learning_rate", value=-1, rank="live", source="https://docs.example/x")
    with pytest.raises(ToolError, match="needs a source URL"):
        call(research.record_recipe, ctx, slot="model_class", value="AutoModelForImageClassification", rank="live", source="the docs")
    with pytest.raises(ToolError, match="non-empty dict"):
        call(research.record_recipe, ctx, slot="hyperparameters", value=3e-5, rank="live", source="https://docs.example/x")


def test_full_recipe_meets_gate3_and_notes_cite_sources(pages, ctx):
    docs = pages.url + DOCS
    card = f"{pages.url}/{MODEL_ID}"
    call(research.fetch_docs, ctx, url=card)
    call(research.fetch_docs, ctx, url=docs)
    live = {
        "model_class": ("AutoModelForImageClassification", card),
        "processor_class": ("AutoImageProcessor", card),
        "train_transforms": ("RandomResizedCrop + ToTensor + Normalize(processor mean/std)", docs),
        "collator": ("DefaultDataCollator", docs),
        "compute_metrics": ("accuracy from argmax of logits", docs),
        "hyperparameters": ({"learning_rate": 5e-5, "per_device_train_batch_size": 16, "num_train_epochs": 3}, docs),
    }
    for slot, (value, url) in live.items():
        call(research.record_recipe, ctx, slot=slot, value=value, rank="live", source=url)
    assert gates.gate3(ctx.run_dir, ctx.state) == ["meta/recipe.md"]  # eval_transforms is recordable, not gated
    call(research.record_recipe, ctx, slot="eval_transforms", value="Resize + CenterCrop + Normalize", rank="reference",
         source="references/recipes.yaml#image-classification", reason="task guide shows train transforms only")
    out = call(research.write_recipe_notes, ctx, notes="remove_unused_columns=False keeps the image column.")
    assert out == {"written": "meta/recipe.md", "slots_missing": []}
    assert gates.gate3(ctx.run_dir, ctx.state) == []
    md = (ctx.run_dir / "meta" / "recipe.md").read_text()
    assert f"- URL: {docs}" in md and f"- URL: {card}" in md
    assert "- reference file: references/recipes.yaml#image-classification" in md
    assert "- reason: task guide shows train transforms only" in md
    assert "remove_unused_columns=False" in md
    cfg = load_config(ctx.run_dir / "config.yaml")
    assert cfg.research_sources == [card, docs]
    assert cfg.n_epochs == 3


def test_read_reference(ctx):
    out = call(research.read_reference, ctx, name="research-priorities")
    assert "Priority" in out["text"] or "priority" in out["text"]
    with pytest.raises(ToolError, match="available: .*core-rules.md"):
        call(research.read_reference, ctx, name="nope.md")


def test_suggest_sources_in_priority_order(monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    cfg = RunConfig(
        model_id="google/vit-base-patch16-224",
        task_type="image-classification",
        model_facts={"tags": ["vision", "arxiv:2010.11929"], "card_links": ["https://github.com/google-research/vision_transformer"]},
    )
    urls = research.suggest_sources(cfg)
    assert urls[0] == "http://127.0.0.1:9/google/vit-base-patch16-224"
    assert urls[1].endswith("/resolve/main/README.md")
    assert urls[2] == "https://github.com/google-research/vision_transformer"
    assert urls[3] == "https://huggingface.co/docs/transformers/tasks/image_classification"
    assert urls[4].endswith("examples/pytorch/image-classification/run_image_classification.py")
    assert urls[5] == "https://arxiv.org/abs/2010.11929"
    prios = [s["priority"] for s in research.research_plan(cfg)]
    assert prios == sorted(prios)
    text = RunConfig(model_id="x/y", task_type="text-classification")
    assert "sequence_classification" in research.suggest_sources(text)[2]


def test_default_model_card_against_the_local_hub(ctx, tmp_path, monkeypatch):
    from servers.hub import LocalHub
    from servers.pages import README_MD

    with LocalHub(tmp_path / "hub") as hub_server:
        hub_server.add_repo(MODEL_ID, {"README.md": README_MD, "config.json": "{}"})
        base = hub_server.url
        monkeypatch.setenv("HF_ENDPOINT", base)
        out = call(research.fetch_docs, ctx, query="learning rate", slots=["hyperparameters"])
    assert out["url"] == f"{base}/{MODEL_ID}/resolve/main/README.md"
    assert "3e-5" in out["excerpt"]
    outcomes = [a["outcome"] for a in ctx.state.live_attempts["hyperparameters"]]
    assert outcomes[0].startswith("failed: HTTP 404") and outcomes[1].startswith("ok:")


@pytest.mark.parametrize("task", ["image-classification", "text-classification", "object-detection",
                                  "semantic-segmentation", "image-text-to-text"])
def test_reference_fallback_for_every_slot_meets_gate3(pages, ctx, task):
    ctx.config.task_type = task
    routes_gone = pages.url + "/gone"
    with pytest.raises(ToolError):
        call(research.fetch_docs, ctx, url=routes_gone)
    rec = research.reference_recipe(task)
    for slot in gates.RECIPE_SLOTS:
        call(research.record_recipe, ctx, slot=slot, value=rec[slot], rank="reference", source=f"references/recipes.yaml#{task}")
    call(research.write_recipe_notes, ctx)
    assert gates.gate3(ctx.run_dir, ctx.state) == []
    cfg = load_config(ctx.run_dir / "config.yaml")
    assert cfg.hyperparameters.learning_rate == rec["hyperparameters"]["learning_rate"]
    assert cfg.n_epochs == 3
    assert all(cfg.recipe[s].reason == f"{routes_gone}: failed: HTTP 404 Not Found" for s in gates.RECIPE_SLOTS)
    assert cfg.hyperparameters.training_method == "full"


def test_training_method_is_never_switched_by_research(pages, ctx):
    call(research.fetch_docs, ctx, url=pages.url + DOCS)
    out = call(research.record_recipe, ctx, slot="hyperparameters", rank="live", source=pages.url + DOCS,
               value={"learning_rate": 1e-4, "training_method": "lora"})
    assert "ask the user" in out["skipped"]["training_method"]
    assert ctx.config.hyperparameters.training_method == "full"
    with pytest.raises(Exception):
        research.record_recipe.validate({"slot": "training_method", "value": "lora", "rank": "live", "source": "https://x"})


def test_local_model_has_no_card_to_fetch(ctx, tmp_path, monkeypatch):
    model = tmp_path / "model"
    model.mkdir()
    ctx.config.model_id = str(model)
    monkeypatch.setattr(research, "FETCHER", research.Fetcher(timeout_s=0.01, attempts=1))
    with pytest.raises(ToolError, match="local model folder"):
        call(research.fetch_docs, ctx, slots=["collator"])
    assert ctx.state.live_attempts["collator"][0]["url"] == (model / "README.md").as_uri()
    call(research.record_recipe, ctx, slot="collator", value="DefaultDataCollator", rank="reference", source="references/recipes.yaml")
    urls = research.suggest_sources(ctx.config)
    assert urls[0] == "https://huggingface.co/docs/transformers/tasks/image_classification"


def test_user_hyperparameters_section_refuses_research_before_touching_anything(ctx):
    authority.user_recipe(ctx.config, ["hyperparameters"])
    with pytest.raises(ToolError, match="already set from user"):
        call(research.record_recipe, ctx, slot="hyperparameters", rank="live", source="https://docs.example/x",
             value={"lr_scheduler_type": "linear"})
    assert ctx.config.hyperparameters.lr_scheduler_type == "cosine"
    with pytest.raises(ToolError, match="set by the user"):
        call(research.record_recipe, ctx, slot="lr_scheduler_type", value="linear", rank="live", source="https://docs.example/x")
