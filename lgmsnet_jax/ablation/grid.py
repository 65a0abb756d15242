"""Ablation grids: structural settings (one compile each) × numeric members (one vmapped ensemble per setting).

An ablation config (configs/ablations/*.py) names a base training config, overrides for the whole grid, a
`settings` table of structural overrides and a `members` table of numeric axes whose product is the ensemble.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

# Numeric axes an ensemble can vary per member: the seed (init, data order, step keys), the peak learning rate and
# the two loss weights. Everything else changes shapes or code and belongs in `settings`.
NUMERIC_AXES = ("seed", "optim.lr", "loss.bce_weight", "loss.dice_weight")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One structural point of the grid (a separate compile).

    Attributes:
      name: folder-safe name, e.g. "k3579".
      overrides: dotted config key -> value applied on top of the base config.
    """

    name: str
    overrides: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Member:
    """One numeric point (an ensemble member), e.g. values {"seed": 41, "optim.lr": 0.02}.

    Attributes:
      name: folder-safe name built from the values, e.g. "seed=41" or "optim.lr=0.02,seed=41".
      values: dotted key (one of NUMERIC_AXES) -> value.
    """

    name: str
    values: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Grid:
    """The parsed ablation grid.

    Attributes:
      settings: structural settings in run/table order.
      members: numeric members (product of the axes), the same for every setting.
      axes: numeric axis names, in member-name order.
    """

    settings: tuple[Setting, ...]
    members: tuple[Member, ...]
    axes: tuple[str, ...]


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> {"a.b.c": leaf}; ConfigDicts count as mappings, tuples/lists as leaves."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, (Mapping, ml_collections.ConfigDict)):
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any], *,
                    where: str) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with dotted keys replaced; an unknown key raises naming `where`.

    Keys must already exist (as with a locked config on the command line), except below `model.`: those are
    constructor keywords of the model, checked by its constructor. A new `model_name` clears `model` first,
    because one architecture's keywords mean nothing to another.

    Args:
      config: base config.
      overrides: dotted key -> new value.
      where: what the overrides come from, for error messages ("settings.k3579").

    Returns:
      A new, unlocked ConfigDict.
    """
    out = ml_collections.ConfigDict(config.to_dict())
    overrides = dict(overrides)
    if "model_name" in overrides and overrides["model_name"] != out.get("model_name"):
        out.model_name = overrides.pop("model_name")
        out.model = ml_collections.ConfigDict()
    for key, value in overrides.items():
        node, parts = out, key.split(".")
        for i, part in enumerate(parts):
            is_leaf = i == len(parts) - 1
            if isinstance(node, ml_collections.ConfigDict) and (part in node or (is_leaf and parts[0] == "model")):
                if not is_leaf:
                    node = node[part]
                continue
            known = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise KeyError(f"{where}: config has no key {'.'.join(parts[:i + 1])!r} (override {key!r}); "
                           f"known keys there: {known}")
        value = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        if parts[-1] in node:
            node[parts[-1]] = value
        else:
            setattr(node, parts[-1], value)
    return out


def load_config_file(spec: str, root: pathlib.Path | None = None) -> ml_collections.ConfigDict:
    """Loads `path.py[:arg]` and calls its `get_config(arg)` (as absl's config_flags does).

    Args:
      spec: config file path, optionally followed by ":arg".
      root: folder that relative paths start from (default: current directory).

    Returns:
      The ConfigDict.
    """
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_absolute() and root is not None:
        path = root / path
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} (from {spec!r}) does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_ablation_cfg_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path} has no get_config()")
    return module.get_config(arg) if arg else module.get_config()


def _safe(text: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.=,+-]+", text):
        raise ValueError(f"name {text!r} must only use letters, digits and _ . = , + - (it becomes a folder name)")
    return text


def member_name(values: Mapping[str, Any]) -> str:
    """Folder-safe member name from its numeric values, axes sorted: "loss.bce_weight=0.5,seed=41"."""
    return _safe(",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(values.items())))


def parse_grid(config: ml_collections.ConfigDict) -> Grid:
    """Reads `settings`, `order` (optional) and `members` of an ablation config.

    Args:
      config: ablation config with `settings` (name -> nested overrides, may be empty for the base setting) and
        `members` (nested numeric axis -> sequence of values).

    Returns:
      The Grid; members are the Cartesian product of the numeric axes.
    """
    settings_cfg = config.settings
    names = list(config.get("order") or sorted(settings_cfg.keys()))
    missing = sorted(set(settings_cfg.keys()) - set(names))
    unknown = [n for n in names if n not in settings_cfg]
    if missing or unknown or len(set(names)) != len(names):
        raise ValueError(f"ablation config: `order` {names} must list every setting of `settings` once "
                         f"(missing {missing}, unknown {unknown})")
    settings = []
    for name in names:
        overrides = flatten(settings_cfg[name])
        bad = sorted(k for k in overrides if k in NUMERIC_AXES)
        if bad:
            raise ValueError(f"settings.{name}: {bad} are numeric axes; list them under `members`")
        settings.append(Setting(_safe(name), overrides))
    axes_values = flatten(config.members)
    for axis, values in axes_values.items():
        if axis not in NUMERIC_AXES:
            raise ValueError(f"members.{axis}: not a numeric axis (known: {NUMERIC_AXES}); structural changes go in "
                             f"`settings` (one compile each)")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"members.{axis}: expected a non-empty tuple of values, got {values!r}")
    axes = tuple(sorted(axes_values))
    members = []
    for combo in itertools.product(*(axes_values[a] for a in axes)):
        values = dict(zip(axes, combo))
        members.append(Member(member_name(values), values))
    if len({m.name for m in members}) != len(members):
        raise ValueError(f"members: duplicate values give duplicate members {[m.name for m in members]}")
    return Grid(tuple(settings), tuple(members), axes)
