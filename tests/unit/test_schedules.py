import math

import pytest
import torch

from genlora_pl.schedules import Schedule, WarmupDecay


def test_schedule_values_at_given_steps():
    linear = Schedule("linear", start=0.0, end=1.0, fraction=0.5)
    assert [linear.value(s, 100) for s in (0, 25, 50, 80)] == [0.0, 0.5, 1.0, 1.0]
    cosine = Schedule("cosine", start=4.0, end=1.0, fraction=1.0)
    assert cosine.value(0, 10) == 4.0
    assert cosine.value(5, 10) == pytest.approx(2.5)
    assert cosine.value(10, 10) == pytest.approx(1.0)
    assert Schedule("constant", start=2.0, end=9.0).value(7, 10) == 2.0
    assert linear.value(10, math.inf) == 0.0  # unknown length: stays at start


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"kind": "step"}, "kind='step'"), ({"fraction": 0.0}, "fraction=0.0"), ({"end": math.nan}, "end=nan")],
)
def test_bad_schedules(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        Schedule(**kwargs)


def test_warmup_decay_follows_total_steps():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupDecay(opt, warmup_fraction=0.2, decay="linear")
    sched.set_total_steps(10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[-1] == pytest.approx(1 / 8)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:], strict=False))
