"""Model registry and architectures: parameter counts, notebook parity, shapes, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from darklens.errors import DarklensError
from darklens.models import create_model, list_models, register_model

# ---------------------------------------------------------------------------------------------
# The seed notebook's classes, copied verbatim (cells 15-21) as the independent reference.
# ---------------------------------------------------------------------------------------------


class Dense_layer(nn.Module):
    def __init__(self,in_chans):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm2d(in_chans),
            nn.PReLU(),
            nn.Conv2d(in_chans, in_chans, kernel_size=1, padding=1, bias=False),
            nn.BatchNorm2d(in_chans),
            nn.PReLU(),
            nn.Conv2d(in_chans, in_chans*2, kernel_size=3, bias=False)
        )
    def forward(self,x):
        return self.net(x)


class Dense_block(nn.Module):
    def __init__(self,in_chans):
        super().__init__()
        self.d1 = Dense_layer(in_chans)
        self.d2 = Dense_layer(in_chans+in_chans*2)
    def forward(self,x):
        op1 = self.d1(x)
        op1 = torch.cat([op1,x],dim =1)
        op2 = self.d2(op1)
        return op2


class Channel_A_Block(nn.Module):
    def __init__(self,in_chans):
        super().__init__()
        self.n = in_chans
        self.maxpool = nn.AdaptiveMaxPool2d(1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.MLP = nn.Sequential(
            nn.Linear(self.n ,64 ,bias=False),
            nn.PReLU(),
            nn.Linear( 64, self.n,bias=False)
        )
    def forward(self,x):
        x_m = self.maxpool(x)
        x_m = x_m.view(x_m.shape[0],-1)
        x_a = self.avgpool(x)
        x_a = x_a.view(x_a.shape[0],-1)

        x_m = self.MLP(x_m)
        x_a = self.MLP(x_a)

        out = x_m + x_a
        out = out.view(out.shape[0],self.n,1,1)
        out = F.sigmoid(out)

        return out


class Spatial_A_Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.maxp = nn.AdaptiveMaxPool3d((1,None,None))
        self.avgp = nn.AdaptiveMaxPool3d((1,None,None))
        self.conv = nn.Conv2d(2 , 1 , 7, padding=7//2, bias=False)

    def forward(self,x):
        x_m = self.maxp(x)
        x_a = self.avgp(x)
        op = torch.cat([x_m , x_a] , dim =1)
        op = F.sigmoid(self.conv(op))
        return op


class A_Block(nn.Module):
    def __init__(self,in_chans):
        super().__init__()
        self.c_a = Channel_A_Block(in_chans)
        self.s_a = Spatial_A_Block()

    def forward(self,x):
        Fc = self.c_a(x)
        Fc = Fc*x
        Fm = self.s_a(Fc)
        F = Fm*Fc
        return F


class TransitionLayer(nn.Module):

    def __init__(self, c_in, c_out):
        super().__init__()
        self.transition = nn.Sequential(
            nn.BatchNorm2d(c_in),
            nn.PReLU(),
            nn.Conv2d(c_in, c_out, kernel_size=1,stride=1, bias=False),
            nn.AvgPool2d(kernel_size=2, stride=2) # Average the output for each 2x2 pixel group
        )

    def forward(self, x):
        return self.transition(x)


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 =  nn.Conv2d(1,4, kernel_size=3)

        self.dense_block1 = Dense_block(4)
        self.a_b1 = A_Block(24) #inchans = 2*(prev_chans + 2*prev_chans) hence (2*(4 + 2*4) = 24)
        self.tras1 = TransitionLayer(24 , 32)

        self.dense_block2 = Dense_block(32)
        self.a_b2 = A_Block(192)
        self.tras2 = TransitionLayer(192 , 360)

        self.pool = nn.AdaptiveAvgPool2d(1)

        self.neck = nn.Sequential(
            nn.Linear(360,360,bias =False),
            nn.ReLU(),
            nn.BatchNorm1d(360),
            nn.Linear(360 , 64,bias =False),
            nn.BatchNorm1d(64),
            nn.Linear(64,3)
        )

    def forward(self,x):
        x = self.conv1(x)
        #dense_attention block 1
        x = self.dense_block1(x)
        x = self.a_b1(x)
        x = self.tras1(x)

        #dense_attention block2
        x = self.dense_block2(x)
        x = self.a_b2(x)
        x = self.tras2(x)

        x = self.pool(x)
        x = x.view(x.shape[0],-1)

        x = self.neck(x)
        return x


# ---------------------------------------------------------------------------------------------


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_densenet_cbam_has_the_notebook_parameter_count():
    assert n_params(create_model("densenet_cbam")) == 450_075
    assert n_params(Model()) == 450_075  # the reference itself, so the number is the notebook's


@torch.no_grad()
def test_densenet_cbam_seed_exact_matches_notebook_and_default_fixes_attention():
    torch.manual_seed(0)
    reference = Model()
    exact = create_model("densenet_cbam", seed_exact=True)  # the notebook's layer order too
    fixed = create_model("densenet_cbam")
    # Same state_dict keys as the notebook: its .pth weights load unchanged.
    exact.load_state_dict(reference.state_dict(), strict=True)
    fixed.load_state_dict(reference.state_dict(), strict=True)

    # Train mode (batch statistics): at random init, eval-mode BN with unit running stats makes
    # the logits almost input-independent, which would hide any difference.
    x = torch.rand(4, 1, 48, 48, generator=torch.Generator().manual_seed(2)) - 0.5
    want = reference(x)
    assert want.std(dim=0).min() > 0.05  # the logits do depend on the input
    torch.testing.assert_close(exact(x), want, rtol=1e-5, atol=1e-6)
    # The fixed spatial attention (channel mean as the avg input) must change the output.
    assert (fixed(x) - want).abs().max() > 1e-2

    # Eval mode with the running statistics the pass above accumulated (identically in both).
    for m in (reference, exact):
        m.eval()
    torch.testing.assert_close(exact(x), reference(x), rtol=1e-5, atol=1e-6)


def test_pooling_before_the_transition_conv_is_the_same_network_with_fewer_flops():
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    notebook_order = create_model("densenet_cbam", pool_first=False).double()
    pooled_first = create_model("densenet_cbam").double()
    pooled_first.load_state_dict(notebook_order.state_dict(), strict=True)
    x = torch.rand(3, 1, 64, 64, dtype=torch.float64) - 0.5
    outputs, grads, flops = [], [], []
    for net in (notebook_order, pooled_first):
        with FlopCounterMode(display=False) as counter:
            out = net(x)
            out.square().sum().backward()
        outputs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
        flops.append(counter.get_total_flops())
    assert outputs[0].std(dim=0).min() > 0.05  # the logits depend on the input
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-9, atol=1e-12)
    # tras2's 192->360 conv runs on a quarter of the pixels: ~19% of the step's FLOPs go
    assert flops[1] < 0.85 * flops[0]
    # the notebook's order stays with seed_exact (its parity test), the new one is the default
    assert not create_model("densenet_cbam", seed_exact=True).tras1.pool_first
    assert create_model("densenet_cbam", seed_exact=True, pool_first=True).tras2.pool_first
    assert create_model("densenet_cbam").tras2.pool_first


def test_spatial_attention_avg_input_is_channel_mean():
    from darklens.models.densenet_cbam import SpatialAttention

    block = SpatialAttention()
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.weight[0, 1, 3, 3] = 1.0  # only the centre tap of the avg input
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(block(x), torch.sigmoid(x.mean(dim=1, keepdim=True)))


def test_spatial_attention_backward_matches_notebook_at_ties():
    # Tied channel maxima (as low precision makes common): the notebook's AdaptiveMaxPool3d
    # gives the whole gradient to one channel; amax would split it over the ties.
    from darklens.models.densenet_cbam import SpatialAttention

    torch.manual_seed(0)
    ours, ref = SpatialAttention(seed_exact=True), Spatial_A_Block()
    ref.conv.weight.data.copy_(ours.conv.weight.data)
    base = torch.randn(2, 1, 6, 6)
    grads = []
    for module in (ours, ref):
        x = torch.cat([base, base, base - 1.0], dim=1).requires_grad_(True)  # channels 0, 1 tie
        module(x).sum().backward()
        grads.append(x.grad)
    assert torch.allclose(grads[0].sum(1), grads[1].sum(1), atol=1e-6)
    for g in grads:  # one of the two tied channels gets all of it at each pixel
        assert torch.all((g[:, 0] == 0) | (g[:, 1] == 0))
        assert torch.all(g[:, 2] == 0)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "flat"])
@pytest.mark.parametrize("autocast", [False, True])
def test_compiled_prelu_path_matches_torch_prelu(layout, autocast, monkeypatch):
    # The path torch.compile takes (two-pass weight-gradient sum) against nn.PReLU itself,
    # on every input layout the model produces (the 2-D one is the attention MLP's), in fp32
    # and under bf16 autocast (fp32 input: both compute in bf16).
    import contextlib

    from darklens.models.densenet_cbam import PReLU

    shape = (3, 4) if layout == "flat" else (3, 5, 7, 6)
    x0 = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    if layout == "channels_last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    upstream = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    ref, ours = nn.PReLU(), PReLU()
    ref.weight.data.fill_(0.3)
    ours.weight.data.fill_(0.3)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    results = []
    for module in (ref, ours):
        x = x0.clone().requires_grad_(True)
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
        with amp:
            out = module(x)
        (out.float() * upstream).sum().backward()
        results.append((out.detach(), x.grad, module.weight.grad))
    (out_got, gx_got, gw_got), (out_want, gx_want, gw_want) = results[1], results[0]
    assert out_got.dtype == out_want.dtype
    torch.testing.assert_close(out_got, out_want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gx_got, gx_want, rtol=1e-5, atol=1e-6)
    # nn.PReLU sums its weight gradient in bf16 under autocast; ours sums in fp32
    tol = dict(rtol=2e-2, atol=2e-2) if autocast else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gw_got, gw_want, **tol)
    assert gw_want.abs().item() > 1e-3  # the weight gradient is not trivially zero


def test_densenet_cbam_prelus_take_the_compiled_path(monkeypatch):
    from darklens.models import densenet_cbam as module

    calls = []
    original = module._ScalarPReLUFn.apply
    monkeypatch.setattr(module._ScalarPReLUFn, "apply",
                        lambda *a: calls.append(a[0].shape) or original(*a))
    net = create_model("densenet_cbam_tiny")
    net(torch.rand(2, 1, 24, 24))
    assert calls == []  # eager: torch's own kernels
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    net(torch.rand(2, 1, 24, 24))
    n_prelu = sum(isinstance(m, nn.PReLU) for m in net.modules())
    n_mlp = sum(isinstance(m, module.ChannelAttention) for m in net.modules())  # runs twice
    assert n_prelu > 0 and len(calls) == n_prelu + n_mlp


def test_registry_errors_and_listing():
    assert "densenet_cbam" in list_models()
    assert list_models("densenet_cbam*") == ["densenet_cbam", "densenet_cbam_tiny"]
    with pytest.raises(DarklensError, match="did you mean densenet_cbam"):
        create_model("densenet_cbm")
    with pytest.raises(DarklensError, match="densenet_cbam"):
        create_model("densenet_cbam", no_such_option=3)
    with pytest.raises(ValueError, match="already registered"):

        @register_model
        def densenet_cbam(**kwargs):  # noqa: F811
            raise AssertionError


TINY = sorted(set(list_models("*tiny*")))


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_forward_backward(name):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=3)
    with torch.no_grad():
        for size in (150, 64, 33):  # Common Test, Model II/III sizes, and an odd size
            logits = model(torch.randn(2, 1, size, size))
            assert logits.shape == (2, 3) and torch.isfinite(logits).all(), size
    logits = model(torch.randn(2, 1, 32, 32))
    logits.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_tiny_is_much_smaller_than_full():
    for name in TINY:
        assert n_params(create_model(name)) < 200_000, name


# ---------------------------------------------------------------------------------------------
# timm backbones
# ---------------------------------------------------------------------------------------------


def test_timm_pass_through_and_single_channel_stem():
    model = create_model("timm:resnet10t", num_classes=4)
    assert model.conv1[0].weight.shape[1] == 1  # in_chans=1 reached timm's stem
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 4)
    with pytest.raises(DarklensError, match="unknown timm model"):
        create_model("timm:resnet_does_not_exist")
    with pytest.raises(DarklensError, match="pretrained"):
        create_model("timm:resnet18", pretrained=True)


def test_registered_timm_names_build_the_timm_architecture():
    import timm

    for name in ("resnet18", "efficientnet_b0"):
        ours = create_model(name)
        theirs = timm.create_model(name, pretrained=False, in_chans=1, num_classes=3)
        assert n_params(ours) == n_params(theirs)
        assert type(ours) is type(theirs)


def test_resnet18_hires_keeps_twice_the_resolution_in_its_first_stage():
    seen = {}
    for name in ("resnet18", "resnet18_hires"):
        model = create_model(name).eval()
        model.layer1.register_forward_hook(lambda m, i, o, name=name: seen.update({name: o.shape}))
        with torch.no_grad():
            model(torch.randn(1, 1, 150, 150))
    assert seen["resnet18"][-2:] == (38, 38)
    assert seen["resnet18_hires"][-2:] == (75, 75)
    assert n_params(create_model("resnet18_hires")) == n_params(create_model("resnet18"))


def test_resnet18_slim_differs_from_resnet18_only_in_its_last_stage_and_fits_the_ship_limit():
    slim, full = create_model("resnet18_slim"), create_model("resnet18")
    slim_shapes = {k: v.shape for k, v in slim.state_dict().items()}
    full_shapes = {k: v.shape for k, v in full.state_dict().items()}
    assert slim_shapes.keys() == full_shapes.keys()
    changed = {k.split(".")[0] for k in slim_shapes if slim_shapes[k] != full_shapes[k]}
    assert changed == {"layer4", "fc"}
    assert slim.layer4[-1].conv2.out_channels == 256 and slim.fc.in_features == 256
    for name, module in full.named_children():  # the stem, pooling and stages 1-3: as resnet18
        if name not in ("layer4", "fc"):
            assert str(getattr(slim, name)) == str(module), name
    def float16_bytes(model):  # as shipped (benchmarks/half_checkpoint.py)
        return 2 * sum(v.numel() for v in model.state_dict().values() if v.dtype.is_floating_point)

    assert float16_bytes(slim) < 20e6 < float16_bytes(full)  # issue 5's limit: only slim fits


@pytest.mark.parametrize("name", ["densenet_cbam", "resnet18", "resnet18_hires", "resnet18_slim",
                                  "efficientnet_b0"])
@torch.no_grad()
def test_full_models_forward(name):
    model = create_model(name).eval()
    out = model(torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in list_models() if "tiny" not in n])
@torch.no_grad()
def test_every_full_model_forward_150(name):
    model = create_model(name).eval()
    out = model(torch.randn(2, 1, 150, 150))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------
# e2cnn steerable CNNs
# ---------------------------------------------------------------------------------------------


def _trained_like(name: str, **kwargs) -> nn.Module:
    """A model whose BatchNorm running stats are not the init values (a few train-mode passes)."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(4, 1, 48, 48) * 2)
    return model.eval()


