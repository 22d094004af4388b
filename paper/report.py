"""
The report of a results folder: its result files (one small JSON per (row, seed) and per baseline), each row's mean
and std over seeds and its gain over the same network at random init, the markdown table, PLAN.md's verdicts
(paper/results/claims/PLAN.md, kept as that suite's record; the rules that supersede them are paper/verdicts.py's),
and the figures.
"""
import json
import math
import os
import shlex
import statistics

from paper import stats
from paper.rows import CLAIMS, CURVES, PAPER_LR_WD, ROWS, paper_effect, paper_text, row, row_flags, runs_row
from directpred import looks_collapsed
from train import parse_config

def read_log(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def collect(work_run, wall):
    """The committed summary of one finished (row, seed): probe numbers, wall time, final diagnostics, kNN curve."""
    ev = json.load(open(os.path.join(work_run, "eval.json")))
    log = read_log(os.path.join(work_run, "log.jsonl"))
    last = [r for r in log if "erank" in r][-1]
    return {"linear_top1": ev["top1"], "knn_top1": ev["knn_top1"], "protocol": ev["protocol"],
            "train_seconds": round(wall, 1), "probe_seconds": ev["seconds"], "steps": last["step"],
            "final_loss": last["loss"], "final_z_std": last["z_std"], "final_erank": last["erank"],
            "curve": [{**{k: r[k] for k in ("step", "loss", "z_std", "erank", "knn_top1") if k in r},
                       **({"align": r["align"][:4]} if "align" in r else {})} for r in log]}  # align: Fig. 2, top 4


def machine():
    """Where a result ran: the CPU's model name, the GPUs torch sees, torch's version. A seed means the same init and
    batch order on any machine; the numbers differ in their last digits between CPUs (their kernels round
    differently) and drift apart over a run, as two seeds do."""
    import platform
    import torch
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), cpu)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"{os.cpu_count()} cores of {cpu}" + (f", {len(gpus)} x {gpus[0]}" if gpus else "") + \
        f", torch {torch.__version__}"


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(path + ".tmp", path)


def mean_std(xs):
    """(mean, sample std or None for n < 2, n)."""
    return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else None, len(xs)


def fmt(ms, scale=100, sign=""):
    """mean ± std (n=k); sign="+": a difference, signed."""
    m, s, n = ms
    return f"{scale * m:{sign}.2f} ± {scale * s:.2f} (n={n})" if s is not None else f"{scale * m:{sign}.2f} (n={n})"


def load_results(results):
    """{row id: {seed: result}}, {baseline name: result} from a results directory."""
    runs, base = {}, {}
    if os.path.isdir(results):
        for rid in os.listdir(results):
            d = os.path.join(results, rid)
            for f in sorted(os.listdir(d)) if os.path.isdir(d) else []:
                obj = json.load(open(os.path.join(d, f)))
                if rid == "baselines":
                    base[f[:-5]] = obj
                else:
                    runs.setdefault(rid, {})[obj["seed"]] = obj
    return runs, base


def aggregate(scale, results):
    """One dict per row: the paper's number, ours (linear, kNN) as mean / std / n, and the gain over the stronger
    random init (per seed and measure)."""
    runs, base = load_results(results)
    rand = stronger_init(base)
    out = []
    for r in ROWS:
        src = runs_row(r, scale)
        got = runs.get(src, {}) if src else {}
        rec = dict(id=r["id"], table=r["table"], label=r["label"], flags=row_flags(r, scale), paper=paper_text(r),
                   runs_as=src, n=len(got), check=r.get("check"))
        if scale == "laptop" and src is None:
            rec["note"] = r["laptop"]
        rec["diverged"] = sum("diverged" in v for v in got.values())
        got = {s: v for s, v in got.items() if "diverged" not in v}
        if got:
            seeds = sorted(got)
            rec["linear"] = mean_std([got[s]["linear_top1"] for s in seeds])
            rec["knn"] = mean_std([got[s]["knn_top1"] for s in seeds])
            if all(s in rand for s in seeds):
                rec["gain_linear"] = mean_std([got[s]["linear_top1"] - rand[s]["linear_top1"] for s in seeds])
                rec["gain_knn"] = mean_std([got[s]["knn_top1"] - rand[s]["knn_top1"] for s in seeds])
            rec["erank"] = statistics.mean(got[s]["final_erank"] for s in seeds)
            rec["z_std"] = statistics.mean(got[s]["final_z_std"] for s in seeds)
        out.append(rec)
    return out, base


