"""Per-function XLA compile options (`jax.jit(f, compiler_options=...)`), in one place.

Unlike XLA_FLAGS, a compile option touches only the functions compiled with it. A GPU option on a CPU compile is
ignored, so the same options serve every backend.
"""

from __future__ import annotations

from typing import Any

# XLA's default command-buffer kinds (xla/debug_options_flags.cc, jaxlib 0.11) plus CONVOLUTION, and graphs of any
# size (the default minimum is 5 commands): a batch-1 forward is ~285 kernels of ~2 us, and XLA's default graphs
# leave the convolutions out (packing.py, BENCHMARKS.md session 9).
CUDA_GRAPHS = {
    "xla_gpu_enable_command_buffer": "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,CONVOLUTION",
    "xla_gpu_graph_min_graph_size": 1,
}

# Every cuDNN conv in NHWC/NDHWC. Without it XLA hands some bf16 3D convs to cuDNN in NCDHW, and cuDNN transposes in
# and out around them (nchwToNhwc/nhwcToNchw kernels: 4.5 of the 20.4 ms of a batch-4 96^3 forward on an H200;
# forced, the forward takes 16.4 ms and the 3D train step 19.9 instead of 21.2 ms; BENCHMARKS.md, session 10). Used
# in 3D only: in 2D the same flag made training slower (session 7).
CONV_NHWC = {"xla_gpu_force_conv_nhwc": True}

# Lower LLVM effort for CPU compiles (demos, smoke configs, tests). Level 1, not 0: on jaxlib 0.11.2's CPU backend
# level 0 miscompiles the U-Net and CMUNeXt training steps (gradients 0.5 % off, then NaN at the second step;
# tests/test_xla_options.py), while level 1 matches the default compile to ~1e-7.
FAST_COMPILE = {"xla_backend_optimization_level": 1, "xla_llvm_disable_expensive_passes": True}


def inference(ndim: int) -> dict[str, Any]:
    """Options of an inference call of an `ndim`-D model: CUDA graphs, and NDHWC convs in 3D."""
    return CUDA_GRAPHS | (CONV_NHWC if ndim == 3 else {})


def training(ndim: int, *, fast_compile: bool = False) -> dict[str, Any] | None:
    """Options of the train/eval steps of an `ndim`-D model (None: XLA's defaults)."""
    options = (FAST_COMPILE if fast_compile else {}) | (CONV_NHWC if ndim == 3 else {})
    return options or None


def training_for(config: Any) -> dict[str, Any] | None:
    """`training` for a run config (its `ndim`, default 2, and `fast_compile` flag)."""
    return training(int(config.get("ndim", 2)), fast_compile=bool(config.get("fast_compile")))
