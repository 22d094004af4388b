"""
The regime search's cost curve: each point's validation linear top-1 against its 2-core CPU time, with the raw-pixel
baseline and each network's random init, from the result files in this folder (README.md: the rule and the table).

    python paper/results/regime-search/figure.py      # writes paper/results/regime-search/cost.png and prints the table
"""
import json
import os
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(HERE))))  # the repository: paper.*, train

from paper.report import run_config  # noqa: E402  (train.py's own parser reads each run's command)
from paper.theory import pyplot, save  # noqa: E402

# img/s of each network's training step alone on the machine (README.md here: `bench.py --suite step`, 2 threads of an
# AMD EPYC, fp32, batch 128), measured once before the search: the cost is taken from these, not from a run's wall
# time, which depends on what else the machine ran
STEP_IMG_S = {("imagenet", 16): 1397, ("imagenet", 32): 717, ("imagenet", 64): 213, ("cifar", 16): 265}
CORES = 2


def points():
    """[(point, DirectPred's result, its random init's result, CPU-hours)] of every point with a seed-0 result."""
    out = []
    for name in sorted(os.listdir(HERE)):
        res = os.path.join(HERE, name, "pred-direct", "s0.json")
        if not os.path.exists(res):
            continue
        r = json.load(open(res))
        cfg = run_config(shlex.split(r["command"]))
        images = r["steps"] * cfg["batch_size"]
        hours = (images / STEP_IMG_S[cfg["stem"], cfg["width"]] + r["probe_seconds"]) * CORES / 3600
        rand = os.path.join(HERE, name, "baselines", "random-s0.json")
        out.append((name, r, json.load(open(rand)) if os.path.exists(rand) else None, hours))
    return out


def main():
    pixels = 100 * json.load(open(os.path.join(HERE, "pixels-val.json")))["top1"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, r, rand, hours) in enumerate(points()):
        top1 = 100 * r["linear_top1"]
        ax.plot(hours, top1, "o", color=f"C{i}", label=f"{name}: {top1:.2f}")
        if rand is not None:  # the same network and seed at random init: what training added
            ax.plot(hours, 100 * rand["linear_top1"], "x", color=f"C{i}")
            ax.plot([hours, hours], [100 * rand["linear_top1"], top1], color=f"C{i}", lw=0.8, alpha=0.6)
        print(f"{name:24s} linear {top1:.2f}  objective {top1 - pixels:+.2f}  CPU-hours {hours:.2f}")
        s1 = os.path.join(HERE, name, "pred-direct", "s1.json")
        if os.path.exists(s1):  # a finalist (the rule's last step): seed 1 beside it, and the mean that decides
            top1_s1 = 100 * json.load(open(s1))["linear_top1"]
            ax.plot(hours, top1_s1, "o", mfc="none", color=f"C{i}")
            mean = (top1 + top1_s1) / 2
            print(f"{'':24s} seed 1 {top1_s1:.2f}; mean of seeds 0, 1: linear {mean:.2f}  objective {mean - pixels:+.2f}")
    ax.axhline(pixels, color="k", ls="--", lw=1, label=f"raw pixels: {pixels:.2f}")
    ax.set(xlabel=f"CPU-hours ({CORES} cores x hours, step speed measured alone)", ylabel="linear top-1 (%), validation",
           title="Fashion-MNIST, DirectPred: o = trained (seed 0; open: seed 1), x = random init")
    ax.legend(fontsize=7, loc="lower right")
    save(fig, HERE, "cost.png")


if __name__ == "__main__":
    main()
