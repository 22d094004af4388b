"""
Linear probe and kNN of a train.py checkpoint: the online backbone, frozen, in eval mode.

    python eval_linear.py --ckpt out/ckpt.pt                       # features once, a linear head
    python eval_linear.py --ckpt out/ckpt.pt --protocol paper      # the authors': best test epoch
    python eval_linear.py --ckpt out/ckpt.pt --protocol augmented  # SimSiam's ImageNet protocol
    torchrun --standalone --nproc_per_node=8 eval_linear.py --ckpt out/ckpt.pt --protocol augmented
    python eval_linear.py --ckpt out/ckpt.pt --baseline random     # the same network at random init
    python eval_linear.py --ckpt out/ckpt.pt --baseline random-bn  # ... BN statistics re-estimated
    python eval_linear.py --ckpt out/ckpt.pt --baseline supervised # it, trained with labels
    python eval_linear.py --dataset fashion-mnist --baseline pixels # the same probe on raw pixels
    python eval_linear.py --ckpt out/ckpt.pt --baseline none,random,pixels  # side by side

--protocol fast (default): features extracted once without augmentation and cached on the device,
  standardised, then logistic regression as in the paper's code (Adam lr 3e-4, wd 1e-3, 50 epochs,
  constant lr), batch 256; reports the FINAL epoch. Seconds on a GPU.
--protocol paper: the same, as the authors' code ran it (Tian et al. 2021,
  github.com/facebookresearch/luckmatters, ssl/real-dataset): batch 128, and it reports the BEST
  test epoch, which picks the epoch on the test set (an optimistic number; the final epoch is
  reported beside it).
--protocol augmented: SimSiam's ImageNet linear protocol (Chen & He 2021, arXiv 2011.10566, Sec. A:
  random resized crop + flip every step, LARS, batch 4096, lr 0.1 * batch/256, wd 0, 90 epochs,
  cosine). It is ImageNet's recipe: on CIFAR / STL-10 a batch of 4096 gives about 12 steps per epoch
  (set --batch-size / --epochs / --lr yourself there). Under torchrun every rank extracts its shard
  of the features and trains on its shard of each batch.
Every protocol also reports weighted kNN top-1 (k=200, t=0.1). One line starts with RESULT; the same
  numbers go to a JSON file. The backbone is checked to be bitwise unchanged at the end. --baseline
  random-bn: the network at random init, its BN running statistics re-estimated on the pretraining
  images (train mode, no gradient, one pass without augmentation, each batch's statistics averaged):
  the network as it is at step 0 of training, where BN normalises with batch statistics. --baseline
  random keeps the init's running statistics (mean 0, var 1), which no trained network has.
--baseline supervised: the checkpoint's network from its random init, trained end to end with labels
  (cross-entropy through a linear head) with the run's own augmentations, optimizer, lr schedule,
  batch and number of steps; then probed like the others. A ceiling for what the same network, data
  and budget can reach. One process.
Model, augmentation and training pieces are train.py's, dataset files and frozen features data.py's,
imported.


"""
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as nnf
import torchvision.transforms as TV
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import plumbing
import train as T
from data import (DATASETS, epoch_batches, extract_features, in_memory, knn_eval, load_split,
                  n_images, normalisation, split_val_error)

