"""cbp: arms a step callback; replaces units at the configured rate, only after maturity; cleans up hooks."""
import math

import torch
from torch import nn

import plasticity_core as pc
from plasticity_core.hooks import hook_count

RATE, MATURITY, STEPS = 0.05, 5, 30


def net():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
    return m


def expected_counts(units, steps):
    """Hand simulation of ages and the replacement accumulator (which units are replaced does not matter)."""
    ages, acc, out = [0] * units, 0.0, []
    for _ in range(steps):
        ages = [a + 1 for a in ages]
        eligible = [i for i, a in enumerate(ages) if a > MATURITY]
        acc += RATE * len(eligible)
        n = math.floor(acc)
        acc -= n
        for i in eligible[:n]:
            ages[i] = 0
        out.append(n)
    return out


def test_cbp_replaces_at_the_configured_rate_only_after_maturity():
    m = net()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    cfg = pc.ReinitConfig(strategy="cbp", params={"replacement_rate": RATE, "maturity": MATURITY})
    r = pc.apply_reinit(m, cfg)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # arming changes nothing
    cb = r.step_callback
    assert list(r.table.layer) == ["0"] and "2" in set(r.skipped.layer)  # "2" feeds the head: no unit pair
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    got = []
    with cb:
        for step in range(STEPS):
            x = torch.randn(32, 8, generator=g)
            loss = nn.functional.cross_entropy(m(x), torch.randint(0, 3, (32,), generator=g))
            opt.zero_grad()
            loss.backward()
            opt.step()
            n = cb(m, opt, step)
            got.append(n)
            zero_cols = (m[2].weight == 0).all(dim=0)
            assert int(zero_cols.sum()) == n  # outgoing weights of exactly the replaced units are zero
            if n:
                assert (opt.state[m[2].weight]["momentum_buffer"][:, zero_cols] == 0).all()
                assert (opt.state[m[0].weight]["momentum_buffer"][zero_cols] == 0).all()
    assert got[:MATURITY] == [0] * MATURITY
    assert got == expected_counts(16, STEPS) and sum(got) > 0
    assert cb.replaced() == {"0": sum(got)}
    assert hook_count(m) == 0


def test_cbp_ignores_eval_forwards_and_preview_returns_no_callback():
    m = net()
    cb = pc.apply_reinit(m, pc.ReinitConfig(strategy="cbp", params={"maturity": 0, "replacement_rate": 1.0})).step_callback
    m.eval()
    m(torch.randn(4, 8))
    assert cb(m, None, 0) == 0  # no training forward since the last step: nothing to score
    cb.close()
    r = pc.preview_reinit(m, pc.ReinitConfig(strategy="cbp"))
    assert r.step_callback is None and hook_count(m) == 0
