import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

from servers.step1_data import FAKE_TOKEN, digits_parquet, local_hub, save_vit  # noqa: F401
from tao_finetune.tools.probe import hub_env, hub_cache


def test_model_info_and_download_through_the_real_client(local_hub, tmp_path):
    save_vit(tmp_path / "vit", card="---\nlicense: apache-2.0\ntags: [vision]\n---\n# tiny")
    local_hub.add_repo("org/tiny-vit", tmp_path / "vit", pipeline_tag="image-classification", library_name="transformers")
    api = HfApi(endpoint=local_hub.url)
    info = api.model_info("org/tiny-vit")
    assert info.pipeline_tag == "image-classification"
    assert "license:apache-2.0" in info.tags
    assert info.safetensors.total > 0
    assert {"config.json", "model.safetensors", "README.md"} <= {s.rfilename for s in info.siblings}
    path = hf_hub_download("org/tiny-vit", "config.json", endpoint=local_hub.url, cache_dir=tmp_path / "c")
    assert '"model_type": "vit"' in open(path).read()
    assert info.sha in path


def test_unknown_and_gated_repos(local_hub, tmp_path):
    local_hub.add_repo("org/gated", {"config.json": "{}"}, gated="manual")
    api = HfApi(endpoint=local_hub.url)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("org/missing")
    assert api.model_info("org/gated").gated == "manual"
    with pytest.raises(GatedRepoError):
        hf_hub_download("org/gated", "config.json", endpoint=local_hub.url, cache_dir=tmp_path / "c", token=False)
    got = hf_hub_download("org/gated", "config.json", endpoint=local_hub.url, cache_dir=tmp_path / "c", token=FAKE_TOKEN)
    assert open(got).read() == "{}"


def test_parquet_dataset_repo_loads_with_datasets(local_hub, tmp_path):
    import datasets

    digits_parquet(tmp_path / "train.parquet")
    local_hub.add_repo("org/digits", {"data/train-00000-of-00001.parquet": (tmp_path / "train.parquet").read_bytes()}, "dataset")
    with hub_env():
        ds = datasets.load_dataset("org/digits", cache_dir=str(tmp_path / "ds"))
        stream = datasets.load_dataset("org/digits", split="train", streaming=True)
        first = next(iter(stream))
    assert ds["train"].num_rows == 12
    assert ds["train"].features["label"].names == ["zero", "one", "two"]
    assert first["image"].size == (32, 32)
    assert any("/tree/" in p for p in local_hub.paths("GET"))


def test_write_side_create_commit_and_read_back(local_hub, tmp_path):
    api = HfApi(endpoint=local_hub.url, token=FAKE_TOKEN)
    assert api.whoami()["name"] == "tester"
    url = api.create_repo("tester/new-model")
    assert str(url).endswith("tester/new-model")
    api.create_repo("tester/new-model", exist_ok=True)
    with pytest.raises(Exception, match="409"):
        api.create_repo("tester/new-model")
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "README.md").write_text("---\nlicense: mit\n---\n# card")
    (tmp_path / "up" / "results.json").write_text('{"accuracy": 0.9}')
    info = api.upload_folder(folder_path=tmp_path / "up", repo_id="tester/new-model")
    assert len(info.oid) == 40
    assert "/api/validate-yaml" in local_hub.paths("POST")
    back = hf_hub_download("tester/new-model", "results.json", endpoint=local_hub.url, cache_dir=tmp_path / "c")
    assert open(back).read() == '{"accuracy": 0.9}'
    assert api.model_info("tester/new-model").card_data["license"] == "mit"


def test_requests_are_recorded_and_token_only_in_the_authorization_header(local_hub):
    api = HfApi(endpoint=local_hub.url, token=FAKE_TOKEN)
    api.create_repo("tester/r")
    recorded = [r for r in local_hub.requests if r.path == "/api/repos/create"]
    assert recorded and recorded[0].headers["authorization"] == f"Bearer {FAKE_TOKEN}"
    for r in local_hub.requests:
        assert FAKE_TOKEN not in r.path and FAKE_TOKEN.encode() not in r.body
        assert all(FAKE_TOKEN not in v for k, v in r.headers.items() if k != "authorization")


def test_hub_env_follows_the_environment(local_hub, monkeypatch):
    from huggingface_hub import constants

    before = constants.ENDPOINT
    with hub_env():
        assert constants.ENDPOINT == local_hub.url
        assert constants.HF_HUB_CACHE == hub_cache()
    assert constants.ENDPOINT == before
