"""Where bf16 BUSI validation goes wrong: one checkpoint's validation IoU under four evaluation modes.

    python scripts/bf16_eval_check.py --workdir runs/busi_bf16 [--step N] [--data_dir ../shared/data/BUSI]

The checkpoint's weights are evaluated on the run's validation list with the compute dtype set to bfloat16 and
to float32 (same float32 parameters), each with BatchNorm on its running statistics (eval mode, what the trainer
reports) and on the statistics of each validation batch (train-mode normalisation, no update). A row that is bad
only with running statistics points at the running statistics. A row that is bad only in bfloat16 points at the
bf16 forward pass. The last two columns are the stem's conv bias and how far its running mean is from the first
validation batch's mean, in batch standard deviations (RESULTS.md, "bf16 on BUSI: the cause").
"""
import argparse

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

import data_pipelines as dp
from lgmsnet_jax.training import builders, checkpoint, metrics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a 2D train.py workdir with checkpoints")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: every saved one)")
    p.add_argument("--data_dir", default=None, help="dataset folder (default: the run's data_dir)")
    p.add_argument("--batch", type=int, default=16, help="validation batch (batch statistics are per batch)")
    p.add_argument("--max_images", type=int, default=0, help="evaluate the first N validation images (0 = all)")
    args = p.parse_args()
    mngr = checkpoint.make_manager(args.workdir, create=False)
    steps = [args.step] if args.step is not None else sorted(mngr.all_steps())
    config = builders.fix_config_types(ml_collections.ConfigDict(checkpoint.restore_config(mngr, steps[-1])))
    if args.data_dir:
        config.data_dir = args.data_dir
    if args.max_images:
        config.max_eval_examples = args.max_images
    sources = builders.load_sources(config)
    src, steps_per_epoch = sources["val"], int(np.ceil(len(sources["train"]) / config.batch_size))
    size = tuple(config.image_size)
    batches = [(jnp.asarray(b["image"]), jnp.asarray(b["mask"]), np.asarray(b["valid"]) > 0)
               for b in dp.eval_dataset(src, batch_size=args.batch, image_size=size, normalize=config.normalize)]
    _, abstract = builders.abstract_train_state(config)
    graphs = {}
    for dt in ("bfloat16", "float32"):
        c = ml_collections.ConfigDict(config.to_dict())
        c.model.dtype = dt
        graphs[dt] = builders.abstract_train_state(builders.fix_config_types(c))[0]

    def forward(params, model_state, x, dt, batch_stats):
        return nnx.merge(graphs[dt], params, model_state)(x, train=batch_stats).astype(jnp.float32)

    fwd = jax.jit(forward, static_argnums=(3, 4))

    def iou_of(state, dt: str, batch_stats: bool) -> float:
        ious = []
        for x, y, valid in batches:
            per = metrics.binary_metrics_per_image(fwd(state.params, state.model_state, x, dt, batch_stats), y)
            ious.extend(np.asarray(per["iou"])[valid].tolist())
        return 100.0 * float(np.mean(ious))

    def stem_gap(state) -> tuple[float, float]:
        """|stem conv bias| max, and max over channels of |batch mean - running mean| / batch std before the norm."""
        model = nnx.merge(graphs["float32"], state.params, state.model_state)
        pre = np.asarray(model.stem.conv(batches[0][0].astype(jnp.float32)), np.float64)
        pre = pre.reshape(-1, pre.shape[-1])
        z = np.abs(pre.mean(0) - np.asarray(model.stem.norm.mean[...])) / (pre.std(0) + 1e-12)
        return float(np.abs(np.asarray(model.stem.conv.bias[...])).max()), float(z.max())

    print(f"{args.workdir}: trained in {config.model.dtype}, {len(src)} validation images at {size}, "
          f"validation batches of {args.batch}")
    print(f"{'step':>6} {'epoch':>5} | {'bf16 running':>12} {'bf16 batch':>10} | {'f32 running':>11} "
          f"{'f32 batch':>9} | {'stem |bias|':>11} {'stem mean gap (std)':>19}")
    for step in steps:
        state, _, _ = checkpoint.restore(mngr, step, abstract, data_iter=None)
        row = [iou_of(state, dt, bs) for dt in ("bfloat16", "float32") for bs in (False, True)]
        bias, gap = stem_gap(state)
        print(f"{step:>6} {step / steps_per_epoch:>5.1f} | {row[0]:>12.2f} {row[1]:>10.2f} | {row[2]:>11.2f} "
              f"{row[3]:>9.2f} | {bias:>11.3g} {gap:>19.3g}", flush=True)
    mngr.close()


if __name__ == "__main__":
    main()
