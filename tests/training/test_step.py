"""The pure train/eval steps: learning, state threading, vmap over members, grad accumulation, eval padding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lgmsnet_jax.training import optim, state as state_lib, step as step_lib, tasks


def _setup(model, lr=0.1):
    sched = optim.build_schedule("constant", lr=lr, steps_per_epoch=1, epochs=1)
    tx = optim.build_optimizer("sgd", sched)
    graphdef, st = state_lib.create_train_state(model, tx, seed=0)
    return graphdef, st, tx, sched


def test_train_step_lowers_loss_and_updates_batch_stats(tiny_model, seg_batch):
    graphdef, st, tx, sched = _setup(tiny_model())
    train, _ = step_lib.jit_steps(graphdef, task=tasks.binary_seg_2d(), tx=tx, schedule=sched)
    batch = seg_batch()
    mean0 = np.asarray(jax.tree.leaves(st.model_state)[0]).copy()
    losses = []
    for _ in range(15):
        st, m = train(st, batch)
        losses.append(float(m["loss"]))
    assert losses[-1] < losses[0] - 0.05
    assert int(st.step) == 15
    assert not np.allclose(np.asarray(jax.tree.leaves(st.model_state)[0]), mean0)


def test_train_step_vmaps_over_ensemble_members(tiny_model, seg_batch):
    task = tasks.binary_seg_2d()
    g0, s0, tx, sched = _setup(tiny_model(0))
    _, s1, _, _ = _setup(tiny_model(1))
    stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), s0, s1)
    batch = seg_batch()
    batches = jax.tree.map(lambda x: jnp.stack([x, x]), batch)
    vstep = jax.jit(jax.vmap(lambda s, b: step_lib.train_step(g0, s, b, task=task, tx=tx, schedule=sched)))
    out_state, m = vstep(stacked, batches)
    single, m1 = step_lib.train_step(g0, s1, batch, task=task, tx=tx, schedule=sched)
    np.testing.assert_allclose(m["loss"][1], m1["loss"], rtol=1e-5)
    for (path, a), (_, b) in zip(state_lib.leaf_paths(out_state.params), state_lib.leaf_paths(single.params)):
        np.testing.assert_allclose(a[1], b, rtol=1e-5, atol=1e-6, err_msg=path)


def test_grad_accumulation_equals_full_batch_without_batchnorm(tiny_model, seg_batch):
    task = tasks.binary_seg_2d()
    graphdef, st, tx, sched = _setup(tiny_model(use_bn=False))
    batch = seg_batch(n=4)
    full, mf = step_lib.train_step(graphdef, st, batch, task=task, tx=tx, schedule=sched)
    acc, ma = step_lib.train_step(graphdef, st, batch, task=task, tx=tx, schedule=sched, grad_accum_steps=2)
    np.testing.assert_allclose(ma["loss"], mf["loss"], rtol=1e-5)
    for (path, a), (_, b) in zip(state_lib.leaf_paths(acc.params), state_lib.leaf_paths(full.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=path)


def test_eval_step_ignores_padded_rows(tiny_model, seg_batch):
    graphdef, st, tx, sched = _setup(tiny_model())
    _, evaluate = step_lib.jit_steps(graphdef, task=tasks.binary_seg_2d(), tx=tx, schedule=sched)
    batch = seg_batch(n=4)
    real = {k: v[:2] for k, v in batch.items()} | {"valid": jnp.ones((2,), jnp.float32)}
    padded = dict(batch) | {"valid": jnp.array([1, 1, 0, 0], jnp.float32)}
    s_real, _ = evaluate(st, real)
    s_pad, pics = evaluate(st, padded)
    assert float(s_pad["count"]) == 2.0
    assert float(s_pad["iou"]) == pytest.approx(float(s_real["iou"]), rel=1e-6)
    assert pics.shape == (4, 8, 8, 1) and float(pics.min()) >= 0.0 and float(pics.max()) <= 1.0


def test_bf16_compute_keeps_f32_params_loss_and_metrics(tiny_model, seg_batch):
    graphdef, st, tx, sched = _setup(tiny_model(dtype=jnp.bfloat16))
    train, evaluate = step_lib.jit_steps(graphdef, task=tasks.binary_seg_2d(), tx=tx, schedule=sched)
    batch = seg_batch()
    losses = []
    for _ in range(10):
        st, m = train(st, batch)
        losses.append(float(m["loss"]))
    assert m["loss"].dtype == jnp.float32 and losses[-1] < losses[0]
    assert {x.dtype for x in jax.tree.leaves(st.params)} == {jnp.dtype(jnp.float32)}
    sums, pics = evaluate(st, batch | {"valid": jnp.ones((4,), jnp.float32)})
    assert sums["iou"].dtype == jnp.float32 and pics.dtype == jnp.float32


def test_train_step_makes_no_implicit_host_transfers(tiny_model, seg_batch):
    graphdef, st, tx, sched = _setup(tiny_model())
    train, _ = step_lib.jit_steps(graphdef, task=tasks.binary_seg_2d(), tx=tx, schedule=sched)
    batch = seg_batch()
    st, _ = train(st, batch)  # compile outside the guard
    with jax.transfer_guard("disallow"):  # as big_vision runs its update_fn
        for _ in range(2):
            st, m = train(st, batch)
    assert int(st.step) == 3 and np.isfinite(float(m["loss"]))
