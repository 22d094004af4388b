"""
The statistics of the laptop claims (paper/results/claims-v2/PLAN.md): paired differences over
seeds, tested twice, by Student's t and by an exact sign-flip (permutation) test, one-sided or as
two one-sided tests (TOST) against an equivalence margin; Holm's step-down adjustment over a family
of p values. scipy.stats does the tests (paper/'s optional dependency, as matplotlib is for the
figures); this module only names them for the plan's words.
"""
import math

import numpy as np


def _stats():
    try:
        import scipy.stats
    except ImportError:
        raise RuntimeError("the verdicts need scipy: pip install scipy") from None
    return scipy.stats


def t_cdf(t, df):
    """P(T <= t) for Student's t with df degrees of freedom."""
    return float(_stats().t.cdf(t, df))


def t_ppf(q, df):
    """The q-quantile of Student's t with df degrees of freedom."""
    return float(_stats().t.ppf(q, df))


def t_test(d, alternative, null=0.0):
    """One-sided one-sample t-test of the mean of the paired differences d against `null`:
    alternative "greater" (mean > null) or "less". n - 1 degrees of freedom. Returns its p (1 for a
    constant d on the null's side, 0 beyond)."""
    d = np.asarray(d, dtype=float) - null
    if np.ptp(d) == 0:  # no spread: t is infinite (or undefined at 0); scipy returns nan there
        m = d[0]
        return float(m <= 0) if alternative == "greater" else float(m >= 0)
    return float(_stats().ttest_1samp(d, 0.0, alternative=alternative).pvalue)


def sign_flip_test(d, alternative, null=0.0):
    """The exact one-sided sign-flip test of the mean of d - null: each of the 2^n sign patterns of
    the differences equally likely under the null (each difference symmetric about it). Its smallest
    p is 2^-n (1/32 at n = 5). scipy.stats.permutation_test's exact p, its tolerance for ties; the
    2^n sums built here by doubling, as scipy lists the patterns in Python (slow at n = 19)."""
    d = np.asarray(d, dtype=float) - null
    sums = np.zeros(1)
    for x in d:  # every sign pattern's sum: (+x, -x) appended to each sum so far
        sums = np.concatenate([sums + x, sums - x])
    observed = d.sum()
    tie = 100 * np.finfo(float).eps * abs(observed)  # scipy's: equal within 100 eps, relative
    hits = sums >= observed - tie if alternative == "greater" else sums <= observed + tie
    return float(hits.mean())


def interval(d, level=0.95):
    """The two-sided t interval of the mean of d at `level`: (low, high)."""
    d = np.asarray(d, dtype=float)
    n, m = len(d), float(d.mean())
    half = _stats().t.ppf(0.5 + level / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return m - half, m + half


def holm(p):
    """Holm's step-down adjusted p values (the same order as p): the k-th smallest times
    (m - k + 1), made non-decreasing along that order, capped at 1. A hypothesis is rejected at
    level a when its adjusted p < a."""
    order = sorted(range(len(p)), key=lambda i: p[i])
    adj, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        adj[i] = running
    return adj
