r"""Demo: the whole loop on tiny synthetic data (generated on the fly) with a narrow LGMSNet, on any CPU.

Command:
  python train.py --config configs/demo.py --workdir runs/demo

What you should see: 5 epochs of 4 steps; the epoch loss falls from about 1.1 to about 0.5 and validation IoU
rises from ~0.1 to above 0.7; the workdir gets config.json, checkpoints/ (latest + best), metrics.jsonl,
tb/ (TensorBoard), predictions/*.png and summary.json (val IoU ~0.89, test IoU ~0.90). Runtime on the 2-core
CPU dev box: 58 s with a cold compile cache (about 35 s of it compiling), 1.5-2.5 min when other jobs compete
for the cores; with JAX_COMPILATION_CACHE_DIR set a rerun compiles from cache. Rerunning the command in the same workdir finds
the finished run and only prints the report.
"""
import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Demo config; `arg="smoke"`: 3 epochs of 2 steps at the shared smoke shapes (tests; compiles are cached);
    `model=NAME`: a narrow baseline (unet, tinyunet, cmunext, ...) instead of the narrow LGMSNet."""
    args = common.parse_arg(arg)
    common.check_args(args, ("smoke", "model"), "configs/demo.py")
    c = common.base_config()
    c.dataset = "synthetic"
    c.splits.test = "test"
    c.source_kwargs = ml_collections.ConfigDict({"num_examples": 32})
    c.image_size = (32, 32)
    c.augment = "busi"
    c.model = ml_collections.ConfigDict(dict(common.LGMSNET_NARROW))
    c.optim.lr = 0.05
    c.epochs = 5
    c.batch_size = 8
    c.eval_every = 2
    c.picture_every_epochs = 1
    c.log_every = 2
    c.seed = 0
    c.fast_compile = True
    if args.get("smoke"):
        common.shrink_for_smoke(c)  # the same shapes as every dataset's smoke config: one compile for all
        c.source_kwargs.num_examples = 8
        c.optim.lr = 0.05
        c.epochs = 3
    return common.use_model(c, str(args.get("model", "lgmsnet")), "configs/demo.py", smoke=True)
