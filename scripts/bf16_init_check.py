"""bf16 vs float32 LGMSNet logits at initialisation on real images, under two input normalisations.

    python scripts/bf16_init_check.py --data_dir ../shared/data/BUSI [--images 8]

Prints, per normalisation and train/eval mode, the float32 logits' std, the mean relative difference of the bf16
model's logits and the fraction of pixels whose sign (the 0.5-probability decision) agrees (BENCHMARKS.md, "Full
training runs in bf16").
"""
import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import data_pipelines as dp
from lgmsnet_jax.models import build_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="BUSI folder")
    p.add_argument("--images", type=int, default=8)
    args = p.parse_args()
    src = dp.load_source("busi", args.data_dir, "val", fold=1, image_size=(256, 256))
    for norm in ("reference_bgr", "imagenet"):
        batch = next(iter(dp.eval_dataset(src, batch_size=args.images, image_size=(256, 256), normalize=norm)))
        x = jnp.asarray(batch["image"])
        outs = {}
        for dt in ("float32", "bfloat16"):
            graphdef, state = nnx.split(build_model("lgmsnet", ndim=2, in_channels=3, num_classes=1,
                                                    dtype=jnp.dtype(dt)))
            fwd = jax.jit(lambda st, x, train, g=graphdef: nnx.merge(g, st)(x, train=train).astype(jnp.float32),
                          static_argnums=2)
            outs[dt] = [np.asarray(fwd(state, x, mode)) for mode in (True, False)]
        for i, mode in enumerate(("train", "eval")):
            a, b = outs["float32"][i], outs["bfloat16"][i]
            print(f"{norm:14s} {mode:5s} fp32 logit std {a.std():.4g}  bf16 vs fp32 mean rel diff "
                  f"{np.abs(b - a).mean() / np.abs(a).mean():.3g}  sign agreement {((a > 0) == (b > 0)).mean():.4f}")


if __name__ == "__main__":
    main()
