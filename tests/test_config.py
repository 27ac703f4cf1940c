"""Recipes: validation with one-line errors naming the file and the field; CLI exit codes; env switches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deploymtl.cli.main import main
from deploymtl.config import Recipe, load_recipe, parse_recipe
from deploymtl.env import debug_enabled, env_flag
from deploymtl.errors import DeploymtlError
from deploymtl.tasks import TaskSpec

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
BASE = {"name": "r", "family": "adashare", "tasks": [{"name": "seg", "kind": "segmentation", "channels": 5},
                                                     {"name": "depth", "kind": "depth"}]}


def _write(tmp_path: Path, data: dict | str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def _error(path: Path, overrides: dict | None = None) -> str:
    with pytest.raises(DeploymtlError) as exc:
        load_recipe(path, overrides)
    line = exc.value.one_line()
    assert "\n" not in line and exc.value.exit_code == 2
    return line


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load_and_resolve(recipe: Path) -> None:
    rec = load_recipe(recipe)
    assert rec.name and rec.tasks
    resolved = rec.resolved()
    # Every default is filled in, the family's sections included, and the result round-trips.
    assert set(resolved) == set(Recipe.model_fields)
    assert set(resolved["model"]) == set(rec.model_cfg().model_dump())
    assert set(resolved["search"]) == set(rec.search_cfg().model_dump())
    assert parse_recipe(resolved).resolved() == resolved


def test_shipped_recipes_cover_every_family() -> None:
    assert {load_recipe(p).family for p in RECIPES.glob("*.yaml")} >= {"adashare", "gated", "auxnas"}


def test_defaults_and_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE)
    rec = load_recipe(path)
    assert rec.data.source == "synthetic" and rec.train.max_steps is None and rec.seed == 0
    assert rec.tasks[1].out_channels == 1 and rec.tasks[0].out_channels == 5
    rec = load_recipe(path, {"train.max_steps": 3, "data.height": 32, "seed": 7})
    assert rec.train.max_steps == 3 and rec.data.height == 32 and rec.seed == 7
    assert rec.data.width == 64  # untouched fields keep their defaults


@pytest.mark.parametrize("change,field,expected", [
    ({"tasks": [{"name": "seg", "kind": "segmentaton", "channels": 5}]}, "tasks.0.kind",
     "Input should be 'segmentation', 'depth', 'normals' or 'classification'"),
    ({"tasks": [{"kind": "depth"}]}, "tasks.0.name", "Field required"),
    ({"name": None}, "name", "Input should be a valid string"),
    ({"train": {"batch_size": "big"}}, "train.batch_size", "Input should be a valid integer"),
    ({"train": {"lr": -1.0}}, "train.lr", "Input should be greater than 0"),
    ({"train": 5}, "train", "Input should be a valid dictionary"),
    ({"train": {"epochs": 3}}, "train.epochs", "Extra inputs are not permitted"),
    ({"family": "adashar"}, "family", "Input should be 'adashare', 'gated' or 'auxnas'"),
    ({"tasks": [{"name": "a", "kind": "depth"}, {"name": "a", "kind": "normals"}]}, "tasks",
     "task names must be unique, repeated: ['a']"),
    ({"tasks": []}, "tasks", "List should have at least 1 item"),
    ({"tasks": [{"name": "seg", "kind": "segmentation"}]}, "tasks.0",
     "task 'seg': kind segmentation needs channels >= 2"),
    ({"tasks": [{"name": "d", "kind": "depth", "channels": 3}]}, "tasks.0",
     "task 'd': kind depth has 1 channels, got 3"),
    ({"tasks": [{"name": "a b", "kind": "depth"}]}, "tasks.0.name", "String should match pattern"),
    ({"data": {"source": "coco"}}, "data.source", "Input should be 'synthetic' or 'nyuv2'"),
    ({"export": {"precisions": ["fp8"]}}, "export.precisions.0", "Input should be 'fp32', 'fp16', 'int8' or 'auto'"),
    ({"model": {"widht": 8}}, "model.widht", "Extra inputs are not permitted"),
    ({"search": {"policy_epochs": "many"}}, "search.policy_epochs", "Input should be a valid integer"),
    ({"model": 5}, "model", "Input should be a valid dictionary"),
])
def test_bad_recipe_names_file_and_field(tmp_path: Path, change: dict, field: str, expected: str) -> None:
    path = _write(tmp_path, {**BASE, **change})
    line = _error(path)
    assert line.startswith(f"{path}: {field}: {expected}"), line


@pytest.mark.parametrize("family", ["adashare", "gated", "auxnas"])
def test_every_family_search_section_rejects_unknown_keys(tmp_path: Path, family: str) -> None:
    path = _write(tmp_path, {**BASE, "family": family, "search": {"epochz": 3}})
    line = _error(path)
    assert line.startswith(f"{path}: search.epochz: Extra inputs are not permitted"), line


def test_missing_top_level_field(tmp_path: Path) -> None:
    data = dict(BASE)
    del data["family"]
    path = _write(tmp_path, data)
    assert _error(path) == f"{path}: family: Field required"


def test_several_errors_report_the_first_and_a_count(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "train": {"batch_size": 0, "lr": 0}})
    assert _error(path) == f"{path}: train.batch_size: Input should be greater than or equal to 1 (+1 more)"


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: r\nfamily: adashare\ntasks: [\n  {name: seg, kind: depth\n  oops: : :\n")
    line = _error(path)
    assert line.startswith(f"{path}: not valid YAML at line ")
    assert int(line.rsplit("line ", 1)[1].split()[0]) >= 3


@pytest.mark.parametrize("text,got", [("", "NoneType"), ("- a\n- b\n", "list"), ("just text\n", "str")])
def test_recipe_must_be_a_mapping(tmp_path: Path, text: str, got: str) -> None:
    path = _write(tmp_path, text)
    assert _error(path) == f"{path}: a recipe must be a mapping at the top level, got {got}"
    # Overrides on such a file are the same user error, not a crash.
    assert _error(path, {"train.device": "cpu"}).startswith(f"{path}: a recipe must be a mapping")


def test_override_into_a_non_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path, {**BASE, "train": 5})
    assert _error(path, {"train.device": "cpu"}) == f"{path}: train: expected a mapping to set train.device, got int"


def test_missing_recipe_file(tmp_path: Path) -> None:
    line = _error(tmp_path / "nope.yaml")
    assert line.startswith(f"recipe not found: {tmp_path / 'nope.yaml'} (expected a YAML file")


def test_task_spec_is_frozen_and_fills_fixed_channels() -> None:
    t = TaskSpec(name="n", kind="normals")
    assert t.out_channels == 3 and t.dense and t.primary_metric == "mean_angle"
    assert not TaskSpec(name="c", kind="classification", channels=4).dense
    with pytest.raises(Exception, match="frozen"):
        t.name = "other"  # type: ignore[misc]


# -- the CLI: exit 2, one line, no traceback; DEPLOYMTL_DEBUG=1 re-raises ----------------------------------
def test_cli_bad_recipe_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)
    path = _write(tmp_path, {**BASE, "tasks": [{"name": "x", "kind": "optical_flow"}]})
    rc = main(["train", str(path), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip() == (f"error: {path}: tasks.0.kind: Input should be 'segmentation', 'depth', 'normals' "
                           "or 'classification'")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written for a recipe that does not validate


@pytest.mark.parametrize("text", ["name: [unclosed\n", "family: adashare\n"])
def test_cli_bad_yaml_or_missing_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setenv("DEPLOYMTL_DEBUG", "0")  # "0" means off: still the one-line error
    path = _write(tmp_path, text)
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {path}: ") and "Traceback" not in err


def test_debug_switch_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEPLOYMTL_DEBUG", "1")
    path = _write(tmp_path, {**BASE, "family": "nope"})
    with pytest.raises(DeploymtlError, match=r"family: Input should be"):
        main(["train", str(path)])


@pytest.mark.parametrize("value,expected", [
    (None, False), ("", False), ("0", False), (" 0 ", False), ("false", False), ("FALSE", False), ("no", False),
    ("off", False), ("1", True), ("true", True), ("yes", True), ("on", True), ("2", True),
])
def test_env_flag(monkeypatch: pytest.MonkeyPatch, value: str | None, expected: bool) -> None:
    if value is None:
        monkeypatch.delenv("DEPLOYMTL_DEBUG", raising=False)
    else:
        monkeypatch.setenv("DEPLOYMTL_DEBUG", value)
    assert env_flag("DEPLOYMTL_DEBUG") is expected
    assert debug_enabled() is expected


def test_env_flag_default_applies_only_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DEPLOYMTL_X_TEST", raising=False)
    assert env_flag("DEPLOYMTL_X_TEST", default=True) is True
    monkeypatch.setenv("DEPLOYMTL_X_TEST", "0")
    assert env_flag("DEPLOYMTL_X_TEST", default=True) is False


def test_one_pydantic_error_formatter() -> None:
    """`errors.validation_message`: the one line every validated input's error is written as."""
    from pydantic import BaseModel, Field, ValidationError, field_validator

    from deploymtl.errors import validation_message

    class Inner(BaseModel):
        k: int = Field(ge=1)
        name: str

        @field_validator("name")
        @classmethod
        def _plain(cls, v: str) -> str:
            if "/" in v:
                raise ValueError("must not contain '/'")
            return v

    class Outer(BaseModel):
        inner: Inner

    with pytest.raises(ValidationError) as two:
        Outer.model_validate({"inner": {"k": 0, "name": "a/b"}})
    assert validation_message(two.value, "f.yaml", prefix=("model",)) == (
        "f.yaml: model.inner.k: Input should be greater than or equal to 1 (+1 more)")
    with pytest.raises(ValidationError) as one:
        Inner.model_validate({"k": 1, "name": "a/b"})
    assert validation_message(one.value, "plan.json") == "plan.json: name: must not contain '/'"  # no "Value error"
    with pytest.raises(ValidationError) as top:
        Inner.model_validate([1])
    assert validation_message(top.value, "x").startswith("x: (top level): ")
