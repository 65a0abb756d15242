r"""LGMSNet on Kvasir-SEG (polyps), the reference's `main_kvasir.py` recipe (spec §5.3).

Command:
  python train.py --config configs/kvasir.py --workdir runs/kvasir --config.data_dir=data/Kvasir-SEG
  (config arguments: `configs/kvasir.py:seed=1` for the paper's other runs (seeds 41, 1, 123);
  `:split=seeded` for a seeded 80/10/10 split of all 1000 images (DUCK-Net style) instead of PraNet's;
  `:smoke` for a seconds-long run of the same pipeline.)

Recipe: SGD lr 0.01, momentum 0.9, weight decay 1e-4 (all parameters), poly 0.9 per iteration, batch 8,
300 epochs, 256x256, Kvasir augmentation (flips, colour jitter, affine, elastic), ImageNet normalisation (RGB),
loss 0.5*BCE + soft Dice; validation every epoch, best checkpoint by validation IoU (strictly greater). As in
`main_kvasir.py`, the test set is also scored every epoch (`monitor_test`: logged as test/*, with the best over
epochs in summary.json["test_monitor"], the number the reference's best-on-test checkpoint would give), for
monitoring only: the reported result is the validation-selected checkpoint's.
Splits: test = PraNet's 100 test images; train/val = a seeded 90/10 cut of PraNet's 900 training images (the
DUCK-Net folders used by the paper are not public; data_pipelines/sources.py). The final report evaluates the
best-on-validation checkpoint on test ("selected on validation, reported on test").

Expected result: the paper reports Kvasir IoU 88.14 / F1 93.04 (mean of 3 runs, DUCK-Net split); the split
differs here. Ours (RESULTS.md, float32): seeds 41, 1 and 123, test IoU 83.40, 82.76 and 82.70 (mean 82.96),
F1 89.50, 88.96 and 88.66, about 5 points below the paper; `:split=seeded`, seed 41: test IoU 81.37, so a random
split did not close the gap. The baselines under this same recipe, seed 41 (`:model=cmunext`, `:model=unet`):
test IoU 83.36 and 82.76 against the paper's 87.92 and 86.52, the same shortfall (RESULTS.md, session 12).
A mean over 100 test images is itself uncertain: `evaluate` gives the shipped seed-41 checkpoint a 95 % interval
of 79.7-86.8 (RESULTS.md, session 13).
Runtime on one H200 alone, float32, compile included: 14.5 min for 300 epochs with the default depthwise path;
10.6 min in two invocations with `--config.model.depthwise_impl=fft` (same model up to float rounding). bf16
(`--config.model.dtype=bfloat16`) changed validation IoU by -0.59 on average over three seeds (s.e. 0.83).
"""
import ml_collections

from configs import common

DATA_HELP = """Expected layout (the Kvasir-SEG release, https://datasets.simula.no/kvasir-seg/):
  <data_dir>/images/<stem>.jpg      1000 colonoscopy images
  <data_dir>/masks/<stem>.jpg       1000 masks (same stems; thresholded at 127)
  (<data_dir> may also be the parent folder that contains Kvasir-SEG/.)
Splits: PraNet's test list (data_pipelines/splits/kvasir/); see data_pipelines/sources.py."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Kvasir-SEG config. Arguments (comma-separated): seed=N, split=reference|seeded, model=NAME, smoke."""
    args = common.parse_arg(arg)
    common.check_args(args, ("seed", "split", "smoke", "model"), "configs/kvasir.py")
    c = common.base_config()
    c.dataset = "kvasir"
    c.data_dir = "data/Kvasir-SEG"
    c.data_help = DATA_HELP
    c.splits.test = "test"
    c.source_kwargs = ml_collections.ConfigDict({"split_scheme": str(args.get("split", "reference")),
                                                 "val_fraction": 0.1})
    c.augment = "kvasir"
    c.normalize = "imagenet"
    c.optim.lr = 0.01
    c.batch_size = 8
    c.epochs = 300
    c.seed = int(args.get("seed", 41))
    c.monitor_test = True  # main_kvasir.py scores the test set every epoch too (selection stays on validation)
    if args.get("smoke"):
        common.shrink_for_smoke(c)
    return common.use_model(c, str(args.get("model", "lgmsnet")), "configs/kvasir.py", smoke=bool(args.get("smoke")))
