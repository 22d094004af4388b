"""
The v2 verdicts of the laptop claims, exactly as paper/results/claims-v2/PLAN.md says: each contrast of
reproduce.CLAIMS paired by seed, tested by Student's t and by an exact sign-flip test (paper/stats.py), Holm's
adjustment over every hypothesis the suite tests, direction first and the magnitude in its own column, "learns"
against the stronger of the two random inits, one collapse rule, and "untestable here" by one stated test.

    python -m paper.verdicts paper/results/claims-v2       # one results folder's v2 report (--write FILE)
"""
import argparse
import os
import re
import shlex
import statistics

from paper import stats
from paper.report import inits_of, load_results, run_config
from paper.rows import CLAIMS, PAPER_LR_WD, paper_effect, row, runs_row
from directpred import looks_collapsed

ALPHA = 0.05  # one-sided, every test
MARGIN = 1.0  # "about equal": +-1 point of linear top-1
PAPER_STEPS = 82_100  # the paper's STL-10 run: 100 epochs of 105k images in batches of 128
BUDGET = 0.1  # rule 6 (ii): a run with under a tenth of the paper's steps and summed lr x wd


def results_of(results):
    """{row id: {seed: result}} without diverged runs, and {seed: init} with init the per-seed stronger random init:
    {"init": max of the two linear top-1s, "random": random-s, "random-bn": random-bn-s} (top-1 as fractions)."""
    runs, base = load_results(results)
    runs = {rid: {s: v for s, v in got.items() if "diverged" not in v} for rid, got in runs.items()}
    return runs, inits_of(base)


def points(d):
    """{seed: fraction} -> [points] in seed order."""
    return [100 * d[s] for s in sorted(d)]


def tests(d, alternative, null=0.0):
    """(t-test p, sign-flip p) of one one-sided hypothesis on the paired differences d (points)."""
    return stats.t_test(d, alternative, null), stats.sign_flip_test(d, alternative, null)


def learns(gains):
    """Rule 1: gains (points) over the stronger init pass both one-sided tests at ALPHA, unadjusted."""
    return len(gains) > 1 and all(p < ALPHA for p in tests(gains, "greater"))


def hypotheses(kind, d):
    """The contrast's hypotheses of the family: {name: (t p, sign-flip p)}. kind "direction": d = a - b in the
    paper's direction ("paper": a > b; "reverse": a < b); "equal": TOST ("equivalent": both one-sided tests against
    -MARGIN and +MARGIN, each test's p the larger of its two), "above" (a - b > +MARGIN), "below" (< -MARGIN);
    "collapse": d is (rank diffs, z_std diffs), DirectPred minus the row, intersection-union over the two."""
    if kind == "collapse":
        both = lambda alt: tuple(max(p) for p in zip(*(tests(x, alt) for x in d)))
        return {"paper": both("greater"), "reverse": both("less")}
    if kind == "direction":
        return {"paper": tests(d, "greater"), "reverse": tests(d, "less")}
    lo, hi = tests(d, "greater", -MARGIN), tests(d, "less", MARGIN)
    return {"equivalent": (max(lo[0], hi[0]), max(lo[1], hi[1])), "above": tests(d, "greater", MARGIN),
            "below": tests(d, "less", -MARGIN)}


def budget(runs):
    """Rule 6 (ii): (steps, summed lr x wd) of the suite's runs, from pred-direct's command (the base recipe)."""
    res = next(iter(runs.get("pred-direct", {}).values()), None) or next(v for got in runs.values() for v in got.values())
    cfg = run_config(shlex.split(res["command"]))
    return res["steps"], res["steps"] * cfg["lr"] * cfg["wd"]