D4_TRANSFORMS = {
    "rot90": lambda x: torch.rot90(x, 1, (2, 3)),
    "rot180": lambda x: torch.rot90(x, 2, (2, 3)),
    "rot270": lambda x: torch.rot90(x, 3, (2, 3)),
    "flip_h": lambda x: torch.flip(x, (3,)),
    "flip_v": lambda x: torch.flip(x, (2,)),
    "transpose": lambda x: x.transpose(2, 3),
}


@pytest.fixture(scope="module")
def e2cnn_models():
    return {"c8": _trained_like("e2cnn_tiny"), "d4": _trained_like("e2cnn_tiny", group="d4")}


@pytest.mark.parametrize("size", [150, 31])  # 150 -> 75 -> 38 exercises even and odd pooling
@torch.no_grad()
def test_e2cnn_is_invariant_to_grid_symmetries(e2cnn_models, size):
    x = torch.rand(3, 1, size, size, generator=torch.Generator().manual_seed(size))
    for group, model in e2cnn_models.items():
        reference = model(x)
        assert reference.std(dim=0).max() > 1e-3  # the output does depend on the image
        for name, transform in D4_TRANSFORMS.items():
            diff = (model(transform(x)) - reference).abs().max().item()
            if group == "d4" or name.startswith("rot"):
                assert diff < 1e-4, (group, name, diff)
            else:  # C8 has no reflections: a flip must change the output (the test can fail)
                assert diff > 1e-4, (group, name, diff)


