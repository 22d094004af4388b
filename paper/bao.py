"""
Bao's claim on the laptop network (paper/results/bao/PLAN.md): the cosine and the L2 loss against weight decay at two
augmentation strengths. Reads the sweep's result files (paper/results/bao/run.sh) and writes the verdicts of B1, B2a,
B2b and B3 (paired by seed, Student's t with Holm over the 18 hypotheses beside the exact sign-flip test), the table
of every row and the figure, with the linear toy's curve beside it (paper/theory.py).

    python -m paper.bao                      # paper/results/bao: verdicts.md, table.md, bao.png
    python -m paper.bao RESULTS --no-figure
"""
import argparse
import json
import math
import os
import statistics

import numpy as np

from paper import stats
from paper.verdicts import ALPHA, inits_of, mean_ci, tests
from plumbing import RunError
from directpred import looks_collapsed

LR, STEPS = 0.001, 2340  # the regime's lr (regime/CHOICE.txt) and the run's steps: D = lr x wd x steps
GRID = ("4e-4", "0.0128", "0.128", "0.427", "1.28")  # wd: the paper's, then D = 0.03, 0.3, 1, 3
CROPS = ("0.7", "0.2")  # crop-min: mild (the protocol's), strong (sigma^2's analog, larger)
LOSSES = ("cosine", "l2")
WORD = dict(paper="claimed", reverse="reverse")  # the two directions of a contrast, as verdicts.md names them
MIN_N = 4  # below this the sign-flip test cannot pass (its smallest p is 2^-n): untestable


def row_id(loss, wd, crop):
    return f"{loss}-wd{wd}-crop{crop}"


def load(results):
    """(every (row, seed) result of the plan's rows, diverged ones included: {row: {seed: result}}, the
    baselines: {name: result}) from the sweep's folder (its other files and folders are not results)."""
    every, base = {}, {}
    for loss in LOSSES:
        for wd in GRID:
            for crop in CROPS:
                d = os.path.join(results, row_id(loss, wd, crop))
                for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                    if f.startswith("s") and f.endswith(".json"):
                        every.setdefault(row_id(loss, wd, crop), {})[int(f[1:-5])] = \
                            json.load(open(os.path.join(d, f)))
    d = os.path.join(results, "baselines")
    for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        base[f[:-5]] = json.load(open(os.path.join(d, f)))
    return every, base


def results_of(results):
    """({row: {seed: result}} of the finished runs, {seed: the per-seed inits}: paper.verdicts' rule 1)."""
    every, base = load(results)
    return ({rid: {s: v for s, v in got.items() if "diverged" not in v} for rid, got in every.items()},
            inits_of(base))


def summed_decay(wd):
    """D = lr x wd x steps, PLAN.md's grid coordinate. Where the loss's gradient is zero the weights
    shrink as e^(-D / (1 - momentum)) = e^(-10 D) under SGD momentum 0.9 (PLAN.md's "e^-D" leaves the
    momentum out; the grid and the claims do not depend on it)."""
    return LR * float(wd) * STEPS


def threshold(r):
    """The L2 threshold in D of one (crop, seed) from its final eranks along GRID: the smallest D with r(D) < r0 / 2,
    linear in log D between it and the grid point before; (3 x the largest D, True) where none falls below."""
    logd = [math.log(summed_decay(w)) for w in GRID]
    half = r[0] / 2
    for i in range(1, len(r)):
        if r[i] < half:
            f = (r[i - 1] - half) / (r[i - 1] - r[i])
            return math.exp(logd[i - 1] + f * (logd[i] - logd[i - 1])), False
    return 3 * summed_decay(GRID[-1]), True


def spread_contrast(name, text, a, b, sa, sb):
    """A spread contrast (B1, B2a): a keeps more spread than b, erank and z_std both (intersection-union)."""
    seeds = sorted(set(a) & set(b))
    d = ([a[s]["final_erank"] - b[s]["final_erank"] for s in seeds],
         [a[s]["final_z_std"] - b[s]["final_z_std"] for s in seeds])
    count = lambda res: sum(looks_collapsed(res[s]["final_erank"], res[s]["final_z_std"]) for s in seeds)
    return dict(claim=name, text=text, contrast=f"{sa} - {sb}: final erank; z_std", seeds=seeds, kind="spread",
                d=d, counts=(count(a), count(b)), names=(sa, sb),
                hyp=dict(paper=iut(d, "greater"), reverse=iut(d, "less")) if len(seeds) >= MIN_N else {})


