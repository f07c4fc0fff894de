"""CALR (Acharya et al. 2019) against a hand-made table, the paper's defaults, and the scheduler protocol."""

from __future__ import annotations

import pytest
import torch

from lmshrink.errors import LmshrinkError
from lmshrink.train.calr import CALR, calr_high, calr_lr

# steps_per_epoch 3, lr_high 1.0, lr_low 0.1, step_size 2, decay 0.5, worked out by hand:
# epoch highs 1.0, 0.5, 0.25, 0.125, then 0.0625 <= 0.1 -> restart at 1.0;
# cycle = i mod 4; rising (cycle < 2): low + cycle * (high - low) / 2; falling: high - (cycle - 2) * (high - low) / 2.
HAND = [0.55, 1.0, 0.55,  # epoch 0, high 1.0, bump 0.45
        0.1, 0.3, 0.5,  # epoch 1, high 0.5, bump 0.2
        0.175, 0.1, 0.175,  # epoch 2, high 0.25, bump 0.075
        0.125, 0.1125, 0.1,  # epoch 3, high 0.125, bump 0.0125
        0.55, 1.0]  # epoch 4: restart at high 1.0


def _opt(groups=1):
    ps = [torch.nn.Parameter(torch.zeros(2)) for _ in range(groups)]
    return torch.optim.Adam([{"params": [p]} for p in ps], lr=123.0, eps=0.01)


def test_values_match_the_hand_table():
    got = [calr_lr(i, 3, 1.0, 0.1, 2, 0.5) for i in range(1, len(HAND) + 1)]
    assert got == pytest.approx(HAND)


def test_scheduler_applies_the_table_step_by_step():
    opt = _opt()
    sched = CALR(opt, steps_per_epoch=3, lr_high=1.0, lr_low=0.1, step_size=2, decay=0.5)
    seen = []
    for _ in HAND:
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(HAND)
    assert sched.get_last_lr()[0] == pytest.approx(calr_lr(len(HAND) + 1, 3, 1.0, 0.1, 2, 0.5))


def test_paper_defaults():
    # LR_high 1e-3, LR_low = 1e-3 * 0.1**5, decay 0.1 per epoch, step 1000 (pretrain_config of the authors' code)
    assert calr_lr(1000, 10_000) == pytest.approx(1e-3)
    assert calr_lr(500, 10_000) == pytest.approx(1e-8 + 500 * (1e-3 - 1e-8) / 1000)
    assert calr_lr(2000, 10_000) == pytest.approx(1e-8)
    highs = [calr_high(e, 1e-3, 1e-8, 0.1) for e in range(7)]
    assert highs == pytest.approx([1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-3, 1e-4])  # restart once high reaches low
    sched = CALR(_opt(), steps_per_epoch=100)
    assert sched.lows[0] == pytest.approx(1e-8) and sched.step_size == 1000 and sched.decay == 0.1


def test_state_dict_resume_and_param_groups():
    opt = _opt(2)
    a = CALR(opt, steps_per_epoch=3, lr_high=[1.0, 2.0], lr_low=[0.1, 0.2], step_size=2, decay=0.5)
    for _ in range(5):
        opt.step()
        a.step()
    state = a.state_dict()
    opt2 = _opt(2)
    b = CALR(opt2, steps_per_epoch=3, lr_high=[1.0, 2.0], lr_low=[0.1, 0.2], step_size=2, decay=0.5)
    b.load_state_dict(state)
    opt2.step()
    b.step()
    opt.step()
    a.step()
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx([g["lr"] for g in opt.param_groups])
    assert opt.param_groups[1]["lr"] == pytest.approx(2 * opt.param_groups[0]["lr"])  # scaled table


@pytest.mark.parametrize("kw,msg", [(dict(steps_per_epoch=0), "steps_per_epoch"), (dict(steps_per_epoch=3, decay=1.5), "decay"),
                                    (dict(steps_per_epoch=3, lr_high=1e-3, lr_low=1e-2), "lr_low"),
                                    (dict(steps_per_epoch=3, step_size=0), "step_size")])
def test_bad_arguments(kw, msg):
    with pytest.raises(LmshrinkError, match=msg):
        CALR(_opt(), **kw)
