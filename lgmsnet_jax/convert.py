"""Convert reference PyTorch LGMSNet weights (state_dict as .npz or .pth) into our NNX model, and save/load the result.

    python -m lgmsnet_jax.convert REF.npz --out DIR [--ndim 3 --in_channels 1 --num_classes 14] [--overwrite]

writes an Orbax checkpoint of `nnx.state(model)` to DIR/model and the `build_model` arguments to DIR/model.json.
The key mapping is spec reference_lgmsnet.md §4.1 / Appendix A-B; nothing is skipped silently.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import sys
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from lgmsnet_jax.models import LGMSNet, build_model, count_params, layers
from lgmsnet_jax.models.gms import GMSBlock
from lgmsnet_jax.models.lgmsnet import FusionBlock, UpBlock
from lgmsnet_jax.models.lms import EncoderStage

MODEL_JSON = "model.json"
_COUNTER = "num_batches_tracked"  # PyTorch BN counter, unused with momentum 0.1 (spec §4.1)
_LMS_DW_NAMES = ("local_dwc", "global_dwc_s", "global_dwc_m", "global_dwc_l")

Path = tuple[Any, ...]
Entry = tuple[str, Path, str]  # (reference key, our state path, "conv" | "linear" | "vector")


def _conv(key: str, path: Path, mod: layers.Conv | layers.DepthwiseConv) -> list[Entry]:
    out = [(f"{key}.weight", path + ("kernel",), "conv")]
    if mod.bias is not None:
        out.append((f"{key}.bias", path + ("bias",), "vector"))
    return out


def _norm(key: str, path: Path, mod: nnx.Module) -> list[Entry]:
    if isinstance(mod, layers.InstanceNorm):
        return []  # affine-free, no running stats: no keys in the reference either
    out = [(f"{key}.weight", path + ("scale",), "vector"), (f"{key}.bias", path + ("bias",), "vector")]
    if isinstance(mod, layers.BatchNorm):
        out += [(f"{key}.running_mean", path + ("mean",), "vector"), (f"{key}.running_var", path + ("var",), "vector")]
    return out


def _cna(conv_key: str, norm_key: str, path: Path, mod: layers.ConvNormAct) -> list[Entry]:
    return _conv(conv_key, path + ("conv",), mod.conv) + _norm(norm_key, path + ("norm",), mod.norm)


def _seq(key: str, path: Path, mod: layers.ConvNormAct) -> list[Entry]:
    # nn.Sequential(conv, norm[, act]) in the reference: children "0" and "1".
    return _cna(f"{key}.0", f"{key}.1", path, mod)


def _encoder(key: str, path: Path, mod: EncoderStage, ndim: int) -> list[Entry]:
    lms, p = mod.lms, path + ("lms",)
    if len(lms.dwconvs) != len(_LMS_DW_NAMES):
        raise ValueError(f"the reference LMS block has exactly 4 depthwise kernels; this model has {lms.kernels}, "
                         "which has no reference state_dict layout")
    out = []
    for i, (name, dw) in enumerate(zip(_LMS_DW_NAMES, lms.dwconvs)):
        out += _conv(f"{key}.0.{name}", p + ("dwconvs", i), dw)
    out += _norm(f"{key}.0.norm_act.0", p + ("norm",), lms.norm)
    out += _seq(f"{key}.0.conv_1x1_bn", p + ("squeeze",), lms.squeeze)
    out += _seq(f"{key}.0.conv_nxn_bn", p + ("expand",), lms.expand)
    return out + _seq(f"{key}.1", path + ("transition",), mod.transition)


def _gms(key: str, path: Path, mod: GMSBlock, ndim: int) -> list[Entry]:
    out = []
    for name in ("conv1", "conv2", "conv3", "conv4"):
        out += _seq(f"{key}.{name}", path + (name,), getattr(mod, name))
    if mod.conv_branch is not None:
        b, k, p = mod.conv_branch, f"{key}.conv_spilt", path + ("conv_branch",)
        out += _conv(f"{k}.dwconv{'x'.join('3' * ndim)}", p + ("dwconv",), b.dwconv)
        out += _norm(f"{k}.bn1", p + ("norm1",), b.norm1)
        out += _conv(f"{k}.dwconv{'x'.join('1' * ndim)}", p + ("scale",), b.scale)
        out += _norm(f"{k}.bn2", p + ("norm2",), b.norm2)
    if mod.transformer is not None:
        k, p = f"{key}.transformer.layers.0", path + ("transformer",)
        out += _norm(f"{k}.0.norm", p + ("attn_norm",), mod.transformer.attn_norm)
        out += [(f"{k}.0.to_qkv.weight", p + ("qkv", "kernel"), "linear"),
                (f"{k}.0.to_out.0.weight", p + ("attn_out", "kernel"), "linear"),
                (f"{k}.0.to_out.0.bias", p + ("attn_out", "bias"), "vector")]
        out += _norm(f"{k}.1.net.0", p + ("mlp_norm",), mod.transformer.mlp_norm)
        out += [(f"{k}.1.net.1.weight", p + ("mlp_in", "kernel"), "linear"),
                (f"{k}.1.net.1.bias", p + ("mlp_in", "bias"), "vector"),
                (f"{k}.1.net.4.weight", p + ("mlp_out", "kernel"), "linear"),
                (f"{k}.1.net.4.bias", p + ("mlp_out", "bias"), "vector")]
    return out


def _up(key: str, path: Path, mod: UpBlock) -> list[Entry]:
    return _cna(f"{key}.up.1", f"{key}.up.2", path + ("conv",), mod.conv)


def _fusion(key: str, path: Path, mod: FusionBlock) -> list[Entry]:
    return (_cna(f"{key}.conv.0", f"{key}.conv.2", path + ("conv1",), mod.conv1)
            + _cna(f"{key}.conv.3", f"{key}.conv.5", path + ("conv2",), mod.conv2)
            + _cna(f"{key}.conv.6", f"{key}.conv.8", path + ("conv3",), mod.conv3))


def reference_key_map(model: LGMSNet) -> list[Entry]:
    """Every reference state_dict key (except BN counters) with our state path and its layout kind.

    Args:
      model: an LGMSNet (2D or 3D) with the reference's 4-kernel LMS blocks.

    Returns:
      [(reference key, our nnx state path, "conv" | "linear" | "vector")] in reference order.
    """
    if not isinstance(model, LGMSNet):
        raise TypeError(f"reference_key_map needs an LGMSNet, got {type(model).__name__}")
    n = model.ndim
    out = _seq("stem.conv", ("stem",), model.stem)
    for i in (1, 2, 3):
        out += _encoder(f"encoder{i}", (f"encoder{i}",), getattr(model, f"encoder{i}"), n)
    out += _gms("encoder4.0", ("encoder4",), model.encoder4, n)
    out += _gms("encoder5.0", ("encoder5",), model.encoder5, n)
    out += _up("Up5", ("up5",), model.up5)
    out += _gms("Up_conv5", ("decoder5",), model.decoder5, n)
    out += _up("Up4", ("up4",), model.up4)
    out += _fusion("Up_conv4.0", ("fusion4",), model.fusion4)
    out += _gms("Up_conv4.1", ("decoder4",), model.decoder4, n)
    out += _up("Up3", ("up3",), model.up3)
    out += _fusion("Up_conv3", ("decoder3",), model.decoder3)
    out += _up("Up2", ("up2",), model.up2)
    out += _fusion("Up_conv2", ("decoder2",), model.decoder2)
    return out + _conv("Conv_1x1", ("head",), model.head)


def _to_ours(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":  # (O, I/g, *k) -> (*k, I/g, O)
        return np.transpose(value, tuple(range(2, value.ndim)) + (1, 0))
    if kind == "linear":  # (out, in) -> (in, out)
        return value.T
    return value


def _to_reference(value: np.ndarray, kind: str) -> np.ndarray:
    if kind == "conv":  # (*k, I/g, O) -> (O, I/g, *k)
        return np.transpose(value, (value.ndim - 1, value.ndim - 2) + tuple(range(value.ndim - 2)))
    if kind == "linear":
        return value.T
    return value


def export_state_dict(model: LGMSNet) -> dict[str, np.ndarray]:
    """Our weights in the reference's state_dict layout (PyTorch shapes, float32), without BN counters."""
    flat = {path: var.get_value() for path, var in nnx.to_flat_state(nnx.state(model))}
    return {key: np.ascontiguousarray(_to_reference(np.asarray(flat[path]), kind))
            for key, path, kind in reference_key_map(model)}


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Read a reference state_dict from .npz (keys with or without a `state.` prefix) or .pth/.pt (needs torch)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.files)
            if any(k.startswith("state.") for k in keys):  # a parity fixture: ignore inputs/outputs/meta
                return {k[len("state."):]: np.asarray(data[k]) for k in keys if k.startswith("state.")}
            return {k: np.asarray(data[k]) for k in keys}
    if path.suffix in (".pth", ".pt"):
        try:
            import torch  # noqa: PLC0415  optional dependency, only for .pth files
        except ImportError as e:
            raise ImportError(f"reading {path} needs PyTorch (not installed); export the state_dict to .npz with "
                              "numpy instead: np.savez(out, **{k: v.numpy() for k, v in sd.items()})") from e
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(hasattr(v, "numpy") for v in obj.values()):
            raise ValueError(f"{path} does not hold a state_dict (a mapping of name -> tensor)")
        return {k: v.detach().cpu().numpy() for k, v in obj.items()}
    raise ValueError(f"unsupported checkpoint type {path.suffix!r} for {path}; expected .npz, .pth or .pt")


