"""
Non-contrastive self-supervised learning (BYOL, SimSiam) with a trained or a closed-form
(DirectPred) predictor.

One GPU / CPU:
    python train.py --dataset cifar10 --predictor direct
DDP, e.g. 8 GPUs on one node (--batch-size is the global batch, split over the ranks):
    torchrun --standalone --nproc_per_node=8 train.py --dataset imagenet --data-dir /data/imagenet \
        --predictor direct
Resume where a run stopped (same flags, plus --resume):
    python train.py --dataset cifar10 --predictor direct --resume

Papers: Tian, Chen, Ganguli, ICML 2021 (arXiv 2102.06810), "Understanding self-supervised learning
dynamics without contrastive pairs" (DirectPred); Grill et al. 2020 (BYOL); Chen & He 2021
(SimSiam). The file reads top to bottom: the method's flags, augmentation, model, loss and
optimizer, the step, then main(), the training loop. The datasets are data.py's; the run's own
flags, DDP, resuming, precision, checkpoints and upkeep (the log, the bar, the guards)
plumbing.py's; the closed-form predictors, the Fig. 2 diagnostics and the collapse rule
directpred.py's. eval_linear.py imports the model and augmentation from here, so importing this file
trains nothing.
"""
import argparse
import copy
import math
import sys

import torch
import torch.nn as nn
# "F" is the paper's correlation matrix, so functional gets another name
import torch.nn.functional as nnf

from data import DATASETS, KnnMonitor, epoch_batches, normalisation, split_val_error, train_set
from directpred import (CLOSED_FORM, OPTIMAL_RULES, CollapseWatch, OptimalPredictor,
                        PartitionedPredictor, diagnostics, feature_stats)
from plumbing import (FRACTION, POSITIVE, ArgumentParser, Run, RunError, add_run_flags, at_least,
                      choose_bf16, end_distributed, flags_error, init_distributed, load_run,
                      out_dir_error, precision_and_layout, resolve_resume, run_state,
                      same_on_every_rank, seed_all, seed_of, to_device_layout, torchrun_world_size,
                      wrap)

# -----------------------------------------------------------------------------
# config: one flag per knob; flag name == config key == checkpoint["config"] key


