"""
DirectPred: set the linear predictor in closed form instead of training it.

Tian, Chen, Ganguli, "Understanding self-supervised learning dynamics without contrastive pairs",
ICML 2021 (arXiv 2102.06810), Sec. 5 / Eq. 18, as the authors' code runs it:

    every step:       F_hat <- rho F_hat + (1 - rho) mean_i f_i f_i^T   (f: both views' inputs)
    every freq steps: s, U = eigh(F_hat);  s <- max(s, 0) / max(s)
                      p_j = max(s_j ** a + eps, 1e-4)                   (a = 1/2, eps = 0.1)
                      Wp  = U diag(p) U^T   -> into the bias-free Linear(d, d) predictor

Eq. 18 prints "+ eps * max_j s_j"; the authors' code (luckmatters@671fca5, ssl/real-dataset,
byol_trainer.py, compute_w_corr) adds eps after normalising by the max, as here. The first batch
sets F_hat. Between two sets (freq > 1) the optimizer trains Wp. Under DDP the batch statistics are
summed over the ranks before the EMA: every rank builds the same F_hat and the same Wp.

DirectPred below is that rule, with Table 7's two knobs of p_j (the exponent a, an offset c inside
the root) and the authors' centred F (dyn_zero_mean). Beside it, sharing its pieces: DirectCopy
(Wang et al., arXiv 2110.04947), OptimalPredictor (Table 1's plug-in rules), PartitionedPredictor
(Sec. 5's feature-dependent Wp); at the end, the paper's Fig. 2 diagnostics and the collapse rule.

Usage (copy this file; it imports only torch and has no side effects):
    dp = DirectPred(dim=128, rho=0.3, eps=0.1, freq=1).to(device)
    predictor = nn.Linear(128, 128, bias=False)
    z1, z2 = projector(backbone(x1)), projector(backbone(x2))  # (B, d) each: the inputs f
    dp.update(torch.cat([z1, z2]))                             # before backward
    loss.backward(); optimizer.step()
    dp.set_predictor(predictor.weight)                         # after it; acts every `freq` calls

"""
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as nnf


@contextmanager
def full_fp32(device_type):
    """Matmuls in full fp32 inside: autocast off, and no TF32 on CUDA (a caller may have turned TF32
    on for the network, which would round the inputs of every f f^T sum to 10 mantissa bits). The
    settings are restored after. Under torch.compile only autocast is turned off (the compiled graph
    keeps the precision it was compiled with)."""
    # inside a compiled forward (--partitions): the backend flags cannot be traced
    if torch.compiler.is_compiling():
        with torch.autocast(device_type, enabled=False):
            yield
        return
    # the API every torch has, which leaves allow_tf32 (legacy or new) readable by other code
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.set_float32_matmul_precision(old)


def global_sum(*tensors):
    """The tensors summed over the DDP ranks in one all-reduce (as they are without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return tensors
    flat = torch.cat([t.flatten() for t in tensors])
    dist.all_reduce(flat)
    return [x.view_as(t) for x, t in zip(flat.split([t.numel() for t in tensors]), tensors)]


def ema_(hat, batch, rho, seen):
    """hat <- rho hat + (1 - rho) batch in place; the first batch (seen False) sets it."""
    hat.copy_(torch.where(seen, rho * hat + (1 - rho) * batch, batch))


def eq18_p(s, eps, exponent=0.5, offset=0.0):
    """Eq. 18's p_j from F_hat's eigenvalues s (..., d): clamped at 0, max-normalised, the root."""
    s = s.clamp(min=0)
    s = s / s.max(-1, keepdim=True).values.clamp(min=1e-12)  # the top eigenvalue becomes 1
    if offset:  # Table 7: the offset inside the root, floored before it (dyn_eps_inside)
        return (s - offset).clamp(min=1e-4).pow(exponent) + eps
    return (s.pow(exponent) + eps).clamp(min=1e-4)


def eq18_wp(F, eps, exponent=0.5, offset=0.0):
    """Eq. 18: Wp = U diag(p) U^T from the eigendecomposition of F (..., d, d)."""
    s, U = torch.linalg.eigh(F)  # ascending eigenvalues, orthonormal columns
    return (U * eq18_p(s, eps, exponent, offset)[..., None, :]) @ U.mT


def finite_or_eye(F):
    """F (..., d, d), or I where it holds nan/inf: eigh would raise on a diverged run's F_hat; the
    run's divergence guard stops it at its next check, with no host sync here."""
    eye = torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
    return torch.where(torch.isfinite(F).flatten(-2).all(-1)[..., None, None], F, eye)


