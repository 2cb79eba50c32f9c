import json
import subprocess
import sys

import pytest

from classit.cli import main
from classit.config import ConfigError, config_hash, load_config, parse_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, field", [
    ("pretrain:\n  learning_rat: 0.1\n", "pretrain.learning_rat: unknown key"),
    ("pretrain:\n  batch_size: many\n", "pretrain.batch_size"),
    ("pretrain:\n  learning_rate: -1e-4\n", "pretrain.learning_rate"),
    ("distributed:\n  zero_stage: 4\n", "distributed.zero_stage"),
    ("corpus:\n  path: /no/such/corpus\n", "/no/such/corpus"),
    ("model:\n  preset: llama-7b\n", "model.preset"),
    ("corpus:\n  block_size: 0\n", "corpus.block_size"),
    ("distributed:\n  zero_stage: 3\n  compile: true\n", "distributed.compile"),
    ("instruct:\n  curriculum: []\n", "instruct.curriculum: a list of no stages"),
    ("corpus:\n  block_size: 1024\n", "corpus.block_size: 1024 tokens, more than the tiny preset's 512 positions"),
])
def test_bad_config_is_one_line_naming_the_field(tmp_path, capsys, text, field):
    code = main(["pretrain", "--config", str(write(tmp_path, text))])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("classit: error: ")
    assert field in err


@pytest.mark.parametrize("command", [["evaluate", "--data-dir", "."], ["instruct", "--curriculum", "switch"]])
def test_a_checkpoint_argument_that_is_no_checkpoint_folder_is_one_line_before_ray(tmp_path, capsys, command):
    import ray

    flag = "--model" if command[0] == "evaluate" else "--base"
    for path in (tmp_path / "absent", tmp_path):  # no such folder; a folder without config.json
        assert main([*command, flag, str(path)]) == 2
        err = capsys.readouterr().err
        assert err == f"classit: error: {flag} {path}: not a Hugging Face checkpoint folder (no config.json)\n"
    # A run's folder: the checkpoint it most likely means is named (the one with the most exposure).
    run = tmp_path / "run"
    for name, exposure in (("wiki-step0000066-words000000546844", 546_844), ("switch-step0000066-words000000528895", 528_895)):
        (run / name).mkdir(parents=True)
        (run / name / "trainer_state.json").write_text(json.dumps({"stage": name[:4], "words_seen": exposure}))
    assert main([*command, flag, str(run)]) == 2
    assert capsys.readouterr().err.endswith(f"(no config.json) (a run's folder: its final checkpoint is "
                                            f"{run / 'wiki-step0000066-words000000546844'})\n")
    assert not ray.is_initialized()


def test_a_file_where_a_command_writes_a_folder_is_named_before_ray(tmp_path, capsys):
    import ray

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    file = tmp_path / "a-file"
    file.write_text("")
    for command in (["evaluate", "--model", str(checkpoint), "--output", str(file / "eval")],
                    ["evaluate", "--model", str(checkpoint), "--export", str(file)],
                    ["aoa", str(tmp_path), "--data-dir", str(tmp_path), "--output", str(file)],
                    ["export-hub", str(tmp_path), "--out", str(file)],
                    ["pretrain", "--set", f"run.storage_path={file}"],
                    ["sweep", "--set", f"run.cache_dir={file / 'cache'}"]):
        assert main(command) == 2, command
        flag, path = (command[-1].split("=")[0], command[-1].split("=")[1]) if "=" in command[-1] else command[-2:]
        assert capsys.readouterr().err == f"classit: error: {flag} {path}: {file} is a file, not a folder\n"
    assert not ray.is_initialized()


@pytest.mark.parametrize("file, content, message", [
    ("trainer_state.json", [1, 2], "<root>: Input should be a dictionary or an instance of TrainerState (got [1, 2])"),
    ("trainer_state.json", {"stage": "pretrain", "words_seen": "many"},
     "words_seen: Input should be a valid integer, unable to parse string as an integer (got 'many')"),
    ("trainer_state.json", {"words_seen": 10}, "stage: Field required"),
    ("trainer_state.json", {"stage": "pretrain", "global_step": 10}, "global_step: unknown key"),
    ("config.json", [1], "<root>: Input should be a dictionary or an instance of CheckpointShape (got [1])"),
    ("config.json", {"max_position_embeddings": "lots"},
     "max_position_embeddings: Input should be a valid integer, unable to parse string as an integer (got 'lots')"),
])
def test_a_base_whose_state_or_config_is_json_of_another_shape_is_named_by_file_and_field_before_ray(
        tmp_path, capsys, file, content, message):
    import ray

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "trainer_state.json").write_text(json.dumps({"stage": "pretrain"}))
    (tmp_path / file).write_text(json.dumps(content))
    assert main(["instruct", "--base", str(tmp_path), "--curriculum", "switch"]) == 2
    assert capsys.readouterr().err == f"classit: error: {tmp_path / file}: {message}\n"
    assert not ray.is_initialized()



