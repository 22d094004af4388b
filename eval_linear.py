"""
Linear probe and kNN of a train.py checkpoint: the online backbone, frozen, in eval mode.

    python eval_linear.py --ckpt out/ckpt.pt                        # fast: features once, a linear classifier on them
    python eval_linear.py --ckpt out/ckpt.pt --protocol paper       # the authors' probe: batch 128, best test epoch
    python eval_linear.py --ckpt out/ckpt.pt --protocol augmented   # SimSiam's ImageNet protocol (crop + flip, LARS)
    torchrun --standalone --nproc_per_node=8 eval_linear.py --ckpt out/ckpt.pt --protocol augmented   # ImageNet
    python eval_linear.py --ckpt out/ckpt.pt --baseline random      # the same network at random initialisation
    python eval_linear.py --ckpt out/ckpt.pt --baseline random-bn   # ... with its BN statistics re-estimated
    python eval_linear.py --ckpt out/ckpt.pt --baseline supervised  # the same network trained with labels
    python eval_linear.py --dataset fashion-mnist --baseline pixels # the same probe on raw pixels

--protocol fast (default): features extracted once without augmentation and cached on the device, standardised,
  then logistic regression as in the paper's code (Adam lr 3e-4, wd 1e-3, 50 epochs, constant lr), batch 256;
  reports the FINAL epoch. Seconds on a GPU.
--protocol paper: the same, as the authors' code ran it (Tian et al. 2021, github.com/facebookresearch/luckmatters,
  ssl/real-dataset): batch 128, and it reports the BEST test epoch, which picks the epoch on the test set (an
  optimistic number; the final epoch is reported beside it).
--protocol augmented: SimSiam's ImageNet linear protocol (Chen & He 2021, arXiv 2011.10566, Sec. A: random resized
  crop + flip every step, LARS, batch 4096, lr 0.1 * batch/256, wd 0, 90 epochs, cosine). It is ImageNet's recipe: on
  CIFAR / STL-10 a batch of 4096 gives about 12 steps per epoch (set --batch-size / --epochs / --lr yourself there).
  Under torchrun every rank extracts its shard of the features and trains on its shard of each batch.
Every protocol also reports weighted kNN top-1 (k=200, t=0.1). One line starts with RESULT; the same numbers go
to a JSON file. The backbone is checked to be bitwise unchanged at the end.
--baseline random-bn: the network at random init, its BN running statistics re-estimated on the pretraining images
  (train mode, no gradient, one pass without augmentation, each batch's statistics averaged): the network as it
  is at step 0 of training, where BN normalises with batch statistics. --baseline random keeps the init's running
  statistics (mean 0, var 1), which no trained network has.
--baseline supervised: the checkpoint's network from its random init, trained end to end with labels (cross-entropy
  through a linear head) with the run's own augmentations, optimizer, lr schedule, batch and number of steps; then
  probed like the others. A ceiling for what the same network, data and budget can reach. One process.
Model, augmentation and training pieces are train.py's, dataset files and frozen features plumbing.py's, imported.
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
from data import (epoch_batches, extract_features, knn_eval, load_split, normalisation,
                  split_val_error)

# -----------------------------------------------------------------------------
# config (None = the protocol's default: PROTOCOLS below); each range is checked after those are filled in
P = plumbing.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
P.add_argument("--ckpt", default="", help="train.py checkpoint (out_dir/ckpt.pt)")
P.add_argument("--protocol", default="fast", choices=["fast", "paper", "augmented"],
               help="fast: cached features, final epoch; paper: the authors' (batch 128, best test epoch, "
                    "optimistic); augmented: SimSiam's ImageNet protocol")
P.add_argument("--baseline", default="none", choices=["none", "random", "random-bn", "pixels", "supervised"],
               help="random = the checkpoint's network at random init; random-bn = the same with its BN statistics "
                    "re-estimated on the training images; pixels = raw pixels (no network); "
                    "supervised = the checkpoint's network trained with labels (same augmentations and budget)")
P.add_argument("--dataset", default=None, choices=list(T.DATASETS), help="default: the checkpoint's")
P.add_argument("--data-dir", default=None, help="default: the checkpoint's")
P.add_argument("--split", default=None, choices=["test", "val"], help="what the probe and the kNN report on: the "
               "test split, or val = the 10k training images train.py --split val held out (the probe is then fitted on "
               "the other 50k). Default: the checkpoint's --split (test for --baseline pixels)")
P.add_argument("--img-size", type=int, default=0, valid=(lambda v: v == 0 or v >= 8, "0 (the checkpoint's size) "
               "or >= 8 pixels"), help="image size the backbone sees (0 = the checkpoint's --img-size; if that is 0 "
               "too: in-memory sets as stored, streamed sets 224)")
P.add_argument("--epochs", type=int, default=None, valid=plumbing.GE1,
               help="epochs of the linear head (fast / paper: 50, augmented: 90)")
P.add_argument("--batch-size", type=int, default=None, valid=plumbing.GE1,
               help="global batch (fast: 256, paper: 128, augmented: 4096)")
P.add_argument("--lr", type=float, default=None, valid=plumbing.GT0,
               help="head lr (fast / paper: 3e-4, augmented: 0.1 x batch / 256)")
P.add_argument("--wd", type=float, default=None, valid=plumbing.GE0,
               help="head weight decay (fast / paper: 1e-3, augmented: 0)")
P.add_argument("--optimizer", default=None, choices=["adam", "sgd", "lars"],
               help="fast / paper: adam, augmented: lars")
P.add_argument("--knn-k", type=int, default=200, valid=plumbing.GE1, help="kNN: neighbours that vote")
P.add_argument("--knn-t", type=float, default=0.1, valid=plumbing.GT0,
               help="kNN: temperature of the votes' weights exp(sim / t)")
P.add_argument("--workers", type=int, default=8, valid=plumbing.GE0, help="DataLoader workers (streamed sets only)")
P.add_argument("--seed", type=int, default=0, valid=plumbing.GE0, help="seeds the head's init and batch order (and "
               "--baseline random(-bn)'s and supervised's network: the seed of the train.py run gives its very init)")
P.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
P.add_argument("--bf16", default="auto", choices=["auto", "0", "1"], help="bf16 autocast of the backbone; auto = on "
               "CUDA GPUs with native bf16, fp32 on a CPU")
P.add_argument("--channels-last", default="auto", choices=["auto", "0", "1"], help="as train.py's")
P.add_argument("--ddp-timeout", type=float, default=600, valid=(lambda v: v > 0, "> 0 seconds"),
               help="seconds a DDP collective may wait for a stalled or dead rank before the job stops (torchrun)")
P.add_argument("--out", default="", help="JSON result file (default: next to the checkpoint; --baseline pixels: out/)")
PROTOCOLS = {
    "fast": dict(optimizer="adam", lr=3e-4, wd=1e-3, epochs=50, batch_size=256),
    "paper": dict(optimizer="adam", lr=3e-4, wd=1e-3, epochs=50, batch_size=128),
    "augmented": dict(optimizer="lars", lr=None, wd=0.0, epochs=90, batch_size=4096),  # lr None: 0.1 * batch / 256
}
NO_COLOR = dict(jitter=(0, 0, 0, 0), jitter_p=0.0, gray_p=0.0, blur_p=(0.0, 0.0), solarize_p=(0.0, 0.0))


def topk(logits, y, k):
    return (logits.topk(k, dim=1).indices == y[:, None]).any(1).float().mean().item()


def shard_features(backbone, data, rank, world_size, **kw):
    """extract_features of one split, split over the DDP ranks: each rank extracts a contiguous shard, so no
    rank waits for another's long solo pass (past --ddp-timeout on ImageNet). Rank 0 gathers and returns (features,
    labels) of the whole split; the other ranks return None."""
    if world_size == 1:
        return extract_features(backbone, data, **kw)
    n = len(data[0]) if isinstance(data, tuple) else len(data)
    per = math.ceil(n / world_size)
    a, b = min(n, rank * per), min(n, (rank + 1) * per)
    part = (data[0][a:b], data[1][a:b]) if isinstance(data, tuple) else torch.utils.data.Subset(data, range(a, b))
    f, y = extract_features(backbone, part, **kw)  # (b - a, D), (b - a,)
    pad = torch.cat([f, y[:, None].to(f.dtype)], 1)  # labels ride along as a last column (exact below 2^24)
    pad = nnf.pad(pad, (0, 0, 0, per - len(pad)))  # every rank sends `per` rows
    # rank 0 gathers into one buffer (world_size * per, D + 1): rank r's rows land at r * per, so the n real rows are
    # its first n, in order, and the features are a view of it (no second or third copy of ImageNet's 10 GB)
    rows = pad.new_empty(world_size * per, pad.shape[1]) if rank == 0 else None
    dist.gather(pad, list(rows.view(world_size, per, -1).unbind(0)) if rank == 0 else None, dst=0)
    if rank:
        return None
    return rows[:n, :-1], rows[:n, -1].long()


def reestimate_bn(backbone, data, **kw):
    """--baseline random-bn: replace the BN running statistics by those of the training images, one pass in train
    mode without gradient (momentum None: the running statistics become the plain average of every batch's mean and
    unbiased variance). kw: extract_features' (mean, std, device, ctx, size, fmt, ...)."""
    bns = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momentum = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    extract_features(backbone, data, bn_pass=True, **kw)
    for m, mom in zip(bns, momentum):
        m.momentum = mom


