"""How VPP spreads a policy's segment lists over its load-balance buckets, and the weights
that make that spread follow the model's (no I/O).

VPP 25.10 builds an SR policy's load balance from its lists' weights (`update_lb` in
src/vnet/srv6/sr_policy_rewrite.c) with `ip_multipath_normalize_next_hops`
(src/vnet/dpo/load_balance.c): it tries power-of-two bucket counts from the number of
paths up, each path gets its weight's share rounded to the nearest bucket, and the first
count whose total rounding error is at most 0.1 bucket per bucket wins — *whatever the
error of one path*, because the rounding remainder all goes to one path. 40 equal lists
get 128 buckets, 3 each, and the first list the 8 left over: 11 (8.6 % of the flows
instead of 2.5 %).

`vpp_buckets` is a faithful port of that normalisation. `vpp_weights` chooses the weights
to give VPP instead: the model's own when VPP already spreads them to within one bucket
of each list's share, else the model's shares apportioned to a power-of-two total whose
spread by VPP is fair. "Within one bucket" is `fair`: each list holds its share
of the buckets rounded down or up.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from functools import lru_cache

LB_MAX_BUCKETS = 8192  # load_balance.h
ERROR_TOLERANCE = 0.1  # load_balance.c: multipath_next_hop_error_tolerance


def max_pow2(n: int) -> int:
    """vppinfra's `max_pow2`: the smallest power of two >= n (n >= 1)."""
    return 1 << (n - 1).bit_length()


def vpp_buckets(weights: Sequence[int]) -> tuple[int, ...]:
    """The buckets VPP gives each path of a load balance with these weights, in the order
    given (a port of `ip_multipath_normalize_next_hops`, float arithmetic and all).

    VPP sorts the paths by weight with `qsort`, whose order among equal weights is the C
    library's; here they keep the order given. Equal weights have equal shares, so which of
    them takes the remainder (or is cut short) changes no count's fairness, only its name.
    """
    n = len(weights)
    if n == 0:
        raise ValueError("a load balance needs at least one path")
    if n == 1:
        return (1,)  # the n == 1 fast path: one bucket
    if n == 2:
        if weights[0] == weights[1]:
            return (1, 1)  # the equal-cost fast path: two buckets
        # The fast sort puts the heavier path first (cmp = w0 - w1 < 0 picks raw[1]).
        order = [1, 0] if weights[0] < weights[1] else [0, 1]
    else:
        order = sorted(range(n), key=lambda i: weights[i])  # next_hop_sort_by_weight
    saved = [weights[i] for i in order]
    total = sum(saved)
    if total == 0:  # all weights 0: each counts as 1
        saved = [1] * n
        total = n
    n_adj = min(max_pow2(n), LB_MAX_BUCKETS)
    while True:
        error = 0.0
        norm = n_adj / float(total)
        left = n_adj
        counts = [0] * n
        kept = n
        for i, weight in enumerate(saved):
            nf = weight * norm
            count = min(int(nf + 0.5), left)  # flt_round_nearest, then what is left
            left -= count
            error += abs(nf - count)
            counts[i] = count
            if count == 0:
                # A path with no bucket: this count is never good enough (but at the
                # maximum, where the paths from here on are cut off).
                error = float(n_adj)
                kept = i
                break
        counts[0] += left  # the whole rounding remainder to the first path
        if error <= ERROR_TOLERANCE * n_adj or n_adj >= LB_MAX_BUCKETS:
            if kept < n:
                counts[kept:] = [0] * (n - kept)  # "truncating" (vlib_log_err)
            break
        n_adj *= 2
    out = [0] * n
    for position, index in enumerate(order):
        out[index] = counts[position]
    return tuple(out)


def fair(buckets: Sequence[int], weights: Sequence[int]) -> bool:
    """Each path holds its weight's share of all the buckets rounded down or up: within
    one bucket (|b/B - w/W| < 1/B, in integers)."""
    total_buckets = sum(buckets)
    total_weight = sum(weights)
    return all(
        abs(b * total_weight - total_buckets * w) < total_weight
        for b, w in zip(buckets, weights, strict=True)
    )


