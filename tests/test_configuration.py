"""ConfigMixin: recording, JSON, diffusers' default-value rule, overrides, and checked values."""

import json
import logging
import math

import pytest

from fastdiff.configuration import ConfigError, ConfigMixin, FrozenDict, register_to_config


class Alpha(ConfigMixin):
    config_name = "alpha_config.json"

    @register_to_config
    def __init__(self, steps: int = 1000, spacing: str = "leading", scale: float = 1.0,
                 sizes: tuple[int, ...] = (1, 2), floor: float = -math.inf, note: str | None = None):
        self.ready = True


class Beta(ConfigMixin):
    config_name = "alpha_config.json"

    @register_to_config
    def __init__(self, steps: int = 1000, spacing: str = "linspace", churn: float = 0.0):
        pass


def test_register_records_every_argument_and_the_defaults_used():
    a = Alpha(steps=10, spacing="trailing")
    assert a.config.steps == 10 and a.config["spacing"] == "trailing" and a.config.scale == 1.0
    assert set(a.config["_use_default_values"]) == {"scale", "sizes", "floor", "note"}
    assert a.ready


def test_positional_arguments_are_recorded():
    assert Alpha(7, "linspace").config.spacing == "linspace"


def test_defaults_are_not_carried_to_another_class():
    # diffusers' rule: a key that came from a default is dropped, so Beta uses its own default
    a = Alpha(steps=10)
    b = Beta.from_config(a.config)
    assert b.config.steps == 10
    assert b.config.spacing == "linspace"
    # but an explicitly passed value is carried over
    assert Beta.from_config(Alpha(spacing="trailing").config).config.spacing == "trailing"


def test_overrides_win_and_unknown_keys_warn(caplog):
    with caplog.at_level(logging.WARNING):
        b = Beta.from_config({"steps": 5, "mystery": 1}, churn=0.5)
    assert b.config.steps == 5 and b.config.churn == 0.5
    assert "mystery" in caplog.text and "will be ignored" in caplog.text


def test_return_unused_kwargs():
    _, unused = Beta.from_config({"steps": 5}, return_unused_kwargs=True, other=3)
    assert unused == {"other": 3}


def test_json_round_trip(tmp_path):
    a = Alpha(steps=10, sizes=(3, 4))
    a.save_config(tmp_path)
    data = json.loads((tmp_path / "alpha_config.json").read_text())
    assert data["_class_name"] == "Alpha" and data["_diffusers_version"]
    assert list(data) == sorted(data), "keys are written sorted"
    assert "_use_default_values" not in data
    assert data["sizes"] == [3, 4]
    loaded = Alpha.from_config(Alpha.load_config(tmp_path))
    assert loaded.to_json_string() == a.to_json_string()


def test_frozen_dict_refuses_edits():
    d = FrozenDict({"a": 1})
    assert d.a == 1
    for edit in (lambda: d.pop("a"), lambda: d.update(b=2), lambda: d.setdefault("c", 3),
                 lambda: d.__delitem__("a"), lambda: d.__setitem__("a", 2)):
        with pytest.raises(TypeError):
            edit()


def test_direct_config_attribute_access_warns():
    with pytest.warns(FutureWarning, match="Accessing config attribute `steps`"):
        assert Alpha(steps=3).steps == 3


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("steps", "many", "'steps' has the value 'many' of type str; expected int"),
        ("steps", 2.5, "expected int"),
        ("spacing", 3, "'spacing'"),
        ("scale", float("nan"), "'scale' has the non-finite value"),
        ("scale", float("inf"), "non-finite"),
        ("sizes", 4, "'sizes'"),
        ("sizes", [1, "x"], "'sizes'"),
        ("note", 5, "'note'"),
    ],
)
def test_wrong_types_and_non_finite_numbers_name_file_and_key(tmp_path, key, value, match):
    path = tmp_path / "alpha_config.json"
    path.write_text(json.dumps({"_class_name": "Alpha", key: value}))
    with pytest.raises(ConfigError, match=match) as info:
        Alpha.from_config(Alpha.load_config(tmp_path))
    assert str(path) in str(info.value)


def test_non_finite_default_may_stay_non_finite(tmp_path):
    (tmp_path / "alpha_config.json").write_text('{"floor": -Infinity, "scale": 2}')
    assert Alpha.from_config(Alpha.load_config(tmp_path)).config.floor == -math.inf


def test_malformed_json_names_the_file(tmp_path):
    (tmp_path / "alpha_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a valid JSON file"):
        Alpha.load_config(tmp_path)
    (tmp_path / "alpha_config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        Alpha.load_config(tmp_path)


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(OSError, match="no file named alpha_config.json"):
        Alpha.load_config(tmp_path)
