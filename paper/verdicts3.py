"""
The v3 verdicts of the laptop claims, as paper/results/claims-v3/PLAN.md says: v2's tests and words
(paper/verdicts.py: paired by seed, Student's t and the exact sign-flip test, Holm over one family, direction first,
"learns" against the stronger random init, one collapse rule), with every contrast of rows.CLAIMS_V3 tested and in
the family but C10 (ImageNet only), C1's verdict naming what it shows, and three columns beside each verdict that
decide nothing: whether each row learns (rule 1), the regime gate, and the run's budget beside the paper's. The
confirmation's size comes from a power rule fixed before its first run (`sizes`, CONFIRMATION.md).

    python -m paper.verdicts3 exploratory              # seeds 0-4: the v3 report (--write FILE)
    python -m paper.verdicts3 confirmation             # the confirmation's seeds, judged alone
    python -m paper.verdicts3 size --jobs 2            # CONFIRMATION.md's numbers from the seed 0-4 results
    python -m paper.verdicts3 readme                   # the README's table of the confirmation
    python -m paper.verdicts3 figure                   # its figure: claims-v3/confirmation.png (--write FILE)
"""
import argparse
import math
import os
import re
import shlex
import statistics
import sys

from directpred import COLLAPSE_ERANK, looks_collapsed
from paper import stats
from paper.report import load_results, run_config
from paper.rows import CLAIMS, CLAIMS_V3, PAPER_LR_WD, paper_effect, row, runs_row
from paper.verdicts import (ALPHA, PAPER_STEPS, contrast as v2_contrast, hypotheses, inits_of, judge, learns,
                            mean_ci, p_cell, points)

# where each set of seeds is read from: folders merged seed by seed (a later folder's file wins), without the rows
# NOT_READ names for a folder (../claims' t1-optimal ran an estimator neither of the authors' rules: its README)
EXPLORATORY = ("paper/results/claims", "paper/results/claims-v3/exploratory")
CONFIRMATION = ("paper/results/claims-v2", "paper/results/claims-v3/confirmation")
NOT_READ = {"paper/results/claims": ("t1-optimal",)}
POWER = 0.8  # the confirmation's power at a true difference of DELTA (one-sided, at ALPHA / m)
DELTA = {"points": 1.0, "rank": 1.0, "z_std": 0.05, "align": 0.05}  # the difference each contrast is sized for
CAP_HOURS = 12.0  # the confirmation's runs, two side by side, on the 2-core machine


def load(folders):
    """({row id: {seed: result}} without diverged runs, {seed: init}) from result folders, merged seed by seed."""
    runs, base = {}, {}
    for folder in folders:
        got, b = load_results(folder)
        for rid, res in got.items():
            if rid not in NOT_READ.get(folder, ()):
                runs.setdefault(rid, {}).update(res)
        base.update(b)
    runs = {rid: {s: v for s, v in got.items() if "diverged" not in v} for rid, got in runs.items()}
    return runs, inits_of(base)


def rows_of(c):
    """The row ids a contrast reads (their runs' rows), "random" aside."""
    ids = [c[k] for k in ("collapse", "align", "a", "b") if k in c and c[k] != "random"]
    return [runs_row(row(rid), "laptop") or rid for rid in ids]


def budget(res):
    """(steps, summed lr x wd) of one result's run, from its command."""
    cfg = run_config(shlex.split(res["command"]))
    return res["steps"], res["steps"] * cfg["lr"] * cfg["wd"]


def budgets(c, runs):
    """{row id: (steps, summed lr x wd)} of the contrast's rows that ran, from one run's command each."""
    return {rid: budget(next(iter(runs[rid].values()))) for rid in dict.fromkeys(rows_of(c)) if runs.get(rid)}


def budget_cell(got):
    """The budget column: each row's steps and summed lr x wd beside the paper's STL-10 run."""
    parts = [f"{rid}: {steps:,} steps, lr x wd {lrwd:.3f}" for rid, (steps, lrwd) in got.items()]
    return "; ".join(parts) + f" (the paper: {PAPER_STEPS:,}, {PAPER_LR_WD:.2f})" if parts else ""


