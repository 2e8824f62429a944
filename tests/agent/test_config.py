import pytest
import yaml

from tao_finetune.agent.config import ConfigError, RunConfig, apply_overrides, build_config, load_config, save_config


def test_defaults_follow_the_spec():
    cfg = RunConfig(model_id="google/vit-base-patch16-224", dataset_id="beans")
    assert (cfg.n_train, cfg.n_eval, cfg.n_epochs, cfg.lora_r) == (10000, 1000, 3, 16)
    assert cfg.push_to_hub is True and cfg.skip_baseline is False
    assert cfg.output_dir == "./output/vit-base-patch16-224"
    assert cfg.dataset_source == "hf"
    assert RunConfig(model_id="m").dataset_source == "recommend"
    assert RunConfig(model_id="m", local_dataset_path="/d").dataset_source == "local"


def test_both_dataset_kinds_is_an_error():
    with pytest.raises(ConfigError, match="not both"):
        build_config({"model_id": "m", "dataset_id": "a", "local_dataset_path": "/b"})


def test_invalid_value_names_the_field_in_one_line():
    with pytest.raises(ConfigError) as err:
        build_config({"model_id": "m", "hyperparameters": {"learning_rate": -1}})
    msg = str(err.value)
    assert "hyperparameters.learning_rate" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="n_train"):
        build_config({"model_id": "m", "n_train": "many"})
    with pytest.raises(ConfigError, match="local_dataset_format"):
        build_config({"model_id": "m", "local_dataset_format": "tfrecord"})


def test_overrides_parse_yaml_and_route_hyperparameters():
    data, keys = apply_overrides({"model_id": "m"}, ["learning_rate=1e-4", "n_train=500", "hyperparameters.seed=7", "push_to_hub=false"])
    cfg = build_config(data)
    assert cfg.hyperparameters.learning_rate == 1e-4 and cfg.hyperparameters.seed == 7
    assert cfg.n_train == 500 and cfg.push_to_hub is False
    assert keys == ["hyperparameters.learning_rate", "n_train", "hyperparameters.seed", "push_to_hub"]
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["oops"])


def test_save_is_atomic_and_round_trips(tmp_path):
    cfg = RunConfig(model_id="org/m", dataset_id="d", output_dir=str(tmp_path))
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    assert not list(tmp_path.glob(".config.yaml.*"))
    assert yaml.safe_load(path.read_text())["model_id"] == "org/m"


def test_bad_files_give_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model_id: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "extra.yaml").write_text("model_id: m\nmodel_idd: typo\n")
    with pytest.raises(ConfigError, match="model_idd"):
        load_config(tmp_path / "extra.yaml")


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    import os

    cfg = RunConfig(model_id="org/m", output_dir=str(tmp_path))
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    before = path.read_text()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        save_config(RunConfig(model_id="org/other", output_dir=str(tmp_path)), path)
    assert path.read_text() == before
    assert not list(tmp_path.glob(".config.yaml.*"))


def test_user_can_pin_a_recipe_slot():
    data, keys = apply_overrides({"model_id": "m"}, ["recipe.train_transforms=none (digits are not flip-invariant)"])
    cfg = build_config(data)
    assert cfg.recipe["train_transforms"].rank == "user" and cfg.recipe["train_transforms"].value.startswith("none")
    assert keys == ["recipe.train_transforms"]