def get_parser():
    """The flags. Each declares where it is declared: valid=(test, what it must be), checked before
    any work; needs=(predictors): it means nothing for the others; free=True: it may differ on
    --resume (it does not change what is computed)."""
    P = ArgumentParser(description=__doc__.split("\n\n")[0],
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = P.add_argument
    a("--preset", default="none", choices=["none", *PRESETS], free=True,
      help="the paper's setups; given flags win")
    # data
    a("--dataset", default="cifar10", choices=list(DATASETS),
      help="fake = random images made in memory (tests)")
    a("--data-dir", default="data", free=True,
      help="dataset root (layouts: docs/reference.md, Data)")
    a("--split", default="test", choices=["test", "val"],
      help="what the kNN monitor reports on: the test split, or val = 10k training images held out "
      "(by class, fixed seed), not trained on, to choose knobs on")
    a("--img-size", type=int, default=0, valid=(lambda v: v == 0 or v >= 8,
                                                "0 (the dataset's own size) or >= 8 "
      "pixels"), help="crop size; 0 = the dataset's own size (224 for imagenet/imagefolder)")
    a("--aug", default="auto", choices=["auto", *AUG],
      help="augmentation preset (AUG); auto = by dataset")
    a("--crop-min", type=float, default=0.08, valid=(lambda v: 0 < v <= 1, "in (0, 1]"),
      help="RandomResizedCrop minimum area fraction")
    a("--jitter", type=float, default=1.0, valid=at_least(0),
      help="SimCLR colour strength s x preset ranges; 0 = none")
    a("--workers", type=int, default=8, valid=at_least(0), free=True,
      help="DataLoader workers per rank (streamed sets only)")
    a("--fake-size", type=int, default=1024, valid=at_least(2),
      help="number of images of --dataset fake")
    # model
    a("--arch", default="resnet18", choices=list(ARCHS),
      help="backbone (the paper: resnet18; Table 9: resnet50)")
    a("--width", type=int, default=64, valid=at_least(1),
      help="channels of the first ResNet stage (64 = standard)")
    a("--stem", default="auto", choices=["auto", "cifar", "imagenet"],
      help="cifar = 3x3 stride-1 conv1, no maxpool")
    a("--proj-hidden", type=int, default=512, valid=at_least(1), help="projector hidden size")
    a("--proj-dim", type=int, default=128, valid=at_least(1),
      help="projector output size d (the predictor is d x d)")
    a("--bn-affine", type=int, default=0, choices=[0, 1],
      help="affine BN in projector/predictor MLPs (paper: 0)")
    a("--sync-bn", type=int, default=1, choices=[0, 1],
      help="SyncBatchNorm under DDP on CUDA (global-batch BN)")
    # predictor
    a("--predictor", default="direct", choices=["none", "linear", "mlp", *CLOSED_FORM],
      help="none = identity; linear/mlp = trained; direct/directcopy/optimal = closed form "
           "(directpred.py)")
    a("--pred-hidden", type=int, default=512, valid=at_least(1),
      help="hidden size of the 2-layer (mlp) predictor")
    a("--pred-bn", type=int, default=1, choices=[0, 1], needs=("mlp",),
      help="BatchNorm between the 2-layer predictor's layers (1: the authors' default MLP head; 0: "
      "none, their symmetric branch's comment)")
    a("--pred-bias", type=int, default=0, choices=[0, 1],
      help="bias in the linear predictor (Table 2)")
    a("--linear-bn", type=int, default=0, choices=[0, 1], needs=("linear",),
      help="BatchNorm (affine per --bn-affine) on the trained linear predictor's input: the linear "
      "head the authors' default config builds (with --pred-bias 1; docs/fidelity.md)")
    a("--sym-wp", type=int, default=0, choices=[0, 1],
      help="Wp <- (Wp + Wp^T)/2 after every step; mlp: tie layer 2 = layer 1^T (Table 3)")
    a("--pred-lr-ratio", type=float, default=1.0, valid=POSITIVE,
      help="predictor lr = ratio x lr (alpha_p, Fig. 6)")
    a("--rho", type=float, default=0.3, valid=FRACTION, needs=tuple(CLOSED_FORM),
      help="DirectPred: EMA rate of F_hat (F_hat <- rho F_hat + (1-rho) F)")
    a("--eps", type=float, default=0.1, valid=at_least(0), needs=tuple(CLOSED_FORM),
      help="DirectPred: added to p_j after max-normalisation (directcopy: to the diagonal; "
      "optimal: the ridge added to E[f f^T]'s eigenvalues)")
    a("--freq", type=int, default=1, valid=at_least(1), needs=tuple(CLOSED_FORM),
      help="DirectPred: set Wp each freq steps, else SGD")
    a("--exponent", type=float, default=0.5, valid=POSITIVE, needs=("direct",),
      help="DirectPred: p_j = s_j^a; 1: DirectSet")
    a("--offset", type=float, default=0.0, valid=(lambda v: v < 1,
                                                  "< 1 (the eigenvalues are max-normalised to 1)"),
      needs=("direct",), help="DirectPred: p_j = max(s_j - c, 1e-4)^exponent (Table 7; --eps 0)")
    a("--center", type=int, default=0, choices=[0, 1], needs=("direct", "directcopy"),
      help="DirectPred: F = the EMA of E[f f^T] minus the outer product of the EMA of E[f] (the "
      "authors' dyn_zero_mean)")
    a("--optimal-rule", default="solve-as-run", choices=list(OPTIMAL_RULES), needs=("optimal",),
      help="Table 1's plug-in: the authors' solve branch as it ran (a rank-1 Wp), the least "
      "squares it intends, or their minimal_space branch (directpred.py)")
    a("--partitions", type=int, default=1, valid=at_least(1), needs=("direct",),
      help="DirectPred: feature-dependent Wp (Sec. 5): n random projections split the batch at "
      "their mean, one F_hat per side (the authors' code); 1 = one Wp")
    # target and loss
    a("--ema", type=float, default=0.996, valid=FRACTION,
      help="target EMA momentum tau; 0 = SimSiam (target = online net)")
    a("--ema-schedule", default="const", choices=["const", "cosine"],
      help="const (paper) or cosine to 1 (BYOL)")
    a("--target-init", default="copy", choices=["copy", "random"],
      help="EMA target starts as a copy of the online net (BYOL) or random (the paper's released "
      "code)")
    a("--stop-grad", type=int, default=1, choices=[0, 1],
      help="0: gradient flows into the target branch (needs --ema 0; Theorem 2's negative control, "
      "collapses)")
    a("--loss", default="cosine", choices=["cosine", "l2"],
      help="cosine: 2 - 2cos(p, z) (normalised, Bao et al.'s analysis); l2: 1/2 ||p - z||^2 (Tian "
      "et al.'s linear theory, Sec. 3)")
    a("--symmetric", type=int, default=1, choices=[0, 1],
      help="loss over both view pairings, summed (0: p1 vs z2 only)")
    # optimisation
    a("--optimizer", default="sgd", choices=["sgd", "lars"],
      help="sgd (the paper's runs) or lars (BYOL's ImageNet)")
    a("--lr", type=float, default=0.03, valid=POSITIVE,
      help="used as given: scale it yourself (base x batch / 256)")
    a("--lr-schedule", default="const", choices=["const", "cosine"],
      help="const (paper) or cosine decay")
    a("--warmup-epochs", type=float, default=0.0, valid=at_least(0), help="linear lr warmup")
    a("--momentum", type=float, default=0.9, valid=FRACTION, help="SGD / LARS momentum")
    a("--wd", type=float, default=4e-4, valid=at_least(0),
      help="trunk weight decay eta_s (paper: 4e-4, all weights)")
    a("--pred-wd", type=float, default=None, valid=at_least(0),
      help="predictor weight decay eta_p (Table 5); default: --wd")
    a("--batch-size", type=int, default=128, valid=(lambda v: v >= 2,
                                                    ">= 2 (BatchNorm needs two samples)"),
      help="global batch size, split evenly over DDP ranks")
    a("--epochs", type=int, default=100, valid=at_least(1),
      help="passes over the data (paper: 100; Table 8: 300, 500)")
    a("--max-steps", type=int, default=0, valid=(lambda v: v >= 0, ">= 0 (0 = run --epochs)"),
      free=True, help="stop after this many steps (0: --epochs); schedules span --epochs")
    add_run_flags(P)  # the run's own: out-dir, resume, logs, device, precision (plumbing.py)
    return P


# The presets; each knob's source (the paper, the authors' code, SimSiam, BYOL) is in
# docs/reference.md, Presets. The flag defaults are the paper's STL-10 / CIFAR-10 setup (Sec. 6).
PRESETS = {
    # the paper's setup with the authors' code's random target init (BYOL copies the online net)
    # (fp32 in the paper's presets, as the authors ran: --bf16 1 is a speed option)
    "paper-stl10": dict(dataset="stl10", predictor="direct", target_init="random", bf16="0"),
    "paper-cifar10": dict(dataset="cifar10", predictor="direct", target_init="random", bf16="0"),
    # Table 9's ImageNet rows; lr, wd and EMA are not in the paper: SimSiam's and BYOL's recipes
    "imagenet-sgd-60": dict(dataset="imagenet", arch="resnet50", proj_hidden=4096, proj_dim=256,
                            pred_hidden=4096, bn_affine=1, optimizer="sgd", lr=0.05, wd=1e-4,
                            lr_schedule="cosine", batch_size=256, symmetric=0, epochs=60, ema=0.996,
                            ema_schedule="cosine", bf16="0"),
    "imagenet-lars-300": dict(dataset="imagenet", arch="resnet50", proj_hidden=4096, proj_dim=256,
                              pred_hidden=4096, bn_affine=1, optimizer="lars", lr=3.2, wd=1.5e-6,
                              lr_schedule="cosine", warmup_epochs=10, batch_size=4096, symmetric=1,
                              epochs=300, ema=0.99, ema_schedule="cosine", bf16="0"),
    # SimSiam's CIFAR-10 recipe (arXiv 2011.10566, Sec. A); not a row of this paper
    "simsiam-cifar": dict(dataset="cifar10", predictor="mlp", ema=0.0, proj_hidden=2048,
                          proj_dim=2048, pred_hidden=512, bn_affine=1, lr=0.06, wd=5e-4,
                          lr_schedule="cosine", batch_size=512, epochs=800),
}


def parse_config(argv=None):
    """Flags -> config dict. A --preset sets defaults first, so flags given explicitly win."""
    P = get_parser()
    preset = P.parse_known_args(argv)[0].preset
    if preset != "none":
        P.set_defaults(**PRESETS[preset])
    cfg = vars(P.parse_args(argv))
    resolve_resume(cfg)  # --resume auto: True where out_dir holds a checkpoint
    if cfg["pred_wd"] is None:
        cfg["pred_wd"] = cfg["wd"]
    return cfg


def config_error(cfg, P, world_size=None):
    """The first out-of-range flag or meaningless combination of flags, as one line naming the flag,
    or None (checked before any work). P: get_parser(); world_size: the DDP ranks (None: torchrun's,
    1 without it)."""
    world_size = world_size or torchrun_world_size()
    err = flags_error(cfg, P, world_size)  # ranges, the batch over the ranks, --predictor's flags
    if err:
        return err
    defaults = vars(P.parse_args([]))  # a flag left at its default is never an error
    # rank 0 alone: 1.28M images
    if world_size > 1 and cfg["eval_every"] and DATASETS[cfg["dataset"]].streamed:
        return (f"--eval-every runs on rank 0 only; on --dataset {cfg['dataset']} under DDP the "
                "other ranks would wait past --ddp-timeout. Evaluate the checkpoint with "
                "eval_linear.py instead")
    if cfg["partitions"] > 1 and (cfg["freq"] != 1 or cfg["pred_bias"]):
        return ("--partitions > 1 sets every side's Wp at every step (no --freq, no --pred-bias), "
                "as the authors' code")
    if cfg["predictor"] == "none":
        for k in ("pred_bias", "sym_wp", "pred_lr_ratio"):
            if cfg[k] != defaults[k]:
                return f"--{k.replace('_', '-')} needs a predictor (--predictor is none)"
    if cfg["pred_bias"] and cfg["predictor"] == "mlp":
        return "--pred-bias is for the linear predictors (the mlp predictor has its biases)"
    if not cfg["stop_grad"] and cfg["ema"] > 0:
        return "--stop-grad 0 needs --ema 0 (an EMA target has no gradient to stop)"
    if cfg["target_init"] == "random" and cfg["ema"] == 0:
        return ("--target-init random needs --ema > 0 (with --ema 0 the target is the online "
                "network)")
    if cfg["split"] == "val" and not DATASETS[cfg["dataset"]].val:
        return split_val_error()
    return None


# -----------------------------------------------------------------------------
# augmentation: per-sample random parameters, batched on the device (the recipes of Tian et al.'s
# released code for CIFAR / STL-10; BYOL's, arXiv 2006.07733 App. B, for ImageNet)

# blur_p / solarize_p: (view 1, view 2), BYOL's asymmetric recipe; blur kernel = 10% of the crop
AUG = {
    "cifar": dict(jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=(0.0, 0.0),
                  solarize_p=(0.0, 0.0)),
    "stl10": dict(jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, gray_p=0.2, blur_p=(1.0, 1.0),
                  solarize_p=(0.0, 0.0)),
    "imagenet": dict(jitter=(0.4, 0.4, 0.2, 0.1), jitter_p=0.8, gray_p=0.2, blur_p=(1.0, 0.1),
                     solarize_p=(0.0, 0.2)),
}


def aug_of(cfg):
    """The run's augmentation: --aug's preset (auto: the dataset's), its colour ranges scaled by
    --jitter s (SimCLR's colour strength; s = 0 skips the op and its random draws)."""
    aug = AUG[DATASETS[cfg["dataset"]].aug if cfg["aug"] == "auto" else cfg["aug"]]
    return dict(aug, jitter=tuple(cfg["jitter"] * t for t in aug["jitter"]),
                jitter_p=aug["jitter_p"] * (cfg["jitter"] > 0))


def rand(gen, *shape, lo=0.0, hi=1.0):
    """Uniform [lo, hi) on the generator's device."""
    return torch.rand(*shape, generator=gen, device=gen.device) * (hi - lo) + lo


def crop_params(B, H, W, scale, gen, ratio=(3 / 4, 4 / 3)):
    """One RandomResizedCrop box and flip per image, drawn like torchvision's
    RandomResizedCrop.get_params: 10 tries of (area fraction ~ U(scale), log aspect ratio ~ U(log
    ratio)), the first that fits, else the centre crop clamped to the ratio range. Returns (i, j, h,
    w, flip), each (B,): top, left, height, width in pixels; flip in {-1, 1}."""
    area = rand(gen, B, 10, lo=scale[0], hi=scale[1]) * H * W
    logr = rand(gen, B, 10, lo=math.log(ratio[0]), hi=math.log(ratio[1]))
    w = torch.sqrt(area * torch.exp(logr)).round()
    h = torch.sqrt(area / torch.exp(logr)).round()
    ok = (w > 0) & (w <= W) & (h > 0) & (h <= H)  # (B, 10)
    first = ok.float().argmax(1, keepdim=True)  # first valid try per image
    w, h, ok = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0], ok.any(1)
    # fallback: centre crop clamped to the ratio range
    cw = min(W, round(H * ratio[1])) if W / H > ratio[1] else W
    ch = min(H, round(W / ratio[0])) if W / H < ratio[0] else H
    w, h = torch.where(ok, w, torch.full_like(w, cw)), torch.where(ok, h, torch.full_like(h, ch))
    i = torch.floor(rand(gen, B) * (H - h + 1))  # top, as torch.randint(0, H - h + 1)
    j = torch.floor(rand(gen, B) * (W - w + 1))  # left
    i, j = torch.where(ok, i, ((H - h) / 2).floor()), torch.where(ok, j, ((W - w) / 2).floor())
    flip = torch.where(rand(gen, B) < 0.5, -1.0, 1.0)
    return i, j, h, w, flip


