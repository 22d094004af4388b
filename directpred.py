"""
DirectPred: set the linear predictor in closed form instead of training it.

Tian, Chen, Ganguli, "Understanding self-supervised learning dynamics without contrastive pairs",
ICML 2021 (arXiv 2102.06810), Sec. 5 / Eq. 18, implemented exactly as the authors' code ran it:

    every step:       F_hat <- rho * F_hat + (1 - rho) * mean_i f_i f_i^T   (f: both views' inputs)
    every freq steps: s, U = eigh(F_hat);  s <- max(s, 0) / max(s)
                      p_j = max(s_j ** a + eps, 1e-4)                       (a = 1/2, eps = 0.1)
                      (Table 7's offset c > 0 or < 0: p_j = max(s_j - c, 1e-4) ** a, eps = 0)
                      Wp  = U diag(p) U^T   -> written into the bias-free Linear(d, d) predictor

Note Eq. 18 prints "+ eps * max_j s_j"; the code adds eps after normalising by the max
(compute_w_corr in ssl/real-dataset/byol_trainer.py of github.com/facebookresearch/luckmatters at
commit 671fca5, balance_type "boost_scale"). We follow the code. The first batch initialises F_hat.
Between two sets (freq > 1) Wp is trained by the ordinary optimizer. Under DDP the batch statistics
are summed over all ranks (with their sample counts) before the EMA, so every rank builds the same
F_hat and the same Wp. The two public multi-GPU implementations we know build F_hat from each GPU's
own batch, so each GPU ends up with its own predictor: github.com/varun1423/solo-learn
(solo/methods/direct_pred.py, copied from the authors' code) and
github.com/fmi-basel/implicit-var-reg (solo/methods/directpred.py, Halvagal et al. 2023).

Variants, all in the one class:
- exponent a (a = 1 is DirectSet(1)), offset c inside the root (Table 7: eps = 0, c = +-0.05, +-0.1;
  floored at 1e-4 inside the root, as compute_w_corr's dyn_eps_inside branch; eps, if also given, is
  added after the root);
- center (dyn_zero_mean in the authors' code): EMAs of E[f f^T] and of E[f], and at a set
  F = F_hat - mu_hat mu_hat^T (the paper finds centering hurts; off by default);
- mode "directcopy" (Wang, Chen, Du, Tian 2021, arXiv 2110.04947):
  Wp = F_hat / lambda_max(F_hat) + eps I;
- mode "optimal" (Table 1, "plug in the optimal solution"), the authors' two branches: with M =
  F_hat and M2 = C_hat, the EMA of E[z f^T] (z = the target the prediction of f is compared with),
  and the ridge eps, "solve-as-run": their `solve` branch as it ran: `Q @ (D + eps).pow(-1) @ Q.t()`
  with D the 1-D vector of eigenvalues is a vector, not a matrix, and the vector `inv @ M2` is
  copied into every row of Wp (a rank-1 Wp; under the cosine loss it passes no gradient into the
  network); "solve": the least-squares Wp = M2 (M + eps I)^-1 that branch intends; "minimal-space":
  their `minimal_space` branch, W with M W + W M + eps W = M2 + M2^T;
- feature-dependent Wp (Sec. 5, "6 partitions -> 78.20"), as the authors' code ran it
  (byol_trainer.py above, predictor_reg "partition"): PartitionedPredictor below, n random
  projections, each splitting the batch in two at its mean, one F_hat per side, a sample's Wp the
  mean over the projections.
Also here, at the end: the paper's Fig. 2 diagnostics (eigenvalues of F, alignment of Wp's
eigenvectors, effective rank), which train.py logs for every predictor, trained or closed form.

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


OPTIMAL_RULES = ("solve-as-run", "solve", "minimal-space")  # mode "optimal": the module's docstring


class DirectPred(nn.Module):
    """Running statistics of the predictor input and the rule that turns them into Wp.

    An nn.Module only so that .to(device), state_dict() and load_state_dict() carry F_hat and the
    counters; it has no parameters and is never part of the network's forward pass.
    """

    def __init__(self, dim, rho=0.3, eps=0.1, freq=1, exponent=0.5, offset=0.0, center=False,
                 mode="direct", partitions=1, optimal_rule="solve-as-run"):
        """partitions: K sets of statistics (regions), each with its own F_hat and Wp
        (PartitionedPredictor). optimal_rule: mode "optimal"'s estimator, one of OPTIMAL_RULES (the
        module's docstring)."""
        super().__init__()
        assert mode in ("direct", "directcopy", "optimal"), mode
        assert optimal_rule in OPTIMAL_RULES, optimal_rule
        self.rho, self.eps, self.freq = rho, eps, freq
        self.exponent, self.offset, self.center = exponent, offset, center
        self.mode, self.K = mode, partitions
        self.optimal_rule = optimal_rule
        # (K, d, d) EMA of E[f f^T] per region
        self.register_buffer("F_hat", torch.zeros(partitions, dim, dim))
        if center:
            self.register_buffer("mu_hat", torch.zeros(partitions, dim))  # (K, d) EMA of E[f]
        if mode == "optimal":
            # (K, d, d) EMA of E[z f^T]
            self.register_buffer("C_hat", torch.zeros(partitions, dim, dim))
        # a batch has been accumulated
        self.register_buffer("seen", torch.zeros(partitions, dtype=torch.bool))
        # batches seen; plain ints so that the hot loop never syncs with the device
        self.n_updates = 0
        self.n_sets = 0  # times Wp was written

    def get_extra_state(self):  # the counters travel in state_dict() beside F_hat
        return {"n_updates": self.n_updates, "n_sets": self.n_sets}

    def set_extra_state(self, state):
        self.n_updates, self.n_sets = state["n_updates"], state["n_sets"]

    @torch.no_grad()
    def update(self, f, z=None, region=None):
        """f: (N, d) raw predictor inputs of the local batch (both views); z: (N, d) the targets f's
        predictions are compared with (mode "optimal" only); region: (N, K) 0/1, row n counts
        towards region k's statistics (partitions > 1 only; a row may belong to several regions).
        Returns F_batch (K, d, d), E[f f^T] per region."""
        F_batch = self.accumulate(f, z, region)
        self.n_updates += 1
        return F_batch

    @torch.no_grad()
    def accumulate(self, f, z=None, region=None):
        """update() without the batch counter: tensor work only, so a compiled forward that calls it
        every step (PartitionedPredictor) keeps one graph instead of recompiling on a changed Python
        int. In F_hat's precision whatever the autocast and TF32 settings: fp32, or float64 after
        .double() (an exact reference); under bf16 autocast the sums of f f^T would otherwise be
        rounded to bf16."""
        with full_fp32(f.device.type):
            return self._accumulate(f.detach().to(self.F_hat.dtype), z, region)

    def _accumulate(self, f, z, region):
        N, d = f.shape
        if region is None:  # one region: every row
            region = torch.ones(N, 1, device=f.device, dtype=f.dtype)
        member = region.to(f.dtype)  # (N, K)
        fk = member[:, :, None] * f[:, None]  # (N, K, d): f where the row is in region k, else 0
        # counts (K,), sums of f f^T (K, d, d)
        stats = [member.sum(0), torch.einsum("nki,nj->kij", fk, f)]
        if self.center:
            stats.append(fk.sum(0))  # (K, d) sums of f
        if self.mode == "optimal":
            # (K, d, d) sums of z f^T
            stats.append(torch.einsum("nj,nki->kji", z.detach().to(f.dtype), fk))
        flat = torch.cat([s.flatten() for s in stats])
        # sums and counts over all ranks: the global batch
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flat)
        # a region without samples gets batch statistics 0, as the authors' code
        n = flat[:self.K].clamp(min=1)
        F_batch = flat[self.K:self.K + self.K * d * d].view(self.K, d, d) / n[:, None, None]
        rest = flat[self.K + self.K * d * d:]
        self._ema(self.F_hat, F_batch)
        if self.center:
            self._ema(self.mu_hat, rest[:self.K * d].view(self.K, d) / n[:, None])
            rest = rest[self.K * d:]
        if self.mode == "optimal":
            self._ema(self.C_hat, rest.view(self.K, d, d) / n[:, None, None])
        self.seen.fill_(True)
        return F_batch

    def _ema(self, hat, batch):
        """hat <- rho hat + (1 - rho) batch in every region; the first batch sets it. A region no
        sample fell into has batch 0, so its EMA moves toward 0 (the authors' Accumulator.add_list
        adds a zero matrix)."""
        first = ~self.seen.view(-1, *[1] * (hat.dim() - 1))
        hat.copy_(torch.where(first, batch, self.rho * hat + (1 - self.rho) * batch))

    @torch.no_grad()
    def compute_Wp(self):
        """Wp from the current statistics, in float64 outside autocast. Returns Wp (K, d, d)."""
        with torch.autocast(self.F_hat.device.type, enabled=False):
            F = self.F_hat.double()
            # dyn_zero_mean: the EMA'd correlation minus the outer product of the EMA'd mean
            if self.center:
                F = F - self.mu_hat.double()[:, :, None] * self.mu_hat.double()[:, None, :]
            eye = torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
            # a diverged run's nan/inf F_hat would make eigh raise; its Wp is then eps I, and
            # train.py stops the run (with one line) at its next check, without a host sync here
            F = torch.where(torch.isfinite(F).flatten(1).all(1)[:, None, None], F, eye)
            if self.mode == "optimal":
                return self._optimal(F)
            if self.mode == "directcopy":  # Wp = F / lambda_max + eps I
                # (K, 1, 1)
                lam_max = torch.linalg.eigvalsh(F)[:, -1].clamp(min=1e-12)[:, None, None]
                return F / lam_max + self.eps * eye
            s, U = torch.linalg.eigh(F)  # ascending eigenvalues, orthonormal columns U
            s = s.clamp(min=0)
            # max-normalise: the top eigenvalue becomes 1
            s = s / s.max(-1, keepdim=True).values.clamp(min=1e-12)
            if self.offset:  # Table 7's offset inside the root, floored before it: compute_w_corr's
                # dyn_eps_inside branch, (s + dyn_eps).clamp(1e-4).pow(1 / 2) with dyn_eps = -c, so
                # the smallest p_j is 1e-2 there
                p = (s - self.offset).clamp(min=1e-4).pow(self.exponent) + self.eps
            else:  # the branch of every other table: the root, then eps, then the floor
                p = (s.pow(self.exponent) + self.eps).clamp(min=1e-4)
            return (U * p[:, None, :]) @ U.mT  # U diag(p) U^T

    def _optimal(self, M):
        """Table 1's plug-in Wp from M = E[f f^T] and M2 = E[z f^T] (EMAs), ridge eps, as the
        authors' branches of regulate_predictor (byol_trainer.py at luckmatters@671fca5);
        eigenvalues of M clamped at 0, as theirs."""
        M2 = self.C_hat.double()  # (K, d, d): rows index the target z, columns the input f
        s, Q = torch.linalg.eigh(M)
        s = s.clamp(min=0)  # (K, d)
        # M W + W M + eps W = M2 + M2^T, solved in M's eigenbasis
        if self.optimal_rule == "minimal-space":
            return Q @ (Q.mT @ (M2 + M2.mT) @ Q / (s[:, :, None] + s[:, None, :] + self.eps)) @ Q.mT
        inv = 1 / (s + self.eps)  # (K, d)
        if self.optimal_rule == "solve":  # least squares: Wp (M + eps I) = M2
            return M2 @ (Q * inv[:, None, :]) @ Q.mT
        # "solve-as-run": `inv = Q @ inv @ Q.t()` with inv 1-D gives the vector Q (Q inv); `w = inv
        # @ M2` (their default solve_direction "left") the vector M2^T Q (Q inv); `weight.copy_(w)`
        # writes w into every row
        v = torch.einsum("kij,kj->ki", Q, torch.einsum("kij,kj->ki", Q, inv))
        # (K, d, d), each row w
        return torch.einsum("kij,ki->kj", M2, v)[:, None, :].expand_as(M2).contiguous()

    @torch.no_grad()
    def set_predictor(self, weight):
        """Call once per optimizer step, after it. Writes Wp into `weight` ((d, d), or (K, d, d) for
        partitions) on updates 1, 1+freq, 1+2freq, ...; returns whether it did. Between two sets,
        mode "optimal" with rule "minimal-space" symmetrises the SGD-trained Wp (the authors'
        dyn_sym); every other rule leaves it."""
        if (self.n_updates - 1) % self.freq != 0:
            if self.mode == "optimal" and self.optimal_rule == "minimal-space":
                weight.copy_(0.5 * (weight + weight.mT))
            return False
        weight.copy_(self.compute_Wp().view(weight.shape).to(weight.dtype))
        self.n_sets += 1
        return True


