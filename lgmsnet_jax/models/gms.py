"""The GMS block (global multi-scale: sparse sub-lattice transformer + depthwise conv branch), 2D and 3D.

Parity with the reference is spec §2.4 (2D) and §3.2 (3D); the token layout (P groups, N tokens) follows §2.4 step 5a.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lgmsnet_jax.models import layers

ATTENTION_IMPLS = ("xla", "dot_product", "cudnn")


def to_groups(x: jax.Array, patch: int) -> jax.Array:
    """Regroup a feature map into patch^d sparse sub-lattices of stride `patch`.

    Pixel (patch*a + i, patch*b + j) (2D) goes to group p = patch*i + j and token n = a*(W/patch) + b; in 3D voxel
    (.., .., ..) -> p = (i*patch + j)*patch + k, n = (a*H' + b)*W' + c (spec §2.4 step 5a, §3.2).

    Args:
      x: (N, *spatial, T), every spatial size divisible by `patch`.
      patch: sub-lattice stride.

    Returns:
      (N, patch**d, prod(spatial)/patch**d, T).
    """
    n, *spatial, t = x.shape
    d = len(spatial)
    split = []
    for s in spatial:
        split += [s // patch, patch]
    y = x.reshape(n, *split, t)
    perm = [0] + [2 + 2 * i for i in range(d)] + [1 + 2 * i for i in range(d)] + [2 * d + 1]
    return y.transpose(perm).reshape(n, patch ** d, math.prod(spatial) // patch ** d, t)


def from_groups(tokens: jax.Array, spatial: tuple[int, ...], patch: int) -> jax.Array:
    """Inverse of `to_groups`: (N, P, N_tok, T) -> (N, *spatial, T)."""
    n, _, _, t = tokens.shape
    d = len(spatial)
    coarse = [s // patch for s in spatial]
    y = tokens.reshape(n, *([patch] * d), *coarse, t)
    perm = [0]
    for i in range(d):
        perm += [1 + d + i, 1 + i]
    perm.append(2 * d + 1)
    return y.transpose(perm).reshape(n, *spatial, t)


def effective_attention_impl(impl: str, dtype) -> str:
    """The attention path that runs: 'cudnn' becomes 'xla' where cuDNN's flash attention cannot run (backends other
    than GPU, and float32, which it does not take), so a bf16 cuDNN run still evaluates in float32 or on CPU/TPU."""
    if impl == "cudnn" and (jax.default_backend() != "gpu" or jnp.dtype(dtype) not in (jnp.bfloat16, jnp.float16)):
        return "xla"
    return impl


class TransformerLayer(nnx.Module):
    """Pre-norm layer: t + Attn(LN(t)), then t + FFN(LN(t)); FFN = Linear -> SiLU -> Linear; no positional code.

    # ref: network/Mobilevit.py Transformer/Attention/FeedForward (spec §2.4 step 5b-d)
    q, k, v are features [0, inner), [inner, 2 inner), [2 inner, 3 inner) of one bias-free projection, the head index
    is the slow index inside each, scale head_dim**-0.5.
    """

    def __init__(self, dim: int, mlp_dim: int, *, num_heads: int, head_dim: int, attention_impl: str = "xla",
                 rngs: nnx.Rngs):
        """Args: token width T; MLP width M; heads and head width; 'xla' (einsum+softmax), 'dot_product'
        (jax.nn.dot_product_attention, implementation=None) or 'cudnn' (cuDNN flash attention for bf16/fp16 on GPUs,
        else 'xla': see effective_attention_impl); rngs."""
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"unknown attention_impl {attention_impl!r}; expected one of {ATTENTION_IMPLS}")
        inner = num_heads * head_dim
        self.num_heads, self.head_dim, self.attention_impl = num_heads, head_dim, attention_impl
        self.attn_norm = layers.LayerNorm(dim)
        self.qkv = layers.Linear(dim, 3 * inner, use_bias=False, rngs=rngs)
        self.attn_out = layers.Linear(inner, dim, use_bias=True, rngs=rngs)
        self.mlp_norm = layers.LayerNorm(dim)
        self.mlp_in = layers.Linear(dim, mlp_dim, use_bias=True, rngs=rngs)
        self.mlp_out = layers.Linear(mlp_dim, dim, use_bias=True, rngs=rngs)

    def _attention(self, x: jax.Array) -> jax.Array:
        *batch, n, _ = x.shape
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        shape = (math.prod(batch), n, self.num_heads, self.head_dim)
        q, k, v = (a.reshape(shape) for a in (q, k, v))
        scale = self.head_dim ** -0.5
        impl = effective_attention_impl(self.attention_impl, x.dtype)
        if impl == "xla":
            scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
            # Softmax in float32 so bf16 compute keeps normalised weights.
            probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1).astype(v.dtype)
            o = jnp.einsum("bhqk,bkhd->bqhd", probs, v)
        else:
            o = jax.nn.dot_product_attention(q, k, v, scale=scale,
                                             implementation=None if impl == "dot_product" else "cudnn")
        return self.attn_out(o.reshape(*batch, n, self.num_heads * self.head_dim))

    def __call__(self, t: jax.Array) -> jax.Array:
        """(..., N, T) tokens -> same; attention runs over the N axis, every leading axis is batch."""
        t = t + self._attention(self.attn_norm(t))
        return t + self.mlp_out(jax.nn.silu(self.mlp_in(self.mlp_norm(t))))


class ConvBranch(nnx.Module):
    """Depthwise 3^d conv -> BN -> ReLU -> per-channel scale (the '1x1 depthwise' conv) -> BN, plus a residual.

    # ref: network/Mobilevit.py DWConv2d_BN_ReLU (spec §2.4 step 4). Its two norms are BatchNorm in 2D *and* 3D.
    """

    def __init__(self, ndim: int, channels: int, *, depthwise_impl: str = "xla", rngs: nnx.Rngs):
        self.dwconv = layers.DepthwiseConv(ndim, channels, 3, use_bias=False, impl=depthwise_impl, rngs=rngs)
        self.norm1 = layers.BatchNorm(channels)
        self.scale = layers.DepthwiseConv(ndim, channels, 1, use_bias=False, rngs=rngs)
        self.norm2 = layers.BatchNorm(channels)

    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        """(N, *spatial, S) -> same, *without* the residual (the caller adds it; the fixture records it so)."""
        return self.norm2(self.scale(jax.nn.relu(self.norm1(self.dwconv(x), train))), train)


class GMSBlock(nnx.Module):
    """Global multi-scale block: conv3 -> conv1x1 -> split [T | S] -> (sparse transformer | conv branch) -> concat
    -> conv1x1 -> concat with the block input -> conv3. No residual add at the end.

    # ref: network/Mobilevit.py MobileViTBlocktem_CT (2D), network_3d/Mobilevit3d.py MobileViTBlocktem_CT3D (spec §2.4)
    T = 0 (pure conv) or S = 0 (pure transformer) drop the corresponding branch (T:C ablation).
    """

    def __init__(self, ndim: int, in_features: int, out_features: int, *, split: tuple[int, int], mlp_dim: int,
                 num_heads: int = 4, head_dim: int = 8, patch_size: int = 2, norm: str = "batch",
                 depthwise_impl: str = "xla", attention_impl: str = "xla", rngs: nnx.Rngs):
        """Args:
          ndim: 2 or 3.
          in_features, out_features: C_in, C.
          split: (T, S) transformer and conv-branch channels, T + S = C, both >= 0.
          mlp_dim: FFN width M.
          num_heads, head_dim: attention heads (inner width num_heads*head_dim).
          patch_size: sub-lattice stride of the token regrouping.
          norm: 'batch' or 'instance' for conv1..conv4 (the conv branch keeps BatchNorm).
          depthwise_impl, attention_impl: implementation switches (numerically equivalent).
          rngs: parameter init keys.
        """
        t, s = (int(v) for v in split)
        if t < 0 or s < 0 or t + s != out_features:
            raise ValueError(f"GMS split {split} must be two non-negative widths summing to the block width "
                             f"{out_features}")
        self.split, self.patch_size = (t, s), patch_size
        kw = dict(use_bias=False, norm=norm, act="silu", rngs=rngs)
        self.conv1 = layers.ConvNormAct(ndim, in_features, out_features, 3, **kw)
        self.conv2 = layers.ConvNormAct(ndim, out_features, out_features, 1, **kw)
        self.conv_branch = ConvBranch(ndim, s, depthwise_impl=depthwise_impl, rngs=rngs) if s else None
        self.transformer = (TransformerLayer(t, mlp_dim, num_heads=num_heads, head_dim=head_dim,
                                             attention_impl=attention_impl, rngs=rngs) if t else None)
        self.conv3 = layers.ConvNormAct(ndim, out_features, out_features, 1, **kw)
        self.conv4 = layers.ConvNormAct(ndim, out_features + in_features, out_features, 3, **kw)

    def __call__(self, x: jax.Array, train: bool | None = None, capture: dict | None = None) -> jax.Array:
        """(N, *spatial, C_in) -> (N, *spatial, C); spatial sizes divisible by patch_size.

        `capture` (dict or None) receives 'conv1', 'conv2', 'conv_branch' (before its residual), 'transformer'
        (tokens (N, P, N_tok, T)) and 'conv3'.
        """
        rec = capture if capture is not None else {}
        y1 = self.conv1(x, train)
        y = self.conv2(y1, train)
        rec["conv1"], rec["conv2"] = y1, y
        parts = []
        t, s = self.split
        x1, x2 = y[..., :t], y[..., t:]
        if self.transformer is not None:
            tokens = self.transformer(to_groups(x1, self.patch_size))
            rec["transformer"] = tokens
            parts.append(from_groups(tokens, x1.shape[1:-1], self.patch_size))
        if self.conv_branch is not None:
            branch = self.conv_branch(x2, train)
            rec["conv_branch"] = branch
            parts.append(branch + x2)
        z = self.conv3(jnp.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0], train)
        rec["conv3"] = z
        return self.conv4(jnp.concatenate([z, x], axis=-1), train)