@torch.no_grad()
def test_naive_pooling_would_break_invariance(e2cnn_models, monkeypatch):
    """Guard for the symmetric pooling: a plain 2x2 pool on an odd size is not rotation-safe."""
    from darklens.models import e2cnn_steerable

    monkeypatch.setattr(e2cnn_steerable, "symmetric_max_pool", lambda t: F.max_pool2d(t, 2))
    x = torch.rand(2, 1, 31, 31, generator=torch.Generator().manual_seed(0))
    model = e2cnn_models["c8"]
    assert (model(torch.rot90(x, 1, (2, 3))) - model(x)).abs().max() > 1e-4


@torch.no_grad()
def test_export_plain_matches_and_has_no_e2cnn_layers(e2cnn_models):
    from darklens.models import export_plain

    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    for model in e2cnn_models.values():
        plain = export_plain(model)
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)
        assert all(type(m).__module__.startswith(("torch.", "darklens.")) for m in plain.modules())
    # Other models come back as eval-mode copies with the same outputs.
    torch.manual_seed(0)
    dense = create_model("densenet_cbam_tiny").eval()
    torch.testing.assert_close(export_plain(dense)(x), dense(x))


def test_export_plain_keeps_the_training_mode():
    from darklens.models import export_plain

    model = create_model("e2cnn_tiny").train()
    export_plain(model)
    assert model.training and all(m.training for m in model.modules())