# -----------------------------------------------------------------------------
# config (None = the protocol's default: PROTOCOLS below); each range is checked after those are
# filled in
P = plumbing.ArgumentParser(description=__doc__.split("\n\n")[0],
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
P.add_argument("--ckpt", default="", help="train.py checkpoint (out_dir/ckpt.pt)")
P.add_argument("--protocol", default="fast", choices=["fast", "paper", "augmented"],
               help="fast: cached features, final epoch; paper: the authors' (batch 128, best test "
                    "epoch, optimistic); augmented: SimSiam's ImageNet protocol")
P.add_argument("--baseline", default="none",
               help="what is probed, one or several (comma-separated, side by side at the end): "
               "none = the checkpoint's backbone; random = its network at random init; random-bn = "
               "the same with its BN statistics re-estimated on the training images; pixels = raw "
               "pixels (no network); supervised = the checkpoint's network trained with labels "
               "(same augmentations and budget)")
P.add_argument("--dataset", default=None, choices=list(DATASETS),
               help="default: the checkpoint's")
P.add_argument("--data-dir", default=None, help="default: the checkpoint's")
P.add_argument("--split", default=None, choices=["test", "val"],
               help="what the probe and the kNN report on: the test split, or val = the 10k "
               "training images train.py --split val held out (the probe is then fitted on the "
               "other 50k). Default: the checkpoint's --split (test for --baseline pixels)")
P.add_argument("--img-size", type=int, default=0, valid=(lambda v: v == 0 or v >= 8,
                                                         "0 (the checkpoint's size) "
               "or >= 8 pixels"),
               help="image size the backbone sees (0 = the checkpoint's --img-size; if that is 0 "
               "too: in-memory sets as stored, streamed sets 224)")
P.add_argument("--epochs", type=int, default=None, valid=plumbing.at_least(1),
               help="epochs of the linear head (fast / paper: 50, augmented: 90)")
P.add_argument("--batch-size", type=int, default=None, valid=plumbing.at_least(1),
               help="global batch (fast: 256, paper: 128, augmented: 4096)")
P.add_argument("--lr", type=float, default=None, valid=plumbing.POSITIVE,
               help="head lr (fast / paper: 3e-4, augmented: 0.1 x batch / 256)")
P.add_argument("--wd", type=float, default=None, valid=plumbing.at_least(0),
               help="head weight decay (fast / paper: 1e-3, augmented: 0)")
P.add_argument("--optimizer", default=None, choices=["adam", "sgd", "lars"],
               help="fast / paper: adam, augmented: lars")
P.add_argument("--knn-k", type=int, default=200, valid=plumbing.at_least(1),
               help="kNN: neighbours that vote")
P.add_argument("--knn-t", type=float, default=0.1, valid=plumbing.POSITIVE,
               help="kNN: temperature of the votes' weights exp(sim / t)")
P.add_argument("--workers", type=int, default=8, valid=plumbing.at_least(0),
               help="DataLoader workers (streamed sets only)")
P.add_argument("--seed", type=int, default=0, valid=plumbing.at_least(0),
               help="seeds the head's init and batch order (and --baseline random(-bn)'s and "
               "supervised's network: the seed of the train.py run gives its very init)")
plumbing.add_device_flags(P, "bf16 autocast of the backbone; auto = on CUDA GPUs with native "
                          "bf16, fp32 on a CPU")
P.add_argument("--out", default="",
               help="JSON result file (default: next to the checkpoint; --baseline pixels: out/)")
PROTOCOLS = {  # lr None: 0.1 x batch / 256
    "fast": dict(optimizer="adam", lr=3e-4, wd=1e-3, epochs=50, batch_size=256),
    "paper": dict(optimizer="adam", lr=3e-4, wd=1e-3, epochs=50, batch_size=128),
    "augmented": dict(optimizer="lars", lr=None, wd=0.0, epochs=90, batch_size=4096),
}
BASELINES = {"none": "trained", "random": "random init",
             "random-bn": "random init, BN re-estimated", "pixels": "raw pixels",
             "supervised": "trained with labels"}  # --baseline: what each is called
NO_COLOR = dict(jitter=(0, 0, 0, 0), jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0),
                solarize_p=(0.0, 0.0))


def topk(logits, y, k):
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1).float().mean().item()