def resized_crop(x, i, j, h, w, flip, size):
    """Each image's box (i, j, h, w), resized to (size, size) by bilinear sampling
    (align_corners=False, as torchvision's resize of the cropped box), mirrored where flip = -1. x:
    (B, C, H, W) float -> (B, C, size, size). One grid_sample for the batch; it differs from
    cropping then resizing only at the box's outer half pixel when upsampling (it reads the
    neighbouring pixels there, the crop clamps to its edge) and by skipping antialiasing when
    downsampling (docs/reference.md, Data)."""
    B, _, H, W = x.shape
    # affine map from output coords in [-1, 1] to input coords in [-1, 1] (align_corners=False)
    theta = torch.zeros(B, 2, 3, device=x.device)
    theta[:, 0, 0], theta[:, 0, 2] = flip * w / W, (2 * j + w) / W - 1
    theta[:, 1, 1], theta[:, 1, 2] = h / H, (2 * i + h) / H - 1
    grid = nnf.affine_grid(theta, (B, x.shape[1], size, size), align_corners=False)
    return nnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gray(x):
    """(B, 3, H, W) -> (B, 1, H, W), ITU-R 601-2 luma as torchvision's rgb_to_grayscale."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def adjust_hue(x, shift):
    """Rotate hue by shift (B,) in [-0.5, 0.5] turns, through HSV like torchvision's adjust_hue."""
    r, g, b = x.unbind(1)
    maxc, minc = x.max(1).values, x.min(1).values
    v, delta = maxc, maxc - minc
    s = delta / maxc.clamp(min=1e-8)
    d = delta.clamp(min=1e-8)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2 + (b - r) / d,
                                                        4 + (r - g) / d))
    h = torch.where(delta > 0, h / 6 % 1.0, torch.zeros_like(h))
    h = (h + shift[:, None, None]) % 1.0
    # (B, 3, H, W): HSV -> RGB without a lookup table
    k = torch.stack([(n + h * 6) % 6 for n in (5, 3, 1)], 1)
    return v[:, None] - v[:, None] * s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1)


