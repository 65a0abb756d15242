r"""LGMSNet on BUSI (breast ultrasound, benign + malignant), the reference's `main.py` recipe (spec §5.1-5.2).

Command (one run per reference split; the paper averages splits 1-3):
  python train.py --config configs/busi.py:split=1 --workdir runs/busi1 --config.data_dir=data/BUSI
  (`:split=2`, `:split=3` for the other splits; `:smoke` for a seconds-long run.)

Recipe: SGD lr 0.02, momentum 0.9, weight decay 1e-4 (all parameters), poly 0.9 per iteration, batch 16,
500 epochs, seed 41, 256x256, rot90 + flips, the reference's input scaling (BGR, ImageNet mean/std, then /255;
`--config.normalize=imagenet` for plain ImageNet RGB), loss 0.5*BCE + soft Dice; validation every epoch.
The reference has no test split: the best checkpoint is selected and reported on the validation list (the
reference protocol; labelled as such in summary.json).

Expected result: the paper reports BUSI IoU 73.40 (2.0) / F1 81.82 (1.9), mean of 3 splits. Ours (RESULTS.md,
float32): splits 1/2/3 69.74 / 72.26 / 74.93 IoU, mean 72.31 +- 2.59, F1 80.72.
Runtime on one H200 (float32, the default): 10 min for the 500 epochs (0.96 s per epoch, compile ~50 s). bf16 made this
dataset's validation unstable for ~250 epochs (RESULTS.md). The cause, the stem's conv bias under bf16 rounding, is
fixed (the stem computes in float32), checked on CPU and on the H200 over the first 88 epochs of splits 1 and 3; no
full bf16 run with the fix has been made, so float32 stays the default.
"""
import ml_collections

from configs import common

DATA_HELP = """Expected layout (Dataset_BUSI_with_GT, https://scholar.cu.edu.eg/?q=afahmy/pages/dataset):
  <data_dir>/benign/benign (N).png + benign (N)_mask.png [+ _mask_1.png ...]
  <data_dir>/malignant/malignant (N).png + malignant (N)_mask.png
  (or the CMUNeXt layout <data_dir>/images/<name>.png + <data_dir>/masks/0/<name>.png)
Splits: the reference lists busi_{train,val}{1,2,3}.txt in data_pipelines/splits/busi/."""


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """BUSI config. Arguments: split=1|2|3 (reference split), smoke."""
    return common.reference_split_config("busi", "data/BUSI", DATA_HELP, arg, "configs/busi.py")