def table_markdown(scale, results):
    """The markdown table of one scale (paper/results/paper/table.md is this, at the paper scale)."""
    rows, base = aggregate(scale, results)
    if scale == "paper":
        lines = ["| paper | row | flags (after `python train.py --preset paper-stl10`; a row's own --preset replaces it) "
                 "| paper (STL-10 unless said; ± std where we have it) | ours (mean ± std over seeds; probe: "
                 "--protocol paper, ImageNet --protocol augmented) |", "| --- | --- | --- | --- | --- |"]
        for r in rows:
            ours = fmt(r["linear"]) if "linear" in r else "not run"
            check = f" (to check against the paper: {r['check']})" if r["check"] else ""
            lines.append(f"| {r['table']} | {r['label']} | `{r['flags'] or '(none)'}` | {r['paper']}{check} | {ours} |")
        return "\n".join(lines)
    lines = ["| paper | row | flags | paper (STL-10) | linear top-1 | kNN top-1 | gain over the stronger random init (per seed, random or random-bn; linear / kNN) "
             "| final rank / z_std |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        if "note" in r:
            continue
        if "linear" not in r:
            what = f"diverged (n={r['diverged']})" if r["diverged"] else "not run"
            lines.append(f"| {r['table']} | {r['label']} | `{r['flags'] or '(base)'}` | {r['paper']} | {what} | | | |")
            continue
        same = f" (= {r['runs_as']})" if r["runs_as"] != r["id"] else ""
        gain = (f"{100 * r['gain_linear'][0]:+.2f} / {100 * r['gain_knn'][0]:+.2f}" if "gain_linear" in r else "")
        div = f"; {r['diverged']} more diverged" if r["diverged"] else ""
        lines.append(f"| {r['table']} | {r['label']}{same} | `{r['flags'] or '(base)'}` | {r['paper']} | "
                     f"{fmt(r['linear'])}{div} | {fmt(r['knn'])} | {gain} | {r['erank']:.1f} / {r['z_std']:.2f} |")
    for name in sorted(base, key=lambda k: (k.startswith("random"), k)):
        b = base[name]
        lines.append(f"| baseline | {name} | | | {100 * b['linear_top1']:.2f} | {100 * b['knn_top1']:.2f} | | |")
    return "\n".join(lines)


# the tests of the analysis plan (paper/results/claims/PLAN.md, committed before the suite's first run): a claim's
# paired differences over seeds, Student's t with n - 1 degrees of freedom (scipy's, through paper/stats.py). The
# rules that supersede them are paper/results/claims-v2/PLAN.md's (paper/verdicts.py)
ALPHA = 0.05  # one-sided, for every test


EQ_MARGIN = 0.01  # "about equal": the equivalence margin, +-1 point of linear top-1


def paired_test(diffs):
    """The paired t-test of differences a - b over seeds: mean, sample std, n, t, the one-sided p of a > b and of
    a < b, the equivalence test's p (|a - b| < EQ_MARGIN), the 95% interval (two-sided) and the 90% one (the
    equivalence test's: two one-sided tests at ALPHA)."""
    m, s, n = mean_std(diffs)
    se = s / math.sqrt(n)
    t = m / se if se > 0 else math.copysign(math.inf, m) if m else 0.0
    ci = lambda level: (m - stats.t_ppf(1 - (1 - level) / 2, n - 1) * se, m + stats.t_ppf(1 - (1 - level) / 2, n - 1) * se)
    p_within = max(1 - stats.t_cdf((m + EQ_MARGIN) / se, n - 1), stats.t_cdf((m - EQ_MARGIN) / se, n - 1)) if se > 0 else \
        float(abs(m) >= EQ_MARGIN)  # the equivalence test's p: the larger of its two one-sided p's
    return dict(mean=m, std=s, n=n, t=t, p_above=1 - stats.t_cdf(t, n - 1), p_below=stats.t_cdf(t, n - 1), p_within=p_within,
                ci95=ci(0.95), ci90=ci(0.90))


def judge(diffs, sign, effect=None):
    """The plan's verdict of one contrast a - b from its paired differences. sign +1 (the claim: a above b) or -1:
    holds (one-sided paired t-test at ALPHA); does not hold (the opposite holds, or the 95% interval excludes the
    paper's effect); inconclusive (neither). sign 0 (about equal): holds (equivalence within +-EQ_MARGIN: the 90%
    interval inside it); does not hold (a difference beyond the margin: the 90% interval outside it); inconclusive."""
    if len(diffs) < 2:
        return "inconclusive (n = 1: no seed-to-seed spread)"
    st = paired_test(diffs)
    lo, hi = st["ci90"]
    if sign == 0:
        return ("holds" if -EQ_MARGIN < lo and hi < EQ_MARGIN else "does not hold (a difference beyond the margin)"
                if lo > EQ_MARGIN or hi < -EQ_MARGIN else "inconclusive")
    p_claim, p_opposite = (st["p_above"], st["p_below"]) if sign > 0 else (st["p_below"], st["p_above"])
    lo, hi = st["ci95"]
    if p_claim < ALPHA:
        return "holds"
    if p_opposite < ALPHA:
        return "does not hold (the opposite holds)"
    if effect is not None and not lo <= effect <= hi:
        return f"does not hold (the paper's {100 * effect:+.2f} is outside the interval)"
    return "inconclusive"


def learned(gains):
    """Whether a row beats its random init: the one-sided paired t-test of its gains at ALPHA (n >= 2)."""
    return len(gains) > 1 and paired_test(gains)["p_above"] < ALPHA


def collapsed(res):
    """Whether one run ended collapsed (the thresholds of train.py's collapse warning, at its last log line)."""
    return looks_collapsed(res["final_erank"], res["final_z_std"])


def lr_wd(res):
    """A run's summed lr x weight decay (steps x lr x wd; a constant lr), from its command's config."""
    cfg = run_config(shlex.split(res["command"]))
    return res["steps"] * cfg["lr"] * cfg["wd"]


def random_init(base):
    """The first plan's random init (claims/PLAN.md; its verdicts below): {seed: result}, BN statistics re-estimated
    (random-bn-s*) where probed, else the untouched init (random-s*)."""
    for prefix in ("random-bn-s", "random-s"):
        got = {int(k[len(prefix):]): v for k, v in base.items() if k.startswith(prefix)}
        if got:
            return got
    return {}


def inits_by_seed(base):
    """{seed: {"random": result, "random-bn": result}} from the baselines' results ({name: result}): the network at
    random init as initialised, and with its BN statistics re-estimated, where probed."""
    inits = {}
    for name, v in base.items():
        for prefix in ("random-bn-s", "random-s"):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                inits.setdefault(int(name[len(prefix):]), {})[prefix[:-2]] = v
                break
    return inits


def inits_of(base):
    """{seed: {"random", "random-bn", "init": the better linear top-1}} for the seeds with both inits probed:
    claims-v2/PLAN.md's rule 1, "learns" = above the stronger."""
    return {s: dict(b, init=max(x["linear_top1"] for x in b.values())) for s, b in inits_by_seed(base).items()
            if len(b) == 2}


def stronger_init(base):
    """{seed: {"linear_top1", "knn_top1"}}: per seed and measure the better of the random inits probed."""
    return {s: {m: max(x[m] for x in b.values()) for m in ("linear_top1", "knn_top1")}
            for s, b in inits_by_seed(base).items()}


def verdicts(scale, results):
    """One dict per contrast of CLAIMS, with its per-seed differences (linear, kNN), its test and its verdict."""
    runs, base = load_results(results)
    ok = lambda rid: {s: v for s, v in runs.get(runs_row(row(rid), scale) or rid, {}).items() if "diverged" not in v}
    rand = random_init(base)
    gains = lambda res: [v["linear_top1"] - rand[s]["linear_top1"] for s, v in sorted(res.items()) if s in rand]
    wd = [lr_wd(v) for v in ok("pred-linear").values()][:1]
    g = gains(ok("pred-direct"))  # the regime gate: DirectPred's gain over its random init above 5x its spread
    gate = None if len(g) < 2 else (f"DirectPred's gain over its random init {fmt(mean_std(g), 100, '+')} is not "
                                    f"above 5x its std" if statistics.mean(g) <= 5 * statistics.stdev(g) else "")
    out = []
    for c in CLAIMS:
        rec = dict(c)
        if "collapse" in c:
            a, b = ok(c["collapse"]), ok(c["b"])
            rec["detail"] = (f"{c['collapse']}: " + ", ".join(f"s{s} rank {v['final_erank']:.2f} / z_std "
                                                               f"{v['final_z_std']:.2f}" for s, v in sorted(a.items()))
                             + f"; {c['b']}: {sum(collapsed(v) for v in b.values())} of {len(b)} collapsed")
            k = sum(collapsed(v) for v in a.values())
            rec["verdict"] = ("not run" if not a else "holds" if k == len(a) and not any(map(collapsed, b.values()))
                              else "does not hold" if k == 0 else f"inconclusive ({k} of {len(a)} seeds collapsed)")
        elif "align" in c:
            a = ok(c["align"])
            top = lambda cur: statistics.mean(cur["align"])
            rec["linear"] = {s: top(cur[-1]) - top(cur[0]) for s, v in a.items()
                             if len(cur := [r for r in v["curve"] if "align" in r]) > 1}
            rec["verdict"] = judge(list(rec["linear"].values()), 1) if rec["linear"] else "not run"
            rec["detail"] = "; Wp turning symmetric: untestable at this scale (a weight-decay effect, C4)"
        else:
            a = ok(c["a"])
            b = rand if c["b"] == "random" else ok(c["b"])
            seeds = sorted(set(a) & set(b))
            rec["linear"] = {s: a[s]["linear_top1"] - b[s]["linear_top1"] for s in seeds}
            rec["knn"] = {s: a[s]["knn_top1"] - b[s]["knn_top1"] for s in seeds}
            rec["verdict"] = (judge(list(rec["linear"].values()), c["sign"], paper_effect(c)) if seeds
                              else "not run")
            if c["b"] != "random" and seeds and not (learned(gains(a)) or learned(gains(b))):
                text = lambda res: fmt(mean_std(gains(res)), 100, "+") if gains(res) else "no random init"
                rec["untestable"] = (f"neither row beats its random init (gains {c['a']} {text(a)}, {c['b']} "
                                     f"{text(b)}; one-sided paired t-test at {ALPHA})")
                rec["untestable_brief"] = f"neither row beats its random init ({text(a)}, {text(b)})"
        if gate and "collapse" not in c:
            rec["untestable"] = rec["untestable_brief"] = f"the regime gate fails: {gate}"
        if c.get("wd") and wd:
            rec["untestable"] = (f"summed lr x wd {wd[0]:.3f} here vs {PAPER_LR_WD:.2f} in the paper: the "
                                 f"wd factor e^(-2 eta t) is {math.exp(-2 * wd[0]):.2f} here, "
                                 f"{math.exp(-2 * PAPER_LR_WD):.2f} there")
            rec["untestable_brief"] = f"summed lr x wd {wd[0]:.3f}, the paper's {PAPER_LR_WD:.2f}"
        if rec.get("untestable"):
            rec["brief_verdict"] = (f"untestable here: {rec.get('untestable_brief', rec['untestable'])}"
                                    f" (measured: {rec['verdict']})")
            rec["verdict"] = "untestable here: " + rec["untestable"] + f" (measured: {rec['verdict']})"
        out.append(rec)
    return out


def interval(d, k=100):
    """mean [95% interval] (n) of paired differences {seed: a - b}; k scales (100: points of top-1)."""
    if len(d) < 2:
        return f"{k * next(iter(d.values())):+.2f} (n=1)" if d else ""
    st = paired_test(list(d.values()))
    return f"{k * st['mean']:+.2f} [{k * st['ci95'][0]:+.2f}, {k * st['ci95'][1]:+.2f}] (n={st['n']})"


def claims_markdown(scale, results):
    """PLAN.md's verdicts as a markdown table (claims.md): claim, contrast, per-seed paired differences, mean ± std,
    the 95% interval and one-sided p of the paired t-test, verdict."""
    recs = verdicts(scale, results)
    diffs = lambda d: ", ".join(f"{100 * v:+.2f}" for _, v in sorted(d.items()))
    ms = lambda d, k=100: fmt(mean_std(list(d.values())), k, "+") if d else ""

    def p_value(r):  # the one-sided p in the claim's direction (about equal: the larger of the two one-sided p's)
        if len(r["linear"]) < 2:
            return ""
        st = paired_test(list(r["linear"].values()))
        return f"{st['p_above'] if r['sign'] > 0 else st['p_below'] if r['sign'] < 0 else st['p_within']:.3f}"

    lines = ["| claim | the paper | contrast a - b | linear top-1 a - b, per seed | mean ± std | mean [95% interval] "
             "| p (one-sided) | kNN a - b, mean ± std | verdict |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in recs:
        if "collapse" in r:
            lines.append(f"| {r['claim']} | {r['text']} | {r['collapse']} vs {r['b']} | {r['detail']} | | | | | "
                         f"{r['verdict']} |")
        elif "align" in r:
            lines.append(f"| {r['claim']} | {r['text']} | {r['align']}: end - start | "
                         f"{', '.join(f'{v:+.2f}' for _, v in sorted(r['linear'].items()))} | "
                         f"{ms(r['linear'], 1)} | {interval(r['linear'], 1)} | {p_value(r)} | | "
                         f"{r['verdict']}{r['detail']} |")
        else:
            b = r["b"] if r["b"] != "random" else "random-bn (the random init, BN statistics re-estimated)" \
                if any(k.startswith("random-bn-s") for k in load_results(results)[1]) else \
                "random (the random init as initialised)"
            lines.append(f"| {r['claim']} | {r['text']} | {r['a']} - {b} | {diffs(r['linear'])} | "
                         f"{ms(r['linear'])} | {interval(r['linear'])} | {p_value(r) if r['linear'] else ''} | "
                         f"{ms(r['knn'])} | {r['verdict']} |")
    return "\n".join(lines)


def lead_figure(runs, rows, out_dir, name, title, base=None):
    """The lead figure: the predictor input's effective rank and the kNN monitor over steps, one line per run of
    each row (collapse against not), and on the kNN panel the baselines' kNN as horizontal lines (raw pixels, the
    network at random init as initialised and with BN statistics re-estimated, mean over seeds, the network trained
    with labels). runs: {row id: {seed: result}}; base: {baseline name: result}. Returns the PNG's path."""
    from paper.theory import pyplot, save  # the repo's one plotting module; matplotlib is imported there
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, rid in enumerate(rows):
        for j, (s, res) in enumerate(sorted(runs.get(rid, {}).items())):
            curve = res.get("curve", [])
            kw = dict(color=f"C{i}", lw=1, alpha=0.8, label=f"{rid}: {row(rid)['label']}" if j == 0 else None)
            rank = [c for c in curve if "erank" in c]
            axes[0].plot([c["step"] for c in rank], [c["erank"] for c in rank], **kw)
            knn = [c for c in curve if "knn_top1" in c]
            axes[1].plot([c["step"] for c in knn], [100 * c["knn_top1"] for c in knn], marker=".", **kw)
    # the baselines' kNN on the kNN panel, each line named on it
    for prefix, label, style, va in (("pixels", "raw pixels", "-", "bottom"),
                                     ("supervised", "trained with labels", "-.", "bottom"),
                                     ("random-s", "random init", "--", "top"),
                                     ("random-bn-s", "random init, BN re-estimated", ":", "bottom")):
        got = [v["knn_top1"] for n, v in (base or {}).items()
               if n == prefix or n.startswith(prefix) and n[len(prefix):].isdigit()]
        if got:
            y = 100 * statistics.mean(got)
            axes[1].axhline(y, color="0.35", ls=style, lw=1)
            axes[1].annotate(f"{label} {y:.1f}", (0.45, y), xycoords=("axes fraction", "data"), fontsize=6, va=va,
                             color="0.25")
    axes[0].set(xlabel="step", ylabel="effective rank", yscale="log", title="effective rank of the predictor input "
                "(centered; 1 = collapsed)")
    axes[1].set(xlabel="step", ylabel="kNN top-1 (%), test images", title="kNN monitor (k = 200): step 0 = random init")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=7, frameon=False)
    from directpred import COLLAPSE_ERANK  # the one collapse rule's rank threshold
    axes[0].axhline(COLLAPSE_ERANK, color="0.35", ls=":", lw=1)
    axes[0].annotate(f"collapse rule: rank < {COLLAPSE_ERANK}", (0.99, COLLAPSE_ERANK), xycoords=("axes fraction", "data"),
                     fontsize=6, va="bottom", ha="right", color="0.25")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return save(fig, out_dir, name)


INIT_LABEL = {"random": "random init, as initialised", "random-bn": "random init, BN statistics re-estimated"}


def figures(scale, results):
    """Bar charts (one panel per table, seeds as dots), the predictors' kNN curves, the Fig. 2 panels of a linear Wp."""
    from paper.theory import plot_log, pyplot, save  # the repo's one plotting module; matplotlib is imported there
    plt = pyplot()
    rows, base = aggregate(scale, results)
    runs, _ = load_results(results)
    inits = {}  # {kind: the linear top-1 of each seed probed}, both inits drawn where probed
    for b in inits_by_seed(base).values():
        for kind, v in b.items():
            inits.setdefault(kind, []).append(v["linear_top1"])
    tables = [t for t in dict.fromkeys(r["table"] for r in rows) if any("linear" in r for r in rows if r["table"] == t)]
    ncol = max(1, min(3, len(tables)))  # a grid of panels, 3 to a line; horizontal bars, so the labels read
    nrow = max(1, -(-len(tables) // ncol))
    tall = max(sum(1 for r in rows if r["table"] == t and "linear" in r) for t in tables) if tables else 1
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.6 * ncol, (0.32 * tall + 1.2) * nrow), squeeze=False)
    for ax in axes.flat[len(tables):]:
        ax.axis("off")
    for ax, t in zip(axes.flat, tables):
        rs = [r for r in rows if r["table"] == t and "linear" in r]
        for i, r in enumerate(rs):
            xs = [100 * v["linear_top1"] for v in runs[r["runs_as"]].values() if "linear_top1" in v]
            ax.barh(i, 100 * r["linear"][0], color="C0", alpha=0.5)
            ax.plot(xs, [i] * len(xs), "k.", ms=5)
        for kind, style in (("random", "--"), ("random-bn", ":")):  # both inits, named
            if kind in inits:
                ax.axvline(100 * statistics.mean(inits[kind]), color="C3", ls=style, lw=1,
                           label=f"{kind}: {INIT_LABEL[kind]}")
        ax.set_yticks(range(len(rs)), [r["label"] for r in rs], fontsize=8)
        ax.set_ylim(tall - 0.5, -0.5)  # the first row on top, every panel at the same bar height
        lo = min([100 * v["linear_top1"] for r in rs for v in runs[r["runs_as"]].values() if "linear_top1" in v]
                 + [100 * min(sum(inits.values(), []) or [1])])
        ax.set(title=t, xlim=(lo - 2, None), xlabel="linear top-1 (%), seeds as dots")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    paths = [save(fig, results, "tables.png")]
    paths.append(lead_figure(runs, CURVES, results, "lead.png", f"Fashion-MNIST, {scale} scale, every seed a line",
                             base))
    log = runs.get("pred-linear", {}).get(0, {}).get("log")
    if log:
        path = os.path.join(results, "fig2_linear.jsonl")
        with open(path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in log)
        paths.append(plot_log(path, os.path.join(results, "fig2_linear.png"),
                              title=f"{os.path.join(results, 'pred-linear', 's0.json')} (its log)"))
        os.remove(path)
    return paths


def run_config(cmd):
    """train.py's config of one train command (train.parse_config: the command's flags, a --preset's included)."""
    return parse_config(cmd[[i for i, t in enumerate(cmd) if t.endswith("train.py")][0] + 1:])