def jitter_params(B, strength, p, gen):
    """torchvision ColorJitter(b, c, s, h)'s random draws, one set per image, applied with
    probability p. Returns (on (B,) bool, factors: brightness, contrast, saturation (B,) each in
    [max(0, 1 - t), 1 + t] and hue shift (B,) in [-h, h], order (B, 4): each image's own random
    permutation of the four ops)."""
    bs, cs, ss, hs = strength
    on = rand(gen, B) < p
    factors = [rand(gen, B, lo=max(0, 1 - t), hi=1 + t) for t in (bs, cs, ss)]
    factors.append(rand(gen, B, lo=-hs, hi=hs))
    order = rand(gen, B, 4).argsort(1)  # (B, 4) a random permutation of the ops per image
    return on, factors, order


def apply_jitter(x, on, factors, order):
    """ColorJitter with given per-image parameters (jitter_params), batched: at each of the 4 slots
    every image does its own op, as torchvision's functional adjust_brightness / contrast /
    saturation / hue would on it alone. x: (B, C, H, W) in [0, 1]; saturation and hue need C == 3
    (torchvision leaves 1-channel images unchanged)."""
    C = x.shape[1]
    for slot in range(4):
        for op in range(4 if C == 3 else 2):
            # (B, 1, 1, 1) images doing op now
            m = (on & (order[:, slot] == op))[:, None, None, None]
            f = factors[op][:, None, None, None]
            if op == 0:  # brightness
                y = x * f
            elif op == 1:  # contrast: blend with the mean grey level of the image
                y = f * x + (1 - f) * (gray(x) if C == 3 else x).mean((1, 2, 3), keepdim=True)
            elif op == 2:  # saturation: blend with the grey image
                y = f * x + (1 - f) * gray(x)
            else:
                y = adjust_hue(x, factors[3])
            x = torch.where(m, y.clamp(0, 1), x)
    return x


def solarize(x):
    """Invert the pixels at or above 0.5 (torchvision's solarize with threshold 0.5, on [0, 1]
    images)."""
    return torch.where(x < 0.5, x, 1 - x)