def shard_features(backbone, data, rank, world_size, **kw):
    """extract_features of one split, split over the DDP ranks: each rank extracts a contiguous
    shard, so no rank waits for another's long solo pass (past --ddp-timeout on ImageNet). Rank 0
    gathers and returns (features, labels) of the whole split; the other ranks return None."""
    if world_size == 1:
        return extract_features(backbone, data, **kw)
    n = n_images(data)
    per = math.ceil(n / world_size)
    a, b = min(n, rank * per), min(n, (rank + 1) * per)
    part = (data[0][a:b], data[1][a:b]) if in_memory(data) else \
        torch.utils.data.Subset(data, range(a, b))
    f, y = extract_features(backbone, part, **kw)  # (b - a, D), (b - a,)
    # labels ride along as a last column (exact below 2^24)
    pad = torch.cat([f, y[:, None].to(f.dtype)], 1)
    pad = nnf.pad(pad, (0, 0, 0, per - len(pad)))  # every rank sends `per` rows
    # rank 0 gathers into one buffer (world_size * per, D + 1): rank r's rows land at r * per, so
    # the n real rows are its first n, in order, and the features are a view of it (no second or
    # third copy of ImageNet's 10 GB)
    rows = pad.new_empty(world_size * per, pad.shape[1]) if rank == 0 else None
    dist.gather(pad, list(rows.view(world_size, per, -1).unbind(0)) if rank == 0 else None, dst=0)
    if rank:
        return None
    return rows[:n, :-1], rows[:n, -1].long()


def reestimate_bn(backbone, data, **kw):
    """--baseline random-bn: replace the BN running statistics by those of the training images, one
    pass in train mode without gradient (momentum None: the running statistics become the plain
    average of every batch's mean and unbiased variance). kw: extract_features' (mean, std, device,
    ctx, size, fmt, ...)."""
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momentum = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    extract_features(backbone, data, bn_pass=True, **kw)
    for m, mom in zip(bns, momentum):
        m.momentum = mom


