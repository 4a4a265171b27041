"""Recipes: YAML + overrides into typed dataclasses; every mistake is one line naming file/override and key."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional

import pytest
import yaml

from data_prep.errors import UserError
from trainer.config import ConfigError, apply_overrides, config_to_dict, load_config, save_config

VALIDATED: list[str] = []  # the order validate() ran in


@dataclass(frozen=True)
class LoRA:
    r: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q_proj", "v_proj")


@dataclass(frozen=True)
class Model:
    path: str
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    lora: LoRA | None = None
    dtype: Optional[str] = None


@dataclass(frozen=True)
class Data:
    path: str = "data/"
    weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)


@dataclass(frozen=True)
class Train:
    output_dir: str = "out"
    max_steps: int = 1000
    warmup_steps: int = 0
    seed: int = 0
    resume: bool = False
    tags: list[str] = field(default_factory=list)

    def validate(self) -> None:
        VALIDATED.append("train")
        if self.warmup_steps > self.max_steps:
            raise ConfigError(f"train.warmup_steps ({self.warmup_steps}) exceeds train.max_steps ({self.max_steps})")


@dataclass(frozen=True)
class Recipe:
    ALIASES: ClassVar[dict[str, str]] = {
        "model": "model.path", "data": "data.path", "output_dir": "train.output_dir",
        "max_steps": "train.max_steps", "seed": "train.seed", "resume": "train.resume",
    }
    model: Model
    data: Data = field(default_factory=Data)
    optim: Optim = field(default_factory=Optim)
    train: Train = field(default_factory=Train)

    def validate(self) -> None:
        VALIDATED.append("recipe")


@dataclass  # not frozen, no sections: the loader is generic
class Plain:
    name: str = "x"
    sizes: list[int] = field(default_factory=lambda: [1, 2])


def recipe(tmp_path, text: str, name: str = "recipe.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_defaults(tmp_path):
    cfg = load_config(Recipe, recipe(tmp_path, "model: {path: m}\n"))
    assert cfg == Recipe(model=Model(path="m"))
    assert load_config(Recipe, None, ["model.path=m"]) == cfg
    assert load_config(Plain, recipe(tmp_path, "")) == Plain()


def test_yaml_then_overrides_in_order(tmp_path):
    path = recipe(tmp_path, "model:\n  path: m\noptim:\n  lr: 0.002\ntrain:\n  max_steps: 50\n  seed: 3\n")
    cfg = load_config(Recipe, path, ["optim.lr=1e-4", "train.max_steps=10", "train.max_steps=20"])
    assert cfg.optim.lr == 1e-4 and cfg.train.max_steps == 20  # override beats file, later beats earlier
    assert cfg.train.seed == 3 and cfg.model.path == "m"  # untouched keys keep the file's value


def test_aliases():
    cfg = load_config(Recipe, None, ["model=m", "data=d/", "output_dir=o", "max_steps=5", "seed=7", "resume=true"])
    assert (cfg.model.path, cfg.data.path) == ("m", "d/")
    assert (cfg.train.output_dir, cfg.train.max_steps, cfg.train.seed, cfg.train.resume) == ("o", 5, 7, True)


def test_float_from_yaml_11_string(tmp_path):
    assert yaml.safe_load("lr: 1e-4") == {"lr": "1e-4"}  # why the loader must accept it
    cfg = load_config(Recipe, recipe(tmp_path, "model: {path: m}\noptim: {lr: 1e-4, betas: [1, 2e-1]}\n"))
    assert cfg.optim.lr == 1e-4 and cfg.optim.betas == (1.0, 0.2)
    assert isinstance(cfg.optim.lr, float) and all(isinstance(b, float) for b in cfg.optim.betas)


def test_containers_optional_literal_and_empty_values(tmp_path):
    path = recipe(tmp_path, "model: {path: m, lora: {r: 4}, dtype: bf16}\ndata: {weights: {a: 1, b: 0.5}}\n")
    cfg = load_config(Recipe, path, [
        "model.lora.targets=[q_proj,k_proj]", "model.attn_implementation=eager", "train.tags=[a, b]",
        "model.dtype=null", "data.path=",
    ])
    assert cfg.model.lora == LoRA(r=4, targets=("q_proj", "k_proj"))
    assert cfg.model.attn_implementation == "eager" and cfg.model.dtype is None
    assert cfg.data.weights == {"a": 1.0, "b": 0.5} and cfg.data.path == ""
    assert cfg.train.tags == ["a", "b"]
    # An override into a section the file leaves out (or null) starts it from its defaults.
    assert load_config(Recipe, None, ["model=m", "model.lora.r=2"]).model.lora == LoRA(r=2)
    assert load_config(Recipe, None, ["model=m", "model.lora=null"]).model.lora is None


def test_apply_overrides_reports_origins():
    raw = {"train": {"seed": 1}}
    origins = apply_overrides(raw, ["max_steps=5", "model.lora={r: 2}"], {"max_steps": "train.max_steps"})
    assert raw == {"train": {"seed": 1, "max_steps": 5}, "model": {"lora": {"r": 2}}}
    assert origins == {"train.max_steps": "max_steps=5", "model.lora": "model.lora={r: 2}"}


def error(tmp_path, text, overrides=()) -> str:
    path = recipe(tmp_path, text) if text is not None else None
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path, overrides)
    message = str(info.value)
    assert isinstance(info.value, UserError) and info.value.exit_code == 2
    assert "\n" not in message
    return message


@pytest.mark.parametrize("text, overrides, expected", [
    ("model: {path: m}\ntrain: {max_stepz: 5}\n", [],
     "recipe.yaml: unknown key 'train.max_stepz' (did you mean 'train.max_steps'?)"),
    ("model: {path: m}\n", ["train.max_stepz=5"],
     "override train.max_stepz=5: unknown key 'train.max_stepz' (did you mean 'train.max_steps'?)"),
    ("model: {path: m}\nmodle: {}\n", [], "recipe.yaml: unknown key 'modle' (did you mean 'model'?)"),
    ("model: {path: m}\n", ["train.max_steps=abc"], "override train.max_steps=abc: expected int, got 'abc'"),
    ("model: {path: m}\n", ["max_steps=abc"], "override max_steps=abc: train.max_steps: expected int, got 'abc'"),
    ("model: {path: m}\ntrain: {max_steps: true}\n", [], "recipe.yaml: train.max_steps: expected int, got True"),
    ("model: {path: m}\ntrain: {max_steps: 1000.0}\n", [], "recipe.yaml: train.max_steps: expected int, got 1000.0"),
    ("model: {path: m}\noptim: {lr: fast}\n", [], "recipe.yaml: optim.lr: expected float, got 'fast'"),
    ("model: {path: m}\ntrain: {resume: 'true'}\n", [], "recipe.yaml: train.resume: expected bool, got 'true'"),
    ("model: {path: m, attn_implementation: flash}\n", [],
     "recipe.yaml: model.attn_implementation: expected one of 'sdpa', 'eager', 'flash_attention_2', got 'flash'"),
    ("model: {path: m}\n", ["model.lora.targets=q_proj"], "override model.lora.targets=q_proj: expected a list, got 'q_proj'"),
    ("model: {path: m, lora: {targets: [q, 3]}}\n", [], "recipe.yaml: model.lora.targets[1]: expected str, got 3"),
    ("model: {path: m}\noptim: {betas: [0.9]}\n", [], "recipe.yaml: optim.betas: expected a list of 2 items, got 1"),
    ("model: {path: m}\ndata: {weights: {a: x}}\n", [], "recipe.yaml: data.weights.a: expected float, got 'x'"),
    ("model: {path: m}\ndata: [a, b]\n", [], "recipe.yaml: data: expected a section (a mapping), got ['a', 'b']"),
    ("model: {path: m}\ntrain: 5\n", [], "recipe.yaml: train: expected a section (a mapping), got 5"),
    ("model: {path: m}\n", ["model.lora={r: 2, alpah: 3}"],
     "override model.lora={r: 2, alpah: 3}: unknown key 'model.lora.alpah' (did you mean 'model.lora.alpha'?)"),
    ("train: {seed: 1}\n", [], "recipe.yaml: missing required key 'model.path'"),
    ("model: {}\n", [], "recipe.yaml: missing required key 'model.path'"),
    (None, ["seed=1"], "<no recipe>: missing required key 'model.path'"),
    ("- a\n- b\n", [], "recipe.yaml: expected a mapping of sections at the top level, got list"),
    ("model: {path: m}\n", ["train.max_steps"], "override train.max_steps: expected dotted.key=value"),
    ("model: {path: m}\n", ["=5"], "override =5: expected dotted.key=value"),
])
def test_errors_are_one_line_with_file_and_key(tmp_path, text, overrides, expected):
    assert expected in error(tmp_path, text, overrides)


def test_invalid_yaml_names_the_line(tmp_path):
    message = error(tmp_path, "model:\n  path: m\ntrain: [unclosed\n  seed: 1\n")
    assert "recipe.yaml:" in message and "invalid YAML" in message
    line = int(message.split("recipe.yaml:")[1].split(":")[0])
    assert line in (3, 4, 5)
    assert error(tmp_path, "model:\n  path: m\n\tbad: tab\n").split("recipe.yaml:")[1].startswith("3: invalid YAML")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such recipe file$"):
        load_config(Recipe, str(tmp_path / "nope.yaml"))


def test_round_trip(tmp_path):
    cfg = load_config(Recipe, None, [
        "model=m", "model.lora.targets=[a,b]", "model.lora.alpha=1e-4", "data.weights={x: 2}",
        "train.tags=[t]", "data.path=",
    ])
    out = tmp_path / "run" / "recipe.yaml"
    save_config(cfg, out)
    text = out.read_text()
    assert "!!python" not in text and text.startswith("model:")  # plain YAML, in field order
    assert load_config(Recipe, str(out)) == cfg
    assert config_to_dict(cfg)["model"]["lora"]["targets"] == ["a", "b"]
    assert os.listdir(out.parent) == ["recipe.yaml"]  # no temp file left behind
    plain = Plain(name="y", sizes=[3])
    save_config(plain, out)  # replaces the file
    assert load_config(Plain, str(out)) == plain


def test_validate_runs_innermost_first_and_its_error_propagates(tmp_path):
    VALIDATED.clear()
    load_config(Recipe, None, ["model=m"])
    assert VALIDATED == ["train", "recipe"]
    path = recipe(tmp_path, "model: {path: m}\ntrain: {warmup_steps: 50}\n")
    with pytest.raises(ConfigError) as info:
        load_config(Recipe, path, ["max_steps=10"])
    assert str(info.value) == (
        f"{path} with overrides: train.warmup_steps (50) exceeds train.max_steps (10)"
    )
