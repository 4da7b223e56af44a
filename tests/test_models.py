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
        self.maxpool = nn.AdaptiveMaxPool2d((1))
        self.avgpool = nn.AdaptiveAvgPool2d((1))
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

        self.pool = nn.AdaptiveAvgPool2d((1))

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
    exact = create_model("densenet_cbam", seed_exact=True)
    fixed = create_model("densenet_cbam")
    # Same state_dict keys as the notebook: its .pth weights load unchanged.
    exact.load_state_dict(reference.state_dict(), strict=True)
    fixed.load_state_dict(reference.state_dict(), strict=True)

    # Train mode (batch statistics): at random init, eval-mode BN with unit running stats makes
    # the logits almost input-independent, which would hide any difference.
    x = torch.rand(4, 1, 150, 150, generator=torch.Generator().manual_seed(2)) - 0.5
    want = reference(x)
    assert want.std(dim=0).min() > 0.05  # the logits do depend on the input
    torch.testing.assert_close(exact(x), want, rtol=1e-5, atol=1e-6)
    # The fixed spatial attention (channel mean as the avg input) must change the output.
    assert (fixed(x) - want).abs().max() > 1e-2

    # Eval mode with the running statistics the pass above accumulated (identically in both).
    for m in (reference, exact):
        m.eval()
    torch.testing.assert_close(exact(x), reference(x), rtol=1e-5, atol=1e-6)


def test_spatial_attention_avg_input_is_channel_mean():
    from darklens.models.densenet_cbam import SpatialAttention

    block = SpatialAttention()
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.weight[0, 1, 3, 3] = 1.0  # only the centre tap of the avg input
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(block(x), torch.sigmoid(x.mean(dim=1, keepdim=True)))


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
@pytest.mark.parametrize("size", [150, 64, 32])
def test_tiny_models_forward_backward(name, size):
    torch.manual_seed(0)
    model = create_model(name, in_chans=1, num_classes=3)
    x = torch.randn(2, 1, size, size)
    logits = model(x)
    assert logits.shape == (2, 3)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


def test_tiny_is_much_smaller_than_full():
    for name in TINY:
        assert n_params(create_model(name)) < 200_000, name
