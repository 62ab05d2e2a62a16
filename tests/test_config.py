"""Run-config validation: good configs load, bad ones fail early naming the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config.settings import MOVED_KEYS, ConfigError, dump_config, load_config, parse_config
from pipeline.methods.exit.method import ExitMethod
from pipeline.methods.rise.method import RiseMethod
from tests.helpers.runs import arithmetic_tasks

REPO = Path(__file__).resolve().parents[1]
MINIMAL = {"tasks": arithmetic_tasks(seed=1)}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_minimal_config_gets_defaults_that_run(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL))
    assert isinstance(config.method, RiseMethod)
    assert config.method.tau == 0.4
    assert config.rollout.backend == "vllm"
    assert config.model.name_or_path == "embedded:smollm2-135m-instruct"
    assert config.run_dir == Path("runs/run")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    load_config(path)


def test_dump_then_load_round_trips(tmp_path: Path) -> None:
    config = load_config(REPO / "configs" / "quickstart.yaml")
    again = tmp_path / "resolved.yaml"
    again.write_text(dump_config(config))
    assert load_config(again) == config


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"method": {"name": "rise", "turns": 0}}, "method.turns: Input should be greater than or equal to 1"),
        (
            {"rollout": {"sampling": {"temperature": "hot"}}},
            "rollout.sampling.temperature: Input should be a valid number",
        ),
        ({"rollout": {"tunrs": 3}}, "rollout.tunrs: Extra inputs are not permitted"),
        ({"bogus_section": {}}, "bogus_section: Extra inputs are not permitted"),
        ({"rollout": {"backend": "tgi"}}, "rollout.backend: Input should be 'vllm' or 'hf'"),
        ({"method": {"name": "rise", "tau": -1}}, "method.tau: Input should be greater than 0"),
        (
            {"method": {"name": "exit", "group_size": 1}},
            "method.group_size: Input should be greater than or equal to 2",
        ),
        ({"method": {"name": "ppo"}}, "method: Input tag 'ppo' found using 'name' does not match"),
        ({"grader": {"name": "nope"}}, "grader.name: unknown grader 'nope'"),
        ({"tasks": {"train": {"source": "nope"}}}, "tasks.train.source: unknown task source 'nope'"),
        (
            {"tasks": {"train": {"source": "jsonl", "options": {"train_path": "/no/such/file.jsonl"}}}},
            "tasks.train.options: Value error, options.train_path: file not found: /no/such/file.jsonl",
        ),
        (
            {"tasks": {"train": {"source": "arithmetic", "options": {"seeed": 3}}}},
            "tasks.train: options do not fit 'arithmetic'",
        ),
        ({"grader": {"name": "numeric", "options": {"tolerance": 1}}}, "grader: options do not fit 'numeric'"),
        ({"training": {"accelerate_config": "/no/such.yaml"}}, "training.accelerate_config: file not found"),
        ({"method": {"name": "rise", "mode": "distill"}}, "method.mode 'distill' needs method.teacher"),
        (
            {"method": {"name": "rise", "samples_per_turn": 4}, "rollout": {"sampling": {"temperature": 0}}},
            "method.samples_per_turn > 1 needs rollout.sampling.temperature > 0",
        ),
    ],
)
def test_bad_configs_name_the_bad_key(tmp_path: Path, patch: dict, message: str) -> None:
    data = merge(MINIMAL, patch)
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data))
    assert message.replace("Value error, ", "") in str(info.value)


def test_missing_required_section_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tasks: Field required"):
        load_config(write(tmp_path, {"run": {"name": "x"}}))


def test_every_error_is_reported_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(
            write(tmp_path, merge(MINIMAL, {"method": {"name": "rise", "turns": 0}, "rollout": {"max_concurrency": 0}}))
        )
    assert "2 invalid setting(s)" in str(info.value) and "\n" not in str(info.value)  # one line for the CLI


def test_overrides_set_nested_keys_with_yaml_values(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, MINIMAL),
        [
            "rollout.history_window=5",
            "rollout.urls=[http://h1:8000, http://h2:8000]",
            "method.name=exit",
            "method.kappa=2.5",
        ],
    )
    assert config.rollout.history_window == 5
    assert config.rollout.urls == ["http://h1:8000", "http://h2:8000"]
    assert isinstance(config.method, ExitMethod) and config.method.kappa == 2.5


def test_bad_overrides_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(path, ["method.turns"])
    with pytest.raises(ConfigError, match="method.turns is not a section"):
        load_config(path, ["method.turns=3", "method.turns.x=1"])
    with pytest.raises(ConfigError, match="rollout.nonsense: Extra inputs are not permitted"):
        load_config(path, ["rollout.nonsense=1"])


@pytest.mark.parametrize(("old", "new"), sorted(MOVED_KEYS.items()))
def test_a_moved_key_is_a_one_line_error_naming_its_new_place(tmp_path: Path, old: str, new: str) -> None:
    section, name = old.split(".")
    path = write(tmp_path, merge(MINIMAL, {section: {name: 1}}))
    with pytest.raises(ConfigError) as in_file:
        load_config(path)
    assert str(in_file.value) == f"{path}: {old} moved to {new}"
    with pytest.raises(ConfigError) as in_set:
        load_config(write(tmp_path, MINIMAL), [f"{old}=1"])
    assert str(in_set.value) == f"{path}: {old} moved to {new}"


def test_moved_keys_are_named_together_and_their_new_places_load() -> None:
    old = {"rollout": {"turns": 2, "stop_at_success": False}, "training": {"epochs": 1}}
    with pytest.raises(
        ConfigError,
        match=re.escape(
            "rollout.turns moved to method.turns; rollout.stop_at_success moved to method.stop_at_success; "
            "training.epochs moved to method.epochs"
        ),
    ):
        parse_config({**MINIMAL, **old})
    config = parse_config({**MINIMAL, "method": {"turns": 2, "stop_at_success": False, "epochs": 1}})
    assert isinstance(config.method, RiseMethod)  # a method section without a name is the default method's
    assert (config.method.turns, config.method.stop_at_success, config.method.epochs) == (2, False, 1)


def test_unreadable_files_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("rollout: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listing)


def test_parse_config_accepts_dicts() -> None:
    assert parse_config(MINIMAL).tasks.train.options == {"seed": 1}


def merge(base: dict, patch: dict) -> dict:
    out = dict(base)
    for key, value in patch.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def test_eval_history_window_falls_back_to_the_rollouts() -> None:
    """RISE's --context_window: evaluation.history_window, else rollout.history_window, else every attempt."""
    from pipeline.eval.stage import eval_history_window

    base = {"tasks": arithmetic_tasks()}
    assert eval_history_window(parse_config(base)) is None
    assert eval_history_window(parse_config({**base, "rollout": {"history_window": 1}})) == 1
    both = {**base, "rollout": {"history_window": 1}, "evaluation": {"history_window": 2}}
    assert eval_history_window(parse_config(both)) == 2
    with pytest.raises(ConfigError, match="evaluation.history_window"):
        parse_config({**base, "evaluation": {"history_window": 0}})


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ([], "method.samples_per_turn: needs at least one count"),
        ([1, 0], "every count must be >= 1"),
        (0, "every count must be >= 1"),
        ([1, 4, 4, 4], "samples_per_turn has 4 counts for turns=3"),
    ],
)
def test_bad_sample_schedules_are_refused(counts: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({**MINIMAL, "method": {"name": "rise", "samples_per_turn": counts}})


def test_sample_schedule_repeats_the_last_count() -> None:
    assert parse_config(MINIMAL).method.sample_schedule == (1, 4, 4)  # RISE's reference schedule by default
    rise = {"name": "rise", "samples_per_turn": 2}
    assert parse_config({**MINIMAL, "method": rise}).method.sample_schedule == (2, 2, 2)
    assert parse_config(
        {**MINIMAL, "method": {"name": "rise", "turns": 4, "samples_per_turn": [1, 2, 8]}}
    ).method.sample_schedule == (1, 2, 8, 8)


def test_rationalization_needs_an_answer_to_hint() -> None:
    assert parse_config({**MINIMAL, "method": {"name": "rise", "rationalize": 2}}).method.rationalize == 2
    with pytest.raises(ConfigError, match="set method.rationalize 0"):
        parse_config({**MINIMAL, "grader": {"name": "code"}, "method": {"name": "rise", "rationalize": 1}})
    with pytest.raises(ConfigError, match=r"rollout.templates.hint must hold \{reference\}"):
        parse_config(
            {**MINIMAL, "rollout": {"templates": {"hint": "{message}"}}, "method": {"name": "rise", "rationalize": 1}}
        )
    greedy = {"sampling": {"temperature": 0}}
    one = {"name": "rise", "samples_per_turn": 1}
    assert parse_config({**MINIMAL, "rollout": greedy, "method": {**one, "rationalize": 1}}).method.rationalize == 1
    with pytest.raises(ConfigError, match="method.rationalize > 1 needs rollout.sampling.temperature > 0"):
        parse_config({**MINIMAL, "rollout": greedy, "method": {**one, "rationalize": 2}})


def test_keep_cap_needs_collection_after_success() -> None:
    with pytest.raises(ConfigError, match="set method.stop_at_success false"):
        parse_config({**MINIMAL, "method": {"name": "rise", "keep_ratio": 0.5}})
    config = parse_config({**MINIMAL, "method": {"name": "rise", "keep_ratio": 0.5, "stop_at_success": False}})
    assert config.method.keep_ratio == 0.5


def test_model_must_be_a_checkpoint_a_hub_id_or_the_embedded_one(tmp_path: Path) -> None:
    """resolve_model takes a path that does not exist for a hub id; the config tells the two apart by their form."""
    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    with pytest.raises(
        ConfigError, match=re.escape(f"model.name_or_path: model directory {checkpoint} has no config.json")
    ):
        parse_config({**MINIMAL, "model": {"name_or_path": str(checkpoint)}})
    (checkpoint / "config.json").write_text("{}")
    for name in (str(checkpoint), "meta-llama/Llama-3.1-8B-Instruct", "gpt2"):
        assert parse_config({**MINIMAL, "model": {"name_or_path": name}}).model.name_or_path == name
    for name in (str(tmp_path / "missing"), "./models/missing", "~/missing", "embedded:other", "a/b/c"):
        with pytest.raises(ConfigError, match="no such model directory, and not a hub id"):
            parse_config({**MINIMAL, "model": {"name_or_path": name}})


def test_output_dir_must_be_able_to_hold_runs(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    for output_dir in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises(
            ConfigError, match=re.escape(f"run.output_dir: {tmp_path / 'file'} is a file, not a directory")
        ):
            parse_config({**MINIMAL, "run": {"output_dir": str(output_dir)}})
    new = tmp_path / "new" / "runs"
    assert parse_config({**MINIMAL, "run": {"output_dir": str(new)}}).run.output_dir == new


def test_token_budgets_count_the_history_each_method_sends_uncut() -> None:
    """RISE's turns carry every earlier attempt unless a history window cuts them; ExIt's rollouts cut their
    prompts to max_model_len - max_tokens themselves, so only the answer must fit there; the eval is the same
    trajectory runner for both methods, whose window falls back to the rollout's."""
    long_answers = {"sampling": {"max_tokens": 800}}
    with pytest.raises(ConfigError, match=re.escape("rollout.sampling.max_tokens (800) x 3 (the answer and the 2")):
        parse_config({**MINIMAL, "rollout": long_answers, "evaluation": {"turns": 2}})
    windowed = parse_config({**MINIMAL, "rollout": {**long_answers, "history_window": 1}, "evaluation": {"turns": 2}})
    assert windowed.rollout.sampling.max_tokens == 800  # 2 x 800 < 2048
    exit_run = parse_config({**MINIMAL, "method": {"name": "exit"}, "rollout": long_answers})
    assert exit_run.rollout.sampling.max_tokens == 800
    with pytest.raises(ConfigError, match=re.escape("evaluation.sampling.max_tokens (800) x 3")):
        parse_config({**MINIMAL, "method": {"name": "exit"}, "evaluation": long_answers})
    assert parse_config({**MINIMAL, "evaluation": {**long_answers, "history_window": 1}}).evaluation.turns == 3
    with pytest.raises(ConfigError, match=re.escape("rollout.sampling.max_tokens (2048) must be below model.max")):
        parse_config({**MINIMAL, "model": {"max_model_len": 2048}, "rollout": {"sampling": {"max_tokens": 2048}}})


def test_numbers_refuse_booleans_but_keep_yaml_spellings(tmp_path: Path) -> None:
    """A YAML boolean never becomes a count (pydantic alone reads true as 1); YAML reads 1e-6 as a string, which a
    float must still take, and flags still take YAML's booleans."""
    with pytest.raises(ConfigError, match=re.escape("samples_per_turn: expects a number, got the boolean [true, 4]")):
        parse_config({**MINIMAL, "method": {"name": "rise", "samples_per_turn": [True, 4]}})
    with pytest.raises(ConfigError, match="method.group_size: expects a number, got the boolean false"):
        parse_config({**MINIMAL, "method": {"name": "exit", "group_size": False}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(MINIMAL) + "training: {learning_rate: 1e-6}\nrollout: {serve_merged: yes}\n")
    config = load_config(path)
    assert config.training.learning_rate == 1e-6 and config.rollout.serve_merged is True


def test_grading_workers_are_bounded_by_the_machine() -> None:
    from pipeline.config.settings import max_grading_workers

    most = max_grading_workers()
    assert most >= 8
    assert parse_config({**MINIMAL, "grader": {"workers": most}}).grader.workers == most
    message = rf"grader.workers: {most + 1} is more than this machine can use: at most {most} "
    with pytest.raises(ConfigError, match=message):
        parse_config({**MINIMAL, "grader": {"workers": most + 1}})
