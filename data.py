"""
Data: the datasets as records (DATASETS: files, shape, size, normalisation, augmentation preset,
stem), reading their files into (uint8 images, labels) or an ImageFolder for the streamed sets
(missing or damaged files stop with one line naming --data-dir and the layout expected there), the
--split val hold-out, each epoch's batch order on every rank, the streamed sets' crops, frozen
features and their kNN. train.py, eval_linear.py, bench.py and paper/ read data only through here.

"""
import gzip
import math
import os
import pickle
import shutil
import sys
import zlib
from typing import NamedTuple

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as nnf
from tqdm import tqdm

from directpred import full_fp32
from plumbing import RunError, seed_of

# -----------------------------------------------------------------------------
# dataset files: read into (uint8 images, labels), or an ImageFolder for the streamed sets; missing
# or damaged files stop with one line naming --data-dir and the layout expected there. The --split
# val hold-out, the streamed sets' crops, frozen features and their kNN

class Dataset(NamedTuple):
    """One --dataset: every fact train.py, eval_linear.py, bench.py and paper/ use about it, stated
    here once."""
    folder: str  # what load_dataset reads under --data-dir ("" = nothing: made in memory)
    files: str  # the layout expected there, named in the one-line error when it is not
    shape: tuple  # (channels, stored size in pixels); the streamed sets' 224 is their default crop
    # images train.py pretrains on with --split test (0: whatever the folder / --fake-size holds)
    n_train: int
    # per-channel normalisation (CIFAR-10, STL-10: the authors' data/transforms.py at
    # luckmatters@671fca5)
    mean: tuple
    std: tuple
    aug: str  # train.AUG's preset for --aug auto
    # the ResNet stem of --stem auto (cifar: 3x3 stride-1 conv1, no maxpool, for small images)
    stem: str
    streamed: bool = False  # too large for memory: decoded and cropped in DataLoader workers
    val: bool = False  # --split val can hold out labelled training images (val_mask)


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FMNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
FMNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte")
DATASETS = {
    "cifar10": Dataset("cifar-10-batches-py",
                       "{d}/cifar-10-batches-py/ with data_batch_1..5 and test_batch (the python "
                       "pickle version)", (3, 32), 50_000,
                       (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010),
                       "cifar", "cifar", val=True),
    "cifar100": Dataset("cifar-100-python",
                        "{d}/cifar-100-python/ with train and test (the python pickle version)",
                        (3, 32), 50_000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                        "cifar", "cifar", val=True),
    "stl10": Dataset("stl10_binary",
                     "{d}/stl10_binary/ with train_X.bin, train_y.bin, test_X.bin, test_y.bin, "
                     "unlabeled_X.bin", (3, 96), 105_000, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "stl10",
                     "imagenet"),
    "fashion-mnist": Dataset(os.path.join("FashionMNIST", "raw"),
                             "{d}/FashionMNIST/raw/ with the four *-ubyte(.gz) files (or: apt-get "
                             f"install dataset-fashion-mnist, found in {FMNIST_SYSTEM_DIR})",
                             (1, 28), 60_000, (0.2860,), (0.3530,), "cifar", "cifar", val=True),
    "imagenet": Dataset("train",
                        "{d}/train/<class>/*.JPEG and {d}/val/<class>/*.JPEG (val sorted into "
                        "class folders)",
                        (3, 224), 1_281_167, IMAGENET_MEAN, IMAGENET_STD, "imagenet", "imagenet",
                        streamed=True),
    "imagefolder": Dataset("train", "{d}/train/<class>/<image> and {d}/val/<class>/<image>",
                           (3, 224), 0, IMAGENET_MEAN, IMAGENET_STD, "imagenet", "imagenet",
                           streamed=True),
    "fake": Dataset("", "nothing (made in memory)", (3, 32), 0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                    "cifar", "cifar", val=True),
}


def split_val_error():
    """The one line of a --split val on a dataset it cannot hold images out of."""
    which = " / ".join(n for n, d in DATASETS.items() if d.val)
    return f"--split val holds out labelled training images: it needs --dataset {which}"


