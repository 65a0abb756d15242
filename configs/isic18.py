r"""LGMSNet on ISIC 2018 Task 1 (skin lesions), the reference's `main.py` recipe (spec §5.1-5.2).

Command (one run per reference split; the paper averages splits 1-3):
  python train.py --config configs/isic18.py:split=1 --workdir runs/isic18_1 --config.data_dir=data/ISIC2018
  (`:split=2`, `:split=3`; `:smoke` for a seconds-long run.)

Recipe: as configs/busi.py (SGD 0.02, poly 0.9, batch 16, 500 epochs, seed 41, 256x256, rot90 + flips,
reference input scaling, 0.5*BCE + Dice); selected and reported on the validation list (reference protocol).

Expected result: the paper reports ISIC18 IoU 83.46 (0.3) / F1 89.93 (0.2), mean of 3 splits.
Runtime: not yet measured on GPU (500 epochs x 114 steps of batch 16).
"""
import ml_collections

from configs import common

DATA_HELP = """Expected layout (ISIC 2018 Task 1 training data, https://challenge.isic-archive.com/data/#2018):
  <data_dir>/ISIC2018_Task1-2_Training_Input/ISIC_<n>.jpg
  <data_dir>/ISIC2018_Task1_Training_GroundTruth/ISIC_<n>_segmentation.png
  (or the CMUNeXt layout <data_dir>/images/ + <data_dir>/masks/0/)
Splits: the reference lists isic18_{train,val}{1,2,3}.txt in data_pipelines/splits/isic18/."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """ISIC 2018 config. Arguments: split=1|2|3 (reference split), smoke."""
    return common.reference_split_config("isic18", "data/ISIC2018", DATA_HELP, arg, "configs/isic18.py")