def contrast(c, runs, inits):
    """One contrast's record (v2's: kind, d, seeds, knn, magnitude), with no exemption but C10's (untestable:
    ImageNet only), and whether each of its rows learns (rule 1), beside."""
    rec = v2_contrast({k: v for k, v in c.items() if k != "basin"}, runs, inits)
    rec["claim"] = c["claim"]
    if c["claim"] != "C10":
        rec["untestable"] = None  # v2's rules 6 and (b) withheld verdicts; v3 withholds none but C10's
    gain = lambda rid: points({s: v["linear_top1"] - inits[s]["init"] for s, v in runs.get(rid, {}).items()
                               if s in inits})
    rec["learns"] = {rid: ("yes" if learns(g) else "no") if len(g := gain(rid)) > 1 else f"n = {len(g)}"
                     for rid in dict.fromkeys(rows_of(c))}
    rec["budgets"] = budgets(c, runs)
    rec["budget"] = budget_cell(rec["budgets"])
    return rec


def c1_word(r, runs):
    """Rule 2 of v3: C1's "holds" says what was shown, by the count of the row's runs at the collapse rule."""
    rid = rows_of(dict(collapse=r["row"]))[0]
    res = runs.get(rid, {})
    k = sum(looks_collapsed(res[s]["final_erank"], res[s]["final_z_std"]) for s in r["seeds"])
    if k == len(r["seeds"]):
        return "holds: collapses"
    return f"holds in the weaker form: loses spread against DirectPred ({k} of {len(r['seeds'])} collapsed by the rule)"


def gate_of(runs, inits):
    """The regime gate (rule 1 on pred-direct), printed beside every verdict: (passes, its gains)."""
    g = points({s: v["linear_top1"] - inits[s]["init"] for s, v in runs.get("pred-direct", {}).items() if s in inits})
    return learns(g), g


def verdicts(folders):
    """(contrast records with tests and verdicts, the gate) of a set of seeds: every tested contrast's hypotheses in
    one Holm family; C10's measured verdict as if its hypotheses joined it."""
    runs, inits = load(folders)
    recs = []
    for c in CLAIMS_V3:
        r = contrast(c, runs, inits)
        r["row"] = c.get("collapse")
        r["hyp"] = hypotheses(r["kind"], r["d"]) if len(r["seeds"]) > 1 else {}
        recs.append(r)
    family = [(i, h) for i, r in enumerate(recs) if not r["untestable"] for h in r["hyp"]]
    for i, r in enumerate(recs):
        fam = family if not r["untestable"] else family + [(i, h) for h in r["hyp"]]
        adj_t = stats.holm([recs[j]["hyp"][h][0] for j, h in fam])
        adj_f = stats.holm([recs[j]["hyp"][h][1] for j, h in fam])
        r["holm"] = {h: (adj_t[k], adj_f[k]) for k, (j, h) in enumerate(fam) if j == i}
        r["verdict"] = judge(r)
        if r["kind"] == "collapse" and r["verdict"] == "holds":
            r["verdict"] = c1_word(r, runs)
    return recs, gate_of(runs, inits)


# -----------------------------------------------------------------------------
# the confirmation's size (PLAN.md, "The confirmation"): 80% power at ALPHA / m for a true difference of DELTA


def family_size(recs):
    """m: the hypotheses of every tested contrast (two for a direction, three for "about equal")."""
    return sum(3 if r["kind"] == "equal" else 2 for r in recs if not r["untestable"])


def n_for(s, delta, m, equal=False):
    """The smallest n >= 5 with t(1 - ALPHA/m, n-1) + t(q, n-1) <= delta sqrt(n) / s, q = POWER (TOST at a true
    difference of 0: 0.9, each of the two one-sided tests at half the miss rate); None above 10,000."""
    q = 0.9 if equal else POWER
    for n in range(5, 10_001):
        if s == 0 or stats.t_ppf(1 - ALPHA / m, n - 1) + stats.t_ppf(q, n - 1) <= delta * math.sqrt(n) / s:
            return n
    return None


def power_at(s, delta, m, n, equal=False):
    """The power the sizing rule gives at n seeds (its normal-shift approximation, inverted): the one-sided test at
    ALPHA / m finds a true difference of delta (TOST: both sides, at a true difference of 0)."""
    if n < 2 or s == 0:
        return float(n >= 2)
    shift = delta * math.sqrt(n) / s - stats.t_ppf(1 - ALPHA / m, n - 1)
    p = stats.t_cdf(shift, n - 1)
    return max(0.0, 2 * p - 1) if equal else p  # TOST's approximation goes below 0 where it has no power