def _check_io_channels(sd: Mapping[str, np.ndarray], ndim: int, in_channels: int, num_classes: int, src: str):
    stem, head = sd.get("stem.conv.0.weight"), sd.get("Conv_1x1.weight")
    if stem is None or head is None:
        return  # reported as missing keys below
    problems = []
    if stem.ndim != ndim + 2:
        problems.append(f"ndim={stem.ndim - 2} (stem.conv.0.weight {stem.shape}), not ndim={ndim}")
    if stem.shape[1] != in_channels:
        problems.append(f"in_channels={stem.shape[1]} (stem.conv.0.weight {stem.shape}), not {in_channels}")
    if head.shape[0] != num_classes:
        problems.append(f"num_classes={head.shape[0]} (Conv_1x1.weight {head.shape}), not {num_classes}")
    if problems:
        raise ValueError(f"{src} has " + "; ".join(problems) + ": pass the file's values")


def load_state_dict(model: LGMSNet, sd: Mapping[str, np.ndarray], *, source: str = "state_dict") -> LGMSNet:
    """Copy a reference state_dict into `model` in place (spec §4.1); every key must fit exactly.

    Args:
      model: LGMSNet whose configuration matches the file.
      sd: reference key -> array in PyTorch layout; `*.num_batches_tracked` counters are ignored.
      source: name used in error messages.

    Returns:
      `model`, updated.

    Raises:
      ValueError naming every missing key, unexpected key and key with a wrong shape.
    """
    _check_io_channels(sd, model.ndim, model.in_channels, model.num_classes, source)
    entries = reference_key_map(model)
    expected = {key for key, _, _ in entries}
    bn_prefixes = {key.rsplit(".", 1)[0] for key in expected if key.endswith(".running_mean")}
    given = set(sd)
    missing = sorted(expected - given)
    unexpected = sorted(k for k in given - expected
                        if not (k.endswith("." + _COUNTER) and k[:-len(_COUNTER) - 1] in bn_prefixes))
    flat = dict(nnx.to_flat_state(nnx.state(model)))
    wrong = []
    updates = []
    for key, path, kind in entries:
        if key not in sd:
            continue
        var = flat[path]
        target = var.get_value()
        value = _to_ours(np.asarray(sd[key]), kind)
        if value.shape != tuple(target.shape):
            want = _to_reference(np.empty(target.shape, np.int8), kind).shape
            wrong.append(f"{key}: file {tuple(np.shape(sd[key]))}, model expects {want}")
            continue
        if not np.issubdtype(value.dtype, np.floating):
            wrong.append(f"{key}: dtype {value.dtype}, expected floating point")
            continue
        updates.append((path, var.replace(jnp.asarray(value, dtype=target.dtype))))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys ({len(missing)}): {missing}")
        if unexpected:
            parts.append(f"unexpected keys ({len(unexpected)}): {unexpected}")
        if wrong:
            parts.append(f"wrong shapes ({len(wrong)}): {wrong}")
        raise ValueError(f"{source} does not fit the model: " + "; ".join(parts))
    nnx.update(model, nnx.from_flat_state(updates))
    return model