def contrast(c, runs, inits):
    """One contrast's paired differences and what rules 1, 5, 6 and (b)-(d) say before any test: a dict with kind,
    d (points, or (rank, z_std) for collapse), seeds, knn, untestable (a reason or None), magnitude."""
    got = lambda rid: runs.get(runs_row(row(rid), "laptop") or rid, {})
    rec = dict(claim=c["claim"], text=c["text"], untestable=None)
    if "collapse" in c:
        a, b = got(c["collapse"]), got(c["b"])
        seeds = sorted(set(a) & set(b))
        rec.update(kind="collapse", seeds=seeds, contrast=f"{c['collapse']} vs {c['b']}: final rank and z_std",
                   d=([b[s]["final_erank"] - a[s]["final_erank"] for s in seeds],
                      [b[s]["final_z_std"] - a[s]["final_z_std"] for s in seeds]))
        count = lambda res: sum(looks_collapsed(res[s]["final_erank"], res[s]["final_z_std"]) for s in seeds)
        rec["magnitude"] = (f"{count(a)} of {len(seeds)} collapsed by the rule (rank < 1.3 or z_std < 0.1); "
                            f"{c['b']}: {count(b)} of {len(seeds)}")
        rec["detail"] = ", ".join(f"s{s} rank {a[s]['final_erank']:.2f} / z_std {a[s]['final_z_std']:.2f}"
                                  for s in seeds)
        return rec
    if "align" in c:
        a = got(c["align"])
        top = lambda cur: statistics.mean(cur["align"])
        d = {s: top(cur[-1]) - top(cur[0]) for s, v in a.items()
             if len(cur := [r for r in v["curve"] if "align" in r]) > 1}
        rec.update(kind="direction", seeds=sorted(d), contrast=f"{c['align']}: alignment end - start (cosine)",
                   d=[d[s] for s in sorted(d)], unit="", magnitude="(a figure: no number to compare)")
        return rec
    a = got(c["a"])
    b = {s: dict(linear_top1=v["init"], knn_top1=None) for s, v in inits.items()} if c["b"] == "random" else got(c["b"])
    seeds = sorted(set(a) & set(b))
    rec.update(kind="equal" if c["sign"] == 0 else "direction", seeds=seeds, unit=" points",
               contrast=f"{c['a']} - " + ("the stronger random init (per seed)" if c["b"] == "random" else c["b"]),
               d=points({s: a[s]["linear_top1"] - b[s]["linear_top1"] for s in seeds}),
               knn=points({s: a[s]["knn_top1"] - b[s]["knn_top1"] for s in seeds if b[s]["knn_top1"] is not None}))
    effect = paper_effect(c)
    if len(seeds) > 1:
        lo, hi = stats.interval(rec["d"])
        rec["magnitude"] = ("(no paper number)" if effect is None else
                            f"the paper's {100 * effect:+.2f} is {'inside' if lo <= 100 * effect <= hi else 'outside'}")
    if c["b"] == "random":  # C7: the gain against each init, beside
        for name in ("random", "random-bn"):
            rec[f"vs {name}"] = points({s: a[s]["linear_top1"] - inits[s][name]["linear_top1"] for s in seeds})
    gain = lambda res: points({s: res[s]["linear_top1"] - inits[s]["init"] for s in res if s in inits})
    if c.get("basin"):
        steps, lrwd = budget(runs)
        if steps < BUDGET * PAPER_STEPS and lrwd < BUDGET * PAPER_LR_WD:
            rec["untestable"] = (f"the basin needs the paper's run: {steps:,} steps here vs {PAPER_STEPS:,}, summed lr x "
                                 f"wd {lrwd:.3f} vs {PAPER_LR_WD:.2f} (rule 6)")
    elif c["claim"] == "C10":
        rec["untestable"] = "ImageNet ResNet-50 only; this row is its analog (rule (c))"
    elif c["b"] != "random" and seeds and not (learns(gain(a)) or learns(gain(b))):
        rec["untestable"] = "neither row beats the stronger random init (rule (b))"
    return rec


def decided(results):
    """The indices (in CLAIMS) of the contrasts a results folder's verdicts decide: holds, opposite, equivalent,
    differ. The confirmation tests these of the exploratory seeds (PLAN.md's last section)."""
    return {i for i, r in enumerate(verdicts(results)[0])
            if not r["untestable"] and r["verdict"] in ("holds", "opposite", "equivalent", "differ")}