def contrast_sizes(recs, m):
    """Per tested contrast: (record, {measure: (s, delta, n)}) from its paired differences."""
    out = []
    for r in recs:
        if r["untestable"] or len(r["seeds"]) < 2:
            continue
        if r["kind"] == "collapse":
            measures = {"rank": r["d"][0], "z_std": r["d"][1]}
        else:
            measures = {"align" if r["claim"] == "C11" else "points": r["d"]}
        out.append((r, {k: (statistics.stdev(d), DELTA[k], n_for(statistics.stdev(d), DELTA[k], m,
                                                                  r["kind"] == "equal")) for k, d in measures.items()}))
    return out


def sizes(folders=EXPLORATORY):
    """The confirmation's plan from the seed 0-4 results: per contrast its s and n, per row its n (the largest of its
    contrasts'), the seconds a run of each row took (train + probe, the mean of its seed 0-4 files) and a
    random-init probe took (the baselines' files)."""
    recs, _ = verdicts(folders)
    runs, _ = load(folders)
    m = family_size(recs)
    per = contrast_sizes(recs, m)
    row_n = {}
    for r, ms in per:
        n = max(x[2] or 10_000 for x in ms.values())
        for rid in contrast_rows(r):
            row_n[rid] = max(row_n.get(rid, 5), n)
    seconds = {rid: statistics.mean(v["train_seconds"] + v["probe_seconds"] for v in runs[rid].values())
               for rid in row_n if rid in runs}
    base = {}
    for folder in folders:
        base.update(load_results(folder)[1])
    probe = statistics.mean(v["seconds"] for k, v in base.items() if k.startswith("random") and "seconds" in v)
    return dict(m=m, per=per, row_n=row_n, seconds=seconds, baseline_seconds=probe, recs=recs)


def contrast_rows(r):
    """The rows a record's contrast runs (C7's random init aside: the baselines come with every seed)."""
    c = next(c for c in CLAIMS_V3 if c["claim"] == r["claim"] and c["text"] == r["text"])
    return list(dict.fromkeys(rows_of(c)))


V2_CONFIRMED = ("pred-none", "thm2-no-stop-grad", "pred-direct", "pred-mlp", "pred-linear", "t1-optimal")  # 5-9 run


def schedule(row_n, cap_n=None):
    """{row: seeds to run} for the confirmation: seeds 5 .. 5 + n - 1, capped at cap_n; the rows v2 ran at seeds 5-9
    keep those (their new seeds start at 10). pred-direct runs every seed any row runs: the random-init baselines of
    a seed read its checkpoint (paper.reproduce), and C7 compares it with them."""
    out = {}
    row_n = dict(row_n, **{"pred-direct": max(row_n.values())}) if row_n else row_n
    for rid, n in row_n.items():
        n = min(n, cap_n) if cap_n else n
        seeds = list(range(5, 5 + n))
        out[rid] = [s for s in seeds if not (rid in V2_CONFIRMED and s <= 9)]
    return out


def hours(plan, seconds, jobs, baseline_seconds):
    """The wall hours of a schedule run `jobs` side by side: each run's seconds (its row's seed 0-4 mean, measured
    in the same layout: the claims suite ran two side by side), plus the two baseline probes of every new seed."""
    runs = sum(seconds[rid] * len(seeds) for rid, seeds in plan.items())
    new_seeds = {s for seeds in plan.values() for s in seeds if s > 9}
    return (runs + 2 * baseline_seconds * len(new_seeds)) / jobs / 3600


# -----------------------------------------------------------------------------
# the tables


def value_cell(r):
    if r["kind"] == "collapse":
        return f"rank {mean_ci(r['d'][0])}; z_std {mean_ci(r['d'][1])}"
    return mean_ci(r["d"])


def status(r):
    return f"untestable here: {r['untestable']} (measured: {r['verdict']})" if r["untestable"] else r["verdict"]