def test_export_plain_onnx_round_trip(e2cnn_models, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from darklens.models import export_plain

    plain = export_plain(e2cnn_models["d4"])
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    path = tmp_path / "m.onnx"
    torch.onnx.export(plain, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    torch.testing.assert_close(torch.from_numpy(got), plain(x).detach(), atol=1e-5, rtol=1e-5)


def test_e2cnn_state_dict_is_mode_independent_and_copyable():
    """e2cnn caches expanded filters per mode; training code deep-copies and reloads models."""
    import copy

    torch.manual_seed(0)
    model = create_model("e2cnn_tiny")
    keys_init = set(model.state_dict())
    keys_train = set(model.train().state_dict())
    keys_eval = set(model.eval().state_dict())
    assert keys_init == keys_train == keys_eval
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(model)(x), model(x))  # eval-mode deepcopy (EMA, BN)
        torch.manual_seed(1)
        other = create_model("e2cnn_tiny").eval()  # cached filters from other weights
        assert (other(x) - model(x)).abs().max() > 1e-3
        other.load_state_dict(model.state_dict())
        torch.testing.assert_close(other(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["e2cnn_c8", "e2cnn_d4"])
@torch.no_grad()
def test_full_e2cnn_invariance_and_export_150(name):
    from darklens.models import export_plain

    model = _trained_like(name)
    x = torch.rand(2, 1, 150, 150, generator=torch.Generator().manual_seed(0))
    reference = model(x)
    torch.testing.assert_close(export_plain(model)(x), reference, atol=1e-5, rtol=1e-5)
    for k in (1, 2, 3):
        assert (model(torch.rot90(x, k, (2, 3))) - reference).abs().max() < 1e-4


def test_e2cnn_bad_group_is_a_user_error():
    with pytest.raises(DarklensError, match="cN or dN"):
        create_model("e2cnn_tiny", group="x8")
