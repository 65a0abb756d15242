r"""BTCV (Synapse multi-organ CT, 13 organs + background) with the 3D LGMSNet: the reference's `main3d.py`
recipe, i.e. the MONAI UNETR/BTCV scripts (spec §6). Also the base of configs/kits23.py and configs/acdc.py.

Command (BTCV is not on these machines; get RawData.zip from https://www.synapse.org/#!Synapse:syn3193805 and
the UNETR `dataset_0.json`):
  python train.py --config configs/btcv.py --workdir runs/btcv --config.data_dir=/data/BTCV
  (add --config.max_run_seconds=N to train in slices of N seconds; rerun the same command to resume)

Layout:
  <data_dir>/imagesTr/img0001.nii.gz ...   CT volumes (HU)
  <data_dir>/labelsTr/label0001.nii.gz ... labels 0..13
  <data_dir>/dataset_0.json                {"training": [{"image": "imagesTr/..", "label": "labelsTr/.."}, ..],
                                            "validation": [...]}   (UNETR's list: 24 training / 6 validation)

Recipe (§6): RAS orientation, 1.5 x 1.5 x 2.0 mm (trilinear image, nearest label), HU -175..250 -> 0..1 clipped,
crop to image > 0; 4 patches of 96^3 per volume, centred on foreground with probability 1/2; flips p 0.2 per axis,
rot90 p 0.2, intensity scale/shift p 0.1; Dice+CE (softmax, squared denominators, smooth_dr 1e-6); AdamW 1e-3,
weight decay 1e-5, linear warm-up 50 epochs then cosine to 5000 epochs (per epoch); validation every 50 epochs by
sliding window (96^3, overlap 0.5, constant weights, 4 windows per call). Validation reports the mean over all
volumes (the reference returned the last volume's, §7.2), per-organ Dice and HD95 in mm. Float32 by default
(the reference used fp16 AMP; --config.model.dtype=bfloat16 is the analogue).
Expected: the paper's Table 3 gives LGMSNet BTCV average Dice 84.10 % (11 organs listed, no adrenal glands; its
evaluation script is not in the repository); the code's model has 6.19M parameters, not the paper's 9.86M.
Runtime: 5000 epochs x 24 steps; not measured here.
"""
import ml_collections

from configs import common

DATA_HELP = """Expected BTCV in the Decathlon/UNETR layout:
  <data_dir>/imagesTr/imgXXXX.nii.gz, <data_dir>/labelsTr/labelXXXX.nii.gz, <data_dir>/dataset_0.json
  with "training" and "validation" lists (https://www.synapse.org/#!Synapse:syn3193805, UNETR dataset_0.json)."""

PATCH_DEFAULTS = dict(patch_size=(96, 96, 96), num_samples=4, pos_ratio=0.5, image_threshold=0.0, flip_prob=0.2,
                      rot90_prob=0.2, rot90_max_k=3, rot90_axes=(0, 1), scale_prob=0.1, scale_range=0.1,
                      shift_prob=0.1, shift_range=0.1, pad_value=0.0)
PREPROCESS_DEFAULTS = dict(spacing_mm=(1.5, 1.5, 2.0), intensity="ct_window", window=(-175.0, 250.0),
                           scaled_range=(0.0, 1.0), orient_ras=True, crop_foreground=True, foreground_threshold=0.0,
                           workers=1)


def base_3d_config() -> ml_collections.ConfigDict:
    """Fields of every 3D run, set to the UNETR/BTCV recipe of the reference (spec §6)."""
    c = common.base_config()
    c.task = "seg_3d"
    c.ndim = 3
    c.in_channels = 1
    c.model = ml_collections.ConfigDict(dict(common.LGMSNET_DEFAULTS))  # the 6.19M-parameter 3D model
    # The LMS depthwise convs by FFT (GPUs only; elsewhere the direct conv): with NDHWC convs (xla_options), 2.8x the
    # training and 2.1x the inference speed of XLA's direct 3D depthwise kernels on an H200 at 96^3 (BENCHMARKS.md,
    # session 10); same parameters and checkpoints.
    c.model.depthwise_impl = "fft"
    c.split_file = ""  # JSON {"train": [...], "val": [...]}; "" = the dataset's own list or a seeded split
    c.split_seed = 0
    c.split_num_val = 0
    c.preprocess = ml_collections.ConfigDict(dict(PREPROCESS_DEFAULTS))
    c.patch = ml_collections.ConfigDict(dict(PATCH_DEFAULTS))
    c.sw = ml_collections.ConfigDict(dict(roi_size=(96, 96, 96), overlap=0.5, mode="constant", sw_batch_size=4))
    c.batch_size = 4  # patches per step over all devices: 1 volume x 4 patches (batch_size 1 in MONAI terms)
    c.optim = ml_collections.ConfigDict(dict(name="adamw", lr=1e-3, weight_decay=1e-5, schedule="warmup_cosine",
                                             warmup_epochs=50, momentum=0.9, power=0.9))
    c.epochs = 5000
    c.eval_every = 50
    c.eval_hd95_every_eval = True
    c.read_threads = 2
    c.prefetch = 4
    c.seed = 0
    c.log_every = 20
    return c


def shrink_3d_for_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A CPU-seconds run of the same pipeline: narrow model, 32^3 patches, 2 train / 1 val volumes, 1 epoch."""
    c.model = ml_collections.ConfigDict(dict(common.LGMSNET_NARROW, depthwise_impl=c.model.depthwise_impl))
    c.patch.patch_size = (32, 32, 32)
    c.patch.num_samples = 2
    c.sw.roi_size = (32, 32, 32)
    c.sw.sw_batch_size = 2
    c.batch_size = 2
    c.max_train_examples = 2
    c.max_eval_examples = 1
    c.epochs = 1
    c.optim.warmup_epochs = 0
    c.optim.schedule = "constant"
    c.eval_every = 1
    c.log_every = 1
    c.fast_compile = True
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """BTCV config; `arg="smoke"`: narrow model, 32^3 patches, 2 train / 1 val volumes (tests with synthetic data)."""
    args = common.parse_arg(arg)
    common.check_args(args, ("smoke",), "configs/btcv.py")
    c = base_3d_config()
    c.dataset = "btcv"
    c.data_dir = "data/BTCV"
    c.data_help = DATA_HELP
    c.num_classes = 14
    if args.get("smoke"):
        shrink_3d_for_smoke(c)
    return c