def markdown(folders, power=None):
    """Every contrast's full v3 record. power: {claim text: (m, [(s, delta, sized n) per measure])} from the
    exploratory seeds (the confirmation's report prints the power of a contrast run below its sized n)."""
    recs, (passes, g) = verdicts(folders)
    gate = f"gate {'passes' if passes else 'fails'}"
    lines = ["| claim | the paper | contrast | per seed | mean [95% interval] | p: t raw / Holm; sign-flip raw / "
             "Holm | kNN, mean [95% interval] | verdict | magnitude | rows learn (rule 1); the gate | budget |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in recs:
        seeds = r.get("detail", "") if r["kind"] == "collapse" else ", ".join(f"{x:+.2f}" for x in r["d"])
        verdict = status(r)
        if power and r["text"] in power:  # a contrast run below its sized n: its power at the n it got
            m, measures = power[r["text"]]
            n_sized = max(x[2] or 10_000 for x in measures)
            if 2 <= len(r["seeds"]) < n_sized:
                pw = min(power_at(s_, delta, m, len(r["seeds"]), r["kind"] == "equal") for s_, delta, _ in measures)
                verdict += f" (n = {len(r['seeds'])} of the sized {n_sized}: power {pw:.2f})"
        learn = ", ".join(f"{k}: {v}" for k, v in r["learns"].items())
        lines.append(f"| {r['claim']} | {r['text']} | {r['contrast']} | {seeds} | {value_cell(r)} | {p_cell(r)} | "
                     f"{mean_ci(r.get('knn', []))} | {verdict} | {r.get('magnitude', '')} | {learn}; {gate} | "
                     f"{r['budget']} |")
    return "\n".join(lines)


def short_budget(r):
    """The README's budget cell: each distinct (steps / summed lr x wd) of the contrast's rows, in their order."""
    return " vs ".join(dict.fromkeys(f"{steps:,} / {lrwd:.3f}" for steps, lrwd in r["budgets"].values()))


def short_cell(r, power=None):
    """A contrast's verdict in a few words with its numbers: mean [95% interval] (n), for a collapse contrast how
    far the rank and z_std end below DirectPred's; for an inconclusive contrast run below its sized n, the power it
    had there."""
    if r["untestable"]:
        return f"untestable: ImageNet only (measured: {r['verdict']}, {mean_ci(r['d'])})"
    if len(r["seeds"]) < 2:
        return r["verdict"]
    if r["kind"] == "collapse":
        value = f"rank {mean_ci(r['d'][0], False)}, z_std {mean_ci(r['d'][1])} below DirectPred's"
    else:
        value = mean_ci(r["d"])
    cell = f"**{r['verdict']}**: {value}"
    if power and r["text"] in power and r["verdict"] == "inconclusive":  # how much an undecided contrast could see
        m, measures = power[r["text"]]  # measures: {measure: (s, delta, sized n)}
        n_sized = max(x[2] or 10_000 for x in measures.values())
        if len(r["seeds"]) < n_sized:
            pw = min(power_at(s_, delta, m, len(r["seeds"]), r["kind"] == "equal")
                     for s_, delta, _ in measures.values())
            unit = {"points": "point", "rank": "in rank", "z_std": "in z_std", "align": "in alignment"}
            size = " and ".join(f"{delta:g} {unit[k]}" for k, (_, delta, _) in measures.items())
            aim = f"equivalence at a true 0 within ±{size}" if r["kind"] == "equal" else f"a true {size}"
            cell += f"; power {pw:.2f} for {aim} at this n (sized n {n_sized:,})"
    return cell


def readme_table(confirm=CONFIRMATION, explore=EXPLORATORY):
    """The README's v3 verdicts: each contrast's confirmation (its seeds alone; confirmation.md has the p-values and
    the seed 0-4 verdicts beside), the paper's effect against its interval, and the runs' budget beside the
    paper's."""
    conf, _ = verdicts(confirm)
    z = sizes(explore)
    power = {r["text"]: (z["m"], ms) for r, ms in z["per"]}
    lines = ["| claim | the paper | the confirmation: verdict, mean [95% interval] (n) | the paper's effect | "
             f"budget: steps / summed lr x wd (the paper: {PAPER_STEPS:,} / {PAPER_LR_WD:.2f}) |",
             "| --- | --- | --- | --- | --- |"]
    for c in conf:
        mag = re.sub(r"the paper's (\S+) is (inside|outside)", r"\1, \2 the interval", c.get("magnitude", ""))
        mag = re.sub(r" collapsed by the rule \(rank < 1.3 or z_std < 0.1\); pred-direct: (\d+) of (\d+)",
                     r" at the collapse rule (DirectPred \1)", mag)
        mag = {"(no paper number)": "", "(a figure: no number to compare)": ""}.get(mag, mag)
        lines.append(f"| {c['claim']} | {c['text']} | {short_cell(c, power)} | {mag} | {short_budget(c)} |")
    return "\n".join(lines)


def key(c):
    """A contrast's identity across v2 and v3 (C13's text was renamed, its rows kept)."""
    return c["claim"], c.get("a") or c.get("collapse") or c.get("align"), c.get("b")


def v2_cell(r, e):
    """A v2 confirmation verdict (r) in a few words; for a contrast it did not confirm, why: its seed 0-4 verdict (e)
    under v2 (its rule 6 exemption named)."""
    if r.get("skipped") and e["untestable"]:
        return "not confirmed: untestable on seeds 0-4 (" + ("rule 6" if "rule 6" in e["untestable"] else
                                                             "ImageNet only" if "ImageNet" in e["untestable"] else
                                                             e["untestable"].split(" (")[0]) + ")"
    return f"not confirmed: {e['verdict']} on seeds 0-4" if r.get("skipped") else brief(r)


def brief(r):
    """A verdict with an exemption in a few words."""
    if r["untestable"]:
        return "untestable: " + ("ImageNet only" if "ImageNet" in r["untestable"] else r["untestable"].split(" (")[0]) \
            + f" (measured: {r['verdict']})"
    return r["verdict"]


def why(old, e, r, families):
    """What changed from v2's confirmation (old, and e its seed 0-4 record under v2; None for a contrast v3 added) to
    v3's (r), by the rule of PLAN.md that changed it, or by the data (n and the Holm-adjusted t p of the hypothesis
    v3 reports, in families of (v2's, v3's) sizes)."""
    if old is None:
        return {"C13b": "new (v3 rule 3): the least-squares plug-in the paper describes"}.get(
            r["claim"], "new (v3 rule 4): the linear predictor in the authors' default form")
    word = lambda v: v.split(":")[0].split(" (")[0]
    notes = []
    if old.get("skipped") and e["untestable"] and "rule 6" in e["untestable"]:
        notes.append("v3 rule 1: no exemption, and every contrast confirmed")
    elif old.get("skipped") and not r["untestable"]:
        notes.append("v2 confirmed only the contrasts seeds 0-4 decided; v3 confirms every one")
    if r["claim"] == "C13" and r["text"] != old["text"]:
        notes.append("v3 rule 3: named for the rule its rows run (the same runs)")
    if r["kind"] == "collapse" and r["verdict"].startswith("holds in the weaker"):
        notes.append("v3 rule 2: C1 names what it shows (no run at the collapse rule)")
    if not notes and not old.get("skipped") and word(old["verdict"]) != word(r["verdict"]) and r.get("shown"):
        h = r["shown"]
        notes.append(f"the data: n {len(old['seeds'])} -> {len(r['seeds'])}, Holm t p "
                     f"{old['holm'][h][0]:.4f} -> {r['holm'][h][0]:.4f} (Holm over {families[0]} -> {families[1]} "
                     "hypotheses)")
    return "; ".join(notes)


def comparison_markdown(m):
    """Each contrast's verdict under v2 (its confirmation, seeds 5-9, which the README reported) and under v3 (seeds
    0-4, exploratory; the confirmation), with what changed and why. m: the v3 confirmation's family size."""
    from paper import verdicts as v2
    v2_expl = v2.verdicts(v2.EXPLORATORY[0])[0]
    v2_conf = v2.verdicts(v2.CONFIRMATION[0], v2.decided(v2.EXPLORATORY[0]))[0]
    families = (sum(len(r["hyp"]) for r in v2_conf if not r["untestable"] and not r.get("skipped")), m)
    old = {key(c): (r, e) for c, r, e in zip(CLAIMS, v2_conf, v2_expl)}
    expl, conf = verdicts(EXPLORATORY)[0], verdicts(CONFIRMATION)[0]
    counts = lambda recs: ", ".join(f"{k} {v}" for k, v in sorted(tally(recs).items()))
    lines = [f"Verdicts: v2's confirmation (seeds 5-9) {counts(v2_conf)}; v3 on seeds 0-4 (exploratory) "
             f"{counts(expl)}; v3's confirmation {counts(conf)}.", "",
             "| claim | the paper | v2: the confirmation, seeds 5-9 | v3: seeds 0-4 (exploratory) | v3: the "
             "confirmation | what changed from v2, and why |", "| --- | --- | --- | --- | --- | --- |"]
    for c, x, r in zip(CLAIMS_V3, expl, conf):
        o, e = old.get(key(c), (None, None))
        lines.append(f"| {r['claim']} | {r['text']} | {v2_cell(o, e) if o else ''} | {brief(x)} | {brief(r)} | "
                     f"{why(o, e, r, families)} |")
    return "\n".join(lines)


def where_pairs_ran(c, r, runs):
    """(one CPU, two CPUs, not recorded): a contrast's seeds by where its two rows' runs ran, from each result
    file's `machine` (recorded from commit 51578c1 on); None for a contrast of one row (C7's init, C11)."""
    rids = list(dict.fromkeys(rows_of(c)))
    if len(rids) < 2:
        return None
    got = [{runs[rid][s].get("machine") for rid in rids} for s in r["seeds"]]
    return (sum(None not in m and len(m) == 1 for m in got), sum(None not in m and len(m) > 1 for m in got),
            sum(None in m for m in got))


def machines_markdown(folders):
    """Per contrast, how many of its seeds had both rows on one CPU: a seed fixes the init and batch order, but two
    CPUs' runs of one seed end about as far apart as two seeds (paper/results/cpu-check), so such pairs are paired
    less closely. It decides nothing."""
    runs = load(folders)[0]
    lines = ["| claim | contrast | seeds: both rows on one CPU | on two CPUs | not recorded |",
             "| --- | --- | --- | --- | --- |"]
    for c, r in zip(CLAIMS_V3, verdicts(folders)[0]):
        got = where_pairs_ran(c, r, runs) if not r["untestable"] else None
        if got:
            lines.append(f"| {r['claim']} | {' vs '.join(dict.fromkeys(rows_of(c)))} | {got[0]} | {got[1]} | "
                         f"{got[2]} |")
    return "\n".join(lines)


def tally(recs):
    """{verdict word: number of contrasts}, untestable counted as one word, C1's "holds" forms apart."""
    count = {}
    for r in recs:
        k = "untestable" if r["untestable"] else "not confirmed" if r.get("skipped") else \
            r["verdict"].split(":")[0].split(" (")[0]
        count[k] = count.get(k, 0) + 1
    return count


def report(folders, title, note="", power=None):
    recs, (passes, g) = verdicts(folders)
    count = tally(recs)
    parts = [f"# {title}", "",
             f"Generated by `python -m paper.verdicts3` from the result files of {', '.join(folders)} (merged seed by "
             "seed; not read: " + (", ".join(f"{f}/{r}" for f in folders for r in NOT_READ.get(f, ())) or "none") +
             "), under the rules of paper/results/claims-v3/PLAN.md. Linear "
             "top-1 of the fast probe on the 10k test images, paired by seed, in points." +
             (f" {note}" if note else ""),
             "", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(count.items())) + f" (of {len(recs)}).", "",
             f"The regime gate (DirectPred above the stronger random init, rule 1): {mean_ci(g)}, "
             f"**{'passes' if passes else 'fails'}**; it withholds no verdict under v3.", "",
             markdown(folders, power), ""]
    if folders == CONFIRMATION:
        parts += ["## v2 and v3, contrast by contrast", "", comparison_markdown(family_size(recs)), "",
                  "## Where each pair ran", "",
                  "Each result file names its CPU from commit 51578c1 on (`machine`); the earlier ones ran on "
                  "2-core virtual machines, an AMD EPYC where it was checked and six files an Intel Xeon "
                  "(claims-v3/README.md). The same (row, seed) on the two CPUs ends about as far apart as two seeds "
                  "(paper/results/cpu-check), so a seed whose two rows ran on different CPUs is paired less closely. "
                  "Beside the verdicts, deciding nothing:", "", machines_markdown(folders), ""]
    return "\n".join(parts)