def train_supervised(model, data, cfg, size, mean, std, device, ctx, fmt, workers):
    """--baseline supervised: the backbone (from its random init) and a linear head trained end to end with
    cross-entropy on the labelled train split; train.py's augmentation (view 0 of the run's preset, crop scale,
    jitter), optimizer settings, lr schedule, batch size and step count (--epochs and --max-steps of the run).
    Returns (the trained backbone, the number of steps)."""
    backbone = model.backbone.to(device).to(memory_format=fmt).train()
    n_cls = int(data[1].max()) + 1 if isinstance(data, tuple) else len(data.classes)
    head = nn.Linear(backbone.dim, n_cls).to(device)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = (torch.optim.SGD(params, lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["wd"])
                 if cfg["optimizer"] == "sgd" else T.LARS(params, lr=cfg["lr"], momentum=cfg["momentum"],
                                                          weight_decay=cfg["wd"]))
    aug = T.aug_of(cfg)
    if not isinstance(data, tuple):  # streamed: one crop in the workers, the colour ops on the device
        data.transform = TV.Compose([TV.RandomResizedCrop(size, scale=(cfg["crop_min"], 1.0)), TV.PILToTensor()])
    n = len(data[0]) if isinstance(data, tuple) else len(data)
    steps_per_epoch = n // cfg["batch_size"]
    if steps_per_epoch == 0:
        raise plumbing.RunError(f"--baseline supervised: the run's --batch-size {cfg['batch_size']} is larger than the {n} "
                 f"labelled training images")
    total = cfg["epochs"] * steps_per_epoch
    max_steps = min(cfg["max_steps"], total) if cfg["max_steps"] else total
    gen, step = torch.Generator(device=device), 0
    pbar = tqdm(total=max_steps, desc="supervised baseline", dynamic_ncols=True, file=sys.stdout)
    while step < max_steps:
        epoch = step // steps_per_epoch
        for x, y in epoch_batches(data, cfg["batch_size"], epoch, cfg["seed"], 0, 1, device, workers=workers):
            gen.manual_seed(T.step_seed(cfg["seed"], step, 0))
            x = T.augment(x, aug, 0, gen, size, (cfg["crop_min"], 1.0), mean, std, crop=isinstance(data, tuple))
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