def iut(d, alternative):
    """Intersection-union over (erank, z_std): each test's p is the larger of the two measures' p."""
    return tuple(max(p) for p in zip(*(tests(x, alternative) for x in d)))


def contrasts(results):
    """The plan's 9 contrasts with their hypotheses (unadjusted), in the plan's order."""
    runs, inits = results_of(results)
    get = lambda loss, wd, crop: runs.get(row_id(loss, wd, crop), {})
    lo, hi = GRID[0], GRID[-1]
    recs = []
    for crop in CROPS:
        recs.append(spread_contrast(
            f"B1 (crop-min {crop})", f"at the largest D ({summed_decay(hi):.3g}) the cosine loss keeps more spread "
            "than the L2 loss", get("cosine", hi, crop), get("l2", hi, crop), f"cosine wd {hi}", f"l2 wd {hi}"))
    for crop in CROPS:
        recs.append(spread_contrast(
            f"B2a (crop-min {crop})", f"the L2 loss keeps less spread at the largest D ({summed_decay(hi):.3g}) than "
            f"at the smallest ({summed_decay(lo):.3g})", get("l2", lo, crop), get("l2", hi, crop), f"l2 wd {lo}",
            f"l2 wd {hi}"))
    thr = {}  # (crop, seed): (threshold D, censored), where all five L2 rows of the crop finished
    for crop in CROPS:
        rows = [get("l2", w, crop) for w in GRID]
        for s in set.intersection(*(set(r) for r in rows)):
            thr[crop, s] = threshold([r[s]["final_erank"] for r in rows])
    seeds = sorted(s for (c, s) in thr if c == CROPS[0] and (CROPS[1], s) in thr)
    d = [0.0 if thr[CROPS[0], s][1] and thr[CROPS[1], s][1] else
         math.log(thr[CROPS[1], s][0]) - math.log(thr[CROPS[0], s][0]) for s in seeds]
    recs.append(dict(claim="B2b", text="the L2 threshold is lower with the strong augmentation (crop-min 0.2) than "
                     "with the mild (0.7), as eta_c = tau^2 / (4 (1 + sigma^2)) falls with sigma^2 (an analog)",
                     contrast="ln threshold(crop 0.2) - ln threshold(crop 0.7)", seeds=seeds, kind="log", d=d,
                     thresholds={s: (thr[CROPS[0], s], thr[CROPS[1], s]) for s in seeds},
                     hyp=dict(paper=tests(d, "less"), reverse=tests(d, "greater")) if len(seeds) >= MIN_N else {}))
    for loss in LOSSES:
        for wd in (lo, hi):
            res = get(loss, wd, CROPS[0])
            seeds = sorted(set(res) & set(inits))
            d = [100 * (res[s]["linear_top1"] - inits[s]["init"]) for s in seeds]
            knn = [100 * (res[s]["knn_top1"] - max(inits[s]["random"]["knn_top1"], inits[s]["random-bn"]["knn_top1"]))
                   for s in seeds]
            recs.append(dict(claim=f"B3 ({loss}, D {summed_decay(wd):.3g})", text=f"the {loss} loss at wd {wd}, crop-"
                             f"min {CROPS[0]}, learns: linear top-1 above the stronger random init", kind="points",
                             contrast=f"{row_id(loss, wd, CROPS[0])} - max(random, random-bn), per seed",
                             seeds=seeds, d=d, knn=knn,
                             hyp=dict(paper=tests(d, "greater"), reverse=tests(d, "less")) if len(seeds) >= MIN_N else {}))
    return recs


def verdicts(results):
    """The contrasts with Holm over every testable hypothesis (t-test p) and their verdicts."""
    recs = contrasts(results)
    fam = [(i, h) for i, r in enumerate(recs) if len(r["seeds"]) >= MIN_N for h in r["hyp"]]
    adj = stats.holm([recs[i]["hyp"][h][0] for i, h in fam])
    for r in recs:
        r["holm"] = {}
    for k, (i, h) in enumerate(fam):
        recs[i]["holm"][h] = adj[k]
    for r in recs:
        r["verdict"] = judge(r)
    return recs


def judge(r):
    """holds / opposite: the hypothesis's Holm-adjusted t p and its raw sign-flip p both below ALPHA; B1 where no L2
    run ends collapsed names the weaker claim."""
    if len(r["seeds"]) < MIN_N:
        return f"untestable (n = {len(r['seeds'])} < {MIN_N})" if r["seeds"] else "not run"
    for h, word in (("paper", "holds"), ("reverse", "opposite")):
        if r["holm"][h] < ALPHA and r["hyp"][h][1] < ALPHA:
            if r["claim"].startswith("B1") and word == "holds":
                return ("holds: the L2 loss collapses" if r["counts"][1] else
                        "holds in the weaker form: the L2 loss loses more spread (no L2 run collapsed by the rule)")
            return word
    return "inconclusive"


