"""The cost of a factorized conv chain, beside the core's per-op costs (foldpass/cost.py): what
the low-rank pass compares with the conv's own parameters and MACs before it factorizes."""

from __future__ import annotations


def chain_cost(method: str, rank, o, i, kh, kw, hin_win, hout_win, hout_wout) -> tuple[int, int]:
    """(parameters, MACs per sample) of the factorized chain."""
    if method == "tucker":
        ro, ri = rank
        return i * ri + ro * ri * kh * kw + o * ro, hin_win * i * ri + hout_wout * (ro * ri * kh * kw + o * ro)
    if method == "cp":
        (r,) = rank
        return r * (i + kh + kw + o), hin_win * i * r + hout_win * r * kh + hout_wout * r * (kw + o)
    r1, r2, r3 = rank
    return (i * r1 + r1 * kh * r2 + r2 * kw * r3 + r3 * o,
            hin_win * i * r1 + hout_win * r1 * r2 * kh + hout_wout * (r2 * r3 * kw + r3 * o))