def gaussian_blur(x, sigma, ksize):
    """Per-image Gaussian blur, sigma: (B,). Separable, reflect padding (as torchvision's
    GaussianBlur)."""
    B, C, H, W = x.shape
    t = torch.arange(ksize, device=x.device, dtype=x.dtype) - ksize // 2
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    # (B*C, ksize), one kernel per channel of each image
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)
    y = nnf.pad(x.reshape(1, B * C, H, W), (ksize // 2,) * 4, mode="reflect")
    y = nnf.conv2d(y, k[:, None, None, :], groups=B * C)  # horizontal
    y = nnf.conv2d(y, k[:, None, :, None], groups=B * C)  # vertical
    return y.view(B, C, H, W)


def augment(x, aug, view, gen, size, scale, mean, std, crop=True):
    """One view of a batch. x: (B, C, H, W) uint8 on the device -> normalised float (B, C, size,
    size). mean, std: (C, 1, 1) tensors on the device (made once, outside the loop: no
    host-to-device copy per step). Every image draws its own crop, flip, jitter, grey, blur and
    solarize decisions from `gen`."""
    x = x.float() / 255
    B, C = x.shape[:2]
    if crop:  # in-memory sets: crop + flip here; streamed sets arrive cropped and only flip here
        x = resized_crop(x, *crop_params(B, *x.shape[2:], scale, gen), size)
    else:
        x = torch.where((rand(gen, B) < 0.5)[:, None, None, None], x.flip(3), x)
    # an op with probability 0 is skipped, with no draws from gen (as blur/solarize below)
    if aug["jitter_p"] > 0:
        x = apply_jitter(x, *jitter_params(B, aug["jitter"], aug["jitter_p"], gen))
    if C == 3 and aug["gray_p"] > 0:
        x = torch.where((rand(gen, B) < aug["gray_p"])[:, None, None, None], gray(x).expand_as(x),
                        x)
    if aug["blur_p"][view] > 0:
        ksize = int(0.1 * size) // 2 * 2 + 1  # 9 at 96 px (STL-10), 23 at 224 px (BYOL)
        y = gaussian_blur(x, rand(gen, B, lo=0.1, hi=2.0), ksize)
        x = torch.where((rand(gen, B) < aug["blur_p"][view])[:, None, None, None], y, x)
    if aug["solarize_p"][view] > 0:
        x = torch.where((rand(gen, B) < aug["solarize_p"][view])[:, None, None, None], solarize(x),
                        x)
    return (x - mean) / std


def step_seed(seed, step, rank):
    """Seed of the augmentation RNG for one step of one rank: resume replays the same views, ranks
    differ."""
    return seed_of(seed, step, rank)


# -----------------------------------------------------------------------------
# model: ResNet with torchvision's parameter names, projector, predictor


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and inplanes == planes else \
            nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False),
                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        # stride on the 3x3 (torchvision's "v1.5")
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None if stride == 1 and inplanes == planes * 4 else \
            nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                          nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet34": (BasicBlock, [3, 4, 6, 3]),
         "resnet50": (Bottleneck, [3, 4, 6, 3])}