def fmnist_missing(data_dir):
    """The Fashion-MNIST files load_dataset would not find (plain or .gz, under DIR/FashionMNIST/raw
    or the Debian package's folder), so that a caller can say so before torchvision tries a
    download."""
    where = (os.path.join(data_dir, DATASETS["fashion-mnist"].folder), FMNIST_SYSTEM_DIR)
    return [f for f in FMNIST_FILES if not any(os.path.exists(os.path.join(d, f + gz))
                                               for d in where for gz in ("", ".gz"))]


def load_dataset(name, data_dir, split, fake_size=1024):
    """split: pretrain | train | test. Returns (images uint8 (N, C, H, W), labels long (N,)) for the
    small sets, or a torchvision ImageFolder for the streamed ones. Exits with one line if the files
    are missing."""
    train = split != "test"
    if name == "fake":  # random images, labels 0..9; a different draw for the test split
        g = torch.Generator().manual_seed(1234 + (split == "test"))
        return torch.randint(0, 256, (fake_size, 3, 32, 32), dtype=torch.uint8, generator=g), \
            torch.randint(0, 10, (fake_size,), generator=g)
    # here, not at the top: it imports torch._dynamo, seconds of every start that needs no file
    import torchvision
    tv = torchvision.datasets
    try:
        if DATASETS[name].streamed:
            return tv.ImageFolder(os.path.join(data_dir, "train" if train else "val"),
                                  loader=load_image)
        # the python pickle batches, read as torchvision reads them
        if name in ("cifar10", "cifar100"):
            base = os.path.join(data_dir, DATASETS[name].folder)
            if not os.path.isdir(base):  # not on disk: let torchvision download it (where it can)
                (tv.CIFAR10 if name == "cifar10" else tv.CIFAR100)(data_dir, download=True)
            if name == "cifar10":
                files = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
            else:
                files = ["train"] if train else ["test"]
            batches = [pickle.load(open(os.path.join(base, f), "rb"),
                                   encoding="latin1") for f in files]
            x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32)
            key = "labels" if name == "cifar10" else "fine_labels"
            y = np.concatenate([b[key] for b in batches])
            if len(x) != len(y):
                raise ValueError(f"{len(x)} images but {len(y)} labels in {base}")
            return torch.from_numpy(x), torch.from_numpy(y).long()
        # binary files; pretraining uses train + unlabeled (105k images, as Tian et al.), y = -1
        if name == "stl10":
            base = os.path.join(data_dir, DATASETS[name].folder)
            if not os.path.isdir(base):
                tv.STL10(data_dir, download=True)
            parts = {"pretrain": ["train", "unlabeled"], "train": ["train"],
                     "test": ["test"]}[split]
            xs, ys = [], []
            for p in parts:
                x = np.fromfile(os.path.join(base, f"{p}_X.bin"), np.uint8)
                x = x.reshape(-1, 3, 96, 96).transpose(0, 1, 3, 2)
                y = np.fromfile(os.path.join(base, f"{p}_y.bin"), np.uint8).astype(np.int64) - 1 \
                    if p != "unlabeled" else np.full(len(x), -1)  # labels on disk are 1..10
                xs.append(x)
                ys.append(y)
            x, y = np.concatenate(xs), np.concatenate(ys)
            if len(x) != len(y):
                raise ValueError(f"{len(x)} images but {len(y)} labels in {base}")
            return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
        if name == "fashion-mnist":
            raw = os.path.join(data_dir, DATASETS[name].folder)
            for f in FMNIST_FILES:
                places = (os.path.join(raw, f + ".gz"), os.path.join(FMNIST_SYSTEM_DIR, f + ".gz"))
                gz = next((p for p in places if os.path.exists(p)), None)
                # unpack .gz (ours or the Debian package's)
                if not os.path.exists(os.path.join(raw, f)) and gz:
                    os.makedirs(raw, exist_ok=True)
                    # unpacked to a temp file, then renamed: a kill never leaves a partial file
                    # behind, and runs that unpack at once each rename their own complete copy
                    tmp = os.path.join(raw, f"{f}.{os.getpid()}.tmp")
                    try:
                        with gzip.open(gz) as src, open(tmp, "wb") as dst:
                            shutil.copyfileobj(src, dst)
                    except (OSError, EOFError, zlib.error) as e:
                        os.remove(tmp)
                        raise RunError(f"--dataset fashion-mnist: {gz} is not a complete gzip file "
                                       f"({e})")
                    os.replace(tmp, os.path.join(raw, f))
            ds = tv.FashionMNIST(data_dir, train=train, download=not os.path.isdir(raw))
            return ds.data[:, None].contiguous(), ds.targets.long()
    except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError,
            AssertionError) as e:  # (torchvision checks the MNIST file format with assert)
        layout = DATASETS[name].files.format(d=data_dir)
        raise RunError(f"--dataset {name}: no usable data under --data-dir {data_dir!r} ({e}). "
                       f"Expected: {layout}")
    raise ValueError(name)