def verdicts(results, family=None):
    """(contrast records with tests and verdicts, the regime gate, each row's gains) of one results folder.
    family: the indices of the contrasts it tests (the confirmation's); the others are "not confirmed", outside the
    Holm family."""
    runs, inits = results_of(results)
    gains = {rid: points({s: v["linear_top1"] - inits[s]["init"] for s, v in got.items() if s in inits})
             for rid, got in runs.items()}
    g = gains.get("pred-direct", [])
    gate = dict(gains=g, passes=learns(g), **{f"vs {name}": points(
        {s: v["linear_top1"] - inits[s][name]["linear_top1"] for s, v in runs.get("pred-direct", {}).items()
         if s in inits}) for name in ("random", "random-bn")})
    recs = [contrast(c, runs, inits) for c in CLAIMS]
    for i, r in enumerate(recs):
        if family is not None and i not in family:
            r.update(untestable=None, seeds=[], kind=r["kind"], skipped=True)
    for r in recs:
        if not gate["passes"] and r["kind"] != "collapse" and not r["untestable"]:
            r["untestable"] = "the regime gate fails (rule (d))"
        n = len(r["seeds"])
        r["hyp"] = hypotheses(r["kind"], r["d"]) if n > 1 else {}
    family = [(i, h) for i, r in enumerate(recs) if not r["untestable"] for h in r["hyp"]]
    for i, r in enumerate(recs):  # an untestable contrast's measured verdict: as if its hypotheses joined the family
        fam = family if not r["untestable"] else family + [(i, h) for h in r["hyp"]]
        adj_t = stats.holm([recs[j]["hyp"][h][0] for j, h in fam])
        adj_f = stats.holm([recs[j]["hyp"][h][1] for j, h in fam])
        r["holm"] = {h: (adj_t[k], adj_f[k]) for k, (j, h) in enumerate(fam) if j == i}
        r["verdict"] = judge(r)
    return recs, gate, gains


def judge(r):
    """Rules 2-4 on one contrast with its Holm-adjusted p: the verdict word, and which hypothesis it reports."""
    if r.get("skipped"):
        r["shown"] = None
        return "not confirmed (not decided on seeds 0-4)"
    if len(r["seeds"]) < 2:
        r["shown"] = None
        return "not run" if not r["seeds"] else "inconclusive (n = 1)"
    passes = lambda h: r["holm"][h][0] < ALPHA and r["hyp"][h][1] < ALPHA
    if r["kind"] == "equal":
        for h, word in (("equivalent", "equivalent"), ("above", "differ"), ("below", "differ")):
            if passes(h):
                r["shown"] = h
                return word
        r["shown"] = "equivalent"
        return "inconclusive"
    for h, word in (("paper", "holds"), ("reverse", "opposite")):
        if passes(h):
            r["shown"] = h
            return word
    r["shown"] = "paper"
    return "inconclusive"


def p_cell(r):
    """'t raw / Holm; sign-flip raw / Holm' of the hypothesis the verdict reports."""
    h = r.get("shown")
    if not h:
        return ""
    (pt, pf), (ht, hf) = r["hyp"][h], r["holm"][h]
    return f"{h}: t {pt:.4f} / {ht:.4f}; flip {pf:.4f} / {hf:.4f}"


def mean_ci(d, with_n=True):
    """'mean [95% interval] (n)' of a list of differences already in their unit."""
    if len(d) < 2:
        return f"{d[0]:+.2f} (n=1)" if d else ""
    lo, hi = stats.interval(d)
    return f"{statistics.mean(d):+.2f} [{lo:+.2f}, {hi:+.2f}]" + (f" (n={len(d)})" if with_n else "")


def status(r):
    """The verdict as the tables print it: an untestable contrast's measured verdict in brackets."""
    return f"untestable here: {r['untestable']} (measured: {r['verdict']})" if r["untestable"] else r["verdict"]