def main():
    args = P.parse_args()
    for k, v in PROTOCOLS[args.protocol].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.lr is None:
        args.lr = 0.1 * args.batch_size / 256
    err = plumbing.range_error(vars(args), P.valid)  # after the protocol's defaults are filled in
    if err:
        raise plumbing.RunError(f"{err}")

    # --- DDP / device
    if "RANK" in os.environ and (args.protocol != "augmented" or args.baseline == "supervised"):
        raise plumbing.RunError("torchrun is for --protocol augmented (and not with --baseline supervised); the others run "
                 "in one process")
    ddp, ddp_rank, _, ddp_world_size, device = plumbing.init_distributed(args.device, args.ddp_timeout)
    master_process = ddp_rank == 0
    device_type = "cuda" if "cuda" in device else "cpu"
    torch.manual_seed(args.seed)
    if args.batch_size % ddp_world_size:
        raise plumbing.RunError(f"--batch-size {args.batch_size} must divide evenly over {ddp_world_size} DDP ranks")

    # --- checkpoint and data
    cfg = None
    if args.ckpt:
        ckpt = plumbing.load_checkpoint(args.ckpt, "--ckpt")
        cfg = {**vars(T.get_parser().parse_args([])), **ckpt["config"]}  # newer flags: defaults
        bad = plumbing.nonfinite(ckpt["online"])
        if bad and args.baseline == "none":
            raise plumbing.RunError(f"--ckpt {args.ckpt} holds nan/inf weights ({bad}): a diverged run, nothing to evaluate")
    elif args.baseline != "pixels":
        raise plumbing.RunError("--ckpt is needed (only --baseline pixels runs without one)")
    elif args.dataset is None:
        raise plumbing.RunError("--baseline pixels needs --dataset")
    dataset = args.dataset or cfg["dataset"]
    if args.baseline == "supervised" and dataset != cfg["dataset"]:
        raise plumbing.RunError(f"--baseline supervised trains on the run's own --dataset ({cfg['dataset']}), not {dataset}")
    out = args.out or os.path.join(os.path.dirname(args.ckpt) if args.ckpt else "out",
                                   f"eval_{args.protocol}_{args.baseline}_{dataset}.json")
    if master_process:  # the result file must be writable before minutes of work, not after
        try:
            os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
            existed = os.path.exists(out)
            open(out, "a").close()
            if not existed:  # a real write test, leaving nothing behind if the evaluation fails later
                os.remove(out)
        except OSError as e:
            raise plumbing.RunError(f"--out {out} cannot be written ({e.strerror or e})")
    data_dir = args.data_dir or (cfg["data_dir"] if cfg else "data")
    fake_size = cfg["fake_size"] if cfg else 1024
    size = args.img_size or (cfg["img_size"] if cfg else 0)  # train.py's crop size; 0 = the dataset's default
    mean, std = normalisation(dataset, device)
    split = args.split or (cfg.get("split", "test") if cfg else "test")
    if split == "val" and not T.DATASETS[dataset].val:
        raise plumbing.RunError(f"{split_val_error()}")
    splits = [load_split(dataset, data_dir, role, split, fake_size) for role in ("train", "eval")]
    if not T.DATASETS[dataset].streamed:
        splits = [(x.to(device), y.to(device)) for x, y in splits]
    size = size or (224 if T.DATASETS[dataset].streamed else splits[0][0].shape[-1])  # train.py's rule for --img-size 0
    in_chans = splits[0][0].shape[1] if not T.DATASETS[dataset].streamed else 3
    n_cls = len(splits[0].classes) if T.DATASETS[dataset].streamed else int(splits[0][1].max()) + 1

    ctx, fmt = plumbing.speed_paths(device_type, args.bf16, args.channels_last, width=cfg["width"] if cfg else 64)

    # --- the frozen backbone
    t_start, res = time.time(), {"split": split}
    if args.baseline == "pixels":
        backbone = nn.Flatten()
    else:
        model = T.build_model(cfg, in_chans)  # random init from --seed
        if args.baseline == "none":
            try:
                model.load_state_dict(ckpt["online"])
            except RuntimeError:  # e.g. --dataset with another number of channels than the checkpoint was trained on
                raise plumbing.RunError(f"--ckpt {args.ckpt} was trained on --dataset {cfg['dataset']} and does not fit "
                         f"--dataset {dataset} ({in_chans}-channel images)")
        if args.baseline == "random-bn":  # every rank passes the whole split: the same statistics on each
            reestimate_bn(model.backbone.to(device).to(memory_format=fmt), splits[0], mean=mean, std=std,
                          device=device, ctx=ctx, size=size, workers=args.workers, fmt=fmt,
                          desc="BN statistics (train)" if master_process else None)
        if args.baseline == "supervised":
            model.backbone, res["supervised_steps"] = train_supervised(model, splits[0], cfg, size, mean, std, device,
                                                                       ctx, fmt, args.workers)
        backbone = model.backbone
    backbone = backbone.to(device).eval().requires_grad_(False).to(memory_format=fmt)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}

    # --- features (sharded over the ranks under torchrun) and kNN, on rank 0
    feats = [shard_features(backbone, d, ddp_rank, ddp_world_size, mean=mean, std=std, device=device, ctx=ctx,
                            size=size, workers=args.workers, desc=f"features ({s})" if master_process else None,
                            fmt=fmt) for d, s in zip(splits, ("train", "test"))]
    if master_process:
        (train_f, train_y), (test_f, test_y) = feats
        res["knn_top1"] = knn_eval(train_f, train_y, test_f, test_y, args.knn_k, args.knn_t)
    del feats

    # --- the linear head
    dim = backbone(torch.zeros(2, in_chans, size, size, device=device).contiguous(memory_format=fmt)).shape[1]
    head = nn.Linear(dim, n_cls).to(device)
    if args.protocol == "augmented":  # SimSiam's init of the linear layer
        nn.init.normal_(head.weight, std=0.01)
        nn.init.zeros_(head.bias)
    params = head.parameters()
    optimizer = {"adam": lambda: torch.optim.Adam(params, lr=args.lr, weight_decay=args.wd),
                 "sgd": lambda: torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.wd, nesterov=True),
                 "lars": lambda: T.LARS(params, lr=args.lr, weight_decay=args.wd)}[args.optimizer]()
    ddp_head = DDP(head) if ddp else head  # under torchrun the head's gradients are averaged over ranks
    gen = torch.Generator(device=device)

    if args.protocol != "augmented":  # logistic regression on standardised cached features (the paper's code)
        mu, sd = train_f.mean(0), train_f.std(0).clamp(min=1e-6)
        train_f, test_f = (train_f - mu) / sd, (test_f - mu) / sd
        gen.manual_seed(args.seed)
        test_acc = []  # test top-1 after every epoch: --protocol paper reports the best one
        pbar = tqdm(range(args.epochs), "linear probe", dynamic_ncols=True, file=sys.stdout)
        for epoch in pbar:
            perm = torch.randperm(len(train_f), device=device, generator=gen)
            loss_sum, hits = torch.zeros((), device=device), torch.zeros((), device=device)  # summed on the device
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
            pbar.set_postfix(loss=f"{loss_sum.item() / len(perm):.4f}", train_acc=f"{hits.item() / len(perm):.4f}")
        with torch.no_grad():
            logits = head(test_f)
    else:  # augmented: crop + flip per sample on the device, features of the frozen backbone, cosine lr
        if master_process:
            del train_f, train_y  # kept only for the kNN (10 GB on ImageNet)
        train_data = splits[0]
        if T.DATASETS[dataset].streamed:
            train_data.transform = TV.Compose([TV.RandomResizedCrop(size), TV.PILToTensor()])
        n = len(train_data[0]) if isinstance(train_data, tuple) else len(train_data)
        steps_per_epoch = n // args.batch_size
        if steps_per_epoch == 0:
            raise plumbing.RunError(f"--batch-size {args.batch_size} is larger than the {n} training images")
        step, total = 0, args.epochs * steps_per_epoch
        pbar = tqdm(total=total, desc="linear probe (augmented)", disable=not master_process, dynamic_ncols=True,
                    file=sys.stdout)
        for epoch in range(args.epochs):
            for x, y in epoch_batches(train_data, args.batch_size, epoch, args.seed, ddp_rank,
                                               ddp_world_size, device, workers=args.workers):
                gen.manual_seed(T.step_seed(args.seed, step, ddp_rank))
                x = T.augment(x, NO_COLOR, 0, gen, size, (0.08, 1.0), mean, std, crop=not T.DATASETS[dataset].streamed)
                with torch.no_grad(), ctx:
                    f = backbone(x.contiguous(memory_format=fmt))
                for g in optimizer.param_groups:
                    g["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * step / total))
                loss = nnf.cross_entropy(ddp_head(f.float()), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                pbar.update(1)
                if master_process and step % 50 == 0:  # a host sync, so not every step
                    pbar.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}")
        pbar.close()
        with torch.no_grad():
            logits = head(test_f) if master_process else None

    # --- report (rank 0), after checking that the backbone did not move
    after = backbone.state_dict()
    unchanged = all(torch.equal(before[k], after[k]) for k in before)
    if not unchanged:
        raise plumbing.RunError("the backbone changed during evaluation (it must stay frozen)")
    if master_process:
        res["top1"] = topk(logits, test_y, 1)  # the final epoch
        if args.protocol == "paper":  # the authors' number: the best test epoch (optimistic), and which one
            res.update(top1_final=res["top1"], top1=max(test_acc), best_epoch=test_acc.index(max(test_acc)) + 1,
                       test_curve=test_acc)  # every epoch's test top-1, so the choice can be checked
        res["final_train_loss"] = loss.item()
        if n_cls > 10:
            res["top5"] = topk(logits, test_y, 5)
        res.update(dataset=dataset, ckpt=args.ckpt, baseline=args.baseline,
                   protocol=args.protocol, epochs=args.epochs, optimizer=args.optimizer,
                   lr=args.lr, wd=args.wd, batch_size=args.batch_size, knn_k=args.knn_k, knn_t=args.knn_t,
                   backbone_unchanged=unchanged, seconds=round(time.time() - t_start, 1), feature_dim=dim)
        top5 = f" top5={100 * res['top5']:.2f}" if "top5" in res else ""
        best = f" (best epoch {res['best_epoch']}; final {100 * res['top1_final']:.2f})" if "best_epoch" in res else ""
        print(f"RESULT dataset={dataset} baseline={args.baseline} protocol={args.protocol} "
              f"top1={100 * res['top1']:.2f}{best}{top5} knn_top1={100 * res['knn_top1']:.2f} "
              f"epochs={args.epochs} seconds={res['seconds']} ckpt={args.ckpt or '-'} json={out}", flush=True)
        with open(out, "w") as fh:  # after the RESULT line: a failure here cannot lose the numbers
            json.dump(res, fh, indent=1)
    if ddp:  # past gloo's random abort at interpreter exit (plumbing.end_distributed)
        plumbing.end_distributed()


if __name__ == "__main__":
    try:
        main()
    except plumbing.RunError as e:  # a bad flag, path or file: one line on stderr, no traceback
        sys.exit(f"error: {e}")