# --split val: 10k of Fashion-MNIST's 60k training images (1/6 of smaller sets)
VAL_SIZE, VAL_SEED = 10_000, 1234


def val_mask(labels):
    """--split val: which images of a labelled training split are held out for validation. VAL_SIZE
    of them (at most 1/6 of the split), stratified by class (each class gives its share), drawn once
    from a fixed seed, so every run, probe and machine holds out the same images. labels: (N,) ->
    bool (N,)."""
    g = torch.Generator().manual_seed(VAL_SEED)
    n_val = min(VAL_SIZE, len(labels) // 6)
    mask = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        idx = (labels == c).nonzero()[:, 0]
        mask[idx[torch.randperm(len(idx),
                                generator=g)[:round(n_val * len(idx) / len(labels))]]] = True
    return mask


def load_split(name, data_dir, role, split="test", fake_size=1024):
    """The images of one role: pretrain (what train.py trains on), train (the labelled set the probe
    and the kNN memory are fitted on) or eval (what the kNN monitor and the probe report). --split
    test: the dataset's own splits, eval = its test split. --split val: eval = the held-out images
    (val_mask) of the training split, pretrain and train = the rest of it; the test split is not
    read."""
    if split == "test":
        return load_dataset(name, data_dir, "test" if role == "eval" else role, fake_size)
    x, y = load_dataset(name, data_dir, "train", fake_size)
    held_out = val_mask(y)
    return (x[held_out], y[held_out]) if role == "eval" else (x[~held_out], y[~held_out])


def normalisation(dataset, device):
    """The dataset's per-channel (mean, std), each (C, 1, 1) on the device: made once, outside the
    loop."""
    return tuple(torch.tensor(v, device=device)[:, None, None] for v in (DATASETS[dataset].mean,
                                                                         DATASETS[dataset].std))


def epoch_indices(n, batch_size, epoch, seed, rank, world_size):
    """This rank's sample indices for one epoch: a fresh permutation of all n (the same on every
    rank, from seed and epoch), cut into global batches (last partial batch dropped), each split
    into world_size slices."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    steps = n // batch_size
    return perm[: steps * batch_size].view(steps, world_size, -1)[:, rank]  # (steps, B_local)


def in_memory(data):
    """Whether a set is in memory, (images, labels) tensors, rather than streamed from files."""
    return isinstance(data, tuple)


def n_images(data):
    return len(data[0]) if in_memory(data) else len(data)


def epoch_batches(data, batch_size, epoch, seed, rank, world_size, device, start=0, workers=8):
    """This rank's batches (x, y) of one epoch, on the device, from batch `start` on. data: (x uint8
    (N, C, H, W), y (N,)) tensors already on the device (indexed in place), or a Dataset streamed
    through a DataLoader (x is then whatever its transform returns, e.g. TwoCrops' (B, 2, C, H,
    W)), each sample's random transform drawn from its own seed (Seeded)."""
    n = n_images(data)
    idx = epoch_indices(n, batch_size, epoch, seed, rank, world_size)[start:]  # (steps, B_local)
    if in_memory(data):
        for i in idx.to(device):
            yield data[0][i], data[1][i]
        return
    # each sample's place in the epoch's global order, laid out as idx: its seed's last part
    place = torch.arange(n // batch_size * batch_size).view(-1, world_size, idx.shape[1])
    place = place[:, rank][start:]
    keys = [(i, seed_of(seed, epoch, p)) for i, p in zip(idx.flatten().tolist(),
                                                          place.flatten().tolist())]
    # its own generator: the loader's draw of worker seeds leaves the global RNG (in the
    # checkpoint) as it was, and the crops take nothing from it
    loader = torch.utils.data.DataLoader(Seeded(data), batch_size=idx.shape[1], sampler=keys,
                                         num_workers=workers, pin_memory="cuda" in str(device),
                                         generator=torch.Generator().manual_seed(seed))
    for x, y in image_batches(loader):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


class Seeded(torch.utils.data.Dataset):
    """A streamed set read as dataset[(index, seed)]: the sample's random transform (two crops, a
    flip) draws from torch's RNG reseeded with `seed`, so a sample's crops depend on (run seed,
    epoch, its place in the epoch) alone: ranks draw their own, and a resume, another number of
    workers or another machine draws the same."""

    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        index, seed = key
        with torch.random.fork_rng(devices=[]):  # the process's own RNG state is left as it was
            torch.manual_seed(seed)
            return self.data[index]


class BadImage(ValueError):
    """An image file that does not decode. Raised in a DataLoader worker, re-raised in the main
    process."""


def load_image(path):
    """ImageFolder's loader, decoding in full here so that a corrupt or truncated file is named."""
    try:
        with open(path, "rb") as fh:
            return PIL.Image.open(fh).convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f"cannot decode image {path} ({e})") from None