def centred_F(F_hat, mu_hat=None):
    """The F the rules read, in float64: F_hat (..., d, d), minus mu_hat mu_hat^T where the mean
    (..., d) is given (--center, the authors' dyn_zero_mean), I where it is not finite."""
    F = F_hat.double()
    if mu_hat is not None:
        mu = mu_hat.double()
        F = F - mu[..., :, None] * mu[..., None, :]
    return finite_or_eye(F)


class DirectPred(nn.Module):
    """F_hat, the EMA of the predictor input's correlation, and Eq. 18's rule that turns it into Wp.
    An nn.Module only so that .to(), state_dict() and load_state_dict() carry its state; it has no
    parameters and is not part of the network's forward pass."""

    def __init__(self, dim, rho=0.3, eps=0.1, freq=1, exponent=0.5, offset=0.0, center=False):
        super().__init__()
        self.rho, self.eps, self.freq = rho, eps, freq
        self.exponent, self.offset, self.center = exponent, offset, center
        self.register_buffer("F_hat", torch.zeros(dim, dim))  # (d, d) EMA of E[f f^T]
        if center:
            self.register_buffer("mu_hat", torch.zeros(dim))  # (d,) EMA of E[f]
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))  # a batch came in
        self.n_updates = self.n_sets = 0  # plain ints: the hot loop never syncs with the device

    @torch.no_grad()
    def update(self, f):
        """f: (N, d) the local batch's predictor inputs (both views), before backward. In F_hat's
        precision whatever the autocast and TF32 settings (bf16 sums of f f^T would move Wp)."""
        with full_fp32(f.device.type):
            f = f.detach().to(self.F_hat.dtype)
            self.fold(len(f), F_hat=f.T @ f, **({"mu_hat": f.sum(0)} if self.center else {}))
        self.n_updates += 1

    def fold(self, n, **sums):
        """The global batch's means (local sums and count n, summed over the ranks) into the EMAs
        of the buffers they name."""
        count, *totals = global_sum(self.F_hat.new_full((), n), *sums.values())  # (no host copy)
        for name, total in zip(sums, totals):
            ema_(getattr(self, name), total / count, self.rho, self.seen)
        self.seen.fill_(True)

    def F(self):
        """The F the rule reads (float64, centred with --center)."""
        return centred_F(self.F_hat, self.mu_hat if self.center else None)

    def rule(self, F):
        return eq18_wp(F, self.eps, self.exponent, self.offset)

    @torch.no_grad()
    def compute_Wp(self):
        with torch.autocast(self.F_hat.device.type, enabled=False):
            return self.rule(self.F())

    @torch.no_grad()
    def set_predictor(self, weight):
        """Once per optimizer step, after it: writes Wp into `weight` (d, d) on updates 1, 1 + freq,
        1 + 2 freq, ...; returns whether it did."""
        if (self.n_updates - 1) % self.freq:
            return False
        weight.copy_(self.compute_Wp().to(weight.dtype))
        self.n_sets += 1
        return True

    def get_extra_state(self):  # the counters travel in state_dict() beside F_hat
        return {"n_updates": self.n_updates, "n_sets": self.n_sets}

    def set_extra_state(self, state):
        self.n_updates, self.n_sets = state["n_updates"], state["n_sets"]


class DirectCopy(DirectPred):
    """DirectCopy (Wang, Chen, Du, Tian 2021, arXiv 2110.04947): Wp = F_hat / lambda_max + eps I."""

    def rule(self, F):
        lam_max = torch.linalg.eigvalsh(F)[..., -1].clamp(min=1e-12)[..., None, None]
        return F / lam_max + self.eps * torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)


