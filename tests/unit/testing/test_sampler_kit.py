"""The sampler kit fails each seeded multistep defect with the check that names it, and shows the
author's own traceback."""

from __future__ import annotations

import pytest

from elfkit.components.samplers import DpmppConfig, DpmppSampler, EulerConfig, EulerSampler
from elfkit.testing import ConformanceError, check_sampler
from elfkit.testing.sampler_kit import ORDER_STEPS, convergence_errors, measured_order
from tests.fixtures.broken_samplers import (
    BareAssert,
    ClampedLastStep,
    ExtrapolatedSelfCond,
    ExtrapolatedXHat,
    Naive2M,
    NanOnTies,
    ResetsStatePerCall,
    WrongSignSecondOrder,
)


def test_the_defect_free_reference_passes():
    assert "order" in check_sampler(Naive2M, transport=False)


@pytest.mark.parametrize("broken, check, says", [
    (ExtrapolatedSelfCond, "self-conditioning", "the previous call's x̂ exactly"),
    (ExtrapolatedXHat, "x_hat", "the last call's x̂"),
    (WrongSignSecondOrder, "order", "declares order 2"),
    (NanOnTies, "grids", "a tie in the middle"),
    (ResetsStatePerCall, "stateless", "per-run state on `self`"),
    (ClampedLastStep, "ends-at-x̂", "points above 0.95"),
])
def test_each_seeded_defect_fails_its_named_check(broken, check, says):
    with pytest.raises(ConformanceError) as err:
        check_sampler(broken, transport=False)
    message = str(err.value)
    assert message.startswith(f"[{check}]"), message
    assert says in message, message
    assert "expected" in message or "raised" in message, message


def test_a_state_reset_per_call_shows_its_crash_and_the_authors_frame():
    with pytest.raises(ConformanceError) as err:
        check_sampler(ResetsStatePerCall, transport=False)
    message = str(err.value)
    assert "RuntimeError" in message and "broken_samplers.py" in message and "x_prev" in message


def test_a_bare_assert_shows_the_check_and_the_authors_source_line():
    with pytest.raises(ConformanceError) as err:
        check_sampler(BareAssert, transport=False)
    message = str(err.value)
    assert message.startswith("[calls]") and "AssertionError" in message
    assert "assert grid.numel() > 2" in message and "broken_samplers.py" in message
    assert "sampler_kit.py" not in message            # the kit's own frames are left out


def test_measured_order_of_the_builtins():
    euler = measured_order(ORDER_STEPS, convergence_errors(EulerSampler(EulerConfig())))
    dpm = measured_order(ORDER_STEPS, convergence_errors(DpmppSampler(DpmppConfig())))
    assert 0.9 < euler < 1.1 and dpm > 1.5, (euler, dpm)


def test_measured_order_is_the_slope():
    assert measured_order([10, 20, 40], [1.0, 0.25, 0.0625]) == pytest.approx(2.0)