class ResNet(nn.Module):
    """torchvision's ResNet without fc (state dict keys match torchvision.models.resnetXX, fc
    aside). stem 'cifar': 3x3 stride-1 conv1 and no maxpool, for 32 px images (where the ImageNet
    stem's downsampling loses accuracy)."""

    def __init__(self, arch="resnet18", width=64, stem="imagenet", in_chans=3):
        super().__init__()
        block, layers = ARCHS[arch]
        cifar = stem == "cifar"
        self.conv1 = nn.Conv2d(in_chans, width, 3 if cifar else 7, 1 if cifar else 2,
                               1 if cifar else 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.Identity() if cifar else nn.MaxPool2d(3, 2, 1)
        inplanes, stages = width, []
        for i, n in enumerate(layers):
            planes = width * 2 ** i
            blocks = [block(inplanes, planes, 1 if i == 0 else 2)]
            inplanes = planes * block.expansion
            blocks += [block(inplanes, planes, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dim = inplanes  # feature size: 512 for resnet18/34, 2048 for resnet50 (at width 64)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)  # (B, dim)


def mlp(d_in, d_hidden, d_out, bn_affine, bn=True):
    """Linear-BN-ReLU-Linear: the projector, and the 2-layer predictor baseline (Tian et al. 2021,
    Table 3); bn=False drops the BN (the 2-layer predictor with --pred-bn 0)."""
    norm = [nn.BatchNorm1d(d_hidden, affine=bool(bn_affine))] if bn else []
    return nn.Sequential(nn.Linear(d_in, d_hidden), *norm, nn.ReLU(inplace=True),
                         nn.Linear(d_hidden, d_out))


class BNLinear(nn.Module):
    """BatchNorm, then Linear: the trained linear predictor as the authors' default config builds it
    (an MLP head without a hidden layer). weight: the Linear's, Wp."""

    def __init__(self, d, bias, bn_affine):
        super().__init__()
        self.bn, self.linear = nn.BatchNorm1d(d, affine=bool(bn_affine)), nn.Linear(d, d, bias=bias)

    @property
    def weight(self):
        return self.linear.weight

    def forward(self, f):
        return self.linear(self.bn(f))


class SiameseNet(nn.Module):
    """Online branch: backbone -> projector (f, the predictor's input) -> predictor (p). Both views
    in one call, so that one DDP forward covers the whole step; each view keeps its own BN batch
    statistics."""

    def __init__(self, backbone, projector, predictor):
        super().__init__()
        self.backbone, self.projector, self.predictor = backbone, projector, predictor

    def forward(self, x1, x2):
        z1, z2 = self.projector(self.backbone(x1)), self.projector(self.backbone(x2))  # (B, d) each
        # it updates its statistics with both views first
        if isinstance(self.predictor, PartitionedPredictor):
            return z1, z2, *self.predictor(z1, z2)
        return z1, z2, self.predictor(z1), self.predictor(z2)


def build_model(cfg, in_chans):
    """The online network from a config dict (train.py's flags), as saved in every checkpoint."""
    stem = cfg["stem"] if cfg["stem"] != "auto" else DATASETS[cfg["dataset"]].stem
    backbone = ResNet(cfg["arch"], cfg["width"], stem, in_chans)
    projector = mlp(backbone.dim, cfg["proj_hidden"], cfg["proj_dim"], cfg["bn_affine"])
    d, bias = cfg["proj_dim"], bool(cfg["pred_bias"])
    if cfg["predictor"] == "none":  # Wp = I: Theorem 2 says this collapses
        predictor = nn.Identity()
    elif cfg["predictor"] == "mlp":  # the 2-layer baseline, trained
        predictor = mlp(d, cfg["pred_hidden"], d, cfg["bn_affine"], bn=bool(cfg["pred_bn"]))
    elif cfg["linear_bn"]:  # the authors' default linear head: BN, then Wp
        predictor = BNLinear(d, bias, cfg["bn_affine"])
    elif cfg["partitions"] > 1:  # feature-dependent Wp, set in closed form inside the forward pass
        predictor = PartitionedPredictor(d, cfg["partitions"], cfg["rho"], cfg["eps"],
                                         cfg["exponent"], cfg["offset"], bool(cfg["center"]))
    else:  # linear (trained), or Wp set in closed form by DirectPred / DirectCopy / optimal
        predictor = nn.Linear(d, d, bias=bias)
    return SiameseNet(backbone, projector, predictor)


def build_target(online, cfg, in_chans):
    """EMA target (backbone + projector, no predictor) or None for SimSiam (--ema 0: the online net
    is the target). --target-init copy: starts equal to the online net (BYOL); random: an
    independent random init (the paper's code)."""
    if cfg["ema"] == 0:
        return None
    target = copy.deepcopy(online) if cfg["target_init"] == "copy" else \
        build_model(cfg, in_chans).to(next(online.parameters()).device)
    target.predictor = nn.Identity()
    return target.requires_grad_(False)


def build_directpred(cfg, device):
    """The closed-form predictor's state (F_hat; directpred.py) for --predictor direct / directcopy
    / optimal, or None (trained predictors; --partitions > 1 keeps one per side inside its
    PartitionedPredictor)."""
    if cfg["predictor"] not in CLOSED_FORM or cfg["partitions"] > 1:
        return None
    d, rho, eps, freq = cfg["proj_dim"], cfg["rho"], cfg["eps"], cfg["freq"]
    if cfg["predictor"] == "optimal":
        return OptimalPredictor(d, rho, eps, freq, cfg["optimal_rule"]).to(device)
    return CLOSED_FORM[cfg["predictor"]](d, rho, eps, freq, cfg["exponent"], cfg["offset"],
                                         bool(cfg["center"])).to(device)


def trunk_parameters(online):
    """The online network's parameters without its predictor's: backbone and projector."""
    return [p for n, p in online.named_parameters() if not n.startswith("predictor.")]


def ema_pairs(target, online):
    """What the EMA update lerps: (the target's tensors, the online net's trunk), or two empty lists
    for SimSiam (no target network)."""
    return (list(target.parameters()) if target is not None else [], trunk_parameters(online))


def symmetrize_predictor(predictor):
    """--sym-wp (Table 3): Wp <- (Wp + Wp^T) / 2; the 2-layer predictor's layers are tied, W1 <- (W1
    + W2^T) / 2, W2 <- W1^T (the authors' two-layer branch of regulate_predictor; biases untouched,
    as theirs)."""
    with torch.no_grad():
        if isinstance(predictor, nn.Sequential):
            first, last = (m for m in predictor if isinstance(m, nn.Linear))
            W = 0.5 * (first.weight + last.weight.T)  # (hidden, d)
            first.weight.copy_(W)
            last.weight.copy_(W.T)
        else:
            predictor.weight.copy_(0.5 * (predictor.weight + predictor.weight.mT))


# -----------------------------------------------------------------------------
# loss, optimizer, schedules


def cosine_loss(p, z):
    """2 - 2 cos(p, z), averaged over the batch (the normalised loss used in practice)."""
    return 2 - 2 * nnf.cosine_similarity(p, z, dim=-1).mean()


def l2_loss(p, z):
    """1/2 ||p - z||^2, averaged over the batch (the un-normalised loss of Tian et al.'s theory,
    Sec. 3)."""
    return 0.5 * (p - z).pow(2).sum(-1).mean()


def ssl_loss(model, target, x1, x2, cfg):
    """One step's loss. Online: z = projector(backbone(x)) (the predictor's input f), p =
    predictor(z); targets t from the EMA net under no_grad, or the online z (SimSiam), behind a
    stop-gradient unless --stop-grad 0. Loss: L(p1, t2) + L(p2, t1), summed (--symmetric 1), or
    L(p1, t2) alone. Returns (loss, z1, z2, t1, t2)."""
    z1, z2, p1, p2 = model(x1, x2)  # (B, d) each
    if target is not None:
        with torch.no_grad():
            t1, t2, _, _ = target(x1, x2)
    else:
        t1, t2 = z1, z2
    if cfg["stop_grad"]:
        t1, t2 = t1.detach(), t2.detach()
    L = cosine_loss if cfg["loss"] == "cosine" else l2_loss
    # the loss in fp32 at least, whatever precision autocast gave the outputs
    q1, q2, u1, u2 = (x.to(torch.promote_types(x.dtype, torch.float32)) for x in (p1, p2, t1, t2))
    loss = L(q1, u2) + L(q2, u1) if cfg["symmetric"] else L(q1, u2)
    return loss, z1, z2, t1, t2


def build_optimizer(online, cfg):
    """SGD or LARS with two groups: the trunk (backbone + projector; weight decay --wd) and the
    predictor (lr x --pred-lr-ratio, weight decay --pred-wd). Each group's lr_mult scales the
    scheduled lr."""
    trunk = dict(params=trunk_parameters(online), lr_mult=1.0, weight_decay=cfg["wd"])
    predictor = dict(params=list(online.predictor.parameters()), lr_mult=cfg["pred_lr_ratio"],
                     weight_decay=cfg["pred_wd"])
    return optimizer_for([trunk, predictor], cfg)


def optimizer_for(groups, cfg):
    """--optimizer on parameter groups that carry their weight decay and lr_mult (empty ones
    dropped): SGD (the paper's runs) or LARS (BYOL's ImageNet), momentum --momentum."""
    groups = [g for g in groups if g["params"]]
    if cfg["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"])
    return LARS(groups, lr=cfg["lr"], momentum=cfg["momentum"])


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as in BYOL / SimSiam: SGD momentum on a layer-wise trust-ratio-scaled
    update. Biases and BN parameters (ndim 1) get neither weight decay nor the trust ratio."""

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, trust_coefficient=0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      eta=trust_coefficient))

    @torch.no_grad()
    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if p.ndim > 1:
                    d = d.add(p, alpha=g["weight_decay"])
                    pn, dn = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    d = d * torch.where((pn > 0) & (dn > 0), g["eta"] * pn / dn,
                                        torch.ones_like(pn))
                if "mu" not in self.state[p]:  # allocated once, not every step
                    self.state[p]["mu"] = torch.zeros_like(p)
                mu = self.state[p]["mu"]
                mu.mul_(g["momentum"]).add_(d)
                p.add_(mu, alpha=-g["lr"])


def lr_at(step, cfg, total_steps, steps_per_epoch):
    """Learning rate at an optimizer step: linear warmup, then constant (paper) or cosine to 0."""
    warmup = cfg["warmup_epochs"] * steps_per_epoch
    if step < warmup:
        return cfg["lr"] * (step + 1) / warmup
    if cfg["lr_schedule"] == "const":
        return cfg["lr"]
    progress = (step - warmup) / max(1, total_steps - warmup)
    return cfg["lr"] * 0.5 * (1 + math.cos(math.pi * progress))


def tau_at(step, cfg, total_steps):
    """Target EMA momentum at an optimizer step: constant (paper) or BYOL's 1 - (1 - tau)(cos(pi k /
    K) + 1) / 2."""
    if cfg["ema_schedule"] == "const":
        return cfg["ema"]
    return 1 - (1 - cfg["ema"]) * (math.cos(math.pi * step / total_steps) + 1) / 2


# -----------------------------------------------------------------------------
# the step: the paper's order in one function (train.py's loop and bench.py call it)


def train_step(model, raw_model, target, directpred, optimizer, x1, x2, cfg, ctx, lr, tau,
               ema_tensors):
    """One optimizer step, in the order of the paper (Tian et al. 2021, Sec. 4) and the authors'
    code: the online and target forwards of both views (ssl_loss); DirectPred's statistics of the
    raw predictor inputs, before backward; backward (through Wp into the trunk) and the optimizer
    step; --sym-wp; Wp set in closed form after the step, so the new Wp is used from the next step
    on; the EMA target last, keyed to optimizer steps. model: the online network as called (compiled
    and/or DDP-wrapped); raw_model: the same module unwrapped; directpred: a closed-form predictor's
    state or None; lr: the scheduled lr (each parameter group takes lr x its lr_mult); ema_tensors:
    (target tensors, online tensors), target <- tau target + (1 - tau) online. Every rank calls it
    (directpred.update all-reduces F). Returns (loss, z1, z2) for the caller's diagnostics."""
    with ctx:
        loss, z1, z2, t1, t2 = ssl_loss(model, target, x1, x2, cfg)
    # F = E[f f^T] over both views' f (2B, d), summed over the DDP ranks: one F_hat, one Wp
    if isinstance(directpred, OptimalPredictor):  # Table 1's plug-in also needs each f's target
        directpred.update(torch.cat([z1, z2]), torch.cat([t2, t1]))
    elif directpred is not None:
        directpred.update(torch.cat([z1, z2]))
    optimizer.zero_grad(set_to_none=True)
    for g in optimizer.param_groups:
        g["lr"] = lr * g["lr_mult"]  # the predictor's group: alpha_p x lr (Fig. 6)
    loss.backward()
    optimizer.step()
    if cfg["sym_wp"]:
        symmetrize_predictor(raw_model.predictor)
    # every freq steps: Wp <- U diag(p) U^T (eigh of F_hat), used from the next step on
    if directpred is not None:
        directpred.set_predictor(raw_model.predictor.weight)
    # under no_grad, else each step chains one more autograd node per weight (a leak)
    if target is not None:
        with torch.no_grad():
            torch._foreach_lerp_(*ema_tensors, 1 - tau)
    return loss, z1, z2


