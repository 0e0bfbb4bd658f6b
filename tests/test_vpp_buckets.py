"""vpp_buckets: VPP's load-balance normalisation, ported, and the weights that make VPP's
spread follow the model's. The port is checked against what a real VPP 25.10 holds in
tests/test_vpp_integration.py (`test_vpp_holds_the_buckets_the_port_predicts`)."""

from __future__ import annotations

import time
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from srv6ctl.dataplane.vpp_buckets import (
    LB_MAX_BUCKETS,
    apportion,
    fair,
    max_pow2,
    vpp_buckets,
    vpp_weights,
)

weights_lists = st.lists(st.integers(1, 1000), min_size=1, max_size=300).map(tuple)
skewed = st.lists(st.sampled_from([1, 2, 3, 5, 100, 1000]), min_size=1, max_size=300).map(tuple)


def test_max_pow2_as_vppinfra() -> None:
    assert [max_pow2(n) for n in (1, 2, 3, 4, 5, 40, 64, 65)] == [1, 2, 4, 4, 8, 64, 64, 128]


def test_the_issue_40_equal_lists_give_the_first_the_remainder() -> None:
    # Issue 17: 128 = 40 x 3 + 8, and VPP gives the 8 to the first path.
    buckets = vpp_buckets((1,) * 40)
    assert sum(buckets) == 128
    assert buckets[0] == 11 and set(buckets[1:]) == {3}
    assert not fair(buckets, (1,) * 40)


def test_fast_paths_and_what_a_real_vpp_showed() -> None:
    assert vpp_buckets((7,)) == (1,)
    assert vpp_buckets((5, 5)) == (1, 1)
    assert vpp_buckets((3, 1)) == (3, 1)  # 4 buckets, exactly
    assert vpp_buckets((1, 3)) == (1, 3)
    # `show ip6 fib` of a policy with lists of weight 1, 2, 3 (VPP 25.10): 8 buckets.
    assert vpp_buckets((1, 2, 3)) == (1, 3, 4)


def test_two_unequal_paths_take_the_general_way() -> None:
    # Weights 1 and 2: 2 and 4 buckets err by 2/3 of a bucket in all (> 0.1 per bucket);
    # 8 buckets by 2/3 (<= 0.8): 3 and 5.
    assert vpp_buckets((1, 2)) == (3, 5)
    assert vpp_buckets((2, 1)) == (5, 3)


def test_forty_equal_lists_get_three_or_four_of_128() -> None:
    weights = vpp_weights((1,) * 40)
    buckets = vpp_buckets(weights)
    assert buckets == weights and sum(buckets) == 128
    assert Counter(buckets) == {3: 32, 4: 8}
    assert fair(buckets, (1,) * 40)


def test_weights_one_to_forty() -> None:
    model = tuple(range(1, 41))
    assert not fair(vpp_buckets(model), model)
    held = vpp_weights(model)
    assert fair(vpp_buckets(held), model)


def test_apportion_is_largest_remainder_and_gives_each_one() -> None:
    assert apportion((1, 1, 1), 8) == (3, 3, 2)  # ties: the earlier path
    assert apportion((1, 2, 3), 8) == (1, 3, 4)  # quotas 1.33, 2.67, 4
    assert apportion((1, 1000), 4) == (1, 3)  # a weight gets at least one bucket
    assert apportion((5,) * 3, 6) == (2, 2, 2)


@given(weights_lists, st.integers(0, 5))
def test_apportion_sums_and_is_within_one(weights: tuple[int, ...], extra: int) -> None:
    total = max_pow2(len(weights)) << extra
    counts = apportion(weights, total)
    assert sum(counts) == total and min(counts) >= 1
    if all(total * w >= sum(weights) for w in weights):  # every quota at least one
        assert fair(counts, weights)


@settings(max_examples=300)
@given(st.one_of(weights_lists, skewed, st.integers(1, 300).map(lambda n: (1,) * n)))
def test_vpp_spreads_the_held_weights_fairly_and_they_are_their_own_answer(
    weights: tuple[int, ...],
) -> None:
    held = vpp_weights(weights)
    assert len(held) == len(weights) and min(held) >= 1
    buckets = vpp_buckets(held)
    assert sum(buckets) <= LB_MAX_BUCKETS
    assert fair(buckets, weights), (weights, held, buckets)
    assert vpp_weights(held) == held  # idempotent: a dump of it plans nothing
    if fair(vpp_buckets(weights), weights):
        assert held == weights  # what VPP already spreads fairly is left alone


@given(st.lists(st.integers(1, 50), min_size=3, max_size=40))
def test_the_order_among_equal_weights_changes_no_count(weights: list[int]) -> None:
    """VPP's qsort orders equal weights its own way: the counts per weight are the same."""
    forward = vpp_buckets(tuple(weights))
    backward = vpp_buckets(tuple(reversed(weights)))

    def per_weight(ws: list[int], bs: tuple[int, ...]) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for w, b in zip(ws, bs, strict=True):
            out.setdefault(w, []).append(b)
        return {w: sorted(b) for w, b in out.items()}

    assert per_weight(weights, forward) == per_weight(weights[::-1], backward)


def test_more_paths_than_buckets_are_cut_off() -> None:
    buckets = vpp_buckets((1,) * (LB_MAX_BUCKETS + 5))
    assert sum(buckets) == LB_MAX_BUCKETS and buckets.count(0) == 5
    assert vpp_weights((1,) * (LB_MAX_BUCKETS + 5)) == (1,) * (LB_MAX_BUCKETS + 5)


def test_ten_thousand_services_of_ten_lists_stay_cheap() -> None:
    """The agent maps every policy at each full pass: memoised on the weight tuple."""
    vpp_weights.cache_clear()
    started = time.perf_counter()
    for _ in range(10_000):
        vpp_weights((1,) * 10)
    same = time.perf_counter() - started
    distinct = [tuple((i * 7 + k * 13) % 97 + 1 for k in range(10)) for i in range(1_000)]
    started = time.perf_counter()
    for weights in distinct:
        vpp_weights(weights)
    fresh = time.perf_counter() - started
    assert same < 0.1, same  # measured ~3 ms
    assert fresh < 1.0, fresh  # ~30 ms for 1,000 distinct tuples
