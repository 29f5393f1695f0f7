"""The TF32 flags are process-wide: concurrent diagnoses (the dashboard's background weight job next to a page's
diagnosis) must leave the user's own settings as they found them, and never run under the other precision."""
import threading

import torch

from plasticity_core.metrics import precision_policy


def _flags():
    return torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


def _user_flags(prec: str, cudnn: bool) -> None:
    torch.set_float32_matmul_precision(prec)
    torch.backends.cudnn.allow_tf32 = cudnn


def test_overlapping_blocks_in_two_threads_restore_the_users_flags():
    saved = _flags()
    try:
        _user_flags("medium", True)  # the user's own choice, neither of the policy's
        user = _flags()
        inside, release = threading.Event(), threading.Event()
        seen = {}

        def background():
            with precision_policy("exact"):
                inside.set()
                release.wait(10)
                seen["background"] = _flags()

        t = threading.Thread(target=background)
        t.start()
        assert inside.wait(10)
        with precision_policy("exact"):  # enters while the background block is inside, leaves first
            seen["main"] = _flags()
        assert _flags()[0] == "highest"  # the background block still runs exact after the main one left
        release.set()
        t.join(10)
        assert seen["main"] == seen["background"] == ("highest", False, False)
        assert _flags() == user  # the last one out restored the user's settings, not an intermediate state
    finally:
        _user_flags(saved[0], saved[2])
        torch.backends.cuda.matmul.allow_tf32 = saved[1]


def test_a_block_of_the_other_precision_waits_for_the_running_ones():
    saved = _flags()
    order, inside, release = [], threading.Event(), threading.Event()

    def exact():
        with precision_policy("exact"):
            inside.set()
            release.wait(10)
            order.append(("exact", _flags()))

    def fast():
        with precision_policy("fast"):
            order.append(("fast", _flags()))

    a = threading.Thread(target=exact)
    a.start()
    assert inside.wait(10)
    b = threading.Thread(target=fast)
    b.start()
    b.join(0.3)
    assert b.is_alive() and order == []  # waiting: it would have switched TF32 on under the exact block
    release.set()
    a.join(10)
    b.join(10)
    assert order == [("exact", ("highest", False, False)), ("fast", ("high", True, True))]
    assert _flags() == saved


def test_nested_in_one_thread_sets_and_restores_around_itself():
    saved = _flags()
    with precision_policy("exact"):
        with precision_policy("fast"):
            assert _flags() == ("high", True, True)
        assert _flags() == ("highest", False, False)
    assert _flags() == saved


def test_a_users_medium_precision_survives_repeated_diagnoses():
    """Lightning recommends torch.set_float32_matmul_precision("medium"): restoring it used to write the legacy
    allow_tf32 flag after it, a mixed state in which the next diagnosis (and the user's own
    get_float32_matmul_precision) raised."""
    from plasticity_core.metrics import diagnose

    saved = _flags()
    try:
        torch.set_float32_matmul_precision("medium")
        m = torch.nn.Sequential(torch.nn.Linear(4, 3))
        for _ in range(2):
            diagnose(m, [], metrics=["fro_norm"])
            assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[2]
