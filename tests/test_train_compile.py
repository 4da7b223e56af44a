"""The torch.compile guard: a compiled module that misbehaves on the trial step is not used."""

import pytest
import torch

from darklens import train as train_mod
from darklens.models import create_model
from darklens.training import distributed

SINGLE = distributed.DistInfo()


class _Broken(torch.nn.Module):
    def __init__(self, inner, fault):
        super().__init__()
        self.inner, self.fault = inner, fault

    def forward(self, x):
        out = self.inner(x)
        if self.fault == "nan":
            return out * float("nan")
        if self.fault == "raise":
            raise RuntimeError("inductor exploded")
        return out + 100.0  # "wrong"


def _config():
    return train_mod.build_config(recipe="fast", model="resnet_tiny", epochs=1, batch=4, lr=None,
                                  seed=0, overrides={})


@pytest.mark.parametrize("fault", ["nan", "raise", "wrong"])
def test_misbehaving_compile_falls_back_to_eager(monkeypatch, fault):
    net = create_model("resnet_tiny")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    monkeypatch.setattr(torch, "compile", lambda m, **kw: _Broken(m, fault))
    with pytest.warns(UserWarning, match="torch.compile rejected"):
        got, used = train_mod._try_compile(net, torch.device("cpu"), _config(), 4, [32, 32],
                                           SINGLE)
    assert got is net and not used
    for k, v in net.state_dict().items():  # the trial left weights and BN statistics alone
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())


def test_faithful_compile_is_kept(monkeypatch):
    net = create_model("resnet_tiny")
    wrapped = _Broken(net, "none")
    wrapped.forward = net.forward  # behaves exactly like eager
    monkeypatch.setattr(torch, "compile", lambda m, **kw: wrapped)
    got, used = train_mod._try_compile(net, torch.device("cpu"), _config(), 4, [32, 32], SINGLE)
    assert got is wrapped and used


def test_one_ranks_failed_compile_makes_every_rank_eager(monkeypatch):
    """Under DDP a rank whose trial passed still trains eagerly when another rank's failed."""
    net = create_model("resnet_tiny")
    wrapped = _Broken(net, "none")
    wrapped.forward = net.forward
    monkeypatch.setattr(torch, "compile", lambda m, **kw: wrapped)
    monkeypatch.setattr(distributed, "any_rank", lambda flag, info, device: True)
    with pytest.warns(UserWarning, match="failed on another rank"):
        got, used = train_mod._try_compile(net, torch.device("cpu"), _config(), 4, [32, 32],
                                           SINGLE)
    assert got is net and not used
