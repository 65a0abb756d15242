r"""KiTS23 (kidney CT: background, kidney, tumor, cyst) with the 3D LGMSNet and the BTCV recipe (spec §6).

The reference has no KiTS-specific code; the paper states the UNETR/3D UX-Net recipe for both 3D sets, so this is
configs/btcv.py with 4 classes (spec §3.1: the same constructor with num_classes=4, 6,193,572 parameters).

Command (KiTS23 is not on these machines; `git clone https://github.com/neheller/kits23` and run its
`kits23_download_data`):
  python train.py --config configs/kits23.py --workdir runs/kits23 --config.data_dir=/data/kits23/dataset

Layout:
  <data_dir>/case_00000/imaging.nii.gz        CT (HU)
  <data_dir>/case_00000/segmentation.nii.gz   0 background, 1 kidney, 2 tumor, 3 cyst

Split: KiTS23 publishes no validation list. Without --config.split_file, a seeded split by case
(split_seed 0, 20% = 98 of the 489 cases for validation) is drawn and written to <workdir>/split_kits23_seed0.json.
Preprocessing as BTCV (RAS, 1.5 x 1.5 x 2.0 mm, HU -175..250 -> 0..1, foreground crop): a choice, since the
paper does not give KiTS23 settings. Expected: the paper's Table 4 gives Dice % kidney 93.59, tumor 77.37,
cyst 61.61 (average 77.52). Runtime not measured here.
"""
import ml_collections

from configs import btcv, common

DATA_HELP = """Expected KiTS23 (https://github.com/neheller/kits23, dataset/ after kits23_download_data):
  <data_dir>/case_XXXXX/imaging.nii.gz and <data_dir>/case_XXXXX/segmentation.nii.gz (labels 0..3)."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """KiTS23 config; `arg="smoke"` shrinks it like configs/btcv.py:smoke."""
    args = common.parse_arg(arg)
    common.check_args(args, ("smoke",), "configs/kits23.py")
    c = btcv.base_3d_config()
    c.dataset = "kits23"
    c.data_dir = "data/kits23/dataset"
    c.data_help = DATA_HELP
    c.num_classes = 4
    c.split_num_val = 98  # cases, 20% of 489; used when split_file is ""
    if args.get("smoke"):
        btcv.shrink_3d_for_smoke(c)
        c.split_num_val = 1
    return c
