r"""ACDC cardiac cine-MRI (RV, Myo, LV) with the 3D LGMSNet and the UNETR/BTCV recipe (spec §6) set for thin slices.

Data: `../shared/data/ACDC` (60 HDF5 volumes = 30 patients x ED/ES, SOURCES.md §3), split by patient with seed 0
into 40 training / 20 validation volumes: data_pipelines/splits/acdc/acdc_train40_val20_seed0.json
(reproduced by data_pipelines.volumes.acdc_patient_split; a test checks it).

Command (GPU; every invocation trains at most max_run_seconds, checkpoints and exits; rerun the same command to
resume until it prints the final table):
  JAX_COMPILATION_CACHE_DIR=runs/jax_cache python train.py --config configs/acdc.py --workdir runs/acdc \
      --config.max_run_seconds=420
(the compile cache lets the resumed invocations skip recompiling the train step and the sliding-window predictor)

Patch size: the volumes have 6-17 slices of 5-10 mm and 154-288 in-plane pixels of 1.2-1.9 mm. They are
resampled to 1.5625 x 1.5625 x 5.0 mm (the common in-plane size; 5 mm is the finest slice spacing present), giving
12-22 slices and ~140-270 in-plane voxels in (X, Y, Z) order. The patch is 128 x 128 x 32: in-plane 200 mm covers
the heart with context, 32 (the smallest multiple of 32 the network accepts) holds every volume's whole Z extent
(padded with zeros, as MONAI pads small volumes), and the two equal in-plane sides allow rot90 in-plane.
Intensities: the SSL4MIS per-volume min-max [0, 1] (the data's own normalisation); no CT window.
Recipe (§6): AdamW 1e-3, weight decay 1e-5, warm-up + cosine per epoch, Dice+CE, 4 patches per volume at pos:neg
1:1, flips/rot90/intensity augmentation, sliding-window validation (overlap 0.5, constant weights). Deviations for a
short run: 60 epochs of 40 steps (2,400 steps) with 3 warm-up epochs instead of 5000/50; bfloat16 activations in place
of the reference's fp16 AMP; validation every 10 epochs reports the mean over all 20 volumes (not the last one, §7.2)
plus HD95 in mm on the resampled grid.
Expected: the paper gives no ACDC number (its 3D sets are BTCV and KiTS23); this run checks the 3D pipeline on
real volumes, reporting per-structure Dice and HD95 on the 20 validation volumes. Runtime on one H200 (bf16), measured
before the depthwise convs moved to FFT (session 10, faster; not rerun on ACDC): ~60 s compile, 36 patches/s (~9
steps/s), ~10-16 s per validation; a 10-epoch run took 145 s (RESULTS.md), so the 60 epochs take about 7 minutes
at that speed.

`configs/acdc.py:smoke` is a small CPU variant (narrow model, 32^3 patches on a coarse 10 mm grid, 2 training and
1 validation volume, 1 epoch = 2 steps) used by tests/training/test_seg3d.py; it takes minutes on CPU, where XLA's
3D conv gradients are slow.
"""
import ml_collections

from configs import btcv, common

def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ACDC config; `arg="smoke"` for the CPU test variant."""
    args = common.parse_arg(arg)
    common.check_args(args, ("smoke",), "configs/acdc.py")
    c = btcv.base_3d_config()
    c.dataset = "acdc"
    c.data_dir = "../shared/data/ACDC"
    c.data_help = ("Expected ACDC/volumes/patientXXX_frame0{1,2}.h5 with datasets image (int16, Z x Y x X) and label "
                   "(uint8), attributes intensity_scale and spacing_zyx_mm (../shared/data/SOURCES.md, section 3).")
    c.num_classes = 4
    c.split_file = "data_pipelines/splits/acdc/acdc_train40_val20_seed0.json"
    c.split_num_val = 10  # patients, only used when split_file is ""
    c.preprocess.spacing_mm = (1.5625, 1.5625, 5.0)
    c.preprocess.intensity = "none"  # the reader returns the SSL4MIS [0, 1] array
    c.patch.patch_size = (128, 128, 32)
    c.sw.roi_size = (128, 128, 32)
    c.model.dtype = "bfloat16"
    c.epochs = 60
    c.optim.warmup_epochs = 3
    c.read_threads = 4
    c.eval_every = 10
    if args.get("smoke"):
        btcv.shrink_3d_for_smoke(c)
        c.model.dtype = "float32"
        c.preprocess.spacing_mm = (10.0, 10.0, 10.0)  # ~34 x 40 x 10 voxels: 4 validation windows
    return c
