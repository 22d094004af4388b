"""
Tests of the paper's tooling (paper/theory.py, paper/reproduce.py) against independent references: the theory's
closed forms, hand-aggregated suites, stand-in GPUs. Run from the repository's root with the core's tests:
    python -m pytest -q test_smoke.py paper/test_paper.py
"""
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train as T
from paper import report as RP
from paper import reproduce as R
from paper import rows as RW
from paper import stats as S
from paper import theory as TH
from test_smoke import ROOT, TINY, config_error, one_line_error, run

# -----------------------------------------------------------------------------
# theory.py: the linear-network theory against its closed forms (Tian et al. 2021, Sec. 3-4; Bao 2023)


def test_eigenmode_ode_reaches_the_fixed_points_of_the_formula():
    """sigma2 = 0.5, eta = 0.05, tau = 1, alpha_p = 1: starts on the parabola s = p^2 above p- end at p+, below p- at 0
    (to 1e-3); starts above the parabola (c > 0) end at p+ too; above eta_c every start collapses."""
    p_minus, p_plus = TH.fixed_points(1.0, 0.5, 0.05)
    assert (p_minus, p_plus) == pytest.approx(((1 - 0.7 ** 0.5) / 3, (1 + 0.7 ** 0.5) / 3))
    p0 = np.array([0.02, 0.05, 0.06, 0.3, 1.0, 2.0, 0.1, 0.5])
    s0 = np.concatenate([p0[:6] ** 2, p0[6:] ** 2 + 0.5])  # the last two start off the parabola
    _, p, s, _ = TH.integrate_modes(p0, s0, 200, dt=0.02, sigma2=0.5, eta=0.05, record_every=10_000)
    expect = np.array([0, 0, p_plus, p_plus, p_plus, p_plus, p_plus, p_plus])
    assert np.abs(p[-1] - expect).max() < 1e-3, p[-1]
    assert np.abs(s[-1] - expect ** 2).max() < 1e-3, s[-1]
    eta = 1.2 * TH.eta_critical(1.0, 0.5)
    _, p, s, _ = TH.integrate_modes(p0, s0, 400, dt=0.02, sigma2=0.5, eta=eta, record_every=10_000)
    assert np.abs(p[-1]).max() < 1e-3 and np.abs(s[-1]).max() < 1e-3, (p[-1], s[-1])


def test_eigenmode_invariant_and_byol_tau():
    """s - p^2/alpha_p = c e^{-2 eta t} (to 1e-6 relative), with tau fixed and with BYOL's tau dynamics (Eq. 13);
    BYOL from tau(0) = 0.1 ends at tau = 1 and p = p+(tau = 1)."""
    p0, s0, eta, ap = np.array([0.3, 0.8, 1.5]), np.array([0.4, 2.0, 0.5]), 0.03, 2.0
    for beta in (None, 0.5):
        t, p, s, tau = TH.integrate_modes(p0, s0, 30, dt=0.002, tau0=1.0 if beta is None else 0.1, beta=beta,
                                          sigma2=0.3, eta=eta, alpha_p=ap, record_every=100)
        c = TH.invariant(p0, s0, ap)
        np.testing.assert_allclose(TH.invariant(p, s, ap), c * np.exp(-2 * eta * t)[:, None], rtol=1e-6)
    _, p, _, tau = TH.integrate_modes(p0, s0, 300, dt=0.01, tau0=0.1, beta=0.5, sigma2=0.3, eta=eta, alpha_p=ap,
                                      record_every=10_000)
    assert np.abs(tau[-1] - 1).max() < 1e-3 and np.abs(p[-1] - TH.fixed_points(1.0, 0.3, eta)[1]).max() < 1e-3


