r"""LGMSNet on TN-SCUI 2020 (thyroid nodule ultrasound), the reference's `main.py` recipe (spec §5.1-5.2).

Command (one run per reference split; the paper averages splits 1-3):
  python train.py --config configs/tnscui.py:split=1 --workdir runs/tnscui1 --config.data_dir=data/tnscui
  (`:split=2`, `:split=3`; `:smoke` for a seconds-long run.)

Recipe: as configs/busi.py (SGD 0.02, poly 0.9, batch 16, 500 epochs, seed 41, 256x256, rot90 + flips,
reference input scaling, 0.5*BCE + Dice); selected and reported on the validation list (reference protocol).

Expected result: the paper reports TNSCUI IoU 78.03 (0.3) / F1 86.17 (0.3), mean of 3 splits.
Runtime: not yet measured on GPU (500 epochs x 160 steps of batch 16).
"""
import ml_collections

from configs import common

DATA_HELP = """Expected layout (TN-SCUI 2020 training set, https://tn-scui2020.grand-challenge.org/):
  <data_dir>/image/<n>.PNG + <data_dir>/mask/<n>.PNG   (or tnscui2020_train/ inside <data_dir>)
  (or the CMUNeXt layout <data_dir>/images/ + <data_dir>/masks/0/)
Splits: the reference lists tnscui_{train,val}{1,2,3}.txt in data_pipelines/splits/tnscui/."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """TN-SCUI config. Arguments: split=1|2|3 (reference split), smoke."""
    return common.reference_split_config("tnscui", "data/tnscui", DATA_HELP, arg, "configs/tnscui.py")
