"""The seed recipe in plain PyTorch + torchvision: what catdog is compared with.

Usage: python pytorch_recipe.py MANIFEST WEIGHTS [--mode finetune|frozen]
           [--epochs 5] [--batch-size 32] [--lr 1e-3] [--seed 42] [--workers 2]
           [--image-size 224]

MANIFEST is a catdog manifest (`catdog split`, or RUN/manifest.json of a
training run), so that this script trains, validates and tests on exactly the
files catdog uses. WEIGHTS is a torchvision ResNet-18 state dict (.pth).

The recipe is catdog's defaults, written as a notebook would: torchvision's
eval transform (Resize(256), CenterCrop(224), ToTensor, Normalize; at another
--image-size the same 256:224 ratio, as catdog's --image-size) for every split, since catdog does not augment by default; a DataLoader with 2 workers,
training order shuffled every epoch; a new 2-class head; cross-entropy; Adam
(lr 1e-3, PyTorch's betas and eps); train and validation loss and accuracy
every epoch; then the checkpoint with the best validation accuracy (ties: the
lower validation loss) on the test split.

Modes: `finetune` trains every layer (batch norm in training mode while
training). `frozen` trains only the head: the backbone gets no gradients and
stays in eval mode, so its batch norms use their running statistics, as in
catdog's frozen mode; the backbone still runs on every photo every epoch.

Per-epoch lines go to stderr; the last line on stdout is one JSON object:
mode, seconds (from start to the test result, imports excluded), images per
split, best_epoch, test_accuracy, test_loss (mean of -ln p(true class), p
clamped to at least 1e-7 as catdog does), history (one object per epoch).
"""
import argparse
import copy
import json
import os
import sys
import time

try:
    import torch
    import torchvision
    from PIL import Image
    from torchvision import transforms as T
except ImportError as e:
    sys.exit(f"this Python cannot run the recipe ({e}); install torch and torchvision: "
             f"{sys.executable} -m pip install torch torchvision")

MIN_PROBABILITY = 1e-7


class Photos(torch.utils.data.Dataset):
    def __init__(self, samples, size):
        self.samples = samples
        self.t = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        return self.t(Image.open(path).convert("RGB")), label


def read_manifest(path):
    with open(path) as f:
        m = json.load(f)
    classes = m["classes"]
    splits = {"train": [], "val": [], "test": []}
    for entry in m["files"]:
        splits[entry["split"]].append(
            (os.path.join(m["root"], entry["path"]), classes.index(entry["label"])))
    return classes, splits


def run_epoch(model, loader, optimizer=None):
    """One pass; trains when given an optimizer. Returns mean loss and accuracy."""
    lossf = torch.nn.CrossEntropyLoss()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.set_grad_enabled(optimizer is not None):
        for x, y in loader:
            logits = model(x)
            loss = lossf(logits, y)
            if optimizer is not None:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            seen += len(y)
    return loss_sum / seen, correct / seen


def test(model, loader):
    model.eval()
    loss_sum, correct, seen = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            p = model(x).softmax(1)
            p_true = p[torch.arange(len(y)), y].clamp(min=MIN_PROBABILITY)
            loss_sum += -p_true.log().sum().item()
            correct += (p.argmax(1) == y).sum().item()
            seen += len(y)
    return loss_sum / seen, correct / seen


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest")
    ap.add_argument("weights")
    ap.add_argument("--mode", choices=["finetune", "frozen"], default="finetune")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--image-size", type=int, default=224)
    a = ap.parse_args()
    start = time.perf_counter()
    torch.manual_seed(a.seed)

    classes, splits = read_manifest(a.manifest)
    loaders = {
        name: torch.utils.data.DataLoader(
            Photos(samples, a.image_size), batch_size=a.batch_size, shuffle=name == "train",
            num_workers=a.workers, generator=torch.Generator().manual_seed(a.seed))
        for name, samples in splits.items()
    }

    model = torchvision.models.resnet18(weights=None)
    model.load_state_dict(torch.load(a.weights, map_location="cpu", weights_only=True))
    if a.mode == "frozen":
        for p in model.parameters():
            p.requires_grad = False
    model.fc = torch.nn.Linear(model.fc.in_features, len(classes))
    optimizer = torch.optim.Adam((p for p in model.parameters() if p.requires_grad), lr=a.lr)

    history, best, best_state = [], None, None
    for epoch in range(1, a.epochs + 1):
        t = time.perf_counter()
        # Frozen: batch norm keeps its running statistics while the head trains.
        model.train(a.mode == "finetune")
        train_loss, train_acc = run_epoch(model, loaders["train"], optimizer)
        model.eval()
        val_loss, val_acc = run_epoch(model, loaders["val"])
        record = dict(epoch=epoch, train_loss=train_loss, train_acc=train_acc,
                      val_loss=val_loss, val_acc=val_acc, seconds=time.perf_counter() - t)
        history.append(record)
        print(f"epoch {epoch}/{a.epochs}: train loss {train_loss:.4f} acc {100 * train_acc:.2f}% | "
              f"val loss {val_loss:.4f} acc {100 * val_acc:.2f}% | {record['seconds']:.1f}s",
              file=sys.stderr, flush=True)
        if best is None or (val_acc, -val_loss) > (best["val_acc"], -best["val_loss"]):
            best, best_state = record, copy.deepcopy(model.state_dict())

    model.load_state_dict(best_state)
    test_loss, test_acc = test(model, loaders["test"])
    print(json.dumps(dict(
        mode=a.mode, torch=torch.__version__, torchvision=torchvision.__version__,
        threads=torch.get_num_threads(), seconds=time.perf_counter() - start,
        images={name: len(s) for name, s in splits.items()}, best_epoch=best["epoch"],
        test_accuracy=test_acc, test_loss=test_loss, history=history)))


if __name__ == "__main__":
    main()
