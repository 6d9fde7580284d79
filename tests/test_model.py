import pytest
import torch

from shg.models.hourglass import StackedHourglass, count_parameters, expected_parameters


def _newell_parameters(stacks: int, f: int = 256, k: int = 17, skips: bool = True,
                       bottleneck: int = 0) -> int:
    """Newell's architecture counted layer by layer from the paper's description (independent
    of shg.models): pre-activation bottleneck residuals, depth-4 hourglasses, 1x1 heads and
    re-mapping convs between stacks."""
    def conv(cin, cout, size=1):
        return cin * cout * size * size + cout

    def bn(c):
        return 2 * c

    def residual(cin, cout):
        mid = cout // 2
        skip = conv(cin, cout) if cin != cout else 0
        return (bn(cin) + conv(cin, mid) + bn(mid) + conv(mid, mid, 3) + bn(mid)
                + conv(mid, cout) + skip)

    def hourglass(level):  # up1 (the skip), low1, low2, low3; low2 recurses until level 1
        up1 = residual(f, f) if skips else 0
        if level > 1:
            return up1 + 2 * residual(f, f) + hourglass(level - 1)
        b = bottleneck or f  # the innermost level: F -> b -> b -> F
        return up1 + residual(f, b) + residual(b, b) + residual(b, f)

    stem = conv(3, 64, 7) + bn(64) + residual(64, 128) + residual(128, 128) + residual(128, f)
    per_stack = hourglass(4) + residual(f, f) + conv(f, f) + bn(f) + conv(f, k)
    between = conv(f, f) + conv(k, f)
    return stem + stacks * per_stack + (stacks - 1) * between


@pytest.mark.parametrize("stacks", [1, 2, 8])
def test_parameter_count_matches_newell(stacks):
    model = StackedHourglass(stacks=stacks, features=256, joints=17)
    assert count_parameters(model) == _newell_parameters(stacks, 256, 17)
    assert expected_parameters(stacks, 17) == _newell_parameters(stacks, 256, 17)  # the docs
    if stacks == 8:
        assert count_parameters(model) == 25_437_960


def test_every_parameter_gets_a_gradient():
    # (zero_heads=False: with zero heads the heatmap re-map conv sees zeros at step 0)
    # 128x128 so the innermost maps are 2x2 (a 1x1 map under train-mode BN with a tiny batch
    # can leave ReLUs all dead and a gradient exactly zero by chance)
    torch.manual_seed(0)
    model = StackedHourglass(stacks=2, features=16, joints=5, zero_heads=False)
    model(torch.randn(4, 3, 128, 128)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_output_shape_and_bottleneck_hooks():
    model = StackedHourglass(stacks=3, features=16, joints=17, zero_heads=False).eval()
    x = torch.randn(2, 3, 256, 256)
    with model.capture_bottleneck() as seen:
        out = model(x)
    assert out.shape == (2, 3, 17, 64, 64)
    assert [t.shape for t in seen] == [(2, 16, 4, 4)] * 3
    with model.capture_bottleneck(stack=1) as seen:
        model(x)
    assert len(seen) == 1
    model.bottleneck_hook = lambda i, t: torch.zeros_like(t)
    zeroed = model(x)
    model.bottleneck_hook = None
    assert not torch.allclose(zeroed, out)
    assert torch.allclose(model(x), out)


def test_skip_connections_switch_off_per_level():
    torch.manual_seed(0)
    model = StackedHourglass(stacks=1, features=16, joints=4, zero_heads=False).eval()
    x = torch.randn(1, 3, 128, 128)
    base = model(x)
    outs = {}
    for level in (1, 2, 3, 4):
        with model.disable_skips([level]):
            outs[level] = model(x)
        assert not torch.allclose(outs[level], base)
    with model.disable_skips([1, 2, 3, 4]):
        none = model(x)
    assert not torch.allclose(none, base)
    assert torch.allclose(model(x), base)  # restored
    with pytest.raises(ValueError, match="1..4"):
        with model.disable_skips([5]):
            pass


def test_glorot_normal_init_is_the_default():
    model = StackedHourglass(stacks=1, features=64, joints=17)
    conv = model.hourglasses[0].up1.body[5]  # a 3x3 conv 32 -> 32
    fan_in = fan_out = 32 * 9
    expected_std = (2.0 / (fan_in + fan_out)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)
    assert conv.bias.abs().max() == 0
    default = StackedHourglass(stacks=1, features=64, joints=17, init="default")
    assert default.hourglasses[0].up1.body[5].bias.abs().max() > 0
    assert model.heads[0].weight.abs().max() == 0  # zero_heads (default)
    assert StackedHourglass(1, 64, 17, zero_heads=False).heads[0].weight.std() > 0


@pytest.mark.parametrize("skips,bottleneck", [(False, 0), (True, 128), (False, 64)])
def test_ablation_parameter_counts(skips, bottleneck):
    model = StackedHourglass(stacks=8, features=256, joints=17, skips=skips,
                             bottleneck_features=bottleneck)
    assert count_parameters(model) == _newell_parameters(8, 256, 17, skips, bottleneck)
    if (skips, bottleneck) == (False, 0):
        assert count_parameters(model) == 18_573_064      # the figure in the README
    if (skips, bottleneck) == (True, 128):
        assert count_parameters(model) == 23_331_592


def test_no_skips_and_a_narrow_bottleneck_run_and_are_described():
    from shg.models import from_metadata

    model = StackedHourglass(stacks=2, features=16, joints=5, skips=False,
                             bottleneck_features=8, zero_heads=False).eval()
    assert all(hg.up1 is None for hg in model.modules() if hasattr(hg, "up1"))
    x = torch.randn(1, 3, 256, 256)
    with model.capture_bottleneck(1) as seen:
        out = model(x)
    assert out.shape == (1, 2, 5, 64, 64) and seen[0].shape == (1, 8, 4, 4)
    with model.disable_skips([1, 2, 3, 4]):  # nothing left to switch off: the same output
        assert torch.equal(model(x), out)
    rebuilt = from_metadata(model.config())
    rebuilt.load_state_dict(model.state_dict())  # same architecture from its description
    assert rebuilt.config() == {"stacks": 2, "features": 16, "joints": 5, "depth": 4,
                                "skips": False, "bottleneck_features": 8}


def test_shg_info_prints_the_parameters_and_flops_of_newells_network(capsys):
    """`shg info --stacks 8`: the README's 25,437,960 parameters and 54.9 GFLOPs, the FLOPs
    counted here independently (2 x multiply-adds of every convolution, from forward hooks)."""
    from shg.cli import main as shg

    model = StackedHourglass(stacks=8, features=256, joints=17).eval()
    macs = []

    def count(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        macs.append(output.numel() * module.in_channels * k // module.groups)

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, 3, 256, 256))
    for h in hooks:
        h.remove()
    gflops = 2 * sum(macs) / 1e9
    assert round(gflops, 1) == 54.9
    assert shg(["info", "--stacks", "8"]) == 0
    out = capsys.readouterr().out
    assert "parameters: 25,437,960" in out
    assert f"forward: {gflops:.2f} GFLOPs per 256x256 image" in out