OPTIMAL_RULES = ("solve-as-run", "solve", "minimal-space")


class OptimalPredictor(DirectPred):
    """Table 1's "plug in the optimal solution", the authors' branches of regulate_predictor
    (byol_trainer.py at luckmatters@671fca5): from M = F_hat, M2 = C_hat (the EMA of E[z f^T], z
    the target f's prediction is compared with) and the ridge eps,
    - "solve-as-run": their `solve` branch as it ran: `Q @ (D + eps).pow(-1) @ Q.t()` with D the
      1-D eigenvalues is a vector, and `weight.copy_(inv @ M2)` writes it into every row (a rank-1
      Wp, through which the cosine loss passes no gradient into the network);
    - "solve": the least squares Wp = M2 (M + eps I)^-1 that branch intends;
    - "minimal-space": their `minimal_space` branch, M W + W M + eps W = M2 + M2^T, and the
      SGD-trained Wp symmetrised between two sets (their dyn_sym)."""

    def __init__(self, dim, rho=0.3, eps=0.1, freq=1, optimal_rule="solve-as-run"):
        super().__init__(dim, rho, eps, freq)
        assert optimal_rule in OPTIMAL_RULES, optimal_rule
        self.optimal_rule = optimal_rule
        self.register_buffer("C_hat", torch.zeros(dim, dim))  # (d, d) EMA of E[z f^T]

    @torch.no_grad()
    def update(self, f, z):
        """f, z: (N, d) the predictor inputs and the targets their predictions are compared with."""
        with full_fp32(f.device.type):
            f, z = (x.detach().to(self.F_hat.dtype) for x in (f, z))
            self.fold(len(f), F_hat=f.T @ f, C_hat=z.T @ f)
        self.n_updates += 1

    def rule(self, M):
        M2 = self.C_hat.double()  # rows index the target z, columns the input f
        s, Q = torch.linalg.eigh(M)
        s = s.clamp(min=0)  # as theirs
        if self.optimal_rule == "minimal-space":  # solved in M's eigenbasis
            return Q @ (Q.mT @ (M2 + M2.mT) @ Q / (s[:, None] + s[None, :] + self.eps)) @ Q.mT
        inv = 1 / (s + self.eps)
        if self.optimal_rule == "solve":
            return M2 @ (Q * inv) @ Q.mT
        w = M2.mT @ (Q @ (Q @ inv))  # "solve-as-run": `inv @ M2` of the vector Q (Q inv)
        return w.expand_as(M2).contiguous()  # ... copied into every row

    @torch.no_grad()
    def set_predictor(self, weight):
        if super().set_predictor(weight):
            return True
        if self.optimal_rule == "minimal-space":
            weight.copy_(0.5 * (weight + weight.mT))
        return False


CLOSED_FORM = {"direct": DirectPred, "directcopy": DirectCopy, "optimal": OptimalPredictor}