def magnitude(r):
    if r["kind"] == "spread":
        n = len(r["seeds"])
        return (f"erank {mean_ci(r['d'][0])}; z_std {mean_ci(r['d'][1])}; collapsed by the rule: {r['names'][0]} "
                f"{r['counts'][0]} of {n}, {r['names'][1]} {r['counts'][1]} of {n}")
    if r["kind"] == "log":
        th = r["thresholds"]
        show = lambda t: f"{t[0]:.3g}{' (censored)' if t[1] else ''}"
        per = "; ".join(f"s{s} D {show(a)} -> {show(b)}" for s, (a, b) in th.items())
        return f"{mean_ci(r['d'])}; thresholds (crop 0.7 -> 0.2): {per}"
    return f"{mean_ci(r['d'])} points; kNN {mean_ci(r['knn'])}"


def per_seed(r):
    if r["kind"] == "spread":
        return "; ".join(f"s{s} {a:+.2f} / {b:+.3f}" for s, a, b in zip(r["seeds"], *r["d"]))
    return ", ".join(f"s{s} {x:+.3f}" if r["kind"] == "log" else f"s{s} {x:+.2f}" for s, x in zip(r["seeds"], r["d"]))


def verdicts_markdown(results):
    recs = verdicts(results)
    lines = [f"# Bao's claim on the laptop network: verdicts ({os.path.relpath(results)}, PLAN.md's rules)", "",
             f"Holm over {sum(len(r['holm']) for r in recs)} hypotheses (the t-tests); a verdict needs its Holm p and "
             f"its raw sign-flip p below {ALPHA}. Spread contrasts: erank / z_std differences per seed.", "",
             "| claim | what it says | contrast | n | per seed | p (each direction): t raw / Holm, sign-flip raw | "
             "verdict | magnitude |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in recs:
        p = "; ".join(f"{WORD[h]}: t {r['hyp'][h][0]:.4f} / {r['holm'][h]:.4f}, flip {r['hyp'][h][1]:.4f}"
                      for h in ("paper", "reverse") if r["holm"])  # (none where untestable)
        lines.append(f"| {r['claim']} | {r['text']} | {r['contrast']} | {len(r['seeds'])} | {per_seed(r)} | {p} | "
                     f"{r['verdict']} | {magnitude(r) if r['seeds'] else ''} |")
    return "\n".join(lines) + "\n"


def table_markdown(results):
    """Every row: per seed final erank, z_std, linear and kNN top-1 (or diverged), and the means."""
    runs, inits = results_of(results)
    every = load(results)[0]
    lines = [f"# Bao's sweep: every row ({os.path.relpath(results)})", "",
             f"lr {LR}, {STEPS} steps; D = lr x wd x steps. Per seed: erank / z_std / linear top-1 / kNN top-1 (%).",
             "", "| loss | crop-min | wd | D | seeds | erank | z_std | linear | kNN | per seed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for crop in CROPS:
        for loss in LOSSES:
            for wd in GRID:
                got = every.get(row_id(loss, wd, crop), {})
                ok = {s: v for s, v in got.items() if "diverged" not in v}
                mean = lambda k, f=1: f"{f * statistics.mean(v[k] for v in ok.values()):.2f}" if ok else ""
                cells = [f"s{s} " + ("diverged" if "diverged" in v else
                                     f"{v['final_erank']:.2f} / {v['final_z_std']:.3f} / {100 * v['linear_top1']:.2f}"
                                     f" / {100 * v['knn_top1']:.2f}") for s, v in sorted(got.items())]
                lines.append(f"| {loss} | {crop} | {wd} | {summed_decay(wd):.3g} | {len(got)} | {mean('final_erank')} "
                             f"| {mean('final_z_std')} | {mean('linear_top1', 100)} | {mean('knn_top1', 100)} | "
                             f"{'; '.join(cells)} |")
    for s, b in sorted(inits.items()):
        lines.append(f"| random init s{s} | | | | | | | {100 * b['random']['linear_top1']:.2f} / "
                     f"{100 * b['random-bn']['linear_top1']:.2f} (random / random-bn) | | |")
    return "\n".join(lines) + "\n"


def toy_curves(path, etas=(0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5), sigma2s=(0.5, 2.0)):
    """The linear toy (paper/theory.py's l2-vs-cosine setting) at two augmentation strengths, for both losses against
    eta: ||W||_F^2 / ||W(0)||_F^2 and the effective rank of F at the end. Computed once into `path` (JSON), read
    from there after."""
    if os.path.exists(path):
        return json.load(open(path))
    from directpred import effective_rank
    from paper.theory import l2_vs_cosine_config, simulate
    curves = []
    for loss in LOSSES:
        for s2 in sigma2s:
            ends = [simulate(l2_vs_cosine_config(loss, eta, sigma2=s2, log_every=3000, mc_samples=1024))[0]
                    for eta in etas]
            curves.append(dict(loss=loss, sigma2=s2, eta=list(etas),
                               norm=[r[-1]["W_norm2"] / r[0]["W_norm2"] for r in ends],
                               erank=[effective_rank(r[-1]["F_eig"]) for r in ends]))
    with open(path, "w") as fh:
        json.dump(curves, fh, indent=1)
    return curves


def figure(results, out):
    from paper.theory import eta_critical, pyplot, save
    plt = pyplot()
    runs, inits = results_of(results)
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.6))
    Ds = [summed_decay(w) for w in GRID]
    measures = (("final_erank", "final effective rank of F (of 128)", 1.3),
                ("final_z_std", "final z_std (1: spread, 0: collapsed)", 0.1), ("gain", "linear top-1 - init (points)", 0))
    for ax, (key, title, rule) in zip(axes, measures):
        for i, loss in enumerate(LOSSES):
            for crop, ls in zip(CROPS, ("-", "--")):
                xs, ys, means = [], [], []
                for D, wd in zip(Ds, GRID):
                    got = runs.get(row_id(loss, wd, crop), {})
                    vals = [100 * (v["linear_top1"] - inits[s]["init"]) if key == "gain" else v[key]
                            for s, v in got.items() if key != "gain" or s in inits]
                    xs += [D] * len(vals)
                    ys += vals
                    means.append(statistics.mean(vals) if vals else np.nan)
                ax.plot(xs, ys, f"C{i}.", alpha=0.4)
                ax.plot(Ds, means, f"C{i}{ls}", marker="o", label=f"{loss}, crop-min {crop}")
        ax.axhline(rule, color="r" if key != "gain" else "k", lw=0.8, ls=":",
                   label="the collapse rule" if key != "gain" else "the stronger random init")
        ax.set(xscale="log", xlabel="summed weight decay D = lr x wd x steps", title=title)
        ax.legend(fontsize=7)
    axes[0].set_yscale("log")
    for c in toy_curves(os.path.join(os.path.dirname(out), "toy.json")):
        axes[3].plot(c["eta"], c["norm"], f"C{LOSSES.index(c['loss'])}" + ("-" if c["sigma2"] == 0.5 else "--"),
                     marker="o", label=f"{c['loss']}, sigma^2 {c['sigma2']}")
    for s2, ls in ((0.5, "-"), (2.0, "--")):
        axes[3].axvline(eta_critical(1.0, s2), color="k", lw=0.8, ls=ls, label=f"eta_c at sigma^2 {s2} (L2)")
    axes[3].set(yscale="log", xlabel="eta (weight decay)", ylabel="||W||_F^2 / ||W(0)||_F^2 at the end",
                title="the linear toy: the weights' norm (paper.theory l2-vs-cosine)")
    axes[3].legend(fontsize=7)
    fig.suptitle("Bao's claim on the laptop network: the L2 and the cosine loss against weight decay (DirectPred, "
                 "Fashion-MNIST, ResNet-18 width 16, lr 0.001, 2,340 steps, 5 seeds)")
    return save(fig, os.path.dirname(out), os.path.basename(out))


def main(argv=None):
    P = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    P.add_argument("results", nargs="?", default="paper/results/bao")
    P.add_argument("--no-figure", action="store_true")
    a = P.parse_args(argv)
    if not os.path.isdir(a.results):
        raise RunError(f"results: no folder {a.results}")
    for name, text in (("verdicts.md", verdicts_markdown(a.results)), ("table.md", table_markdown(a.results))):
        with open(os.path.join(a.results, name), "w") as fh:
            fh.write(text)
        print(f"wrote {os.path.join(a.results, name)}")
    if not a.no_figure:
        figure(a.results, os.path.join(a.results, "bao.png"))


if __name__ == "__main__":
    try:
        main()
    except RunError as e:
        raise SystemExit(f"error: {e}")