def image_batches(loader):
    """Iterate a DataLoader over an ImageFolder; a file that does not decode stops the run with one
    line naming it."""
    try:
        yield from loader
    except BadImage as e:  # from a worker: wrapped in its traceback, whose last line is ours
        raise RunError(f"--data-dir: {str(e).strip().splitlines()[-1].split('BadImage: ', 1)[-1]}")


class TwoCrops:
    """Streamed sets: decode, then two independent RandomResizedCrops to uint8 (the colour ops run
    on the device)."""

    def __init__(self, size, scale):
        import torchvision  # (see load_dataset)
        T = torchvision.transforms
        self.crop = T.Compose([T.RandomResizedCrop(size, scale=scale), T.PILToTensor()])

    def __call__(self, img):
        img = img.convert("RGB")
        return torch.stack([self.crop(img), self.crop(img)])  # (2, 3, size, size) uint8


class EvalCrop:
    """Streamed sets, evaluation: resize to size * 256/224, centre crop (the standard ImageNet test
    view), uint8."""

    def __init__(self, size):
        import torchvision  # (see load_dataset)
        T = torchvision.transforms
        self.t = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.PILToTensor()])

    def __call__(self, img):
        return self.t(img.convert("RGB"))


@torch.no_grad()
def extract_features(backbone, data, mean, std, device, ctx, size=None, batch_size=512, workers=8,
                     desc=None, fmt=torch.contiguous_format, bn_pass=False):
    """Frozen features of a labelled split, no augmentation, backbone in eval mode (BN running
    statistics). data: (x uint8 (N, C, H, W), y (N,)) or an ImageFolder (or a Subset of one). size:
    the training crop size; in-memory images are resized to it when it differs from theirs
    (--img-size), None = as stored (224 for an ImageFolder). desc: show a progress bar with this
    title. fmt: the memory format the backbone runs in. bn_pass: the same pass in train mode
    instead, keeping nothing: its only effect is on the BN running statistics
    (eval_linear.reestimate_bn). Returns (features (N, D) float32, labels (N,)) on device (bn_pass:
    None)."""
    was_training = backbone.training
    backbone.train(bn_pass)
    if in_memory(data):
        x, y = data
        batches = ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size))
    else:  # an ImageFolder, or a Subset of one (eval_linear's shard of it)
        folder = data.dataset if isinstance(data, torch.utils.data.Subset) else data
        folder.transform = EvalCrop(size or 224)
        batches = image_batches(torch.utils.data.DataLoader(data, batch_size=batch_size,
                                                            num_workers=workers,
                                                            pin_memory="cuda" in str(device)))
    feats, labels = [], []
    n_batches = math.ceil(n_images(data) / batch_size)
    for xb, yb in tqdm(batches, desc, total=n_batches, disable=desc is None, leave=False,
                       dynamic_ncols=True, file=sys.stdout):
        xb = xb.to(device, non_blocking=True).float() / 255  # (pinned when streamed to a GPU)
        # the views were resized to size in training: the same scale here
        if size and xb.shape[-1] != size:
            xb = nnf.interpolate(xb, size=(size, size), mode="bilinear", align_corners=False)
        xb = ((xb - mean) / std).contiguous(memory_format=fmt)
        with ctx:
            f = backbone(xb).float()
        if not bn_pass:
            feats.append(f)
            labels.append(yb.to(device, non_blocking=True))
    backbone.train(was_training)
    return None if bn_pass else (torch.cat(feats), torch.cat(labels))


