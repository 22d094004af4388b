"""
DirectPred: set the linear predictor in closed form instead of training it.

Tian, Chen, Ganguli, "Understanding self-supervised learning dynamics without contrastive pairs",
ICML 2021 (arXiv 2102.06810), Sec. 5 / Eq. 18, implemented exactly as the authors' code ran it:

    every step:       F_hat <- rho * F_hat + (1 - rho) * mean_i f_i f_i^T     (f: predictor input, both views)
    every freq steps: s, U = eigh(F_hat);  s <- max(s, 0) / max(s)
                      p_j = (s_j - c)_+ ** a + eps,  p_j <- max(p_j, 1e-4)     (a = 1/2, c = 0, eps = 0.1)
                      Wp  = U diag(p) U^T   -> written into the bias-free Linear(d, d) predictor

Note Eq. 18 prints "+ eps * max_j s_j"; the code adds eps after normalising by the max. We follow the code.
Between two sets (freq > 1) Wp is trained by the ordinary optimizer. Under DDP the batch correlation is
averaged over all ranks before the EMA, so every rank builds the same F_hat and the same Wp (the two public
forks of the original code skip this, and each GPU ends up with its own predictor).

Variants (one formula): exponent a (a = 1 is DirectSet(1)), offset c inside the root (Table 7),
centering of F (the paper finds it hurts), and DirectCopy (Wang et al. 2021, arXiv 2110.04947):
Wp = F_hat / lambda_max(F_hat) + eps I, no eigendecomposition of the result needed.

Usage (copy this file; no side effects at import):
    dp = DirectPred(dim=128, rho=0.3, eps=0.1, freq=1).to(device)
    f1, f2 = projector(backbone(x1)), projector(backbone(x2))   # (B, d) each
    dp.update(torch.cat([f1, f2]))                              # before backward
    loss.backward(); optimizer.step()
    dp.set_predictor(predictor.weight)                          # after the step; acts every `freq` calls
"""
import torch
import torch.distributed as dist
import torch.nn as nn


class DirectPred(nn.Module):
    """Running correlation F_hat of the predictor input and the rule that turns it into Wp.

    An nn.Module only so that .to(device), state_dict() and load_state_dict() carry F_hat and the counter;
    it has no parameters and is never part of the network's forward pass.
    """

    def __init__(self, dim, rho=0.3, eps=0.1, freq=1, exponent=0.5, offset=0.0, center=False, mode="direct"):
        super().__init__()
        assert mode in ("direct", "directcopy"), mode
        self.rho, self.eps, self.freq = rho, eps, freq
        self.exponent, self.offset, self.center, self.mode = exponent, offset, center, mode
        self.register_buffer("F_hat", torch.zeros(dim, dim))  # (d, d) EMA of E[f f^T]
        self.n_updates = 0  # batches seen; plain ints so that the hot loop never syncs with the device
        self.n_sets = 0  # times Wp was written

    def get_extra_state(self):  # the counters travel in state_dict() beside F_hat
        return {"n_updates": self.n_updates, "n_sets": self.n_sets}

    def set_extra_state(self, state):
        self.n_updates, self.n_sets = state["n_updates"], state["n_sets"]

    @torch.no_grad()
    def update(self, f):
        """f: (N, d) raw predictor inputs (both views of the local batch). Updates F_hat; returns F_batch."""
        f = f.detach().float()
        F_batch = f.T @ f / f.shape[0]  # (d, d) E[f f^T] over the local batch
        if self.center:  # E[f f^T] - E[f] E[f]^T, with both moments averaged over ranks first
            mu = f.mean(0)  # (d,)
            F_batch = torch.cat([F_batch, mu[None]])  # (d+1, d): reduce both in one collective
        if dist.is_available() and dist.is_initialized():  # equal local batches: the mean of means is the global mean
            dist.all_reduce(F_batch)
            F_batch /= dist.get_world_size()
        if self.center:
            F_batch, mu = F_batch[:-1], F_batch[-1]
            F_batch = F_batch - torch.outer(mu, mu)
        if self.n_updates == 0:  # the first batch initialises F_hat (as in the original code)
            self.F_hat.copy_(F_batch)
        else:
            self.F_hat.mul_(self.rho).add_(F_batch, alpha=1 - self.rho)
        self.n_updates += 1
        return F_batch

    @torch.no_grad()
    def compute_Wp(self):
        """Wp from the current F_hat, in float64 outside autocast. Returns (Wp (d, d), p (d,) or None)."""
        with torch.autocast(self.F_hat.device.type, enabled=False):
            F = self.F_hat.double()
            if self.mode == "directcopy":  # Wp = F / lambda_max + eps I (DirectCopy's normalisation)
                lam_max = torch.linalg.eigvalsh(F)[-1].clamp(min=1e-12)
                return F / lam_max + self.eps * torch.eye(F.shape[0], dtype=F.dtype, device=F.device), None
            s, U = torch.linalg.eigh(F)  # ascending eigenvalues, orthonormal columns U
            s = s.clamp(min=0)
            s = s / s.max().clamp(min=1e-12)  # max-normalise: the top eigenvalue becomes 1
            p = (s - self.offset).clamp(min=0).pow(self.exponent) + self.eps
            p = p.clamp(min=1e-4)
            return (U * p) @ U.T, p  # U diag(p) U^T

    @torch.no_grad()
    def set_predictor(self, weight):
        """Call once per optimizer step, after it. Writes Wp into `weight` (d, d) on update 1, 1+freq, 1+2freq, ..."""
        if (self.n_updates - 1) % self.freq != 0:
            return False
        Wp, _ = self.compute_Wp()
        weight.copy_(Wp.to(weight.dtype))
        self.n_sets += 1
        return True
