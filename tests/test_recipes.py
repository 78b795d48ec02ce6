"""Recipes as people write them: the enum values YAML 1.1 would read as booleans (`off`, `no`, `on`, `yes`), in a
recipe file and in `--set` overrides, reach the settings as written; boolean settings keep taking YAML's booleans.

`load_recipe` is what `hubflow run RECIPE --set ...` validates with, before anything runs.
"""

from __future__ import annotations

import pytest

from hubflow.config import GateMode, Precision, load_recipe

BASE = """
model: {repo_id: org/base}
data: {source: org/data}
"""


def _recipe(tmp_path, text: str):
    path = tmp_path / "recipe.yaml"
    path.write_text(BASE + text)
    return path


def test_enum_words_yaml_1_1_reads_as_booleans_are_kept_in_a_recipe_file(tmp_path):
    config = load_recipe(_recipe(tmp_path, """
train:
  precision: no
publish:
  enabled: true
  gate:
    mode: off
"""))
    assert config.train.precision is Precision.fp32 and config.publish.gate.mode is GateMode.off


@pytest.mark.parametrize("override, setting, value", [
    ("publish.gate.mode=off", "publish.gate.mode", GateMode.off),
    ("train.precision=no", "train.precision", Precision.fp32),
    ("data.config_name=no", "data.config_name", "no"),  # a string setting gets the word, not False
], ids=["gate mode off", "precision no", "a string setting"])
def test_enum_words_are_kept_in_overrides(tmp_path, override, setting, value):
    config = load_recipe(_recipe(tmp_path, "publish: {gate: {mode: threshold}}\n"), [override])
    section, *rest = setting.split(".")
    node = getattr(config, section)
    for part in rest:
        node = getattr(node, part)
    assert node == value


@pytest.mark.parametrize("words", [("true", "false"), ("yes", "no"), ("on", "off"), ("True", "FALSE")])
def test_boolean_settings_still_take_yaml_booleans(tmp_path, words):
    yes, no = words
    config = load_recipe(_recipe(tmp_path, f"publish: {{enabled: {yes}, private: {no}}}\n"))
    assert config.publish.enabled is True and config.publish.private is False
    again = load_recipe(_recipe(tmp_path, ""), [f"publish.enabled={yes}", f"space.enabled={yes}",
                                                f"publish.private={no}"])
    assert again.publish.enabled is True and again.space.enabled is True and again.publish.private is False


def test_a_boolean_where_an_enum_belongs_is_still_refused(tmp_path):
    from pydantic import ValidationError

    from hubflow.config import one_line

    with pytest.raises(ValidationError) as err:
        load_recipe(_recipe(tmp_path, "publish: {gate: {mode: false}}\n"))
    assert one_line(err.value).startswith("publish.gate.mode: Input should be 'off', 'threshold' or 'champion'")