class PartitionedPredictor(nn.Module):
    """Feature-dependent Wp (Sec. 5), as the authors' code ran it (predictor_reg "partition"): n
    fixed random projections r_i (d,) of the predictor input f; in each view's batch, f is on the
    positive side of projection i when r_i . f >= the batch mean of r_i . f. Each side of each
    projection (2n regions) keeps its own F_hat, updated with both views' samples BEFORE predicting;
    every side's Wp is Eq. 18 of its F_hat, and a sample's prediction is the mean over the
    projections of its side's Wp: p = (1/n) sum_i Wp_{i, side_i(f)} f. The Wp are constants of the
    step (nothing trained): the gradient flows through them into f. Under DDP the thresholds are
    global-batch means and the statistics global-batch sums. A region no sample fell into has batch
    statistics 0, so its EMA moves toward 0 (the authors' Accumulator adds a zero matrix)."""

    def __init__(self, dim, partitions, rho=0.3, eps=0.1, exponent=0.5, offset=0.0, center=False):
        super().__init__()
        self.n, K = partitions, 2 * partitions  # regions: (i, side)
        self.rho, self.eps, self.exponent, self.offset = rho, eps, exponent, offset
        self.center = center
        self.register_buffer("directions", torch.randn(dim, partitions))  # (d, n) the r_i, fixed
        self.register_buffer("F_hat", torch.zeros(K, dim, dim))
        if center:
            self.register_buffer("mu_hat", torch.zeros(K, dim))
        self.register_buffer("seen", torch.zeros(K, dtype=torch.bool))

    @torch.no_grad()
    def sides(self, f):
        """(N, d) one view's batch -> (N, 2n) 0/1: columns 2i, 2i+1 = positive / negative side of
        projection i. In fp32 at least: a bf16 threshold would move samples across it."""
        dtype = torch.promote_types(f.dtype, torch.float32)
        with full_fp32(f.device.type):
            proj = f.detach().to(dtype) @ self.directions.to(dtype)  # (N, n)
        total, count = global_sum(proj.sum(0), torch.full_like(proj[0], len(proj)))
        pos = proj >= total / count  # (N, n), against the global batch's mean
        return torch.stack([pos, ~pos], 2).flatten(1).float()  # (N, 2n)

    @torch.no_grad()
    def accumulate(self, f, member):
        """f (N, d) both views' inputs, member (N, K) their regions: every region's F_hat (and
        mu_hat) EMA. Tensor work only: a compiled forward keeps one graph."""
        with full_fp32(f.device.type):
            f = f.detach().to(self.F_hat.dtype)
            member = member.to(f.dtype)
            fk = member[:, :, None] * f[:, None]  # (N, K, d): f where in region k, else 0
            sums = [member.sum(0), torch.einsum("nki,nj->kij", fk, f)]  # (K,) counts, (K, d, d)
            if self.center:
                sums.append(fk.sum(0))  # (K, d)
            n, *totals = global_sum(*sums)
            n = n.clamp(min=1)
            seen = self.seen.view(-1, 1, 1)
            ema_(self.F_hat, totals[0] / n[:, None, None], self.rho, seen)
            if self.center:
                ema_(self.mu_hat, totals[1] / n[:, None], self.rho, seen[:, :, 0])
            self.seen.fill_(True)

    def compute_Wp(self):
        """(2n, d, d): every region's Wp by DirectPred's rule."""
        with torch.no_grad(), torch.autocast(self.F_hat.device.type, enabled=False):
            F = centred_F(self.F_hat, self.mu_hat if self.center else None)
            return eq18_wp(F, self.eps, self.exponent, self.offset)

    def forward(self, *views):
        """views: each (N, d), the step's views (train.py passes both): a prediction (N, d) each."""
        member = [self.sides(f) for f in views]
        if self.training:  # statistics first, with every view's samples: this batch shapes its Wp
            self.accumulate(torch.cat(views), torch.cat(member))
        Wp = self.compute_Wp().to(views[0].dtype)  # (2n, d, d)
        return tuple(torch.einsum("nk,kij,nj->ni", m.to(f.dtype), Wp, f) / self.n
                     for m, f in zip(member, views))


# -----------------------------------------------------------------------------
# the paper's Fig. 2 diagnostics of the predictor's input f and of Wp, for any predictor (train.py
# logs them), and the collapse rule that reads two of them


def effective_rank(eig):
    """exp of the entropy of a spectrum normalised by its sum (negative values clamped to 0), as
    RankMe (Garrido et al. 2023, arXiv 2210.02885, which takes the singular values of the
    embeddings): d for d equal modes, 1 for a single mode, 0 for an all-zero spectrum. eig: a list
    or tensor of eigenvalues."""
    q = torch.as_tensor(eig, dtype=torch.float64).clamp(min=0)
    if q.sum() <= 0:
        return 0.0
    q = q / q.sum()
    q = q[q > 0]
    return float(torch.exp(-(q * q.log()).sum()))