@torch.no_grad()
def knn_eval(train_f, train_y, test_f, test_y, k=200, t=0.1, chunk=1024):
    """Weighted kNN top-1 (Wu et al. 2018; the usual SSL monitor): cosine similarity to the k
    nearest training features, each neighbour votes for its class with weight exp(sim / t). The
    similarities are full fp32 (no TF32, whatever the caller set), so the monitor in train.py and
    eval_linear.py give the same number."""
    n_cls = int(train_y.max()) + 1
    train_f, test_f = nnf.normalize(train_f, dim=1), nnf.normalize(test_f, dim=1)
    correct = 0
    # one (chunk, N) buffer for every chunk's similarities: a new one each time is fresh pages to
    # fault in (docs/reference.md, Speed)
    sims = torch.empty(min(chunk, len(test_f)), len(train_f), device=train_f.device)
    with full_fp32(train_f.device.type):
        for i in range(0, len(test_f), chunk):
            q = test_f[i:i + chunk]  # (b, D)
            sim, idx = torch.mm(q, train_f.T, out=sims[:len(q)]).topk(min(k, len(train_f)),
                                                                       dim=1)  # (b, k)
            votes = torch.zeros(len(sim), n_cls, device=sim.device)  # (b, classes)
            votes.scatter_add_(1, train_y[idx], (sim / t).exp())
            correct += (votes.argmax(1) == test_y[i:i + chunk]).sum().item()
    return correct / len(test_f)




# -----------------------------------------------------------------------------
# what train.py reads: the pretraining set, and the kNN monitor's two labelled splits


def train_set(cfg, device):
    """The images a run pretrains on: small sets as one uint8 tensor resident on the device,
    ImageNet-size sets as an ImageFolder whose DataLoader workers decode two crops. Returns (data,
    n_train, in_chans, size): data is (images (N, C, H, W) uint8, labels (N,)) or the ImageFolder;
    size the crop size (--img-size, else the images')."""
    if DATASETS[cfg["dataset"]].streamed:
        size = cfg["img_size"] or 224
        data = load_dataset(cfg["dataset"], cfg["data_dir"], "pretrain")
        data.transform = TwoCrops(size, (cfg["crop_min"], 1.0))
        return data, len(data), 3, size
    images, labels = load_split(cfg["dataset"], cfg["data_dir"], "pretrain", cfg["split"],
                                cfg["fake_size"])
    images, labels = images.to(device), labels.to(device)
    return (images, labels), images.shape[0], images.shape[1], cfg["img_size"] or images.shape[-1]


class KnnMonitor:
    """The kNN monitor of a run (rank 0): kNN top-1 of a backbone's frozen features, the labelled
    training split as the memory and the split --split names as the queries, the same evaluation as
    eval_linear.py's kNN."""

    def __init__(self, cfg, data, device, mean, std, ctx, size, fmt):
        """data: train_set's; the other arguments as extract_features takes them."""
        if DATASETS[cfg["dataset"]].streamed:
            self.sets = tuple(load_dataset(cfg["dataset"], cfg["data_dir"], s)
                              for s in ("train", "test"))
        else:
            images, labels = data
            keep = labels >= 0  # STL-10's unlabeled images have y = -1
            x_test, y_test = load_split(cfg["dataset"], cfg["data_dir"], "eval", cfg["split"],
                                        cfg["fake_size"])
            self.sets = ((images[keep], labels[keep]), (x_test.to(device), y_test.to(device)))
        self.kw = dict(mean=mean, std=std, device=device, ctx=ctx, size=size,
                       workers=cfg["workers"], fmt=fmt)

    def __call__(self, backbone):
        return knn_eval(*extract_features(backbone, self.sets[0], **self.kw),
                        *extract_features(backbone, self.sets[1], **self.kw))