def test_an_existing_folder_that_is_not_a_run_is_refused_as_output_dir(tmp_path, capsys):
    """A run renders train.py, Dockerfile, README.md ... into its output dir and pushes every top-level source there: a
    folder of the user's own files (`--output-dir ~/myproject`) would be overwritten and uploaded. New, empty and run
    folders are fine."""
    from tao_finetune.agent.cli import main
    from tao_finetune.agent.config import ConfigError, check_output_dir

    mine = tmp_path / "myproject"
    mine.mkdir()
    (mine / "train.py").write_text("# my own training script\n")
    (mine / "notes.md").write_text("private notes\n")
    with pytest.raises(ConfigError, match=r"holds files that are not a tao-finetune run \('notes.md', 'train.py'\)"):
        check_output_dir(mine)
    for argv in (["run", "--model-id", "a/b", "--llm", "autopilot", "--yes", "--output-dir", str(mine)],
                 ["inspect", "--model-id", "a/b", "--dataset-id", "org/d", "--output-dir", str(mine)]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert "choose a new or empty folder" in out + err and "Traceback" not in out + err, out + err
    assert sorted(p.name for p in mine.iterdir()) == ["notes.md", "train.py"] and (mine / "train.py").read_text() == "# my own training script\n"
    empty, new = tmp_path / "empty", tmp_path / "new" / "run"
    empty.mkdir()
    check_output_dir(empty)
    check_output_dir(new)
    for marker in ("config.yaml", "session.jsonl", ".tao"):  # a run, also one stopped before its config was written
        run = tmp_path / f"run-{marker}"
        run.mkdir()
        (run / marker).mkdir() if marker == ".tao" else (run / marker).write_text("")
        (run / "train.py").write_text("# the run's own\n")
        check_output_dir(run)


@pytest.mark.parametrize("data,field", [({"n_epochs": float("inf")}, "n_epochs"), ({"n_epochs": "inf"}, "n_epochs"),
                                        ({"hyperparameters": {"learning_rate": float("inf")}}, "hyperparameters.learning_rate"),
                                        ({"hyperparameters": {"weight_decay": float("inf")}}, "hyperparameters.weight_decay")])
def test_an_infinite_value_is_refused_in_one_line(data, field):
    """`--n-epochs inf` would train forever and `learning_rate=inf` diverge at step 1: bad input, refused up front."""
    with pytest.raises(ConfigError, match=rf"invalid config value for '{field}': Input should be a finite number"):
        build_config({"model_id": "org/m", **data})
    for raw in ("inf", ".inf", "-.inf"):  # as --set gives it (parsed as YAML)
        with pytest.raises(ConfigError, match=field):
            build_config({"model_id": "org/m", **apply_overrides({}, [f"{field.removeprefix('hyperparameters.')}={raw}"])[0]})


@pytest.mark.parametrize("repo", ["bad//repo", "../../etc", "a/b/c", "me/x--y", "me/model.git", "me/ spaced", "-me/x"])
def test_a_hub_repo_id_the_hub_would_refuse_is_refused_up_front(repo):
    """A typo in --hf-model-repo used to surface only at Step 6's push, after the training: refused before the run."""
    with pytest.raises(ConfigError, match=r"(?i)invalid config value for 'hf_model_repo': .*repo"):
        build_config({"model_id": "org/m", "hf_model_repo": repo})


def test_a_valid_hub_repo_id_is_kept():
    for repo in ("me/my-vit_2.0", "my-vit", None):
        assert build_config({"model_id": "org/m", "hf_model_repo": repo}).hf_model_repo == repo


@pytest.mark.parametrize("raw,kept", [("60", "60"), ("90:00", "90:00"), ("04:00:00", "04:00:00"), ("1-12", "1-12"),
                                      ("2-00:30:00", "2-00:30:00"), ("UNLIMITED", "UNLIMITED")])
def test_slurm_time_limits_take_every_form_sbatch_takes(raw, kept):
    """`--set slurm.time=60` (minutes, as the field's help says) was refused as 'not a string'."""
    for key in ("time", "job_time"):
        assert getattr(build_config({"model_id": "org/m", **apply_overrides({}, [f"slurm.{key}={raw}"])[0]}).slurm, key) == kept


@pytest.mark.parametrize("raw", ["4h", "1:2:3:4", "-5", "soon", "1-"])
def test_a_slurm_time_limit_sbatch_would_refuse_is_refused_up_front(raw):
    with pytest.raises(ConfigError, match=r"invalid config value for 'slurm.time': .*time limit"):
        build_config({"model_id": "org/m", **apply_overrides({}, [f"slurm.time={raw}"])[0]})


@pytest.mark.parametrize("key", ["recipe.train_transform", "recipe.", "recipe.model-klass"])
def test_a_recipe_slot_that_does_not_exist_is_refused(key):
    """`--set recipe.train_transform=...` (a typo of train_transforms) pinned nothing: research filled the real slot."""
    with pytest.raises(ConfigError, match=r"is not a recipe slot: one of model_class, processor_class, train_transforms"):
        apply_overrides({}, [f"{key}=none"])


def test_every_recipe_slot_research_records_can_be_pinned():
    from tao_finetune.tools.research import SLOT_NAMES

    for slot in SLOT_NAMES:
        data, keys = apply_overrides({}, [f"recipe.{slot}=x"])
        assert keys == [f"recipe.{slot}"] and data["recipe"][slot]["rank"] == "user"