@torch.no_grad()
def feature_stats(stats, f, rho=0.9):
    """The running statistics behind the collapse diagnostics, the same for every predictor, trained
    or closed form: EMAs over steps of E[f f^T] (d, d) and E[f] (d,) of the predictor's input f (2B,
    d), in fp32. rho 0.9 averages about the last 10 batches (one batch of 2B = 256 samples is a
    noisy estimate of a 128 x 128 matrix). stats: the previous (F, mu), or None at the first step
    (the first batch sets them). Returns the new (F, mu)."""
    with full_fp32(f.device.type):
        f = f.detach().float()
        F, mu = f.T @ f / len(f), f.mean(0)
    if stats is None:
        return F, mu
    return torch.lerp(F, stats[0], rho), torch.lerp(mu, stats[1], rho)


@torch.no_grad()
def diagnostics(stats, Wp, z):
    """The paper's Fig. 2 quantities and the collapse signals. stats: (F, mu) from feature_stats;
    Wp: (d, d) linear predictor or None; z: (B, d). F_eig: eigenvalues of F = E[f f^T], descending
    (the paper's F); erank: effective rank of the centered covariance F - mu mu^T (1: one direction
    of variation left, i.e. dimensional collapse); erank_uncentered: of F itself, whose top
    eigenvalue is mostly the mean direction mu mu^T; alignment cos(u_j, Wp u_j) per eigenvector u_j
    of F; asymmetry ||Wp - Wp^T|| / ||Wp||; z_std: per-dimension std of l2-normalised z, times
    sqrt(d) (about 1 when spread out, 0 when collapsed)."""
    F, mu = (t.double() for t in stats)
    s, U = torch.linalg.eigh(F)
    s, U = s.flip(0), U.flip(1)
    centred = torch.linalg.eigvalsh(F - torch.outer(mu, mu))
    out = {"F_eig": s.tolist(), "erank": effective_rank(centred),
           "erank_uncentered": effective_rank(s),
           "z_std": (nnf.normalize(z.float(), dim=1).std(0).mean() * z.shape[1] ** 0.5).item()}
    if Wp is not None:
        Wp = Wp.double()
        out["Wp_eig"] = torch.linalg.eigvals(Wp).real.sort(descending=True).values.tolist()
        out["align"] = nnf.cosine_similarity(U, Wp @ U, dim=0).tolist()
        out["asym"] = ((Wp - Wp.T).norm() / Wp.norm().clamp(min=1e-12)).item()
    return out


# collapse (Theorem 2), the repository's one rule (why these thresholds: docs/reference.md, "Has my
# run collapsed?"): the effective rank of the predictor input's centred covariance below 1.3, or
# z_std below 0.1
COLLAPSE_ERANK, COLLAPSE_Z_STD = 1.3, 0.1


def looks_collapsed(erank, z_std):
    return erank < COLLAPSE_ERANK or z_std < COLLAPSE_Z_STD


class CollapseWatch:
    """The collapse warning of a run's log lines: a warning once the run has looked collapsed
    (looks_collapsed) for `lines` log lines in a row, once per streak, and a note when it has looked
    healthy for as many again (a slow predictor can dip and recover). It warns, never stops a run;
    why 3 lines: docs/reference.md, "Has my run collapsed?"."""

    def __init__(self, lines=3):
        self.lines = lines
        # > 0: low log lines in a row; < 0: healthy ones; a warning standing?
        self.streak, self.warned = 0, False

    def line(self, step, erank, z_std, d):
        """What to print for this log line (d: the dimension erank is out of), or None."""
        low = looks_collapsed(erank, z_std)
        self.streak = max(self.streak, 0) + 1 if low else min(self.streak, 0) - 1
        if self.streak == self.lines and not self.warned:
            self.warned = True
            return (f"warning: step {step}: the run looks collapsed: effective rank {erank:.2f} of "
                    f"{d}, z_std {z_std:.3f} for {self.streak} log lines in a row "
                    "(docs/reference.md, 'has my run collapsed?', lists what to try)")
        if self.streak == -self.lines and self.warned:
            self.warned = False
            return (f"note: step {step}: the run recovered: effective rank {erank:.2f}, z_std "
                    f"{z_std:.3f} for {-self.streak} log lines in a row")
        return None
