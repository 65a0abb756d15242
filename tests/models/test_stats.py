"""Parameter, FLOP and MAC counters give hand-computed numbers on small modules and the reference count via the CLI."""

import jax
from flax import nnx

from lgmsnet_jax.models import layers, stats


class _OneConv(nnx.Module):
    def __init__(self):
        self.conv = layers.Conv(2, 4, 8, 3, use_bias=True, rngs=nnx.Rngs(0))

    def __call__(self, x, train=None):
        return self.conv(x)


def test_counters_on_a_single_conv_match_hand_computation():
    m = _OneConv()
    assert stats.count_params(m) == 3 * 3 * 4 * 8 + 8
    # Analytic MACs count every tap (padding included): 16*16 outputs * 8 channels * 9 taps * 4 inputs.
    assert stats.macs_analytic(m, (1, 16, 16, 4)) == 16 * 16 * 8 * 9 * 4
    # XLA counts 2 FLOPs per in-bounds tap only ((3*16-2)^2 tap positions per channel pair) plus the bias add.
    assert stats.flops(m, (1, 16, 16, 4)) == 2 * 46 ** 2 * 4 * 8 + 16 * 16 * 8


def test_cli_reports_reference_param_count_and_positive_costs(capsys):
    res = stats.main(["--ndim", "2", "--in_channels", "3", "--num_classes", "1", "--size", "64"])
    assert res["params"] == 2_321_393
    # 64x64 is 1/16 of the 256x256 cost up to the attention term (quadratic in tokens), i.e. slightly more than 1/16.
    assert 0.30 < res["gmacs_analytic"] < 0.40 and res["gflops_xla"] > res["gmacs_analytic"]
    assert "2,321,393" in capsys.readouterr().out
