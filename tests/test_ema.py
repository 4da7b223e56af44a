"""EMA of weights across train/eval switches, including e2cnn's eval-mode filter caches."""

import copy

import torch

from darklens.checkpoint import clean_state_dict
from darklens.models import create_model
from darklens.training.loop import EMA


def _step(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))


def test_ema_survives_eval_between_updates_and_evaluates_current_average():
    torch.manual_seed(0)
    model = create_model("e2cnn_tiny").train()
    ema = EMA(model, decay=0.5)
    x = torch.rand(2, 1, 32, 32)
    for _ in range(3):  # update, evaluate (eval mode caches filters), update again
        _step(model)
        ema.update(model)
        ema.module.eval()
        with torch.no_grad():
            got = ema.module(x)
        # a fresh model given the average's weights must give the same outputs: the cached
        # filter is the current average's, not the one of the first eval
        fresh = create_model("e2cnn_tiny")
        fresh.load_state_dict(clean_state_dict(ema.module))
        with torch.no_grad():
            torch.testing.assert_close(fresh.eval()(x), got)
    assert set(ema.state_dict()) == set(create_model("e2cnn_tiny").state_dict())


def test_ema_average_is_the_lerp_of_weights():
    torch.manual_seed(0)
    model = create_model("resnet_tiny").train()
    start = copy.deepcopy(model)
    ema = EMA(model, decay=0.9)
    _step(model)
    ema.update(model)  # first update: warm-up decay min(0.9, 2/11)
    d = 2 / 11
    for (name, p0), p1, pe in zip(start.named_parameters(), model.parameters(),
                                  ema.module.parameters()):
        torch.testing.assert_close(pe, d * p0 + (1 - d) * p1, msg=name)
