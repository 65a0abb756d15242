"""Ablation grids: ensemble == separate runs, per-member lr / loss weights, resumable grid, table and plot."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from lgmsnet_jax.ablation import ensemble, grid as grid_lib, report, runner
from lgmsnet_jax.models import build_model, layers, register_model, registered_models
from lgmsnet_jax import xla_options
from lgmsnet_jax.training import loop, losses, optim, tasks
from lgmsnet_jax.training import step as step_lib
from lgmsnet_jax.training.state import create_train_state

TEST_MODEL = "ablation_test_net"


class _TinySeg(nnx.Module):
    """conv-BN-ReLU, pool, conv-BN-ReLU, bilinear up, 1×1 head: compiles in a second (the machinery is the test)."""

    def __init__(self, in_channels: int, num_classes: int, *, width: int, rngs: nnx.Rngs):
        kw = dict(use_bias=True, norm="batch", act="relu", rngs=rngs)
        self.conv1 = layers.ConvNormAct(2, in_channels, width, 3, **kw)
        self.conv2 = layers.ConvNormAct(2, width, width, 3, **kw)
        self.head = layers.Conv(2, width, num_classes, 1, use_bias=True, rngs=rngs)

    def __call__(self, x, train=None):
        y = self.conv1(x, train)
        y = nnx.max_pool(y, (2, 2), strides=(2, 2), padding="VALID")
        return self.head(layers.upsample2x(self.conv2(y, train)))


@register_model(TEST_MODEL)
def _tiny(ndim, in_channels, num_classes, rngs, width=4):
    return _TinySeg(in_channels, num_classes, width=width, rngs=rngs)


def _ablation(settings: dict, members: dict, epochs: int = 1) -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.base_config = "configs/demo.py"
    c.base_overrides = dict(model_name=TEST_MODEL, model=dict(width=4), epochs=epochs, batch_size=4, eval_every=1,
                            log_every=1, source_kwargs=dict(num_examples=8), image_size=(32, 32))
    c.settings = settings
    c.members = members
    c.title = "test"
    return c


def test_parse_grid_takes_the_product_of_numeric_axes_and_rejects_misplaced_keys():
    g = grid_lib.parse_grid(_ablation({"b": {"model": {"width": 8}}, "a": {}},
                                      {"seed": (1, 2), "optim": {"lr": (0.1, 0.2)}}))
    assert [s.name for s in g.settings] == ["a", "b"] and g.settings[1].overrides == {"model.width": 8}
    assert [m.name for m in g.members] == ["optim.lr=0.1,seed=1", "optim.lr=0.1,seed=2", "optim.lr=0.2,seed=1",
                                           "optim.lr=0.2,seed=2"]
    with pytest.raises(ValueError, match="numeric axes"):
        grid_lib.parse_grid(_ablation({"a": {"seed": 3}}, {"seed": (1,)}))
    with pytest.raises(ValueError, match="members.model.width: not a numeric axis"):
        grid_lib.parse_grid(_ablation({"a": {}}, {"model": {"width": (4, 8)}}))
    base = runner.resolve_base(_ablation({"a": {}}, {"seed": (1,)}))
    with pytest.raises(KeyError, match="settings.a: config has no key 'optim.lrr'"):
        grid_lib.apply_overrides(base, {"optim.lrr": 1.0}, where="settings.a")
    per_device = _ablation({"a": {}}, {"seed": (1,)})
    per_device.base_overrides.batchnorm = "per_device"  # members train on one device each: refused up front
    with pytest.raises(ValueError, match="batchnorm='per_device': grid members train on one device each"):
        runner.resolve_base(per_device)


def test_weighted_loss_with_reference_weights_equals_bce_dice_loss():
    z = np.random.default_rng(0).normal(size=(3, 8, 8, 1)).astype(np.float32)
    t = (np.random.default_rng(1).uniform(size=(3, 8, 8, 1)) > 0.6).astype(np.float32)

    @jax.jit
    def both(z, t):
        ref = {"mask": t, "bce_weight": jnp.full((3,), 0.5), "dice_weight": jnp.full((3,), 1.0)}
        bce_only = dict(ref, bce_weight=jnp.full((3,), 2.0), dice_weight=jnp.zeros((3,)))
        return (ensemble.weighted_bce_dice_loss(z, ref), losses.bce_dice_loss(z, t),
                ensemble.weighted_bce_dice_loss(z, bce_only))

    weighted, reference, bce2 = both(z, t)
    np.testing.assert_allclose(weighted, reference, rtol=1e-6)
    bce = np.mean(np.maximum(z, 0) - z * t + np.log1p(np.exp(-np.abs(z))))  # BCE-with-logits, by hand
    np.testing.assert_allclose(bce2, 2.0 * bce, rtol=1e-5)


@pytest.mark.parametrize("member_loop", ["vmap", "map"])
def test_lr_and_loss_weight_members_match_separate_steps(member_loop):
    """Two members differing in peak lr and BCE weight == two plain train_step runs with those constants."""
    hp = [(0.05, 0.5), (0.3, 2.0)]
    unit = optim.build_schedule("poly", lr=1.0, steps_per_epoch=3, epochs=1)
    tx_of = lambda s: optim.build_optimizer("sgd", s)  # noqa: E731
    rng = np.random.default_rng(0)
    batches = [{"image": rng.normal(size=(2, 16, 16, 3)).astype(np.float32),
                "mask": (rng.uniform(size=(2, 16, 16, 1)) > 0.5).astype(np.float32)} for _ in range(3)]
    base_task = tasks.get_task("binary_seg_2d")
    separate = []
    for lr, bw in hp:
        sched = optim.build_schedule("poly", lr=lr, steps_per_epoch=3, epochs=1)
        tx = tx_of(sched)
        graphdef, st = create_train_state(build_model(TEST_MODEL, seed=7), tx, 7)
        task = ensemble.ensemble_task(base_task)
        fn = jax.jit(lambda s, b: step_lib.train_step(graphdef, s, b, task=task, tx=tx, schedule=sched),
                     compiler_options=xla_options.FAST_COMPILE)
        out = []
        for b in batches:
            st, m = fn(st, dict(b, bce_weight=np.full((2,), bw, np.float32), dice_weight=np.ones((2,), np.float32)))
            out.append(float(m["loss"]))
        separate.append(out)
    states = [create_train_state(build_model(TEST_MODEL, seed=7), ensemble.lr_scaled(tx_of, unit, lr), 7)[1]
              for lr, _ in hp]
    steps = ensemble.make_steps(graphdef, task=ensemble.ensemble_task(base_task),
                                tx=ensemble.lr_scaled(tx_of, unit, 1.0), unit_schedule=unit,
                                mesh=ensemble.member_mesh(2), member_loop=member_loop,
                                compiler_options=xla_options.FAST_COMPILE)
    state, got = ensemble.put_members(ensemble.stack(states), steps), []
    for b in batches:
        stacked = {k: np.stack([v, v]) for k, v in b.items()}
        stacked["bce_weight"] = np.stack([np.full((2,), bw, np.float32) for _, bw in hp])
        stacked["dice_weight"] = np.ones((2, 2), np.float32)
        state, m = steps.train(state, ensemble.put_members(stacked, steps))
        got.append(np.asarray(m["loss"]))
        ratio = np.asarray(m["lr"]) / np.asarray([lr for lr, _ in hp])  # each member: its lr × the unit schedule
        np.testing.assert_allclose(ratio, float(unit(len(got) - 1)), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(got).T, np.asarray(separate), rtol=2e-5)
    assert abs(separate[0][-1] - separate[1][-1]) > 1e-3  # the members really differ


@pytest.mark.parametrize("member_loop", ["map", "vmap"])
def test_four_member_seed_ensemble_gives_the_losses_of_four_separate_runs(tmp_path, member_loop):
    seeds = (0, 1, 2, 3)
    ablation = _ablation({"w4": {}}, {"seed": seeds})
    ablation.member_loop = member_loop
    got: dict[int, list] = {}
    status = runner.run_grid(ablation, tmp_path / "grid",
                             on_step=lambda name, step, losses_: got.setdefault(step, list(losses_)))
    assert status == {"w4": "done"}
    g = grid_lib.parse_grid(ablation)
    config = runner.setting_config(runner.resolve_base(ablation), g.settings[0])
    for i, member in enumerate(g.members):
        sep: dict[int, float] = {}
        summary = loop.train_and_evaluate(runner.member_config(config, member), tmp_path / f"sep{i}",
                                          on_step=lambda step, host: sep.setdefault(step, host["loss"]))
        assert sorted(sep) == sorted(got) == [1, 2]
        np.testing.assert_allclose([got[s][i] for s in sorted(got)], [sep[s] for s in sorted(sep)], rtol=1e-5)
        result = json.loads((tmp_path / "grid" / "w4" / member.name / report.RESULT_FILE).read_text())
        assert result["values"] == {"seed": seeds[i]} and result["params"] > 0
        np.testing.assert_allclose(result["val_best"]["iou"], summary["metrics"]["val"]["iou"], rtol=1e-5)
    losses_at_1 = got[1]
    assert len(set(np.round(losses_at_1, 6))) == 4  # four different seeds, four different runs


def test_grid_resumes_without_redoing_finished_members(tmp_path):
    # 3 members on the 2 test devices: the ensemble is padded to 4 (the padding member is never reported).
    ablation = _ablation({"w4": {}, "w8": {"model": {"width": 8}}}, {"seed": (0, 1, 2)})
    work = tmp_path / "grid"
    calls: list[tuple[str, int]] = []
    hook = lambda name, step, losses_: calls.append((name, step))  # noqa: E731
    assert runner.run_grid(ablation, work, only=["w4"], on_step=hook) == {"w4": "done", "w8": "skipped"}
    finished = {p: p.stat().st_mtime_ns for p in (work / "w4").glob(f"*/{report.RESULT_FILE}")}
    assert len(finished) == 3
    calls.clear()
    # Second invocation stops w8 after one step (a time budget does the same at an epoch boundary).
    assert runner.run_grid(ablation, work, stop_after_steps=1, on_step=hook) == {"w4": "done", "w8": "interrupted"}
    assert calls == [("w8", 1)]
    calls.clear()
    assert runner.run_grid(ablation, work, on_step=hook) == {"w4": "done", "w8": "done"}
    assert [s for _, s in calls] == [2] and {n for n, _ in calls} == {"w8"}
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # w4 was not touched again
    # The resumed members equal an uninterrupted run of the same setting.
    ref: dict[int, list] = {}
    runner.run_grid(ablation, tmp_path / "ref", only=["w8"], on_step=lambda n, s, l: ref.setdefault(s, list(l)))
    for member in ("seed=0", "seed=1", "seed=2"):
        a = json.loads((work / "w8" / member / report.RESULT_FILE).read_text())
        b = json.loads((tmp_path / "ref" / "w8" / member / report.RESULT_FILE).read_text())
        assert a["val_last"] == pytest.approx(b["val_last"], rel=1e-5)
    rows = [line for line in (work / "summary.md").read_text().splitlines() if line.startswith("| w")]
    assert [r.split("|")[1].strip() for r in rows] == ["w4", "w8"] and all("| 3 |" in r for r in rows)
    assert Image.open(work / "summary_iou.png").size[0] > 100
    # A spent time budget starts nothing: finished settings stay "done", a fresh grid is left for the next call.
    assert runner.run_grid(ablation, work, time_budget_s=0.0) == {"w4": "done", "w8": "done"}
    assert runner.run_grid(ablation, tmp_path / "fresh", time_budget_s=0.0) == {"w4": "interrupted",
                                                                                 "w8": "interrupted"}
    assert not (tmp_path / "fresh" / "w4").exists()


def test_aggregate_reports_mean_and_sample_std_over_seeds(tmp_path):
    for setting, member, seed, iou in [("a", "seed=1", 1, 0.5), ("a", "seed=2", 2, 0.7), ("b", "seed=1", 1, 0.6)]:
        d = tmp_path / setting / member
        d.mkdir(parents=True)
        runner.write_result(d / report.RESULT_FILE, {"setting": setting, "member": member, "values": {"seed": seed},
                                                     "metrics": {"iou": iou, "f1": iou}, "params": 10})
    rows = report.write_report(tmp_path, ("iou",), order=["b", "a"])
    assert [r["setting"] for r in rows] == ["b", "a"]
    assert rows[1]["iou_mean"] == pytest.approx(0.6) and rows[1]["iou_std"] == pytest.approx(0.1 * np.sqrt(2))
    assert rows[0]["n"] == 1 and rows[0]["iou_std"] == 0.0
    assert "| a | 2 | 10 | 60.00 ± 14.14 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "summary.csv").read_text().splitlines()[2] == "a,{},2,10,0.600000,0.141421"


@pytest.mark.parametrize("name", ["kernel_groups", "tc_ratio", "migration"])
@pytest.mark.parametrize("arg", ["", ":smoke"])
def test_paper_ablation_configs_resolve_to_valid_settings(name, arg):
    ablation = grid_lib.load_config_file(f"configs/ablations/{name}.py{arg}", runner.REPO_ROOT)
    g = grid_lib.parse_grid(ablation)
    base = runner.resolve_base(ablation)
    assert [m.values["seed"] for m in g.members] == [41, 42, 43]
    assert base.dataset == ("synthetic" if arg else "busi") and (arg or base.fold == 1)
    assert base.epochs == (2 if arg else 30) and base.optim.lr == (0.05 if arg else 0.02)
    configs = {s.name: runner.setting_config(base, s) for s in g.settings}
    if name == "kernel_groups":
        assert {n: c.model.kernels for n, c in configs.items()} == {
            "k3333": (3, 3, 3, 3), "k5555": (5, 5, 5, 5), "k7777": (7, 7, 7, 7), "k3579": (3, 5, 7, 9)}
    elif name == "tc_ratio":
        dims = configs["tc3_1"].model.dims
        widths = (dims[3], dims[4], dims[3], dims[2])
        for q, n in enumerate(["tc0_4", "tc1_3", "tc2_2", "tc3_1", "tc4_0"]):
            splits = configs[n].model.gms_splits
            assert [t + s for t, s in splits] == list(widths) and [4 * t for t, _ in splits] == [q * w for w in widths]
        if not arg:
            assert configs["tc3_1"].model.gms_splits == ((96, 32), (96, 32), (96, 32), (48, 16))  # the published
    else:
        assert [c.model_name for c in configs.values()] == [s.name for s in g.settings]
        assert all(c.model_name in registered_models() for c in configs.values())
        assert "tinyunet_gms" not in configs  # unresolved (baselines.md §4.2)
        assert dict(configs["unet"].model) == ({} if not arg else {"dims": (4, 8, 8, 8, 8)})


def test_ablate_command_runs_a_smoke_grid_end_to_end(tmp_path):
    """`python -m lgmsnet_jax.ablate` on the migration grid's narrow U-Net setting: 2 seeds on generated data."""
    work = tmp_path / "grid"
    cmd = [sys.executable, "-m", "lgmsnet_jax.ablate",
           "--config", "configs/ablations/migration.py:smoke,seeds=2,epochs=1",
           "--workdir", str(work), "--only", "unet", "--num_cpu_devices", "2"]
    proc = subprocess.run(cmd, cwd=runner.REPO_ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| unet | 2 | 12,677 |" in proc.stdout  # U-Net at dims (4, 8, 8, 8, 8), both seeds aggregated
    for seed in (41, 42):
        result = json.loads((work / "unet" / f"seed={seed}" / report.RESULT_FILE).read_text())
        assert result["epochs"] == 1 and result["steps"] == 2 and result["values"] == {"seed": seed}
    assert json.loads((work / runner.ABLATION_FILE).read_text())["base_config"] == "configs/demo.py:smoke"
    assert not (work / "tinyunet").exists()  # --only