def markdown(results, family=None):
    """The v2 verdict table of one results folder, every contrast's full record (family: as verdicts')."""
    recs, gate, gains = verdicts(results, family)
    lines = ["| claim | the paper | contrast | per seed | mean [95% interval] | p: t raw / Holm; sign-flip raw / "
             "Holm | kNN, mean [95% interval] | verdict | magnitude |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in recs:
        if r["kind"] == "collapse":
            value = f"rank {mean_ci(r['d'][0])}; z_std {mean_ci(r['d'][1])}"
            seeds = r.get("detail", "")
        else:
            value = mean_ci(r["d"])
            seeds = ", ".join(f"{x:+.2f}" for x in r["d"])
        mag = r.get("magnitude", "")
        if "vs random" in r:
            mag += "; gain over random " + mean_ci(r["vs random"]) + ", over random-bn " + mean_ci(r["vs random-bn"])
        if r.get("skipped"):
            lines.append(f"| {r['claim']} | {r['text']} | {r['contrast']} | | | | | {status(r)} | |")
            continue
        lines.append(f"| {r['claim']} | {r['text']} | {r['contrast']} | {seeds} | {value} | {p_cell(r)} | "
                     f"{mean_ci(r.get('knn', []))} | {status(r)} | {mag} |")
    return "\n".join(lines)


def gate_markdown(results):
    """The regime gate and each row's gain over the stronger init, with whether it learns (rule 1)."""
    recs, gate, gains = verdicts(results, set())
    if len(gate["gains"]) < 2:
        return ("No regime gate: the folder holds fewer than 2 seeds of pred-direct with both random-init baselines "
                "(random-s, random-bn-s), so every contrast but C1's is untestable (rule (d)).")
    lines = [f"DirectPred's gain over the stronger random init (per seed): {mean_ci(gate['gains'])}, one-sided t p "
             f"{stats.t_test(gate['gains'], 'greater'):.4f}, sign-flip p "
             f"{stats.sign_flip_test(gate['gains'], 'greater'):.4f}: the regime gate "
             f"**{'passes' if gate['passes'] else 'fails'}**. Against the network as initialised (`random`): "
             f"{mean_ci(gate['vs random'])}; against the same with BN statistics re-estimated (`random-bn`): "
             f"{mean_ci(gate['vs random-bn'])}.", "",
             "| row | gain over the stronger init, mean [95% interval] | learns (rule 1) |", "| --- | --- | --- |"]
    for rid in sorted(gains):
        g = gains[rid]
        lines.append(f"| {rid} | {mean_ci(g)} | {'yes' if learns(g) else 'no' if len(g) > 1 else 'n = 1'} |")
    return "\n".join(lines)


def why(old, r):
    """Why PLAN.md's verdict (old: its brief verdict text) and v2's differ, naming the rule; "" when they agree."""
    kind = lambda v: v.split(" (")[0].split(":")[0]
    if r["untestable"]:
        if "rule 6" in r["untestable"]:
            return "rule 6: the paper's mechanism is the basin, out of a 2,340-step run's reach" + (
                " (PLAN.md's rule (a), weight decay, said so too)" if old.startswith("untestable") else "")
        return "" if kind(old) == "untestable here" else f"rule (b) or (d): {r['untestable']}"
    new = r["verdict"]
    if r["kind"] == "collapse":
        return "" if kind(old) == "holds" and new == "holds" else \
            "rule 5: the paired contrast of rank and z_std decides; the count at the threshold is the magnitude"
    if kind(old) == "untestable here":
        return "rule 1: a row now learns against the stronger init" if new != "not run" else ""
    if old.startswith("does not hold (the paper's"):
        return "rule 2: the paper's effect outside the interval no longer decides" + (
            "" if new == "inconclusive" else f"; {new}")
    if (kind(old), new) in (("holds", "holds"), ("holds", "equivalent"), ("inconclusive", "inconclusive")):
        return ""
    h = r["shown"]
    (pt, pf), (ht, _) = r["hyp"][h], r["holm"][h]
    reasons = []
    if pt < ALPHA <= ht:
        reasons.append(f"rule 4: Holm (t p {pt:.4f} raw, {ht:.4f} adjusted)")
    if pf >= ALPHA:
        reasons.append(f"rule 3: the sign-flip test (p {pf:.4f})")
    return "; ".join(reasons) or f"{kind(old)} -> {new}"


def comparison_markdown(results):
    """PLAN.md's verdict (paper.reproduce.verdicts, brief) beside v2's for each contrast, with why they differ."""
    from paper.report import verdicts as plan_verdicts
    old = [o.get("brief_verdict", o["verdict"]) for o in plan_verdicts("laptop", results)]
    recs = verdicts(results)[0]
    lines = ["| claim | the paper | PLAN.md | v2 (exploratory) | why |", "| --- | --- | --- | --- | --- |"]
    for o, r in zip(old, recs):
        short = lambda v: v if not v.startswith("untestable") else "untestable" + (
            " (measured: " + v.rsplit("(measured: ", 1)[1] if "(measured: " in v else "")
        lines.append(f"| {r['claim']} | {r['text']} | {short(o)} | {short(status(r))} | {why(o, r)} |")
    return "\n".join(lines)


def counts(results, family=None):
    """{verdict word: number of contrasts}, untestable counted as one word."""
    out = {}
    for r in verdicts(results, family)[0]:
        k = "untestable" if r["untestable"] else r["verdict"]
        out[k] = out.get(k, 0) + 1
    return out


EXPLORATORY = ("paper/results/claims", "Exploratory: seeds 0-4 of paper/results/claims under rules v2",
               "C13's `t1-optimal` rows ran the optimal plug-in estimator used before the fidelity audit, neither of "
               "the authors' branches (paper/results/claims/README.md); its confirmation runs the authors' rule.")
CONFIRMATION = ("paper/results/claims-v2", "The confirmation: seeds 5-9 under rules v2, judged alone",
                "It tests the contrasts the exploratory seeds 0-4 decided (CONFIRMATION.md), those alone in its "
                "Holm family; C13's `t1-optimal` runs the authors' optimal plug-in rule (`--optimal-rule "
                "solve-as-run`).")


def cell(r, confirm=False):
    """A contrast's verdict in a few words with its numbers: mean [95% interval] (a collapse contrast: how far the
    rank and z_std end below DirectPred's); for the confirmation's, the Holm-adjusted t-test p and the sign-flip
    p."""
    if r["untestable"]:
        return "untestable: " + ("the basin (rule 6)" if "rule 6" in r["untestable"] else
                                 "ImageNet only" if "ImageNet" in r["untestable"] else r["untestable"])
    if r["verdict"] in ("not run", "inconclusive (n = 1)"):
        return r["verdict"]
    if r["kind"] == "collapse":
        value = f"rank {mean_ci(r['d'][0], False)}, z_std {mean_ci(r['d'][1], False)} below DirectPred's"
    else:
        value = mean_ci(r["d"], False)
    h = r["shown"]
    p = f"; Holm t p {r['holm'][h][0]:.3f}, flip p {r['hyp'][h][1]:.3f}" if confirm else ""
    return f"**{r['verdict']}**: {value}{p}" if confirm else f"{r['verdict']}: {value}"


def readme_table(confirm, explore):
    """The README's verdicts: each contrast's confirmation (seeds 5-9, where it was confirmed) beside its
    exploratory verdict (seeds 0-4), and the magnitude column (the confirmation's where it has one)."""
    conf, expl = verdicts(confirm, decided(explore))[0], verdicts(explore)[0]
    lines = ["| claim | the paper | seeds 5-9: the confirmation | seeds 0-4: exploratory | the paper's effect |",
             "| --- | --- | --- | --- | --- |"]
    for c, e in zip(conf, expl):
        confirmed = not c.get("skipped") and len(c["seeds"]) > 1
        mag = (c if confirmed else e).get("magnitude", "")
        mag = re.sub(r"the paper's (\S+) is (inside|outside)", r"\1, \2 the interval", mag)
        mag = re.sub(r" collapsed by the rule \(rank < 1.3 or z_std < 0.1\); pred-direct: (\d+) of (\d+)",
                     r" at the collapse rule (DirectPred \1)", mag)
        mag = {"(no paper number)": "", "(a figure: no number to compare)": ""}.get(mag, mag)
        lines.append(f"| {e['claim']} | {e['text']} | {cell(c, True) if confirmed else 'not confirmed'} | "
                     f"{cell(e)} | {mag} |")
    return "\n".join(lines)


def report(results, title, note="", family=None):
    """A results folder's v2 report: the regime gate and each row's gain, PLAN.md's verdicts beside v2's (where the
    folder is PLAN.md's suite: it holds PLAN.md's claims.md), every contrast's full v2 record (family: the
    contrasts it tests, as verdicts')."""
    c = counts(results, family)
    parts = [f"# {title}", "",
             f"Generated by `paper.verdicts.report(\"{results}\", ...)` from the result files there, under the rules "
             "of paper/results/claims-v2/PLAN.md. Linear top-1 of the fast probe on the 10k test images, paired by "
             "seed, in points." + (f" {note}" if note else ""), "",
             "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) + f" (of {sum(c.values())}).", "",
             "## The regime gate and which rows learn (rule 1)", "", gate_markdown(results)]
    if os.path.exists(os.path.join(results, "claims.md")):  # PLAN.md's suite: its verdicts beside
        parts += ["", "## PLAN.md's verdicts and v2's, with why they differ", "", comparison_markdown(results)]
    parts += ["", "## Every contrast under v2", "", markdown(results, family)]
    return "\n".join(parts) + "\n"


def named_report(results):
    """The report of a folder: the exploratory seeds, the confirmation (its family: what those decided), or any
    other folder judged whole."""
    if results == EXPLORATORY[0]:
        return report(*EXPLORATORY)
    if results == CONFIRMATION[0]:
        return report(*CONFIRMATION, family=decided(EXPLORATORY[0]))
    return report(results, f"v2 verdicts of {results}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a results folder (paper/results/claims-v2, paper/results/claims)")
    ap.add_argument("--write", default="", help="write the report here (else print it)")
    args = ap.parse_args()
    text = named_report(args.results.rstrip("/"))
    if args.write:
        with open(args.write, "w") as fh:
            fh.write(text)
    else:
        print(text, end="")