def size_markdown(folders=EXPLORATORY, jobs=2):
    """CONFIRMATION.md's numbers: each contrast's s and n, each row's n and seeds, the cap's arithmetic. jobs: the
    runs side by side, as paper.reproduce --jobs auto measures it on this machine before the first confirmation
    run (the seed 0-4 files' seconds are per-run wall times with two side by side)."""
    z = sizes(folders)
    baseline_seconds = z["baseline_seconds"]
    m = z["m"]
    lines = [f"Family: m = {m} hypotheses (every tested contrast of `CLAIMS_V3`; C10 untestable), each sized at "
             f"ALPHA / m = {ALPHA / m:.5f}, power {POWER} (TOST: 0.9 per side) for a true difference of delta.", "",
             "| claim | contrast | measure | s (seeds 0-4) | delta | n |", "| --- | --- | --- | --- | --- | --- |"]
    for r, ms in z["per"]:
        for k, (s, delta, n) in ms.items():
            lines.append(f"| {r['claim']} | {r['contrast']} | {k} | {s:.3f} | {delta} | {n if n else '> 10,000'} |")
    need = hours(schedule(z["row_n"]), z["seconds"], jobs, baseline_seconds)
    cap_n = None
    if need > CAP_HOURS:  # the largest common cap that fits
        cap_n = max((N for N in range(5, max(z["row_n"].values()) + 1)
                     if hours(schedule(z["row_n"], N), z["seconds"], jobs, baseline_seconds) <= CAP_HOURS),
                    default=5)
    plan = schedule(z["row_n"], cap_n)
    got = hours(plan, z["seconds"], jobs, baseline_seconds)
    lines += ["", "| row | sized n | n run (pred-direct: every seed, for the baselines) | new seeds | seconds a run "
              "(seeds 0-4 mean) |",
              "| --- | --- | --- | --- | --- |"]
    for rid in sorted(plan):
        seeds = plan[rid]
        lines.append(f"| {rid} | {z['row_n'][rid]} | {5 * (rid in V2_CONFIRMED) + len(seeds)} | "
                     f"{f'{seeds[0]}-{seeds[-1]} ({len(seeds)})' if seeds else 'none'} | "
                     f"{z['seconds'].get(rid, float('nan')):.0f} |")
    lines += ["", f"Wall time at the sized n: {need:.1f} h ({jobs} runs side by side, each its row's seconds, "
              f"{baseline_seconds:.0f} s a baseline probe); the cap is {CAP_HOURS:.0f} h: " +
              (f"every row's n becomes min(n, {cap_n}): {got:.1f} h." if cap_n else "it fits."),
              "", f"The runs, seed-block by seed-block (so a budget cut short leaves every contrast with seeds), "
              f"{jobs} side by side; `bash paper/results/claims-v3/run-confirmation.sh` runs these lines in order, "
              "finished runs skipped:", "", "```"]
    lines += commands(plan, jobs)
    lines.append("```")
    return "\n".join(lines), plan