def test_evaluate_and_aoa_name_a_tasks_missing_data_in_one_line_before_ray(tmp_path, capsys):
    import ray

    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")  # found as a checkpoint folder; nothing loads it
    data = tmp_path / "data"
    (data / "blimp").mkdir(parents=True)
    assert main(["evaluate", "--model", str(checkpoint), "--tasks", "blimp,ewok", "--data-dir", str(data)]) == 2
    assert capsys.readouterr().err == f"classit: error: --data-dir: {data}: no ewok or ewok_filtered folder for task ewok\n"
    # Without --data-dir only the tasks the synthetic grammar's probe sets cover.
    assert main(["evaluate", "--model", str(checkpoint), "--tasks", "blimp,rte,wsc"]) == 2
    assert capsys.readouterr().err == ("classit: error: --tasks: rte, wsc need --data-dir (without it the probe sets "
                                       "generated from the synthetic grammar are scored: blimp, ewok)\n")
    assert main(["evaluate", "--model", str(checkpoint), "--export", str(tmp_path / "export")]) == 2
    assert capsys.readouterr().err.startswith("classit: error: --export needs --data-dir: ")
    assert main(["evaluate", "--model", str(checkpoint), "--tasks", "rte", "--data-dir", str(data)]) == 2
    glue = data / "glue_filtered"
    assert capsys.readouterr().err == (f"classit: error: --data-dir: {glue / 'rte.train.jsonl'}, {glue / 'rte.valid.jsonl'}: "
                                       f"no such file for task rte\n")
    assert main(["aoa", str(tmp_path), "--data-dir", str(data)]) == 2
    assert capsys.readouterr().err.endswith("cdi_human.csv: no such file for task aoa\n")
    assert not ray.is_initialized()


def test_missing_config_file_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "pretrain: [unclosed\n"))


def test_cli_process_exits_nonzero_with_one_line(tmp_path):
    path = write(tmp_path, "pretrain:\n  learning_rate: -1\n")
    proc = subprocess.run([sys.executable, "-m", "classit.cli", "pretrain", "--config", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "pretrain.learning_rate" in proc.stderr


def test_overrides_and_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "pretrain:\n  epochs: 3\n"), ["pretrain.learning_rate=1e-3",
                                                                  "distributed.zero_stage=3"])
    assert (cfg.pretrain.epochs, cfg.pretrain.learning_rate, cfg.distributed.zero_stage) == (3, 1e-3, 3)
    assert cfg.corpus.synthetic is not None  # no source given: the embedded default
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_config(None, ["nonsense"])


def test_a_bad_value_is_named_by_where_it_came_from_the_file_or_the_override(tmp_path):
    path = write(tmp_path, "pretrain:\n  learning_rate: -1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(path, ["pretrain.epochs=2"])
    assert str(raised.value) == f"{path}: pretrain.learning_rate: Input should be greater than 0 (got -1)"
    for override in ("pretrain.learning_rate=0", "pretrain={learning_rate: 0}"):
        with pytest.raises(ConfigError) as raised:
            load_config(write(tmp_path, "pretrain:\n  epochs: 2\n"), [override])
        assert str(raised.value) == f"override {override}: pretrain.learning_rate: Input should be greater than 0 (got 0)"


def test_an_override_inside_a_default_map_changes_one_entry_and_keeps_the_others(tmp_path):
    # Before: `instruct.datasets.switch.max_records=100` made `datasets` {switch: {max_records: 100}}, which
    # has no source ("give exactly one of path, ..."), and dropped the default wiki set.
    datasets = load_config(None, ["instruct.datasets.switch.max_records=100"]).instruct.datasets
    assert set(datasets) == {"switch", "wiki"}
    assert (datasets["switch"].synthetic, datasets["switch"].max_records) == ("conversation", 100)
    assert (datasets["wiki"].synthetic, datasets["wiki"].max_records) == ("qa", None)
    # A map the file gives is the file's: an override adds to it.
    written = write(tmp_path, "instruct:\n  curriculum: [{datasets: [qa]}]\n  datasets:\n    qa: {synthetic: qa}\n")
    assert set(load_config(written, ["instruct.datasets.qa.max_records=5"]).instruct.datasets) == {"qa"}


def test_two_corpus_sources_rejected(tmp_path):
    with pytest.raises(ConfigError, match="corpus: give one corpus source"):
        parse_config({"corpus": {"path": str(tmp_path), "hf_dataset": "x"}})


def test_config_hash_tracks_content():
    a, b = parse_config({}), parse_config({"pretrain": {"learning_rate": 1e-3}})
    assert config_hash(a.corpus) == config_hash(b.corpus)
    assert config_hash(a.pretrain) != config_hash(b.pretrain)


def test_a_failed_run_is_reported_by_the_workers_own_exception():
    from classit.cli import _root_cause

    ray_error = RuntimeError("Training failed due to worker errors:\n[Rank 0,1 Error Snippet]:\n"
                             "Traceback (most recent call last):\n  File \"loop.py\", line 3, in train_stage\n"
                             "classit.train.loop.NonFiniteLossError: stage pretrain: non-finite loss (nan) at step 2\n")
    assert _root_cause(ray_error) == "classit.train.loop.NonFiniteLossError: stage pretrain: non-finite loss " \
                                     "(nan) at step 2"