def load_torch_checkpoint(path: str | pathlib.Path, ndim: int = 2, in_channels: int = 3, num_classes: int = 1,
                          **model_kwargs) -> LGMSNet:
    """Build an LGMSNet and fill it from a reference checkpoint (.npz fixture/state_dict or .pth).

    Args:
      path: .npz (keys with or without `state.`) or .pth/.pt (needs torch).
      ndim, in_channels, num_classes: must agree with the file (the error says what the file has).
      **model_kwargs: further LGMSNet keywords (dims, gms_splits, ...), must agree with the file's shapes.

    Returns:
      The model (train mode, as a PyTorch module after construction).
    """
    sd = read_state_dict(path)
    model = build_model("lgmsnet", ndim=ndim, in_channels=in_channels, num_classes=num_classes, **model_kwargs)
    return load_state_dict(model, sd, source=str(path))


def _jsonable(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in kwargs.items():
        if k == "dtype":
            v = jnp.dtype(v).name
        elif isinstance(v, tuple):
            v = json.loads(json.dumps(v))
        out[k] = v
    json.dumps(out)  # fail here, not halfway through a save
    return out


# model.json keys that are not `build_model` keywords (the export CLI adds the last two).
META_KEYS = ("name", "param_count", "run_config", "provenance")


def save_converted(model: nnx.Module, out_dir: str | pathlib.Path, build_kwargs: Mapping[str, Any],
                   extra: Mapping[str, Any] | None = None) -> pathlib.Path:
    """Write an Orbax checkpoint of `nnx.state(model)` to out_dir/model and the build arguments to out_dir/model.json.

    Args:
      model: the converted model.
      out_dir: new directory (its `model` entry must not exist).
      build_kwargs: `build_model` keywords that rebuild `model` (name defaults to "lgmsnet").
      extra: more JSON-able model.json entries, keys from META_KEYS ("run_config", "provenance").

    Returns:
      out_dir as a Path.
    """
    import orbax.checkpoint as ocp  # noqa: PLC0415  heavy import, only when saving

    out_dir = pathlib.Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {"name": "lgmsnet", **_jsonable(build_kwargs)}
    meta["param_count"] = count_params(model)
    unknown = sorted(set(extra or {}) - set(META_KEYS))
    if unknown:
        raise ValueError(f"extra model.json keys {unknown} are not among {META_KEYS}")
    meta |= {k: json.loads(json.dumps(v)) for k, v in (extra or {}).items()}
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(out_dir / "model", nnx.state(model))
    ckptr.wait_until_finished()
    (out_dir / MODEL_JSON).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out_dir


def _build_from_json(meta: Mapping[str, Any]) -> nnx.Module:
    # JSON lists stand for tuples; LGMSNet normalises sequences itself.
    kwargs = {k: v for k, v in meta.items() if k not in META_KEYS}
    if isinstance(kwargs.get("dtype"), str):
        kwargs["dtype"] = jnp.dtype(kwargs["dtype"])
    return build_model(meta.get("name", "lgmsnet"), **kwargs)


def load_converted(out_dir: str | pathlib.Path) -> nnx.Module:
    """Rebuild the model from out_dir/model.json and restore its state from the Orbax checkpoint out_dir/model."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    out_dir = pathlib.Path(out_dir).absolute()
    meta_path = out_dir / MODEL_JSON
    if not meta_path.is_file() or not (out_dir / "model").is_dir():
        raise FileNotFoundError(f"{out_dir} is not a converted model directory (needs {MODEL_JSON} and model/)")
    meta = json.loads(meta_path.read_text())
    model = _build_from_json(meta)
    abstract = nnx.state(model)
    restored = ocp.StandardCheckpointer().restore(out_dir / "model", abstract)
    nnx.update(model, restored)
    if "param_count" in meta and count_params(model) != meta["param_count"]:
        raise ValueError(f"{meta_path}: rebuilt model has {count_params(model)} params, file says "
                         f"{meta['param_count']}")
    return model


def _parse_set(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v.replace("(", "[").replace(")", "]"))
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m lgmsnet_jax.convert", description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="reference state_dict: .npz (optionally state.-prefixed) or .pth/.pt")
    p.add_argument("--out", required=True, help="output directory (Orbax checkpoint + model.json)")
    p.add_argument("--ndim", type=int, default=2, choices=(2, 3))
    p.add_argument("--in_channels", type=int, default=None, help="default 3 (2D) / 1 (3D)")
    p.add_argument("--num_classes", type=int, default=None, help="default 1 (2D) / 14 (3D)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="extra LGMSNet keyword, e.g. --set dims=[16,32,64,128,128]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    args = p.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.exists():
        if not args.overwrite:
            print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
            return 2
        shutil.rmtree(out)
    kwargs = dict(ndim=args.ndim,
                  in_channels=args.in_channels if args.in_channels is not None else (3 if args.ndim == 2 else 1),
                  num_classes=args.num_classes if args.num_classes is not None else (1 if args.ndim == 2 else 14),
                  **_parse_set(args.set))
    model = load_torch_checkpoint(args.checkpoint, **kwargs)
    save_converted(model, out, kwargs)
    print(f"converted {args.checkpoint} -> {out} ({count_params(model):,} params, build_model kwargs {kwargs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