class PartitionedPredictor(nn.Module):
    """Feature-dependent Wp (Sec. 5), as the authors' code ran it: n fixed random projections r_i
    (d,) of the predictor input f. In each view's batch, f is on the positive side of projection i
    when r_i . f >= the batch mean of r_i . f. Each projection keeps two EMA correlations, one per
    side (2n regions of one DirectPred), updated with both views' samples BEFORE predicting; then
    every side's Wp is set by the DirectPred rule, and a sample's prediction is the mean over the
    projections of the Wp of its side: p = (1/n) sum_i Wp_{i, side_i(f)} f. The Wp are constants of
    the step (no parameters, nothing trained): the gradient flows through them into f. Under DDP the
    thresholds are global-batch means and the statistics are summed over the ranks
    (DirectPred.update).
    """

    def __init__(self, dim, partitions, rho=0.3, eps=0.1, exponent=0.5, offset=0.0, center=False):
        super().__init__()
        self.n = partitions
        # regions: (i, side)
        self.dp = DirectPred(dim, rho, eps, 1, exponent, offset, center, partitions=2 * partitions)
        # (d, n), fixed: the r_i, Gaussian
        self.register_buffer("directions", torch.randn(dim, partitions))

    @torch.no_grad()
    def sides(self, f):
        """(N, d) one view's batch -> (N, 2n) 0/1: columns 2i and 2i+1 = positive / negative side of
        projection i. In fp32 (at least) whatever the autocast and TF32 settings: a bf16 threshold
        would move samples across it."""
        dtype = torch.promote_types(f.dtype, torch.float32)
        with full_fp32(f.device.type):
            proj = f.detach().to(dtype) @ self.directions.to(dtype)  # (N, n)
        # (2, n): sums and counts
        total = torch.stack([proj.sum(0), torch.full_like(proj[0], len(proj))])
        # the threshold is the mean over the global batch
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(total)
        pos = proj >= total[0] / total[1]  # (N, n)
        return torch.stack([pos, ~pos], 2).flatten(1).float()  # (N, 2n)

    def forward(self, *views):
        """views: each (N, d), the views of one step (train.py passes both). Returns one prediction
        (N, d) per view."""
        member = [self.sides(f) for f in views]
        if self.training:  # statistics first, with every view's samples: this batch shapes its Wp
            # (accumulate, not update: no Python counter, compile-friendly)
            self.dp.accumulate(torch.cat(views), region=torch.cat(member))
        # (2n, d, d), every side's Wp by the DirectPred rule
        Wp = self.dp.compute_Wp().to(views[0].dtype)
        return tuple(torch.einsum("nk,kij,nj->ni", m.to(f.dtype), Wp, f) / self.n
                     for m, f in zip(member, views))


# -----------------------------------------------------------------------------
# the paper's Fig. 2 diagnostics of the predictor's input f and of Wp, for any predictor (train.py
# logs them; its collapse rule reads erank and z_std)


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