# -----------------------------------------------------------------------------
# the loop's two views and its progress bar


def two_views(x, cfg, aug, gen, size, mean, std, fmt):
    """Both augmented views of a batch, each image with its own random draws from gen (augment), in
    the run's memory format. x: (B, C, H, W) uint8, cropped here, or (B, 2, C, H, W), the
    DataLoader's two crops."""
    crop = x.dim() == 4
    return tuple(augment(x if crop else x[:, v], aug, v, gen, size, (cfg["crop_min"], 1.0), mean,
                         std, crop)
                 .contiguous(memory_format=fmt) for v in (0, 1))


def bar_numbers(rec):
    """What the progress bar shows of a log record."""
    return dict(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.3g}", img_s=f"{rec['img_per_s']:.0f}",
                z_std=f"{rec['z_std']:.2f}", rank=f"{rec['erank']:.1f}",
                **({"knn": f"{rec['knn_top1']:.4f}"} if "knn_top1" in rec else {}))


# -----------------------------------------------------------------------------
# the run


def main():
    # --- config: every bad flag (for torchrun's ranks), an out-dir that cannot take the run: first
    cfg, P = parse_config(), get_parser()
    err = config_error(cfg, P) or out_dir_error(cfg["out_dir"], cfg["resume"])
    if err:
        raise RunError(err)

    # --- DDP / device
    ddp, ddp_rank, ddp_local_rank, ddp_world_size, device = init_distributed(cfg["device"],
                                                                             cfg["ddp_timeout"])
    master_process = ddp_rank == 0
    if ddp:  # every rank: one answer to "is there a checkpoint to continue?"
        same_on_every_rank(cfg["resume"], device, f"--resume: some ranks find a checkpoint in "
                           f"--out-dir {cfg['out_dir']} and some do not: it must be a folder every "
                           "node shares")
    seed_all(cfg["seed"])
    ctx, fmt = precision_and_layout(device.split(":")[0], cfg["bf16"], cfg["channels_last"],
                                    cfg["deterministic"], cfg["width"])

    # --- data: small sets on the device as one uint8 tensor, ImageNet-size sets streamed
    train_data, n_train, in_chans, size = train_set(cfg, device)
    steps_per_epoch = n_train // cfg["batch_size"]
    if steps_per_epoch == 0:
        raise RunError(f"--batch-size {cfg['batch_size']} is larger than the {n_train} images")
    total_steps = cfg["epochs"] * steps_per_epoch
    max_steps = min(cfg["max_steps"], total_steps) if cfg["max_steps"] > 0 else total_steps
    aug, (mean, std) = aug_of(cfg), normalisation(cfg["dataset"], device)

    # --- model and optimizer: online network, EMA target (never in DDP), DirectPred's state
    raw_model = build_model(cfg, in_chans).to(device)  # saved unwrapped: no "module." in its keys
    raw_model, target = to_device_layout(raw_model, build_target(raw_model, cfg, in_chans), ddp,
                                         cfg["sync_bn"], device, fmt, master_process)
    directpred, optimizer = build_directpred(cfg, device), build_optimizer(raw_model, cfg)
    state = dict(online=raw_model, target=target, optimizer=optimizer, directpred=directpred)

    # --- resume, precision, compile and DDP
    ckpt = load_run(cfg, P, n_train, device, **state) if cfg["resume"] else {}
    step, knn_init = ckpt.get("step", 0), ckpt.get("knn_init")
    monitor_stats = ckpt.get("monitor_stats")  # the collapse diagnostics' running statistics
    if cfg["bf16"] == "auto":  # every rank
        B = cfg["batch_size"] // ddp_world_size  # the local batch
        ctx, line = choose_bf16(cfg, ckpt["config"]["bf16"] if ckpt else None, raw_model, target,
                                lambda o, t, v: ssl_loss(o, t, v, v, cfg)[0],
                                (B, in_chans, size, size), device, fmt, ddp)
        if master_process:
            print(line)
    model = wrap(raw_model, cfg, ddp, ddp_local_rank, device, master_process)  # as the loop calls
    ema_tensors = ema_pairs(target, raw_model)
    # DirectPred's F_hat (partitioned: its regions'), watched for nan/inf beside the loss
    F_hat = directpred.F_hat if directpred is not None else getattr(raw_model.predictor, "F_hat",
                                                                     None)
    watched = {"F_hat": F_hat} if F_hat is not None else {}
    knn_monitor = None  # rank 0's kNN monitor
    if cfg["eval_every"] and master_process:
        knn_monitor = KnnMonitor(cfg, train_data, device, mean, std, ctx, size, fmt)

    # --- the training loop
    run = Run(cfg["out_dir"], step, max_steps, resume=cfg["resume"], rank=ddp_rank, ddp=ddp,
              device=device, lr=cfg["lr"], batch_size=cfg["batch_size"],
              log_every=cfg["log_every"], log_early=cfg["log_early"],
              ckpt_every=cfg["ckpt_every"], save_every_rank=cfg["save_every_rank"],
              wandb_project=cfg["wandb_project"], wandb_run_name=cfg["wandb_run_name"],
              config=cfg)  # every rank
    collapse = CollapseWatch()  # rank 0: the warning when the log lines look collapsed
    if master_process:
        B = cfg["batch_size"] // ddp_world_size
        print(f"{cfg['dataset']}: {n_train} images, {steps_per_epoch} steps/epoch, steps {step} "
              f"-> {max_steps}, {ddp_world_size} rank(s) x batch {B}, device {device}")
    run.open_bar(step)
    if knn_monitor is not None and step == 0:  # the network at random init: the baseline to beat
        knn_init = run.knn(knn_monitor, raw_model.backbone)
    gen = torch.Generator(device=device)  # the views' RNG, reseeded from (seed, step, rank)
    knn_last = None
    while step < max_steps:
        epoch, k = divmod(step, steps_per_epoch)
        for x, _ in epoch_batches(train_data, cfg["batch_size"], epoch, cfg["seed"], ddp_rank,
                                  ddp_world_size, device, start=k, workers=cfg["workers"]):
            gen.manual_seed(step_seed(cfg["seed"], step, ddp_rank))
            x1, x2 = two_views(x, cfg, aug, gen, size, mean, std, fmt)
            lr, tau = lr_at(step, cfg, total_steps, steps_per_epoch), tau_at(step, cfg, total_steps)
            loss, z1, z2 = train_step(model, raw_model, target, directpred, optimizer, x1, x2, cfg,
                                      ctx, lr, tau, ema_tensors)  # every rank
            monitor_stats = feature_stats(monitor_stats, torch.cat([z1, z2]))  # (2B, d)
            if master_process and step == 0:  # the random init (this forward ran before the update)
                run.write({"step": 0, "epoch": 0.0, "bf16": cfg["bf16"], "loss": loss.item(),
                           **diagnostics(monitor_stats, None, z1), **run.memory(),
                           **({"knn_top1": knn_init} if knn_init is not None else {})})
            step += 1
            run.after_step(step, loss, **watched)  # every rank: stops a diverged run, when due
            rec = {}
            if knn_monitor is not None and (step % cfg["eval_every"] == 0 or step == max_steps):
                rec["knn_top1"] = knn_last = run.knn(knn_monitor, raw_model.backbone)
            if master_process and run.log_due(step):
                Wp = getattr(raw_model.predictor, "weight", None)  # linear predictors only
                rec.update(loss=loss.item(), lr=lr, tau=tau, img_per_s=run.img_per_s(step),
                           **diagnostics(monitor_stats, Wp, z1), **run.memory())
                run.show(bar_numbers(rec), collapse.line(step, rec["erank"], rec["z_std"],
                                                         len(rec["F_eig"])))
            if master_process and rec:
                run.write({"step": step, "epoch": step / steps_per_epoch, **rec})
            if run.ckpt_due(step):  # every rank: ckpt.pt on rank 0 (--save-every-rank: each rank's)
                saved = run_state(step, cfg, n_train, device, dict(
                    knn_init=knn_init, monitor_stats=monitor_stats), **state)
                run.save(saved, saved["online"], saved["target"] or {})
            run.stop_if_signalled(step)  # every rank
            if step >= max_steps:
                break
    run.close(step, knn_init, knn_last)
    if ddp:  # leave the process group and exit 0, past gloo's random abort at interpreter exit
        end_distributed()


if __name__ == "__main__":
    try:
        main()
    except RunError as e:  # a bad flag, path or file, a diverged or stopped run: one line
        sys.exit(f"error: {e}")