def commands(plan, jobs, block=5):
    """The paper.reproduce commands of a schedule, seed-block-major: seeds 5-9 of every row that runs them, then
    10-14, ...; within a block, rows grouped by the seeds they run there. The random-init baselines of seeds 10 on
    come with pred-direct's runs (they read its checkpoint); seeds 5-9's are claims-v2's."""
    out = []
    last = max((s for seeds in plan.values() for s in seeds), default=4)
    for lo in range(5, last + 1, block):
        groups = {}
        for rid, seeds in sorted(plan.items()):
            got = tuple(s for s in seeds if lo <= s < lo + block)
            if got:
                groups.setdefault(got, []).append(rid)
        for seeds, rids in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[0]))):
            base = "random" if "pred-direct" in rids and seeds[0] > 9 else "none"
            out.append(f"python -m paper.reproduce --scale laptop --work out/claims-v3/confirmation --results "
                       f"{CONFIRMATION[1]} --rows {','.join(rids)} --seeds {','.join(map(str, seeds))} "
                       f"--baselines {base} --jobs {jobs}")
    return out


VERDICT_COLOUR = {"holds": "C2", "opposite": "C3", "equivalent": "C0", "differ": "C1", "inconclusive": "0.55"}


def figure(folders=CONFIRMATION, out="paper/results/claims-v3/confirmation.png"):
    """The confirmation at a glance: left, each linear top-1 contrast's paired differences (a - b in the paper's
    direction; seeds as dots, the mean and its 95% interval coloured by the verdict), the paper's own difference
    beside (an arrow at the edge where it is off the axis), the +-1 margin of the "about equal" claims; right, C1:
    the final effective rank of the no-predictor, no-stop-gradient and DirectPred runs against the collapse rule."""
    from paper.theory import pyplot, save  # the repo's one plotting module; matplotlib is imported there
    plt = pyplot()
    recs, _ = verdicts(folders)
    runs, _ = load(folders)
    points_recs = [(c, r) for c, r in zip(CLAIMS_V3, recs) if r["kind"] in ("direction", "equal")
                   and r["claim"] != "C11" and len(r["seeds"]) > 1]
    fig, (ax, ax1) = plt.subplots(1, 2, figsize=(17, 0.42 * len(points_recs) + 2.2),
                                  gridspec_kw=dict(width_ratios=(3.2, 1)), layout="constrained")
    lim = (-6.0, 16.0)
    for y, (c, r) in enumerate(reversed(points_recs)):
        word = "untestable" if r["untestable"] else r["verdict"].split(":")[0]
        colour = VERDICT_COLOUR.get(word, "0.8")
        ax.plot(r["d"], [y - 0.22] * len(r["d"]), ".", color=colour, alpha=0.5, ms=5)  # below the interval
        lo, hi = stats.interval(r["d"])
        ax.plot([lo, hi], [y, y], "-", color=colour, lw=3)
        ax.plot([statistics.mean(r["d"])], [y], "o", color=colour, ms=7)
        if r["kind"] == "equal":
            ax.fill_betweenx([y - 0.4, y + 0.4], -1, 1, color="C0", alpha=0.12, lw=0)
        effect = paper_effect(c)
        if effect is not None:
            e = 100 * effect
            ax.plot([min(max(e, lim[0]), lim[1])], [y], ">" if e > lim[1] else "<" if e < lim[0] else "x",
                    color="k", ms=7)
            if not lim[0] <= e <= lim[1]:
                ax.annotate(f"the paper {e:+.1f}", (lim[1] if e > 0 else lim[0], y), xytext=(-4, 6),
                            textcoords="offset points", ha="right", fontsize=7)
    labels = [f"{r['claim']}: {r['contrast']} ({'untestable' if r['untestable'] else r['verdict']})"
              for _, r in reversed(points_recs)]
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlim=lim, ylim=(-0.7, len(labels) - 0.3),
           xlabel="paired difference a - b, linear top-1 points (the paper's direction: > 0)",
           title="each contrast: seeds (dots), mean and 95% interval coloured by the verdict (green holds, red "
                 "opposite, grey inconclusive); x the paper's difference; blue band the +-1 margin of 'about equal'")
    ax.title.set_fontsize(8)
    for i, rid in enumerate(("pred-direct", "pred-none", "thm2-no-stop-grad")):
        got = runs.get(rid, {})
        ranks = [got[s]["final_erank"] for s in sorted(got)]
        ax1.plot([i] * len(ranks), ranks, "o", color=f"C{i}", alpha=0.5)
        ax1.annotate(f"n={len(ranks)}", (i, max(ranks, default=1)), xytext=(0, 6), textcoords="offset points",
                     ha="center", fontsize=7)
    ax1.axhline(COLLAPSE_ERANK, color="r", lw=0.8, ls=":", label=f"the collapse rule: rank < {COLLAPSE_ERANK}")
    ax1.set_xticks(range(3), ["DirectPred", "no predictor\n(Wp = I)", "no stop-\ngradient"], fontsize=8)
    ax1.set(yscale="log", ylabel="final effective rank of F (of 128)", title="C1: the spread each run keeps")
    ax1.title.set_fontsize(8)
    ax1.legend(fontsize=7, loc="center")
    seeds = sorted({s for r in recs for s in r["seeds"]})
    fig.suptitle(f"The laptop claims under rules v3, seeds {seeds[0]}-{seeds[-1]} ({', '.join(folders)}; n per "
                 "contrast in its report)" if seeds else "The laptop claims under rules v3")
    return save(fig, os.path.dirname(out), os.path.basename(out))


def named(which):
    if which == "exploratory":
        return report(EXPLORATORY, "Exploratory: seeds 0-4 under rules v3",
                      "Seeds 0-4 were read before v3 was written: these verdicts are exploratory (PLAN.md).")
    z = sizes(EXPLORATORY)
    power = {r["text"]: (z["m"], list(ms.values())) for r, ms in z["per"]}
    return report(CONFIRMATION, "The confirmation under rules v3, judged alone",
                  "Its seeds only (CONFIRMATION.md); each contrast's sized n from seeds 0-4.", power)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("which", choices=["exploratory", "confirmation", "size", "readme", "figure"])
    ap.add_argument("--jobs", type=int, default=2,
                    help="size: runs side by side (paper.reproduce --jobs auto's choice on this machine)")
    ap.add_argument("--write", default="", help="write the report here (else print it)")
    args = ap.parse_args()
    if args.which == "figure":
        figure(out=args.write or "paper/results/claims-v3/confirmation.png")
        sys.exit()
    text = (size_markdown(jobs=args.jobs)[0] + "\n" if args.which == "size" else readme_table() + "\n"
            if args.which == "readme" else named(args.which))
    if args.write:
        with open(args.write, "w") as fh:
            fh.write(text)
    else:
        print(text, end="")