def test_matrix_model_expected_gradient_is_lemma_1():
    """Autograd of the closed-form expected L2 loss (what --mode flow steps on) equals Lemma 1's right-hand side,
    non-isotropic X and X' included, stop-gradient on Wa."""
    g = torch.Generator().manual_seed(0)
    W, Wp, Wa = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((4, 6), (4, 4), (4, 6)))
    X = torch.diag(torch.rand(6, generator=g, dtype=torch.float64) + 0.5)
    Xp = torch.diag(torch.rand(6, generator=g, dtype=torch.float64))
    W.requires_grad_(), Wp.requires_grad_()
    gW, gWp = torch.autograd.grad(TH.expected_l2(Wp @ W, Wa, X, X + Xp), [W, Wp])
    dW, dWp = TH.lemma1_rhs(W.detach(), Wp.detach(), Wa, X, Xp, eta=0.0, alpha_p=1.0)
    torch.testing.assert_close(-gW, dW, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(-gWp, dWp, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ["l2", "cosine"])
def test_expected_flow_and_sampled_sgd_agree(loss):
    """200 steps at lr 0.01 from the same init: the expected-gradient flow and SGD on fresh batches of 20k agree on
    W and Wp, relative to their norm and to how far they moved (W by ~20%, Wp by ~115%). L2: the flow is exact, the
    gap is SGD noise (measured 0.12% of the norm, 0.6% of the move). Cosine: the flow averages over a fixed 20k
    sample, whose error ~ 1/sqrt(20k) persists step after step (measured 1.9% of the norm, 8% of W's move)."""
    cfg = TH.config(loss=loss, steps=200, log_every=200, lr=0.01, n1=8, n2=4, wd=0.02, wp_init=0.5, mc_samples=20_000)
    _, flow = TH.simulate(cfg)
    _, sgd = TH.simulate(dict(cfg, mode="sgd", batch_size=20_000))
    _, start = TH.simulate(dict(cfg, steps=1))
    tol_norm, tol_move = {"l2": (0.005, 0.02), "cosine": (0.03, 0.15)}[loss]
    norm = torch.linalg.matrix_norm
    for k in ("W", "Wp"):
        gap = norm(flow[k] - sgd[k]).item()
        assert gap < tol_norm * norm(flow[k]) and gap < tol_move * norm(flow[k] - start[k]), (k, gap)


def test_theorem_2_collapse_without_stop_grad_or_predictor():
    """No predictor (Wp = I) with stop-gradient: W_k = (1 - lr (sigma2 + eta))^k W_0 exactly (Theorem 2's
    dW/dt = -(X' + eta I) W, in Euler steps). No stop-gradient: ||W|| -> 0. The same model with stop-gradient and a
    trained predictor does not collapse."""
    cfg = TH.config(predictor="none", wd=0.01, steps=500, log_every=500)
    recs, none = TH.simulate(cfg)
    assert recs[-1]["W_norm2"] == pytest.approx(recs[0]["W_norm2"] * (1 - 0.01 * 0.51) ** 1000, rel=1e-10)
    recs, _ = TH.simulate(TH.config(stop_grad=0, wd=0.01, steps=3000, log_every=3000))
    assert recs[-1]["W_norm2"] < 1e-3 * recs[0]["W_norm2"]
    recs, _ = TH.simulate(TH.config(wd=0.01, steps=3000, log_every=3000))
    assert recs[-1]["W_norm2"] > 0.3 * recs[0]["W_norm2"]


def test_theorem_3_commutator_decays_at_least_as_fast_as_the_bound():
    """Symmetric Wp, SimSiam, L2: with lambda_min(K) >= l0 > 0 along the run, ||[F, Wp]||_F <= e^{-2 l0 t} ||[F0, Wp0]||_F."""
    recs, _ = TH.simulate(TH.thm3_config())
    l0 = min(r["lambda_min_K"] for r in recs)
    assert l0 > 0.1
    for r in recs[1:]:
        assert r["comm"] <= recs[0]["comm"] * math.exp(-2 * l0 * r["t"]) * 1.001, r


def test_cosine_loss_norm_decays_exactly_and_survives_weight_decay_above_eta_c():
    """Cosine loss: scale-blind, so in gradient flow ||W||_F^2 = ||W(0)||_F^2 e^{-2 eta t} (1e-3, small lr).
    At eta = 0.3 > eta_c = 1/6, same init and knobs: the L2 model collapses (||W||_F^2 falls by > 1e5, every mode ->
    0, as Tian et al. predict); the cosine model keeps all n2 modes (eigenvalues of F >= 1% of the top one) with an
    equalised spectrum (effective rank of F / tr F > 0.95 n2), its norm settling where the lr-squared term of the
    Euler step balances weight decay."""
    recs, _ = TH.simulate(TH.config(loss="cosine", lr=0.002, wd=0.2, steps=2000, log_every=500, mc_samples=1024))
    for r in recs:
        assert r["W_norm2"] == pytest.approx(recs[0]["W_norm2"] * math.exp(-0.4 * r["t"]), rel=1e-3)
    l2, _ = TH.simulate(TH.l2_vs_cosine_config("l2", 0.3, log_every=3000))
    cos, _ = TH.simulate(TH.l2_vs_cosine_config("cosine", 0.3, log_every=3000, mc_samples=1024))
    assert l2[-1]["W_norm2"] < 1e-5 * l2[0]["W_norm2"]
    assert TH.surviving_modes(cos[-1]["F_eig"]) == 10 and TH.effective_rank(cos[-1]["F_eig"]) > 9.5


def test_directpred_in_the_toy_keeps_every_mode_where_trained_symmetric_wp_loses_some():
    """The paper's Table 3 logic in the toy, as the toy shows it (cosine loss, eta 0.04, small init W(0) ~ 0.2):
    a trained symmetric Wp without EMA loses the modes whose p started below p- (dimensional collapse); DirectPred
    keeps all 10. In the toy the EMA does not rescue the symmetric Wp (it does on STL-10). Under the L2 loss
    DirectPred collapses outright: its max-normalised p_max = 1 + eps exceeds tau / (1 + sigma2), where every mode
    shrinks; DirectPred needs the normalised loss."""
    base = dict(loss="cosine", wd=0.04, w_init=0.2, wp_init=0.5, steps=2000, log_every=2000, mc_samples=1024)
    sym = [TH.simulate(TH.config(predictor="linear", sym_wp=1, ema=e, **base))[0][-1] for e in (0.0, 0.996)]
    direct = TH.simulate(TH.config(predictor="direct", **base))[0][-1]
    assert all(TH.surviving_modes(r["F_eig"]) <= 7 for r in sym), [r["F_eig"] for r in sym]
    assert TH.surviving_modes(direct["F_eig"]) == 10, direct["F_eig"]
    l2, _ = TH.simulate(TH.config(predictor="direct", **dict(base, loss="l2")))
    assert l2[-1]["W_norm2"] < 1e-6 * l2[0]["W_norm2"]


@pytest.mark.parametrize("knobs, needle", [
    (dict(sigma2=-1.0), "--sigma2"), (dict(wd=-0.1), "--wd"), (dict(pred_lr_ratio=0.0), "--pred-lr-ratio"),
    (dict(n1=0), "--n1"), (dict(n2=0), "--n2"), (dict(data_cov="1,1"), "--data-cov"),
    (dict(aug_cov=",".join(["-1"] * 20)), "--aug-cov"), (dict(lr=float("nan")), "--lr"),
])
def test_theory_out_of_range_knobs_name_the_flag(knobs, needle):
    err = TH.config_error(TH.config(**knobs))
    assert err and err.startswith(needle), err
    with pytest.raises(ValueError, match=needle):
        TH.simulate(TH.config(**knobs))


@pytest.mark.parametrize("flags, needle", [
    (["--aug-cov=-1," + ",".join(["1"] * 19)], "--aug-cov"),  # a non-PSD covariance
    (["--n1", "x"], "--n1"),  # argparse's own error, in one line too
    (["--lr", "50", "--steps", "200"], "--lr"),  # diverges: names the step and the knob, draws nothing
])
def test_theory_bad_input_gives_one_line(tmp_path, flags, needle):
    r = subprocess.run([sys.executable, "-m", "paper.theory", "simulate", "--out-dir", str(tmp_path / "o"), *flags],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    one_line_error(r, needle)
    assert not list(tmp_path.rglob("*.png"))


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="pip install matplotlib")
def test_theory_figures_and_the_fig2_plot_of_a_train_log(tmp_path):
    """fig4 is drawn; `theory.py plot` draws the Fig. 2 panels from a train.py log.jsonl and from a theory.py one."""
    for args in (["fig4", "--out-dir", tmp_path], ["simulate", "--predictor", "direct", "--loss", "cosine", "--steps", "100",
                                                  "--mc-samples", "256", "--out-dir", tmp_path / "toy"]):
        r = subprocess.run([sys.executable, "-m", "paper.theory", *map(str, args)], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
        assert r.returncode == 0, r.stderr
    assert coloured_panels(tmp_path / "fig4_pdot.png", 1) == [True]
    assert coloured_panels(tmp_path / "toy" / "fig2_diagnostics.png", 6) == [True] * 6
    run(TINY + ["--max-steps", "3", "--out-dir", tmp_path / "run"])
    r = subprocess.run([sys.executable, "-m", "paper.theory", "plot", str(tmp_path / "run" / "log.jsonl")],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr
    assert coloured_panels(tmp_path / "run" / "fig2_diagnostics.png", 6) == [True] * 6  # F, Wp, align, asym, rank, z


def coloured_panels(png, n):
    """For a figure of n side-by-side panels: which of n equal vertical strips of the PNG hold coloured pixels, i.e.
    a plotted line (matplotlib's C0-C9), not only the black / grey / white of axes, ticks and titles."""
    import matplotlib.image
    img = matplotlib.image.imread(str(png))[..., :3]  # (H, W, 3) in [0, 1]
    coloured = (img.max(-1) - img.min(-1)) > 0.25  # (H, W): saturated
    return [bool(strip.any()) for strip in np.array_split(coloured.any(0), n)]

def test_theory_without_matplotlib_says_how_to_get_it(tmp_path):
    code = ("import sys; sys.modules['matplotlib'] = None; sys.argv = ['theory.py', 'fig4', '--out-dir', %r]; "
            "import runpy; runpy.run_module('paper.theory', run_name='__main__')" % str(tmp_path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and r.stderr.strip() == "error: figures need matplotlib: pip install matplotlib", r.stderr


# -----------------------------------------------------------------------------
# reproduce.py: the paper's rows as data, the suite runner, its tables, the README's generated parts



FAKE_BASE = ("--dataset fake --fake-size 128 --width 4 --proj-hidden 32 --proj-dim 16 --batch-size 32 --epochs 12 "
             "--ckpt-every 2 --log-every 2 --device cpu")

@pytest.mark.parametrize("scale", ["laptop", "paper"])
def test_every_rows_command_parses_and_passes_config_error(scale):
    args, work = R.parse(["--scale", scale])
    assert len(work) == {"laptop": 24 * 5 + 16, "paper": 56 * 5 + 6}[scale]  # paper: 5 seeds, the 6 ImageNet rows 1 (Table 9)
    if scale == "paper":
        assert sorted({s for rid, s in work if RW.row(rid).get("imagenet")}) == [0]
    for rid, seed in work:
        train, probe = R.commands(RW.row(rid), args, seed)
        cfg = T.parse_config(train[train.index(R.script("train.py")) + 1:])
        assert config_error(cfg) is None, (rid, config_error(cfg))
        assert cfg["seed"] == seed and probe[probe.index("--ckpt") + 1] == os.path.join(cfg["out_dir"], "ckpt.pt")
        if scale == "laptop":  # the claims suite's protocol (the regime search's width-16 point), in fp32
            assert (cfg["dataset"], cfg["split"], cfg["width"], cfg["stem"], cfg["crop_min"], cfg["lr"],
                    cfg["lr_schedule"], cfg["epochs"], cfg["bf16"]) == \
                ("fashion-mnist", "test", 16, "imagenet", 0.7, 0.03, "const", 5, "0")
            ap = 10 if rid in ("pred-linear", "pred-linear-authors", "pred-mlp", "thm2-no-stop-grad") else \
                float(rid[len("f6-ap"):]) if rid.startswith("f6-") else 1  # the protocol's alpha_p, Fig. 6's own
            assert cfg["pred_lr_ratio"] == ap, rid
        else:
            assert cfg["pred_lr_ratio"] == (float(rid[len("f6-ap"):]) if rid.startswith("f6-") else 1), rid
        if scale == "paper" and RW.row(rid).get("imagenet"):
            assert cfg["dataset"] == "imagenet" and cfg["arch"] == "resnet50"


def test_the_paper_table_file_is_reproduce_pys():
    """paper/results/paper/table.md (the README links it) is reproduce.py's paper-scale table of the committed result
    files, row for row: one source for both."""
    table = RP.table_markdown("paper", str(ROOT / "paper" / "results" / "paper"))
    assert (ROOT / "paper" / "results" / "paper" / "table.md").read_text() == table + "\n"
    assert len(table.splitlines()) == 2 + len(RW.ROWS)
    assert "paper/results/paper/table.md" in (ROOT / "README.md").read_text()


def test_the_readme_claims_table_is_the_committed_verdicts():
    """The README's verdict table is paper.verdicts' readme_table of the confirmation (paper/results/claims-v2) and
    the exploratory seeds (paper/results/claims), line for line, so no verdict is typed by hand or goes stale when
    results land; PLAN.md's record of each suite (claims.md, the first plan's rules) is its generator's output."""
    V = importlib.import_module("paper.verdicts")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        table = V.readme_table("paper/results/claims-v2", "paper/results/claims")
        assert table in (ROOT / "README.md").read_text()
        assert len(table.splitlines()) == 2 + len(RW.CLAIMS)
        for suite in ("claims", "laptop"):
            folder = ROOT / "paper" / "results" / suite
            assert RP.claims_markdown("laptop", str(folder)) + "\n" == (folder / "claims.md").read_text(), suite
    finally:
        os.chdir(cwd)


def test_the_v2_reports_are_the_committed_result_files():
    """paper/results/claims-v2/exploratory.md is paper.verdicts' report of seeds 0-4 (paper/results/claims), line for
    line: no v2 verdict is typed by hand or goes stale."""
    V = importlib.import_module("paper.verdicts")
    cwd = os.getcwd()
    os.chdir(ROOT)  # the report names its folder as given
    try:
        got = V.report(*V.EXPLORATORY)
    finally:
        os.chdir(cwd)
    assert (ROOT / "paper" / "results" / "claims-v2" / "exploratory.md").read_text() == got


def test_the_v3_reports_are_the_committed_result_files():
    """exploratory.md is paper.verdicts3's report of seeds 0-4 and CONFIRMATION.md's tables and commands are its
    sizing of them, line for line from the committed JSON files: an outside recomputation has one command each."""
    V3 = importlib.import_module("paper.verdicts3")
    folder = ROOT / "paper" / "results" / "claims-v3"
    cwd = os.getcwd()
    os.chdir(ROOT)  # the reports name their folders as given
    try:
        explore, size = V3.named("exploratory"), V3.size_markdown(jobs=2)[0] + "\n"
    finally:
        os.chdir(cwd)
    assert (folder / "exploratory.md").read_text() == explore
    assert (folder / "CONFIRMATION.md").read_text().endswith("\n\n" + size)


def test_the_v3_confirmation_report_sets_v2_beside_v3_with_why():
    """confirmation.md's last section: one line per v3 contrast with v2's confirmation verdict, v3's on seeds 0-4
    and on the confirmation, and the PLAN.md rule behind each change: the contrasts v2's rule 6 exempted (basin=True
    in paper.rows) are tested by v3's rule 1, the three contrasts v3 added have no v2 verdict, C1's no-predictor
    verdict names the weaker claim by rule 2 where no run reaches the collapse rule."""
    V3 = importlib.import_module("paper.verdicts3")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        text = V3.comparison_markdown(48)
        conf = V3.verdicts(V3.CONFIRMATION)[0]
    finally:
        os.chdir(cwd)
    lines = [x for x in text.splitlines() if x.startswith("| C")]
    assert len(lines) == len(RW.CLAIMS_V3) == len(RW.CLAIMS) + 3
    cells = lambda x: [c.strip() for c in x.strip("|").split("|")]
    for c, x, r in zip(RW.CLAIMS_V3, lines, conf):
        claim, text_, v2, _, v3, why = cells(x)
        assert (claim, text_, v3.split(" (measured")[0]) == (c["claim"], c["text"], r["verdict"] if claim != "C10"
                                                            else "untestable: ImageNet only")
        if c.get("basin"):
            assert v2 == "not confirmed: untestable on seeds 0-4 (rule 6)" and why.startswith("v3 rule 1"), x
        if c["claim"] in ("C3b", "C9b", "C13b"):
            assert v2 == "" and why.startswith("new (v3 rule"), x
    c1 = cells(lines[0])
    assert c1[2] == "holds" and (c1[5] == "v3 rule 2: C1 names what it shows (no run at the collapse rule)") == \
        conf[0]["verdict"].startswith("holds in the weaker form")


def test_the_v3_confirmation_report_counts_where_each_pair_ran():
    """confirmation.md's "Where each pair ran": per two-row contrast, its seeds by whether the two rows' JSON files
    name one CPU, two, or (files before the machine field) none, counted here from the files with json alone."""
    V3 = importlib.import_module("paper.verdicts3")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        text = V3.machines_markdown(V3.CONFIRMATION)
        report = V3.named("confirmation")
    finally:
        os.chdir(cwd)
    assert "## Where each pair ran" in report and text in report
    where = {}
    for folder in V3.CONFIRMATION:  # merged seed by seed, a later folder wins
        for f in sorted((ROOT / folder).glob("*/s*.json")):
            obj = json.loads(f.read_text())
            if "diverged" not in obj:
                where.setdefault(f.parent.name, {})[obj["seed"]] = obj.get("machine")
    want = []
    for claim, kind, a, b in V3_BY_HAND:
        if b in (None, "random") or claim == "C10":
            continue
        ms = [{where[a][s], where[b][s]} for s in sorted(set(where.get(a, {})) & set(where.get(b, {})))]
        want.append(f"| {claim} | {a} vs {b} | {sum(None not in m and len(m) == 1 for m in ms)} | "
                    f"{sum(None not in m and len(m) == 2 for m in ms)} | {sum(None in m for m in ms)} |")
    assert [x for x in text.splitlines() if x.startswith("| C")] == want


def test_the_v3_figure_draws_every_contrast_and_c1(tmp_path):
    """python -m paper.verdicts3 figure on the committed files: the contrasts' panel and C1's rank panel both drawn
    (coloured: seeds, intervals, ranks), written where --write says."""
    out = tmp_path / "v3.png"
    r = subprocess.run([sys.executable, "-m", "paper.verdicts3", "figure", "--write", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == f"wrote {out}", r.stderr
    assert coloured_panels(out, 4)[1:] == [True] * 3  # the first strip holds the contrasts' names


# the v3 contrasts as result folders, written out here from PLAN.md (not read from paper.rows): (claim, kind, a, b)
V3_BY_HAND = [
    ("C1", "collapse", "pred-none", "pred-direct"), ("C1", "collapse", "thm2-no-stop-grad", "pred-direct"),
    ("C2", "dir", "t3-1l-noema-reg", "t3-1l-noema-sym"), ("C2", "equal", "t3-1l-ema-sym", "t3-1l-ema-reg"),
    ("C3", "dir", "t3-2l-noema-reg", "t3-2l-noema-sym"), ("C3", "dir", "pred-mlp", "pred-linear"),
    ("C3b", "dir", "pred-mlp", "pred-linear-authors"), ("C3", "dir", "t3-2l-ema-reg", "t3-2l-ema-sym"),
    ("C4", "dir", "t3-1l-ema-reg", "t2-ema-nobias"), ("C5", "dir", "t5-etap-ema-sym", "t5-etap-ema-reg"),
    ("C6", "dir", "f6-ap5", "t3-1l-noema-sym"), ("C7", "dir", "pred-direct", "random"),
    ("C7", "dir", "pred-direct", "t6-rho0.3-eps0.5"), ("C7", "dir", "pred-direct", "t6-rho0.3-eps0"),
    ("C8", "dir", "t7-f1-c-0.1", "t7-f1-c0.1"), ("C8", "dir", "t7-f2-c0.1", "t7-f1-c0.1"),
    ("C9", "dir", "pred-direct", "pred-linear"), ("C9b", "dir", "pred-direct", "pred-linear-authors"),
    ("C9", "equal", "pred-direct-f5", "pred-direct"), ("C10", "equal", "pred-direct", "pred-mlp"),
    ("C11", "align", "pred-linear", None), ("C12", "dir", "sec5-partitions6", "pred-direct"),
    ("C13", "dir", "pred-direct", "t1-optimal"), ("C13b", "dir", "pred-direct", "t1-optimal-solve"),
]


def v3_by_hand(folders, skip=()):
    """PLAN.md's v3 verdicts recomputed from the JSON files with numpy and Student's t alone: the folders merged
    seed by seed (a later one wins), the stronger init per seed, t by its formula, the sign-flip test by enumerating
    its 2^n patterns, Holm by sorting. [(verdict, mean, n, Holm-adjusted t p of each hypothesis)]."""
    runs, base = {}, {}
    for folder in folders:
        for f in sorted((ROOT / folder).glob("*/*.json")):
            obj = json.loads(f.read_text())
            if f.parent.name == "baselines":
                base[f.stem] = obj["linear_top1"]
            elif f"{folder}/{f.parent.name}" not in skip and "diverged" not in obj:
                runs.setdefault(f.parent.name, {})[obj["seed"]] = obj
    init = {int(k[len("random-s"):]): max(v, base[f"random-bn-s{k[len('random-s'):]}"]) for k, v in base.items()
            if k.startswith("random-s") and f"random-bn-s{k[len('random-s'):]}" in base}

    def p_of(d, alt, null=0.0):  # (t p, sign-flip p), one-sided
        d = np.asarray(d, float) - null
        n, m, sd = len(d), d.mean(), d.std(ddof=1)
        t = m / (sd / math.sqrt(n)) if sd > 0 else math.copysign(math.inf, m)
        pt = float(stats_sf(t, n - 1) if alt == "greater" else stats_sf(-t, n - 1))
        signs = 1 - 2 * ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1)
        means = signs @ d / n
        pf = np.mean(means >= m - 1e-12 * abs(m)) if alt == "greater" else np.mean(means <= m + 1e-12 * abs(m))
        return pt, float(pf)

    recs = []
    for claim, kind, a, b in V3_BY_HAND:
        A = runs.get(a, {})
        if kind == "align":
            top = lambda rec: float(np.mean(rec["align"]))
            cur = {s: [x for x in v["curve"] if "align" in x] for s, v in A.items()}
            d = [top(cur[s][-1]) - top(cur[s][0]) for s in sorted(cur) if len(cur[s]) > 1]
        else:
            B = {s: dict(linear_top1=v) for s, v in init.items()} if b == "random" else runs.get(b, {})
            seeds = sorted(set(A) & set(B))
            if kind == "collapse":
                d = [[B[s][k] - A[s][k] for s in seeds] for k in ("final_erank", "final_z_std")]
            else:
                d = [100 * (A[s]["linear_top1"] - B[s]["linear_top1"]) for s in seeds]
        n = len(d[0]) if kind == "collapse" else len(d)
        hyp = {}
        if n > 1 and kind == "collapse":
            for h, alt in (("paper", "greater"), ("reverse", "less")):
                ps = [p_of(x, alt) for x in d]
                hyp[h] = (max(p[0] for p in ps), max(p[1] for p in ps))
        elif n > 1 and kind == "equal":
            lo, hi = p_of(d, "greater", -1.0), p_of(d, "less", 1.0)
            hyp = {"equivalent": (max(lo[0], hi[0]), max(lo[1], hi[1])), "above": p_of(d, "greater", 1.0),
                   "below": p_of(d, "less", -1.0)}
        elif n > 1:
            hyp = {"paper": p_of(d, "greater"), "reverse": p_of(d, "less")}
        recs.append(dict(claim=claim, kind=kind, a=a, d=d, n=n, hyp=hyp))

    def holm(ps):
        order, adj, run_max = np.argsort(ps, kind="stable"), [0.0] * len(ps), 0.0
        for k, i in enumerate(order):
            run_max = max(run_max, min(1.0, (len(ps) - k) * ps[i]))
            adj[i] = run_max
        return adj

    family = [(i, h) for i, r in enumerate(recs) if r["claim"] != "C10" for h in r["hyp"]]
    out = []
    for i, r in enumerate(recs):
        fam = family + ([(i, h) for h in r["hyp"]] if r["claim"] == "C10" else [])
        adj = holm([recs[j]["hyp"][h][0] for j, h in fam])
        holm_t = {h: adj[k] for k, (j, h) in enumerate(fam) if j == i}
        ok = lambda h: holm_t[h] < 0.05 and r["hyp"][h][1] < 0.05
        words = ((("equivalent", "equivalent"), ("above", "differ"), ("below", "differ")) if r["kind"] == "equal"
                 else (("paper", "holds"), ("reverse", "opposite")))
        word = "not run" if r["n"] == 0 else "inconclusive (n = 1)" if r["n"] == 1 else next(
            (w for h, w in words if ok(h)), "inconclusive")
        if r["kind"] == "collapse" and word == "holds":
            row = runs[r["a"]]
            k = sum(row[s]["final_erank"] < 1.3 or row[s]["final_z_std"] < 0.1 for s in row
                    if s in runs[V3_BY_HAND[i][3]])
            weaker = f"loses spread against DirectPred ({k} of {r['n']} collapsed by the rule)"
            word = "holds: collapses" if k == r["n"] else f"holds in the weaker form: {weaker}"
        if r["kind"] == "collapse":
            mean = [float(np.mean(x)) for x in r["d"]]
        else:
            mean = float(np.mean(r["d"])) if r["n"] else None
        out.append((word, mean, r["n"], holm_t))
    return out


def stats_sf(t, df):
    """Student's t survival function, from scipy directly."""
    return importlib.import_module("scipy.stats").t.sf(t, df)


@pytest.mark.parametrize("which", ["EXPLORATORY", "CONFIRMATION"])
def test_the_v3_verdicts_are_an_independent_recomputation_of_the_json_files(which):
    """Every v3 verdict, mean, n and Holm-adjusted t p that paper.verdicts3 computes from the committed files (seeds
    0-4; the confirmation's seeds as far as they have landed) equals a rewrite of PLAN.md's rules from the JSON files
    that shares none of paper/'s code: the README's table can be recomputed by someone who reads only the plan."""
    V3 = importlib.import_module("paper.verdicts3")
    folders = getattr(V3, which)
    skip = [f"{f}/{rid}" for f, rids in V3.NOT_READ.items() for rid in rids]
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        got, _ = V3.verdicts(folders)
    finally:
        os.chdir(cwd)
    want = v3_by_hand(folders, skip)
    assert [r["claim"] for r in got] == [c for c, *_ in V3_BY_HAND]
    for r, (word, mean, n, holm_t) in zip(got, want):
        seen = len(r["seeds"])
        assert (r["verdict"], seen) == (word, n), r["text"]
        if n:
            m = [float(np.mean(x)) for x in r["d"]] if r["kind"] == "collapse" else float(np.mean(r["d"]))
            assert m == pytest.approx(mean, abs=1e-9), r["text"]
            assert {h: p[0] for h, p in r["holm"].items()} == pytest.approx(holm_t, abs=1e-9), r["text"]


def test_the_laptop_scale_is_the_claims_suites_protocol():
    """`python -m paper.reproduce --scale laptop` (the README's laptop suite, the class demo's base) gives, for every
    (row, seed) of the committed claims suite, exactly the train.py command its result file records; the two rows
    rules v3 added run their seeds 0-4 in claims-v3/exploratory (its run.sh), the suite's other 126 are here."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        args, work = R.parse(["--scale", "laptop"])
        runs, _ = RP.load_results(args.results)
        v3_rows = ("pred-linear-authors", "t1-optimal-solve")
        work = [(rid, s) for rid, s in work if rid not in v3_rows]
        assert args.results == os.path.join("paper", "results", "claims") and len(work) == 126
        for rid, s in work:
            recorded = runs[rid][s]["command"].removesuffix(" --resume")  # (a run that was stopped and resumed)
            assert recorded == shlex.join(R.commands(RW.row(rid), args, s)[0]), (rid, s)
    finally:
        os.chdir(cwd)


def test_the_readme_reference_table_is_the_committed_runs():
    """docs/reference.md's reference-run table is paper/results/reference/summary.py's readme_table() of the committed runs,
    line for line, and summary.md is its summary_markdown(): no number of them is typed by hand or goes stale when a
    seed lands."""
    folder = ROOT / "paper" / "results" / "reference"
    spec = importlib.util.spec_from_file_location("reference_summary", folder / "summary.py")
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    table = summary.readme_table()
    assert table in (ROOT / "docs" / "reference.md").read_text()
    assert len(table.splitlines()) == 2 + len(summary.ROWS) + len(summary.BASELINES)
    assert (folder / "summary.md").read_text() == summary.summary_markdown()


@pytest.mark.parametrize("argv, needle", [
    (["--rows", "table3,nope"], "--rows"), (["--seeds", "0,x"], "--seeds"), (["--seeds", "-1"], "--seeds"),
    (["--jobs", "0"], "--jobs"), (["--jobs", "two"], "--jobs"), (["--gpus", "0,0"], "--gpus"),
    (["--scale", "paper", "--rows", "table6", "--data-dir", "/nonexistent", "--gpus", "none"], "--download"),
    (["--scale", "paper", "--rows", "t9-60-direct", "--data-dir", "/nonexistent", "--gpus", "none"], "val/<class>"),
])
def test_reproduce_bad_input_gives_one_line_and_starts_nothing(tmp_path, argv, needle):
    r = subprocess.run([sys.executable, "-m", "paper.reproduce", *argv, "--work", str(tmp_path / "w"),
                        "--results", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    one_line_error(r, needle)
    assert not (tmp_path / "w").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize("df, q95, q975", [(1, 6.314, 12.706), (2, 2.920, 4.303), (3, 2.353, 3.182),
                                           (4, 2.132, 2.776), (5, 2.015, 2.571), (9, 1.833, 2.262), (10, 1.812, 2.228)])
def test_students_t_quantiles_match_the_printed_table(df, q95, q975):
    """paper/stats.py's Student's t (scipy) against a printed table (3 decimals)."""
    assert S.t_ppf(0.95, df) == pytest.approx(q95, abs=6e-4) and S.t_ppf(0.975, df) == pytest.approx(q975, abs=6e-4)
    assert S.t_cdf(0.0, df) == 0.5 and S.t_cdf(-q975, df) == pytest.approx(0.025, abs=1e-4)


def test_the_v2_tests_against_printed_tables_and_hand_enumeration():
    """paper/stats.py: the t interval (printed t_{0.975, 2} = 4.303), the one-sided t-test at the printed 5% point
    (t_{0.95, 2} = 2.920), the exact sign-flip test by enumerating the 2^n sign patterns by hand, Holm by hand."""
    lo, hi = S.interval([2.0, 3.0, 4.0])
    assert (lo, hi) == pytest.approx((3 - 4.303 / 3 ** 0.5, 3 + 4.303 / 3 ** 0.5), abs=1e-3)
    m = 2.920 / 3 ** 0.5  # mean m, std 1, n 3: t = 2.920
    assert S.t_test([m - 1, m, m + 1], "greater") == pytest.approx(0.05, abs=2e-4)
    assert S.t_test([m - 1, m, m + 1], "less") == pytest.approx(0.95, abs=2e-4)
    # [1, 2, -0.5]: of the 8 sign patterns, sums >= the observed 2.5: (1, 2, -0.5) and (1, 2, 0.5): p = 2 / 8
    assert S.sign_flip_test([1.0, 2.0, -0.5], "greater") == pytest.approx(0.25)
    assert S.sign_flip_test([0.3, 1.0, 2.0, 0.1, 5.0], "greater") == pytest.approx(1 / 32)  # its smallest p at n = 5
    assert S.sign_flip_test([0.3, 1.0, 2.0, 0.1, -5.0], "greater") > 0.05  # one seed the other way: never below 0.05
    assert S.sign_flip_test([0.5, 0.2], "greater", null=1.0) == 1.0  # shifted by the null: both below it
    # scipy's exact permutation test (the reference, slow above n = 15), ties included
    perm = importlib.import_module("scipy.stats").permutation_test
    rng = np.random.default_rng(0)
    for d in [rng.normal(size=n) + s for n in (2, 5, 9, 12) for s in (0.0, 0.4)] + [np.ones(4), [1, -1, 2, -2, 0.0],
                                                                                  np.round(rng.normal(size=10), 1)]:
        for alt, null in (("greater", 0.0), ("less", 0.0), ("greater", -1.0), ("less", 1.0)):
            want = perm((np.asarray(d) - null,), np.mean, permutation_type="samples", n_resamples=np.inf,
                        alternative=alt).pvalue
            assert S.sign_flip_test(d, alt, null) == pytest.approx(want, abs=1e-12), (d, alt, null)
    # Holm: sorted 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone)
    assert S.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert S.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])


def test_v2_verdicts_follow_the_plan_on_hand_made_results(tmp_path):
    """paper/results/claims-v2/PLAN.md's rules on hand-made result files, 5 seeds (points of linear top-1):
    gains over the per-seed stronger init (random 0.03 under DirectPred, random-bn far below); C3 (pred-mlp -
    pred-linear) +2.0, +2.2, +1.8, +2.1, +1.9: holds; C13 all negative: opposite; C9 (pred-direct - pred-linear)
    four large positives and one negative: the t-test alone would pass, the sign-flip (p 2/32) does not:
    inconclusive; C9 freq 5 within +-0.1: equivalent; C7 eps 0.5 mixed: inconclusive, the paper's +2.80 outside the
    interval only as its magnitude; C2, C6 (the basin) untestable by the run's budget, whatever they measure; C1 by
    the paired contrast of rank and z_std, with the count at the threshold beside; Holm over every hypothesis of the
    testable contrasts. Then pred-linear and pred-mlp made not to learn: C3 untestable by rule (b); then one of
    DirectPred's gains negative: the regime gate fails and only C1 stays testable."""
    V = importlib.import_module("paper.verdicts")

    put = lambda *a, **k: put_result(tmp_path, *a, **k)
    direct = (0.70, 0.71, 0.72, 0.705, 0.715)
    for s, d in enumerate(direct):
        put("pred-direct", s, d)
        put("pred-linear", s, d - (0.02, 0.03, 0.025, 0.035, -0.001)[s])
        put("pred-mlp", s, d - (0.02, 0.03, 0.025, 0.035, -0.001)[s] + (0.02, 0.022, 0.018, 0.021, 0.019)[s])
        put("t1-optimal", s, d + (0.03, 0.02, 0.04, 0.035, 0.025)[s])
        put("pred-direct-f5", s, d + (0.001, -0.001, 0.0005, -0.0005, 0.0)[s])
        put("t6-rho0.3-eps0.5", s, d - (0.01, -0.01, 0.015, -0.005, 0.002)[s])
        put("t3-1l-ema-reg", s, d - 0.03)
        put("t3-1l-ema-sym", s, d - 0.03 + 0.05)
        put("f6-ap5", s, 0.59 + (0.0, 0.01, -0.005, 0.0, 0.0)[s])
        put("t3-1l-noema-sym", s, 0.60)
        put("pred-none", s, 0.6, rank=(1.2, 2.5, 1.1, 3.0, 1.25)[s], z=0.2)
        for name, top1 in ((f"random-bn-s{s}", 0.60), (f"random-s{s}", d - (0.03, 0.04, 0.05, 0.035, 0.045)[s])):
            RP.write_json(str(tmp_path / "baselines" / f"{name}.json"), dict(baseline=name, linear_top1=top1,
                                                                            knn_top1=top1))
    recs, gate, gains = V.verdicts(str(tmp_path))
    by = {(r["claim"], r["contrast"].split(" - ")[-1].split(":")[0]): r for r in recs}
    c7 = by[("C7", "the stronger random init (per seed)")]
    assert c7["d"] == pytest.approx([3.0, 4.0, 5.0, 3.5, 4.5]) and c7["verdict"] == "holds" and gate["passes"]
    assert gate["vs random-bn"] == pytest.approx([100 * (d - 0.60) for d in direct])
    assert by[("C3", "pred-linear")]["verdict"] == "holds"
    assert by[("C13", "t1-optimal")]["verdict"] == "opposite"
    c9 = by[("C9", "pred-linear")]
    assert c9["verdict"] == "inconclusive" and c9["hyp"]["paper"][0] < 0.05 and c9["hyp"]["paper"][1] == 2 / 32
    assert by[("C9", "pred-direct")]["verdict"] == "equivalent"
    eps = by[("C7", "t6-rho0.3-eps0.5")]
    assert eps["verdict"] == "inconclusive" and eps["magnitude"] == "the paper's +2.80 is outside"
    for claim in ("C2", "C6"):
        assert all(r["untestable"].endswith("(rule 6)") for r in recs if r["claim"] == claim)
    assert "2,340 steps here vs 82,100" in by[("C2", "t3-1l-ema-reg")]["untestable"]
    c1 = next(r for r in recs if r["contrast"].startswith("pred-none"))
    assert c1["verdict"] == "holds" and c1["magnitude"].startswith("3 of 5 collapsed by the rule")
    family = [r for r in recs if not r["untestable"] and len(r["seeds"]) > 1]
    size = sum(len(r["hyp"]) for r in family)  # 2 per directional contrast, 3 per "about equal" one
    assert size == 2 * sum(r["kind"] != "equal" for r in family) + 3 * sum(r["kind"] == "equal" for r in family)
    raw = sorted((r["hyp"][h][0], r["holm"][h][0]) for r in family for h in r["hyp"])
    assert raw[0][1] == pytest.approx(min(1.0, size * raw[0][0]))  # Holm's first step: the smallest p times m
    for s in range(5):  # pred-linear and pred-mlp at their random init: C3 untestable by rule (b)
        put("pred-linear", s, direct[s] - (0.03, 0.04, 0.05, 0.035, 0.045)[s] + (0.001, -0.001, 0.0, 0.002, -0.002)[s])
        put("pred-mlp", s, direct[s] - (0.03, 0.04, 0.05, 0.035, 0.045)[s] + (-0.001, 0.001, 0.0, -0.002, 0.002)[s])
    by = {(r["claim"], r["contrast"].split(" - ")[-1]): r for r in V.verdicts(str(tmp_path))[0]}
    assert by[("C3", "pred-linear")]["untestable"] == "neither row beats the stronger random init (rule (b))"
    put("pred-direct", 4, direct[4] - 0.046)  # seed 4 below its init: the gate's sign-flip fails
    recs, gate, _ = V.verdicts(str(tmp_path))
    assert not gate["passes"]
    assert all(r["untestable"] for r in recs if r["kind"] != "collapse")
    assert [r["verdict"] for r in recs if r["kind"] == "collapse" and r["seeds"]] == ["holds"]


def test_v3_verdicts_exempt_nothing_and_name_what_c1_shows(tmp_path, monkeypatch):
    """paper/results/claims-v3/PLAN.md's rules on hand-made result files (5 seeds, points of linear top-1), read
    from two folders merged seed by seed, the first folder's t1-optimal not read (NOT_READ): C2 (v2's rule 6, the
    basin) now gets a verdict: holds (+5 on every seed); C3b and C13b are judged, on the new rows; C13 reads the
    second folder's t1-optimal (DirectPred +8 above it: holds; the first folder's, 10 points above DirectPred, would
    be the opposite); C1 holds with 3 of 5 runs at the collapse rule: the weaker form, with the count; with all 5
    there: "holds: collapses"; C10 alone untestable; the family is every other contrast's hypotheses. The sizing:
    n is the smallest n >= 5 where the power rule's inequality holds (checked on both sides of n), a row takes the
    largest n of its contrasts, and the rows v2 ran at seeds 5-9 run new seeds from 10."""
    V3 = importlib.import_module("paper.verdicts3")
    one, two = tmp_path / "one", tmp_path / "two"
    direct = (0.70, 0.71, 0.72, 0.705, 0.715)
    for s, d in enumerate(direct):
        put_result(one, "pred-direct", s, d)
        put_result(one, "pred-mlp", s, d + 0.01 + 0.001 * s)
        put_result(one, "t1-optimal", s, d + 0.10)  # not read
        put_result(two, "t1-optimal", s, d - 0.08 + 0.002 * s)
        put_result(two, "t1-optimal-solve", s, d - 0.05 - 0.003 * s)
        put_result(two, "pred-linear-authors", s, d - 0.02 + 0.001 * s)
        put_result(one, "t3-1l-noema-reg", s, 0.65 + 0.002 * s)
        put_result(one, "t3-1l-noema-sym", s, 0.60 + 0.001 * s)
        put_result(one, "pred-none", s, 0.6, rank=(1.2, 2.5, 1.1, 3.0, 1.25)[s], z=0.2)
        for name, top1 in ((f"random-bn-s{s}", 0.60), (f"random-s{s}", d - 0.04 - 0.001 * s)):
            RP.write_json(str(one / "baselines" / f"{name}.json"), dict(baseline=name, linear_top1=top1,
                                                                         knn_top1=top1))
    monkeypatch.setattr(V3, "NOT_READ", {str(one): ("t1-optimal",)})
    recs, (passes, _) = V3.verdicts([str(one), str(two)])
    by = {(r["claim"], r["contrast"].split(" - ")[-1].split(":")[0]): r for r in recs}
    assert passes
    c2 = by[("C2", "t3-1l-noema-sym")]
    assert c2["untestable"] is None and c2["verdict"] == "holds" and c2["d"] == pytest.approx([5, 5.1, 5.2, 5.3, 5.4])
    assert by[("C3b", "pred-linear-authors")]["verdict"] == "holds"
    assert by[("C13", "t1-optimal")]["d"] == pytest.approx([8.0, 7.8, 7.6, 7.4, 7.2])
    assert by[("C13", "t1-optimal")]["verdict"] == "holds" and by[("C13b", "t1-optimal-solve")]["verdict"] == "holds"
    assert "as the authors' code ran it" in by[("C13", "t1-optimal")]["text"]
    c1 = next(r for r in recs if r["contrast"].startswith("pred-none"))
    assert c1["verdict"] == ("holds in the weaker form: loses spread against DirectPred (3 of 5 collapsed by the "
                             "rule)")
    assert [r["claim"] for r in recs if r["untestable"]] == ["C10"]
    tested = [r for r in recs if not r["untestable"] and len(r["seeds"]) > 1]
    assert V3.family_size(recs) == sum(3 if r["kind"] == "equal" else 2 for r in recs if r["claim"] != "C10")
    assert all(r["holm"] for r in tested)
    for s in range(5):
        put_result(one, "pred-none", s, 0.6, rank=1.1, z=0.2)
    c1 = next(r for r in V3.verdicts([str(one), str(two)])[0] if r["contrast"].startswith("pred-none"))
    assert c1["verdict"] == "holds: collapses"
    rule = lambda n, sd, m, q: stats_t(1 - 0.05 / m, n - 1) + stats_t(q, n - 1) <= math.sqrt(n) / sd
    for sd, m in ((0.5, 1), (1.0, 48), (1.7, 48), (0.1, 48)):
        n = V3.n_for(sd, 1.0, m)
        assert rule(n, sd, m, 0.8) and (n == 5 or not rule(n - 1, sd, m, 0.8)), (sd, m, n)
    assert V3.n_for(0.1, 1.0, 48) == 5 and V3.n_for(1.0, 1.0, 48, equal=True) > V3.n_for(1.0, 1.0, 48)
    assert V3.schedule({"pred-direct": 7, "t1-optimal-solve": 7}) == {"pred-direct": [10, 11],
                                                                       "t1-optimal-solve": [5, 6, 7, 8, 9, 10, 11]}
    assert V3.schedule({"pred-direct": 7, "t1-optimal-solve": 7}, cap_n=6)["t1-optimal-solve"] == [5, 6, 7, 8, 9, 10]
    assert V3.schedule({"pred-direct": 6, "t1-optimal-solve": 8})["pred-direct"] == [10, 11, 12]  # every seed
    # the run commands: seed block by seed block, every (row, seed) of the plan once, the baselines with pred-direct
    plan = V3.schedule({"pred-direct": 13, "t1-optimal-solve": 13, "pred-mlp": 7, "t6-rho0.3-eps0": 6})
    cmds = V3.commands(plan, jobs=2)
    arg = lambda c, flag: c.split(f"--{flag} ")[1].split()[0]
    got = [(rid, int(s), arg(c, "baselines"), int(arg(c, "seeds").split(",")[0]))
           for c in cmds for rid in arg(c, "rows").split(",") for s in arg(c, "seeds").split(",")]
    assert sorted((r, s) for r, s, _, _ in got) == sorted((r, s) for r, seeds in plan.items() for s in seeds)
    firsts = [f for _, _, _, f in got]
    assert [f // 5 for f in firsts] == sorted(f // 5 for f in firsts)  # blocks 5-9, 10-14, 15-17 in order
    assert {s for r, s, b, _ in got if b == "random"} == set(range(10, 18))  # the new seeds' baselines
    assert all((arg(c, "baselines") == "random") ==
               ("pred-direct" in arg(c, "rows").split(",") and int(arg(c, "seeds").split(",")[0]) >= 10)
               for c in cmds)
    assert all("--jobs 2" in c for c in cmds) and all(b == "none" for r, s, b, _ in got if s < 10)


def test_v3_power_inverts_the_sizing_rule_and_the_readme_table_has_every_contrast():
    """power_at at the n the sizing rule gives is at least the rule's power (the same inequality read backwards: 0.8
    one-sided, 2 x 0.9 - 1 for TOST), below it the power falls, and TOST's approximation never goes below 0; the
    README's table (readme_table) has one line per v3 contrast, C10's marked untestable, from the committed files."""
    V3 = importlib.import_module("paper.verdicts3")
    for sd, m, equal in ((0.5, 48, False), (1.3, 48, False), (0.37, 48, True), (1.0, 1, True)):
        n = V3.n_for(sd, 1.0, m, equal)
        assert V3.power_at(sd, 1.0, m, n, equal) >= (0.8 if not equal else 0.8 - 1e-12), (sd, m, equal)
        if n > 5:
            assert V3.power_at(sd, 1.0, m, n - 1, equal) < V3.power_at(sd, 1.0, m, n, equal)
    assert V3.power_at(5.0, 1.0, 48, 5, equal=True) == 0.0
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        table = V3.readme_table().splitlines()
    finally:
        os.chdir(cwd)
    assert len(table) == 2 + len(RW.CLAIMS_V3)
    assert [line.split(" | ")[0][2:] for line in table[2:]] == [c["claim"] for c in RW.CLAIMS_V3]
    assert [line for line in table if "untestable" in line.split(" | ")[2]] == [table[2 + next(
        i for i, c in enumerate(RW.CLAIMS_V3) if c["claim"] == "C10")]]


def stats_t(q, df):
    """Student's t quantile, from scipy directly (the test's reference for paper.stats.t_ppf)."""
    return importlib.import_module("scipy.stats").t.ppf(q, df)


def put_result(folder, rid, seed, lin, rank=20.0, z=0.9):
    """A hand-made result file of one (row, seed): its linear top-1 (kNN 0.01 below), final rank and z_std, and the
    claims suite's step count and lr x wd."""
    RP.write_json(str(folder / rid / f"s{seed}.json"), dict(
        row=rid, seed=seed, linear_top1=lin, knn_top1=lin - 0.01, final_erank=rank, final_z_std=z, steps=2340,
        command="python train.py --lr 0.03 --wd 4e-4", curve=[]))


def test_claims_are_judged_by_the_plans_paired_tests(tmp_path):
    """The verdicts from hand-made result files (3 seeds, so t has 2 degrees of freedom: the one-sided 5% point
    2.920, the two-sided 95% one 4.303). C9 (pred-direct - pred-linear) +2, +3, +4: t = 3 / (1 / sqrt 3) = 5.20,
    holds, interval 3 +- 4.303 / sqrt 3 = [+0.52, +5.48]; C13 -3, -2, -4: the opposite holds; C7 (eps 0.1 - 0.5)
    +1, -1, +1.5: inconclusive (the interval [-2.79, +3.79] holds the paper's +2.80); C9 freq 5 - freq 1 -0.2, +0.1,
    0: equivalent within 1 point (90% interval +-0.26); C2 with EMA +3, +3.2, +2.8: a difference beyond the margin;
    C6: both rows within noise of their random init: untestable; C3 (pred-mlp, 1 seed): inconclusive; C1: pred-none
    collapsed on every seed, DirectPred on none; C4 untestable with the run's summed lr x wd. The gains are taken
    against the random init with BN statistics re-estimated (0.60), not the untouched one (0.05 above DirectPred).
    Last, DirectPred's gains made noisy: the regime gate fails and every contrast but the collapse counts is
    untestable."""
    put = lambda *a, **k: put_result(tmp_path, *a, **k)
    for s, d in enumerate((0.70, 0.71, 0.72)):
        put("pred-direct", s, d)
        put("pred-linear", s, d - (0.02, 0.03, 0.04)[s])
        put("t1-optimal", s, d + (0.03, 0.02, 0.04)[s])
        put("t6-rho0.3-eps0.5", s, d - (0.01, -0.01, 0.015)[s])
        put("pred-direct-f5", s, d + (-0.002, 0.001, 0.0)[s])
        put("t3-1l-ema-reg", s, d - 0.03)
        put("t3-1l-ema-sym", s, d - 0.03 + (0.03, 0.032, 0.028)[s])
        put("f6-ap5", s, 0.59 + (0.0, 0.01, -0.005)[s])
        put("t3-1l-noema-sym", s, 0.60 + (-0.01, 0.0, 0.005)[s])
        put("pred-none", s, 0.6, rank=1.2, z=0.05)
        for name, top1 in ((f"random-bn-s{s}", 0.60), (f"random-s{s}", d + 0.05)):
            RP.write_json(str(tmp_path / "baselines" / f"{name}.json"), dict(baseline=name, linear_top1=top1,
                                                                            knn_top1=top1))
    put("pred-mlp", 0, 0.75)
    recs = {(r["claim"], r.get("b")): r for r in RP.verdicts("laptop", str(tmp_path)) if "thm2" not in str(r)}
    c9 = recs[("C9", "pred-linear")]
    assert c9["linear"] == {s: pytest.approx(v) for s, v in enumerate((0.02, 0.03, 0.04))} and c9["verdict"] == "holds"
    assert RP.interval(c9["linear"]) == "+3.00 [+0.52, +5.48] (n=3)"
    assert recs[("C13", "t1-optimal")]["verdict"] == "does not hold (the opposite holds)"
    assert recs[("C7", "t6-rho0.3-eps0.5")]["verdict"] == "inconclusive"
    assert recs[("C9", "pred-direct")]["verdict"] == "holds"
    assert recs[("C2", "t3-1l-ema-reg")]["verdict"] == "does not hold (a difference beyond the margin)"
    assert recs[("C6", "t3-1l-noema-sym")]["verdict"].startswith("untestable here: neither row beats its random init")
    assert recs[("C7", "random")]["verdict"] == "holds"  # +10 over random-bn (it would be -5 over random)
    assert recs[("C3", "pred-linear")]["verdict"].startswith("inconclusive (n = 1")
    assert recs[("C1", "pred-direct")]["verdict"] == "holds"
    wd = 2340 * 0.03 * 4e-4
    assert recs[("C4", "t2-ema-nobias")]["verdict"].startswith(f"untestable here: summed lr x wd {wd:.3f}")
    assert f"{math.exp(-2 * wd):.2f} here" in recs[("C4", "t2-ema-nobias")]["verdict"]
    put("t6-rho0.3-eps0.5", 2, 0.72 - 0.005)  # +1, -1, +0.5: the interval [-2.42, +2.75] excludes +2.80
    verdict = {(r["claim"], r.get("b")): r for r in RP.verdicts("laptop", str(tmp_path))}[("C7", "t6-rho0.3-eps0.5")]
    assert verdict["verdict"] == "does not hold (the paper's +2.80 is outside the interval)"
    RP.write_json(str(tmp_path / "baselines" / "random-bn-s2.json"), dict(baseline="random-bn-s2", linear_top1=0.70,
                                                                         knn_top1=0.70))
    recs = {(r["claim"], r.get("b")): r for r in RP.verdicts("laptop", str(tmp_path)) if "thm2" not in str(r)}  # gains
    assert recs[("C9", "pred-linear")]["verdict"].startswith("untestable here: the regime gate fails")  # +10,
    assert recs[("C1", "pred-direct")]["verdict"] == "holds"  # +11, +2 (mean 7.67 < 5 x std 4.93): the gate fails


def test_reproduce_runs_seed_by_seed(tmp_path):
    """The suite's runs go seed by seed (every row of seed 0, then of seed 1, ...), the rows in the order given, so
    a suite stopped early leaves whole seeds to pair; --dry-run lists them in the order they run."""
    r = subprocess.run([sys.executable, "-m", "paper.reproduce", "--rows", "pred-linear,pred-direct,pred-none",
                        "--seeds", "1,0", "--baselines", "none", "--dry-run", "--work", str(tmp_path / "w"),
                        "--results", str(tmp_path / "r")], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    order = [ln.split(" (")[0][2:] for ln in r.stdout.splitlines() if " seed " in ln and ln.startswith("# pred")]
    assert order == [f"{rid} seed {s}" for s in (0, 1) for rid in ("pred-linear", "pred-direct", "pred-none")]


def test_reproduce_suite_resumes_after_a_kill_and_aggregates_by_hand(tmp_path):
    """Two rows x two seeds on fake data with --jobs 2. Killed (SIGTERM to the whole process group) once the first
    run has its result: re-run, the finished runs are not recomputed, an unfinished one continues from its checkpoint
    (train.py's 'steps K -> 48' with K > 0), and the table's mean and sample std equal a hand computation (the gain:
    over the stronger of the two random inits, per seed). Then as a fresh clone: no work folder, one baseline
    to redo."""
    argv = [sys.executable, "-m", "paper.reproduce", "--rows", "pred-direct,pred-linear", "--seeds", "0,1",
            "--jobs", "2", "--base", FAKE_BASE, "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            start_new_session=True)
    unfinished = lambda: [c for c in (tmp_path / "w").glob("*/s*/ckpt.pt")  # a checkpoint and no result yet
                          if not (tmp_path / "r" / c.parent.parent.name / f"{c.parent.name}.json").exists()]
    while not (list((tmp_path / "r").rglob("s*.json")) and unfinished()):  # (the two side-by-side runs can end
        assert proc.poll() is None, proc.communicate()  # together: then wait for the next one's checkpoint)
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # Ctrl-C-like: train.py saves a checkpoint and stops
    proc.communicate(timeout=120)
    done = {p: p.read_bytes() for p in (tmp_path / "r").rglob("s*.json")}
    assert 1 <= len(done) < 4
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert all(p.read_bytes() == b for p, b in done.items())  # not recomputed
    logs = [p.read_text() for p in (tmp_path / "w").rglob("s?.train.txt")]
    assert any("steps 0 -> 48" not in t and "-> 48" in t for t in logs), "no run continued from a checkpoint"
    rows = {r["id"]: r for r in RP.aggregate("laptop", str(tmp_path / "r"))[0]}
    for rid in ("pred-direct", "pred-linear"):
        res = [json.load(open(tmp_path / "r" / rid / f"s{s}.json")) for s in (0, 1)]
        lin = [x["linear_top1"] for x in res]
        rand = [max(json.load(open(tmp_path / "r" / "baselines" / f"{b}-s{s}.json"))["linear_top1"]
                    for b in ("random", "random-bn")) for s in (0, 1)]  # the stronger init per seed
        mean, std = sum(lin) / 2, math.sqrt(((lin[0] - lin[1]) ** 2) / 2)  # sample std of two numbers
        assert rows[rid]["linear"] == (pytest.approx(mean), pytest.approx(std), 2)
        assert rows[rid]["gain_linear"][0] == pytest.approx(mean - sum(rand) / 2)
        here = f"{os.cpu_count()} cores of "  # each result names where it ran (RP.machine), torch's version last
        assert all(x["machine"].startswith(here) and x["machine"].endswith(f"torch {torch.__version__}") for x in res)
    table = (tmp_path / "r" / "table.md").read_text()
    assert f"{100 * rows['pred-direct']['linear'][0]:.2f} ± {100 * rows['pred-direct']['linear'][1]:.2f} (n=2)" in table
    # a fresh clone holds the result files and no work folder: a baseline still to probe gets pred-direct's
    # checkpoint made again (only that seed's, one step, not probed, no result file rewritten) and the same number
    shutil.rmtree(tmp_path / "w")
    redo = tmp_path / "r" / "baselines" / "random-bn-s1.json"
    top1 = json.load(open(redo))["linear_top1"]
    redo.unlink()
    kept = {p: p.read_bytes() for p in (tmp_path / "r").rglob("*.json") if p != redo}
    r = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.load(open(redo))["linear_top1"] == top1
    assert all(p.read_bytes() == b for p, b in kept.items())
    assert [p.parent.name for p in (tmp_path / "w").glob("*/s*/ckpt.pt")] == ["s1"]
    assert "steps 0 -> 1," in (tmp_path / "w" / "pred-direct" / "s1.train.txt").read_text()


def test_a_failed_torchrun_is_read_from_the_ranks_own_line_not_the_launchers(tmp_path):
    """A 2-rank run under torchrun at an absurd lr diverges: the suite's runner records it by the ranks' "error:
    training diverged" line (torchrun's failure banner comes after it, last in the log); any other failure stops the
    suite with the rank's line too, not the banner."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "train.py")]
    flags = [*map(str, TINY + ["--fake-size", "256", "--loss", "l2", "--lr", "5", "--max-steps", "60"])]
    line = R.sh(torchrun + flags + ["--out-dir", str(tmp_path / "a")], dict(os.environ), str(tmp_path / "a.txt"),
                ok="error: training diverged")
    assert line.startswith("error: training diverged: the loss (or F_hat) became nan/inf at step "), line
    assert not (tmp_path / "a.txt").read_text().strip().splitlines()[-1].startswith("error:")  # the banner is last
    with pytest.raises(RuntimeError, match="must split evenly over 2 DDP ranks"):
        R.sh(torchrun + flags + ["--batch-size", "33", "--out-dir", str(tmp_path / "b")], dict(os.environ),
             str(tmp_path / "b.txt"), ok="error: training diverged")


def test_reproduce_demo_prints_each_rows_rank_and_knn_and_draws_them(tmp_path):
    """--demo on fake data (its base replaced by a tiny one): the three rows side by side, one line each whose
    numbers are the first and last of that run's committed curve, and the figure."""
    r = subprocess.run([sys.executable, "-m", "paper.reproduce", "--demo", "--base", FAKE_BASE + " --max-steps 8 "
                        "--eval-every 4", "--work", str(tmp_path / "w")], capture_output=True, text=True, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for rid in RW.DEMO_ROWS:
        cur = json.load(open(tmp_path / "w" / "results" / rid / "s0.json"))["curve"]
        rank, knn = [c for c in cur if "erank" in c], [c["knn_top1"] for c in cur if "knn_top1" in c]
        line = next(x for x in r.stdout.splitlines() if x.startswith(rid + " "))
        assert f"{rank[0]['erank']:5.1f} -> {rank[-1]['erank']:5.1f}" in line and f"{100 * knn[-1]:.2f}" in line
    assert coloured_panels(tmp_path / "w" / "results" / "demo.png", 2) == [True, True]  # rank and kNN, drawn


STAND_IN = r'''
import importlib.util, json, os, sys, time


def main():
    argv, name = sys.argv[1:], os.path.basename(__file__)
    flag = lambda f: argv[argv.index(f) + 1]
    rec = dict(script=name, argv=argv, gpus=os.environ.get("CUDA_VISIBLE_DEVICES"), launched_by=os.environ.get("VIA"),
               start=time.time())
    if name == "train.py":  # a checkpoint at once (as if the run had saved one), then "training", then the log
        os.makedirs(flag("--out-dir"), exist_ok=True)
        open(os.path.join(flag("--out-dir"), "ckpt.pt"), "w").write("stand-in")
        time.sleep(1.5)
        with open(os.path.join(flag("--out-dir"), "log.jsonl"), "w") as fh:
            fh.write(json.dumps(dict(step=10, loss=1.0, z_std=0.9, erank=5.0)) + "\n")
    else:  # eval_linear.py
        json.dump(dict(top1=0.5, knn_top1=0.4, protocol="paper", seconds=0.1), open(flag("--out"), "w"))
    rec["end"] = time.time()
    with open(os.environ["STAND_IN_LOG"], "a") as fh:
        fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
else:  # imported by reproduce.py (a run's dataset, the Debian data folder): the real train.py's
    sys.path.append(os.path.dirname(os.environ["REAL_TRAIN"]))
    spec = importlib.util.spec_from_file_location("real_train", os.environ["REAL_TRAIN"])
    real = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real)
    parse_config = real.parse_config
'''

TORCHRUN = r'''#!/usr/bin/env python3
import os, subprocess, sys
args = sys.argv[1:]
opts = [a for a in args if a.startswith("--")][:2]  # --standalone --nproc_per_node=N, then the script
script = next(a for a in args if not a.startswith("--"))
rest = args[args.index(script) + 1:]
env = dict(os.environ, VIA="torchrun " + " ".join(opts))
sys.exit(subprocess.run([sys.executable, script, *rest], env=env).returncode)
'''

def test_reproduce_on_3_gpus_one_run_per_gpu_imagenet_on_all_and_a_killed_suite_resumes(tmp_path):
    """reproduce.py --gpus 0,1,2 with stand-in train.py / eval_linear.py (they record CUDA_VISIBLE_DEVICES, argv and
    their start / end times) and a stand-in torchrun: runs that overlap in time see distinct single GPUs, more than
    one runs at once, each ImageNet row runs alone through `torchrun --standalone --nproc_per_node=3` with all three
    GPUs visible; a suite killed after its first result, run again, skips what finished and resumes what had
    started (--resume)."""
    root = tmp_path / "repo"
    root.mkdir()
    (root / "paper").mkdir()
    for name in ("reproduce.py", "rows.py", "report.py", "verdicts.py", "stats.py", "__init__.py"):
        shutil.copy(ROOT / "paper" / name, root / "paper")
    for name in ("plumbing.py", "data.py", "directpred.py"):  # the real ones: reproduce.py reads the Debian data
        shutil.copy(ROOT / name, root)  # folder's path in data.py
    for name in ("train.py", "eval_linear.py"):
        (root / name).write_text(STAND_IN)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "torchrun").write_text(TORCHRUN.replace("/usr/bin/env python3", sys.executable))
    (bin_dir / "torchrun").chmod(0o755)
    data = tmp_path / "data"
    for d in ("stl10_binary", "train"):
        (data / d).mkdir(parents=True)
    log = tmp_path / "calls.jsonl"
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", STAND_IN_LOG=str(log), REAL_TRAIN=str(ROOT / "train.py"))
    argv = [sys.executable, "-m", "paper.reproduce", "--scale", "paper", "--rows", "table6,t9-60-direct", "--seeds", "0",
            "--gpus", "0,1,2", "--baselines", "none", "--data-dir", str(data), "--work", str(tmp_path / "w"),
            "--results", str(tmp_path / "r")]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=root, env=env,
                            start_new_session=True)
    while not list((tmp_path / "r").rglob("s*.json")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    done = {p: p.read_bytes() for p in (tmp_path / "r").rglob("s*.json")}
    started = {p.parent.parent.name for p in (tmp_path / "w").glob("*/s0/ckpt.pt")}  # the runs killed with a
    # checkpoint (the stand-in writes it at once; its log line only at its end, so a run killed mid-way has none)
    assert 1 <= len(done) < 9
    first = len(log.read_text().splitlines())
    r = subprocess.run(argv, capture_output=True, text=True, cwd=root, env=env, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "on GPUs 0,1,2" in r.stdout and all(p.read_bytes() == b for p, b in done.items())
    calls = [json.loads(x) for x in log.read_text().splitlines()]
    trains = [c for c in calls if c["script"] == "train.py"]
    rerun = [c for c in calls[first:] if c["script"] == "train.py"]
    row_of = lambda c: Path(c["argv"][c["argv"].index("--out-dir" if "--out-dir" in c["argv"] else "--ckpt") + 1]) \
        .parts[-2 if "--out-dir" in c["argv"] else -3]  # WORK/<row>/s0, or WORK/<row>/s0/ckpt.pt for a probe
    rows = {RW.runs_row(RW.row(i), "paper") for i in RW.GROUPS["table6"] + ["t9-60-direct"]}  # (eps 0.1 = pred-direct)
    assert {row_of(c) for c in rerun} == rows - {p.parent.name for p in done}
    assert all(("--resume" in c["argv"]) == (row_of(c) in started) for c in rerun)
    overlap = lambda a, b: a["start"] < b["end"] and b["start"] < a["end"]
    for c in calls:
        if row_of(c) == "t9-60-direct":  # ImageNet: every GPU, through the launcher, alone
            assert c["gpus"] == "0,1,2" and c["launched_by"] == "torchrun --standalone --nproc_per_node=3"
            assert not any(overlap(c, o) for o in calls if row_of(o) != "t9-60-direct")
        else:
            assert c["gpus"] in ("0", "1", "2") and c["launched_by"] is None
            assert all(c["gpus"] != o["gpus"] for o in calls if o is not c and overlap(c, o))
    assert any(overlap(a, b) for a in trains for b in trains if a is not b), "no two runs side by side"




# -----------------------------------------------------------------------------
# paper/bao.py: Bao's claim's verdicts from result files built by hand


def test_bao_verdicts_and_the_l2_threshold_from_hand_made_results(tmp_path):
    """A sweep made by hand (paper/results/bao/PLAN.md's 20 rows x 5 seeds and the baselines): the L2 loss's erank
    falls along the grid, sooner with crop-min 0.2; the cosine loss keeps its spread; the L2 loss ends collapsed by
    the rule at the largest D; the cosine loss learns, the L2 loss at the largest D falls below the init. The
    threshold is checked against the log-linear interpolation by hand: crop 0.7 crosses r0 / 2 = 20 two thirds of
    the way from D = 0.3 (erank 30) to D = 1 (15), crop 0.2 five ninths of the way from D = 0.03 (30) to 0.3 (12)."""
    from paper import bao as B
    l2_erank = {"0.7": [40, 38, 30, 15, 4], "0.2": [40, 30, 12, 6, 3]}
    for s in range(5):
        for crop in B.CROPS:
            for i, wd in enumerate(B.GRID):
                for loss in B.LOSSES:
                    erank = l2_erank[crop][i] if loss == "l2" else 25.0
                    z_std = 0.05 if loss == "l2" and i == 4 else 0.9
                    top1 = 0.80 if loss == "cosine" else (0.50 if i == 4 else 0.78)
                    RP.write_json(str(tmp_path / B.row_id(loss, wd, crop) / f"s{s}.json"), dict(
                        row=B.row_id(loss, wd, crop), seed=s, final_erank=erank,
                        final_z_std=z_std + 0.001 * s, linear_top1=top1 + 0.001 * s, knn_top1=top1))
        for name, top1 in (("random", 0.70), ("random-bn", 0.60)):
            RP.write_json(str(tmp_path / "baselines" / f"{name}-s{s}.json"),
                          dict(baseline=f"{name}-s{s}", linear_top1=top1, knn_top1=top1))
    recs = {r["claim"]: r for r in B.verdicts(str(tmp_path))}
    assert sum(len(r["holm"]) for r in recs.values()) == 18  # 9 contrasts x 2 directions
    assert recs["B1 (crop-min 0.7)"]["verdict"] == recs["B1 (crop-min 0.2)"]["verdict"] == \
        "holds: the L2 loss collapses"
    assert recs["B1 (crop-min 0.7)"]["counts"] == (0, 5)
    assert recs["B2a (crop-min 0.7)"]["verdict"] == recs["B2a (crop-min 0.2)"]["verdict"] == "holds"
    D = lambda wd: 0.001 * wd * 2340
    mild = math.exp(math.log(D(0.128)) + (2 / 3) * (math.log(D(0.427)) - math.log(D(0.128))))
    strong = math.exp(math.log(D(0.0128)) + (5 / 9) * (math.log(D(0.128)) - math.log(D(0.0128))))
    for s, (a, b) in recs["B2b"]["thresholds"].items():
        assert a[0] == pytest.approx(mild, rel=1e-12) and b[0] == pytest.approx(strong, rel=1e-12)
        assert not a[1] and not b[1]
    assert recs["B2b"]["verdict"] == "holds"
    assert recs["B3 (cosine, D 0.000936)"]["verdict"] == recs["B3 (cosine, D 3)"]["verdict"] == "holds"
    assert recs["B3 (l2, D 0.000936)"]["verdict"] == "holds" and recs["B3 (l2, D 3)"]["verdict"] == "opposite"
    assert B.threshold([10, 9, 8, 7, 6]) == (3 * D(1.28), True)  # never below r0 / 2: censored at 3 x the largest D
    text = B.verdicts_markdown(str(tmp_path))
    assert text.count("| holds") == 8 and "| opposite |" in text
