"""
The reference runs read as README.md here says, before the first result landed: each row's linear and kNN top-1
(mean ± std over the seeds, each seed's value), DirectPred's differences paired by seed, and the two criteria
(DirectPred above raw pixels on every seed; the no-predictor control collapsed and 10 points below on every seed).

    python paper/results/reference/summary.py      # writes paper/results/reference/summary.md and prints it

readme_table() is docs/reference.md's table of these runs: a test checks that docs/reference.md holds it and that
summary.md is summary_markdown(), line for line.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))  # the repository: paper.*

from paper.report import fmt, load_results, mean_std  # noqa: E402
from directpred import COLLAPSE_ERANK, COLLAPSE_Z_STD, looks_collapsed  # noqa: E402  the repository's one collapse rule

ROWS = [("pred-direct", "DirectPred (`--predictor direct`)"),
        ("pred-mlp", "2-layer predictor, trained (`--predictor mlp --pred-lr-ratio 10`)"),
        ("pred-linear", "linear predictor, trained (`--predictor linear --pred-lr-ratio 10`)"),
        ("pred-none", "no predictor, Wp = I (`--predictor none`)")]
BASELINES = [("random-s", "this network at random init (`--baseline random`)"),
             ("random-bn-s", "random init, BN statistics re-estimated (`--baseline random-bn`)"),
             ("pixels", "raw pixels (`--baseline pixels`)"),
             ("supervised", "this network trained with labels for the same steps (`--baseline supervised`)")]
BELOW = 10.0  # the search's constraint: the control ends 10 points below DirectPred (../regime-search/README.md); its
# collapse part reads train.py's rule (the search wrote rank < 2; README.md here says what that changes: nothing)


def per_seed(runs, base, name):
    """{seed: result} of a row or a seeded baseline; {None: result} of a baseline without a seed."""
    if name in runs:
        return {s: r for s, r in runs[name].items() if "linear_top1" in r}
    seeded = {int(k[len(name):]): v for k, v in base.items() if name.endswith("-s") and k.startswith(name)
              and k[len(name):].isdigit()}
    return seeded or ({None: base[name]} if name in base else {})


def in_order(got):
    """per_seed's {seed: result} as ("0, 1, 2", [results]) in seed order; "-" for a baseline without a seed."""
    order = sorted(got, key=lambda s: -1 if s is None else s)
    return ", ".join("-" if s is None else str(s) for s in order), [got[s] for s in order]


def cell(vals, sign=""):
    """The report's 'mean ± std (n=k)' in points, then each seed's value; sign="+": differences, signed."""
    each = f" [{', '.join(f'{100 * v:{sign}.2f}' for v in vals)}]" if len(vals) > 1 else ""
    return fmt(mean_std(vals), sign=sign) + each


def readme_table(folder=HERE):
    """Each row's mean ± std over its seeds, linear and kNN top-1 (docs/reference.md's table)."""
    runs, base = load_results(folder)
    lines = ["| features (fast probe, 10k test images; [paper/results/reference](../paper/results/reference)) | seeds | "
             "linear top-1 | kNN top-1 |", "| --- | --- | --- | --- |"]
    for name, label in BASELINES[:2] + ROWS + BASELINES[2:]:
        got = per_seed(runs, base, name)
        label = f"**{label}**" if name == "pred-direct" else label
        if not got:
            lines.append(f"| {label} | not run yet | | |")
            continue
        seeds, res = in_order(got)
        lines.append(f"| {label} | {seeds} | {fmt(mean_std([r['linear_top1'] for r in res]))} | "
                     f"{fmt(mean_std([r['knn_top1'] for r in res]))} |")
    return "\n".join(lines)


def summary_markdown(folder=HERE):
    """summary.md: every row with its per-seed values, DirectPred's paired differences, the two criteria."""
    runs, base = load_results(folder)
    direct = per_seed(runs, base, "pred-direct")
    lines = ["| features (fast probe, 10k test images) | seeds | linear top-1 | kNN top-1 | final rank / z_std |",
             "| --- | --- | --- | --- | --- |"]
    for name, label in ROWS + BASELINES:
        got = per_seed(runs, base, name)
        if not got:
            lines.append(f"| {label} | | not run yet | | |")
            continue
        seeds, res = in_order(got)
        rank = "; ".join(f"{r['final_erank']:.2f} / {r['final_z_std']:.2f}" for r in res if "final_erank" in r)
        lines.append(f"| {label} | {seeds} | {cell([r['linear_top1'] for r in res])} | "
                     f"{cell([r['knn_top1'] for r in res])} | {rank} |")
    lines += ["", "| DirectPred minus (paired by seed; a baseline without a seed is subtracted from each) | seeds | "
              "linear top-1 | kNN top-1 |", "| --- | --- | --- | --- |"]
    for name, label in ROWS[1:] + BASELINES:
        other = per_seed(runs, base, name)
        seeds = [s for s in sorted(direct) if s in other or None in other]
        if not seeds:
            continue
        diff = lambda key: cell([direct[s][key] - other[s if s in other else None][key] for s in seeds], "+")
        lines.append(f"| {label} | {', '.join(map(str, seeds))} | {diff('linear_top1')} | {diff('knn_top1')} |")
    pixels = per_seed(runs, base, "pixels").get(None)
    none = per_seed(runs, base, "pred-none")
    lines.append("")
    if pixels and direct:
        above = [s for s in sorted(direct) if direct[s]["linear_top1"] > pixels["linear_top1"]]
        lines.append(f"DirectPred above raw pixels ({100 * pixels['linear_top1']:.2f}): {len(above)} of {len(direct)} "
                     f"seeds ({', '.join(map(str, above)) or 'none'}); the criterion needs 3 of 3.")
    if none and direct:
        ok = [s for s in sorted(none) if s in direct and looks_collapsed(none[s]["final_erank"], none[s]["final_z_std"])
              and 100 * (direct[s]["linear_top1"] - none[s]["linear_top1"]) >= BELOW]
        lines.append(f"No predictor collapsed (rank < {COLLAPSE_ERANK:g} or z_std < {COLLAPSE_Z_STD:g}) and >= {BELOW:g} points below "
                     f"DirectPred: {len(ok)} of {len(none)} seeds; the criterion needs 3 of 3.")
    return "\n".join(lines) + "\n"


def main():
    text = summary_markdown()
    open(os.path.join(HERE, "summary.md"), "w").write(text)
    print(text, end="")


if __name__ == "__main__":
    main()