def train_supervised(model, data, cfg, size, mean, std, device, ctx, fmt, workers):
    """--baseline supervised: the backbone (from its random init) and a linear head trained end to
    end with cross-entropy on the labelled train split; train.py's augmentation (view 0 of the run's
    preset, crop scale, jitter), optimizer settings, lr schedule, batch size and step count
    (--epochs and --max-steps of the run). Returns (the trained backbone, the number of steps)."""
    backbone = model.backbone.to(device).to(memory_format=fmt).train()
    n_cls = int(data[1].max()) + 1 if in_memory(data) else len(data.classes)
    head = nn.Linear(backbone.dim, n_cls).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = T.optimizer_for([dict(params=params, lr_mult=1.0, weight_decay=cfg["wd"])], cfg)
    aug = T.aug_of(cfg)
    # streamed: one crop in the workers, the colour ops on the device
    if not in_memory(data):
        data.transform = TV.Compose([TV.RandomResizedCrop(size, scale=(cfg["crop_min"], 1.0)),
                                     TV.PILToTensor()])
    n = n_images(data)
    steps_per_epoch = n // cfg["batch_size"]
    if steps_per_epoch == 0:
        raise plumbing.RunError("--baseline supervised: the run's --batch-size "
                                f"{cfg['batch_size']} is larger than the {n} labelled training "
                                "images")
    total = cfg["epochs"] * steps_per_epoch
    max_steps = min(cfg["max_steps"], total) if cfg["max_steps"] else total
    gen, step = torch.Generator(device=device), 0
    pbar = tqdm(total=max_steps, desc="supervised baseline", dynamic_ncols=True, file=sys.stdout)
    while step < max_steps:
        epoch = step // steps_per_epoch
        for x, y in epoch_batches(data, cfg["batch_size"], epoch, cfg["seed"], 0, 1, device,
                                  workers=workers):
            gen.manual_seed(T.step_seed(cfg["seed"], step, 0))
            x = T.augment(x, aug, 0, gen, size, (cfg["crop_min"], 1.0), mean, std,
                          crop=in_memory(data))
            for g in optimizer.param_groups:
                g["lr"] = T.lr_at(step, cfg, total, steps_per_epoch)
            with ctx:
                loss = nnf.cross_entropy(head(backbone(x.contiguous(memory_format=fmt))).float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            pbar.update(1)
            if step % 50 == 0:  # a host sync, so not every step
                pbar.set_postfix(loss=f"{loss.item():.4f}")
            if step >= max_steps:
                break
    pbar.close()
    return backbone, step


def linear_head(args, dim, n_cls, device):
    """The linear classifier on the frozen features (SimSiam's init for --protocol augmented) and
    its optimizer."""
    head = nn.Linear(dim, n_cls).to(device)
    if args.protocol == "augmented":  # SimSiam's init of the linear layer
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    params = head.parameters()
    optimizer = {"adam": lambda: torch.optim.Adam(params, lr=args.lr, weight_decay=args.wd),
                 "sgd": lambda: torch.optim.SGD(params, lr=args.lr, momentum=0.9,
                                                weight_decay=args.wd, nesterov=True),
                 "lars": lambda: T.LARS(params, lr=args.lr, weight_decay=args.wd)}[args.optimizer]()
    return head, optimizer


def probe_cached(args, head, optimizer, feats, device):
    """--protocol fast / paper: logistic regression on the standardised cached features (the paper's
    code). Returns (the test logits after the last epoch, the last batch's loss, the test top-1
    after every epoch for --protocol paper, else [])."""
    (train_f, train_y), (test_f, test_y) = feats
    mu, sd = train_f.mean(0), train_f.std(0).clamp(min=1e-6)
    train_f, test_f = (train_f - mu) / sd, (test_f - mu) / sd
    gen = torch.Generator(device=device).manual_seed(args.seed)
    test_acc = []  # test top-1 after every epoch: --protocol paper reports the best one
    pbar = tqdm(range(args.epochs), "linear probe", dynamic_ncols=True, file=sys.stdout)
    for epoch in pbar:
        perm = torch.randperm(len(train_f), device=device, generator=gen)
        # summed on the device
        loss_sum, hits = torch.zeros((), device=device), torch.zeros((), device=device)
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i:i + args.batch_size]
            logits = head(train_f[idx])
            loss = nnf.cross_entropy(logits, train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(idx)
            hits += (logits.argmax(1) == train_y[idx]).sum()
        if args.protocol == "paper":
            with torch.no_grad():
                test_acc.append(topk(head(test_f), test_y, 1))
        pbar.set_postfix(loss=f"{loss_sum.item() / len(perm):.4f}",
                         train_acc=f"{hits.item() / len(perm):.4f}")
    with torch.no_grad():
        return head(test_f), loss, test_acc


def probe_augmented(args, head, optimizer, backbone, feats, train_data, dataset, ddp, rank,
                    world_size, **kw):
    """--protocol augmented (SimSiam's): a crop and flip per sample on the device every step, the
    frozen backbone's features, the head trained under DDP on each rank's shard of each batch,
    cosine lr. Returns (the test logits on rank 0, else None; the last batch's loss; [])."""
    device, size, fmt = kw["device"], kw["size"], kw["fmt"]
    test_f = feats[1][0] if rank == 0 else None
    # under torchrun the head's gradients are averaged over ranks
    ddp_head = DDP(head) if ddp else head
    if DATASETS[dataset].streamed:
        train_data.transform = TV.Compose([TV.RandomResizedCrop(size), TV.PILToTensor()])
    n = n_images(train_data)
    steps_per_epoch = n // args.batch_size
    if steps_per_epoch == 0:
        raise plumbing.RunError(f"--batch-size {args.batch_size} is larger than the {n} training "
                                "images")
    gen, step, total = torch.Generator(device=device), 0, args.epochs * steps_per_epoch
    schedule = dict(lr=args.lr, lr_schedule="cosine", warmup_epochs=0)  # train.lr_at's keys
    pbar = tqdm(total=total, desc="linear probe (augmented)", disable=rank != 0, dynamic_ncols=True,
                file=sys.stdout)
    for epoch in range(args.epochs):
        for x, y in epoch_batches(train_data, args.batch_size, epoch, args.seed, rank, world_size,
                                  device, workers=args.workers):
            gen.manual_seed(T.step_seed(args.seed, step, rank))
            x = T.augment(x, NO_COLOR, 0, gen, size, (0.08, 1.0), kw["mean"], kw["std"],
                          crop=not DATASETS[dataset].streamed)
            with torch.no_grad(), kw["ctx"]:
                f = backbone(x.contiguous(memory_format=fmt))
            for g in optimizer.param_groups:
                g["lr"] = T.lr_at(step, schedule, total, steps_per_epoch)
            loss = nnf.cross_entropy(ddp_head(f.float()), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            pbar.update(1)
            if rank == 0 and step % 50 == 0:  # a host sync, so not every step
                pbar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
    pbar.close()
    with torch.no_grad():
        return (head(test_f) if rank == 0 else None), loss, []


def report(args, res, baseline, dataset, logits, test_y, loss, curve, n_cls, dim, out, seconds):
    """Rank 0: the RESULT line, then the JSON file (after it: a failure there cannot lose the
    numbers)."""
    res["top1"] = topk(logits, test_y, 1)  # the final epoch
    # the authors' number: the best test epoch (optimistic), and which one
    if args.protocol == "paper":
        res.update(top1_final=res["top1"], top1=max(curve), best_epoch=curve.index(max(curve)) + 1,
                   test_curve=curve)  # every epoch's test top-1, so the choice can be checked
    res["final_train_loss"] = loss.item()
    if n_cls > 10:
        res["top5"] = topk(logits, test_y, 5)
    res.update(dataset=dataset, ckpt=args.ckpt, baseline=baseline, protocol=args.protocol,
               epochs=args.epochs, optimizer=args.optimizer, lr=args.lr, wd=args.wd,
               batch_size=args.batch_size, knn_k=args.knn_k, knn_t=args.knn_t,
               backbone_unchanged=True, seconds=round(seconds, 1), feature_dim=dim)
    top5 = f" top5={100 * res['top5']:.2f}" if "top5" in res else ""
    best = f" (best epoch {res['best_epoch']}; final {100 * res['top1_final']:.2f})" \
        if "best_epoch" in res else ""
    print(f"RESULT dataset={dataset} baseline={baseline} protocol={args.protocol} "
          f"top1={100 * res['top1']:.2f}"
          f"{best}{top5} knn_top1={100 * res['knn_top1']:.2f} epochs={args.epochs} "
          f"seconds={res['seconds']} "
          f"ckpt={args.ckpt or '-'} json={out}", flush=True)
    with open(out, "w") as fh:
        json.dump(res, fh, indent=1)
    return res


def parse_args():
    """The flags, the protocol's defaults filled in, each range checked after them (one line for a
    bad one)."""
    args = P.parse_args()
    for k, v in PROTOCOLS[args.protocol].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.lr is None:
        args.lr = 0.1 * args.batch_size / 256
    err = plumbing.range_error(vars(args), P.valid)
    if err:
        raise plumbing.RunError(err)
    args.baselines = args.baseline.split(",")
    bad = [b for b in args.baselines if b not in BASELINES]
    if bad or len(set(args.baselines)) < len(args.baselines):
        raise plumbing.RunError(f"--baseline must be one or more of {', '.join(BASELINES)} "
                                f"(comma-separated, each once), got {args.baseline!r}")
    if args.out and len(args.baselines) > 1:
        raise plumbing.RunError("--out names one result file: leave it out with several --baseline "
                                "(each goes next to the checkpoint)")
    if "RANK" in os.environ and (args.protocol != "augmented" or "supervised" in args.baselines):
        raise plumbing.RunError("torchrun is for --protocol augmented (and not with --baseline "
                                "supervised); the others run in one process")
    return args


def checkpoint_config(args):
    """The checkpoint and its run's config (flags newer than it at their defaults), or (None, None)
    for pixels alone; one line for a missing, damaged or diverged checkpoint or a meaningless
    combination."""
    if not args.ckpt:
        if args.baselines != ["pixels"]:
            raise plumbing.RunError("--ckpt is needed (only --baseline pixels runs without one)")
        if args.dataset is None:
            raise plumbing.RunError("--baseline pixels needs --dataset")
        return None, None
    ckpt = plumbing.load_checkpoint(args.ckpt, "--ckpt")
    cfg = {**vars(T.get_parser().parse_args([])), **ckpt["config"]}  # newer flags: their defaults
    bad = plumbing.nonfinite(ckpt["online"])
    if bad and "none" in args.baselines:
        raise plumbing.RunError(f"--ckpt {args.ckpt} holds nan/inf weights ({bad}): a diverged "
                                "run, nothing to evaluate")
    if "supervised" in args.baselines and (args.dataset or cfg["dataset"]) != cfg["dataset"]:
        raise plumbing.RunError("--baseline supervised trains on the run's own --dataset "
                                f"({cfg['dataset']}), not {args.dataset}")
    return ckpt, cfg


def result_path(args, baseline, dataset):
    """Where a baseline's JSON goes (--out, else next to the checkpoint), checked writable before
    minutes of work."""
    out = args.out or os.path.join(os.path.dirname(args.ckpt) if args.ckpt else "out",
                                   f"eval_{args.protocol}_{baseline}_{dataset}.json")
    try:
        os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
        existed = os.path.exists(out)
        open(out, "a").close()
        if not existed:  # a real write test, leaving nothing behind if the evaluation fails later
            os.remove(out)
    except OSError as e:
        raise plumbing.RunError(f"--out {out} cannot be written ({e.strerror or e})")
    return out


def probe_data(args, cfg, dataset, device):
    """The labelled train split the probe is fitted on and the split it reports on (on the device
    where they fit), the crop size, the channels and the classes."""
    split = args.split or (cfg.get("split", "test") if cfg else "test")
    if split == "val" and not DATASETS[dataset].val:
        raise plumbing.RunError(split_val_error())
    data_dir = args.data_dir or (cfg["data_dir"] if cfg else "data")
    splits = [load_split(dataset, data_dir, role, split, cfg["fake_size"] if cfg else 1024)
              for role in ("train", "eval")]
    streamed = DATASETS[dataset].streamed
    if not streamed:
        splits = [(x.to(device), y.to(device)) for x, y in splits]
    size = args.img_size or (cfg["img_size"] if cfg else 0) or \
        (224 if streamed else splits[0][0].shape[-1])
    in_chans = 3 if streamed else splits[0][0].shape[1]
    n_cls = len(splits[0].classes) if streamed else int(splits[0][1].max()) + 1
    return splits, split, size, in_chans, n_cls


def frozen_backbone(baseline, args, ckpt, cfg, splits, in_chans, res, master_process, **kw):
    """The backbone a baseline probes, frozen, in eval mode: the checkpoint's, its network at random
    init (--seed), the same with its BN statistics re-estimated, that network trained with labels,
    or the raw pixels. kw: extract_features' (mean, std, device, ctx, size, fmt)."""
    if baseline == "pixels":
        return nn.Flatten().to(kw["device"]).eval()
    model = T.build_model(cfg, in_chans)  # random init from --seed
    if baseline == "none":
        try:
            model.load_state_dict(ckpt["online"])
        except RuntimeError:  # e.g. --dataset with another number of channels
            raise plumbing.RunError(f"--ckpt {args.ckpt} was trained on --dataset {cfg['dataset']} "
                                    f"and does not fit --dataset {args.dataset} "
                                    f"({in_chans}-channel images)")
    if baseline == "random-bn":  # every rank passes the whole split: the same statistics on each
        reestimate_bn(model.backbone.to(kw["device"]).to(memory_format=kw["fmt"]), splits[0],
                      workers=args.workers,
                      desc="BN statistics (train)" if master_process else None, **kw)
    if baseline == "supervised":
        model.backbone, res["supervised_steps"] = train_supervised(model, splits[0], cfg,
                                                                   kw["size"], kw["mean"],
                                                                   kw["std"], kw["device"],
                                                                   kw["ctx"], kw["fmt"],
                                                                   args.workers)
    return model.backbone.to(kw["device"]).eval().requires_grad_(False).to(memory_format=kw["fmt"])


def main():
    args = parse_args()

    # --- DDP / device
    ddp, ddp_rank, _, ddp_world_size, device = plumbing.init_distributed(args.device,
                                                                         args.ddp_timeout)
    master_process = ddp_rank == 0
    if args.batch_size % ddp_world_size:
        raise plumbing.RunError(f"--batch-size {args.batch_size} must divide evenly over "
                                f"{ddp_world_size} DDP ranks")

    # --- checkpoint and data
    ckpt, cfg = checkpoint_config(args)
    dataset = args.dataset or cfg["dataset"]
    outs = [result_path(args, b, dataset) if master_process else None for b in args.baselines]
    splits, split, size, in_chans, n_cls = probe_data(args, cfg, dataset, device)
    ctx, fmt = plumbing.precision_and_layout(device.split(":")[0], args.bf16, args.channels_last,
                                             width=cfg["width"] if cfg else 64)
    kw = dict(mean=normalisation(dataset, device)[0], std=normalisation(dataset, device)[1],
              device=device, ctx=ctx, size=size, fmt=fmt)

    results = []
    for baseline, out in zip(args.baselines, outs):
        # --- the frozen backbone (or the baseline's), from the same seed as alone
        torch.manual_seed(args.seed)
        t_start, res = time.time(), {"split": split}
        backbone = frozen_backbone(baseline, args, ckpt, cfg, splits, in_chans, res, master_process,
                                   **kw)
        before = {k: v.clone() for k, v in backbone.state_dict().items()}

        # --- features (sharded over the ranks under torchrun) and kNN, on rank 0
        feats = [shard_features(backbone, d, ddp_rank, ddp_world_size, workers=args.workers, **kw,
                                desc=f"features ({s})" if master_process else None)
                 for d, s in zip(splits, ("train", "test"))]
        if master_process:
            res["knn_top1"] = knn_eval(*feats[0], *feats[1], args.knn_k, args.knn_t)

        # --- the linear probe of the protocol
        dim = backbone(torch.zeros(2, in_chans, size, size,
                                   device=device).contiguous(memory_format=fmt)).shape[1]
        head, optimizer = linear_head(args, dim, n_cls, device)
        test_y = feats[1][1] if master_process else None
        if args.protocol != "augmented":
            logits, loss, curve = probe_cached(args, head, optimizer, feats, device)
        else:
            logits, loss, curve = probe_augmented(args, head, optimizer, backbone, feats, splits[0],
                                                  dataset, ddp, ddp_rank, ddp_world_size, **kw)
        del feats
        if not all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items()):
            raise plumbing.RunError("the backbone changed during evaluation (it must stay frozen)")

        # --- report (rank 0)
        if master_process:
            results.append(report(args, res, baseline, dataset, logits, test_y, loss, curve, n_cls,
                                  dim, out, time.time() - t_start))
    # the numbers side by side, so a reader sees where each stands
    if master_process and len(results) > 1:
        print(f"linear top-1 / kNN top-1 ({args.protocol} probe, {split} split): " + " | ".join(
            f"{BASELINES[b]} {100 * r['top1']:.2f} / {100 * r['knn_top1']:.2f}"
            for b, r in zip(args.baselines, results)))
    if ddp:  # past gloo's random abort at interpreter exit (plumbing.end_distributed)
        plumbing.end_distributed()


if __name__ == "__main__":
    try:
        main()
    except plumbing.RunError as e:  # a bad flag, path or file: one line on stderr, no traceback
        sys.exit(f"error: {e}")