def apportion(weights: Sequence[int], total: int) -> tuple[int, ...]:
    """`total` split by `weights` with the largest remainder method, every path at least
    one (a list with a weight must get some traffic): the quotas rounded down, then the
    buckets left over to the largest remainders (ties: the earlier path). If the minimum
    of one overdraws `total`, the paths furthest above their quota give back, one bucket
    at a time."""
    n = len(weights)
    if total < n:
        raise ValueError(f"{total} buckets cannot give each of {n} paths one")
    weight_sum = sum(weights)
    counts = [max(1, total * w // weight_sum) for w in weights]
    # total*w - count*weight_sum: how far above its count a path's quota is (in 1/weight_sum)
    surplus = [total * w - c * weight_sum for w, c in zip(weights, counts, strict=True)]
    left = total - sum(counts)
    if left > 0:
        for i in sorted(range(n), key=lambda i: (-surplus[i], i))[:left]:
            counts[i] += 1
    else:
        # Give back one at a time, each from the path then furthest above its quota.
        givers = [(surplus[i], i) for i in range(n) if counts[i] > 1]
        heapq.heapify(givers)
        while left < 0:
            below, i = heapq.heappop(givers)
            counts[i] -= 1
            left += 1
            if counts[i] > 1:
                heapq.heappush(givers, (below + weight_sum, i))
    return tuple(counts)


@lru_cache(maxsize=1 << 16)
def vpp_weights(weights: tuple[int, ...]) -> tuple[int, ...]:
    """The weights to give VPP for lists of these model weights (in the same order).

    The model's own when VPP spreads them fairly. Otherwise their apportionment to a
    power-of-two total P whose spread by VPP is fair both to the model's weights and to
    the apportioned ones themselves: VPP then holds weights that are their own answer, so
    `vpp_weights(vpp_weights(m)) == vpp_weights(m)` — a policy read back from VPP plans no
    change.

    Which P: the smallest from the bucket count VPP would use for the model's weights up
    to its maximum (8192) — fewer buckets would make each one a bigger slice of the
    traffic (40 equal lists hold 3 or 4 of 128 buckets, 2.3 % or 3.1 %; in 64 they would
    hold 1 or 2: 1.6 % or 3.1 %). Failing that, the smallest from the number of lists up:
    VPP stops at the first bucket count whose *total* rounding error is small, so for an
    apportionment to many buckets it may stop at a coarser count, where rounding every
    half up and cutting the heaviest path short is unfair (weights 1..40: nothing from
    512 up is fair, 64 is). Each P is tried as the apportionment itself and `_pinned`.

    Where no P is fair, the model's own weights. That takes more lists than 8192, or a
    skew where even 8192 buckets give several light lists less than one bucket each:
    each must still hold one (a list VPP gives no bucket gets no traffic at all), and the
    heavy lists cannot pay for it within a bucket (weights 1 x7 and 5000 x2). Up to 300
    lists of weights 1..1000 always find one (tests/test_vpp_buckets.py).
    """
    if not weights:
        return weights
    own = vpp_buckets(weights)
    if fair(own, weights):
        return weights
    smallest = max_pow2(len(weights))
    first = max(smallest, sum(own))
    totals = [*_powers(first, LB_MAX_BUCKETS), *_powers(smallest, first // 2)]
    for total in totals:
        counts = apportion(weights, total)
        for candidate in (counts, _pinned(counts)):
            buckets = vpp_buckets(candidate)
            if fair(buckets, weights) and fair(buckets, candidate):
                return candidate
    return weights


def _pinned(counts: tuple[int, ...]) -> tuple[int, ...]:
    """`counts` (summing to P) as weights that VPP cannot spread over fewer than P buckets,
    if some list holds one bucket: every count times K, and those lists at K - 1.

    VPP gives up on a bucket count that leaves a path without a bucket. A list at K - 1 has
    a share just under 1/P (P > the k lists of one bucket): one bucket of P, none of P/2.
    The others' shares grow by k/(KP - k): with K > 2k + 1 still under half a bucket, so
    each rounds to its count. Without it VPP may stop at P/2, where every list of one bucket
    still rounds up to one and the heaviest list is cut short by as many (weights 1, 1, 1,
    100: 1, 1, 1, 61 of 64 whatever P is asked for; pinned at 128: 1, 1, 1, 125)."""
    ones = counts.count(1)
    if not ones:
        return counts
    scale = max_pow2(2 * ones + 2)
    return tuple(scale - 1 if c == 1 else scale * c for c in counts)


def _powers(low: int, high: int) -> list[int]:
    """The powers of two from `low` (one) to `high`."""
    out = []
    while low <= high:
        out.append(low)
        low *= 2
    return out


__all__ = [
    "ERROR_TOLERANCE",
    "LB_MAX_BUCKETS",
    "apportion",
    "fair",
    "max_pow2",
    "vpp_buckets",
    "vpp_weights",
]
