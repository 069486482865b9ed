"""`catdog export --format onnx` checked in ONNX Runtime, beside catdog's own logits.

Exports MODEL twice (normalised input, and rgb8 with the preprocessing in the graph), runs
onnx.checker (full check, with shape inference) on both, then compares ONNX Runtime's logits
with those of `catdog predict --json --precision fp32`:
- normalised: every photo is first resized (by PIL) to an exact `resize x resize` PNG, which
  catdog's own resize leaves as it is, so both sides crop and normalise the same pixels: the
  logits must agree to 1e-4 relative (L2, per photo), in one batch and one at a time;
- rgb8: the original photos, decoded by PIL and fed as uint8; the difference includes PIL's
  JPEG decoder against catdog's, and is reported rather than required.
Usage: python bench/onnx_check.py CATDOG_BINARY MODEL PHOTO...
"""
import json, os, subprocess, sys, tempfile
import numpy as np, onnx, onnxruntime as ort
from PIL import Image

catdog, model, photos = sys.argv[1], sys.argv[2], sys.argv[3:]
tmp = tempfile.mkdtemp()


def export(name, *extra):
    out = os.path.join(tmp, name)
    subprocess.run([catdog, "export", model, "--format", "onnx", "--out", out, *extra],
                   check=True, stdout=subprocess.DEVNULL)
    onnx.checker.check_model(out, full_check=True)
    m = onnx.load(out)
    print(f"{name}: onnx.checker ok (full check); opset {m.opset_import[0].version}, "
          f"{os.path.getsize(out) / 1e6:.1f} MB, inputs "
          f"{[(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in m.graph.input]}")
    return out, {p.key: p.value for p in m.metadata_props}


def catdog_logits(files):
    out = subprocess.run([catdog, "predict", model, *files, "--json", "--decision", "argmax",
                          "--precision", "fp32"], check=True, capture_output=True, text=True)
    return np.array([json.loads(line)["logits"] for line in out.stdout.splitlines()], np.float32)


def worst(got, want):
    return max(np.linalg.norm(g - w) / np.linalg.norm(w) for g, w in zip(got, want))


path, meta = export("model.onnx")
print("metadata keys:", sorted(meta))
p = json.loads(meta["preprocessing"])
r, s = p["resize"], p["image_size"]
mean, std = np.array(p["mean"], np.float32), np.array(p["std"], np.float32)
squares = []
for i, photo in enumerate(photos):
    square = os.path.join(tmp, f"{i}.png")
    Image.open(photo).convert("RGB").resize((r, r), Image.BILINEAR).save(square)
    squares.append(square)
top = round((r - s) / 2)  # half to even, as catdog and torchvision round
# catdog's arithmetic in float32: v / 255, minus mean, over std.
batch = np.stack([
    ((np.asarray(Image.open(f), np.float32)[top:top + s, top:top + s] / np.float32(255) - mean) / std)
    .transpose(2, 0, 1) for f in squares])
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
want = catdog_logits(squares)
batched = session.run(["logits"], {"input": batch})[0]
single = np.concatenate([session.run(["logits"], {"input": x[None]})[0] for x in batch])
normalised = max(worst(batched, want), worst(single, want))
print(f"normalised, {len(photos)} photos: max relative L2 of the logits vs catdog: "
      f"batch {len(photos)}: {worst(batched, want):.2e}, batch 1: {worst(single, want):.2e}")
probabilities = session.run(["probabilities"], {"input": batch})[0]
print(f"  probabilities sum to 1 within {np.abs(probabilities.sum(1) - 1).max():.1e}; "
      f"temperature {meta['temperature']}")

path, _ = export("model-rgb8.onnx", "--input", "rgb8")
session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
want = catdog_logits(photos)
got = np.concatenate([session.run(["logits"], {"image": np.asarray(Image.open(f).convert("RGB"))})[0]
                      for f in photos])
same = int((got.argmax(1) == want.argmax(1)).sum())
print(f"rgb8, {len(photos)} original photos (PIL's JPEG decoder): max relative L2 of the logits "
      f"vs catdog {worst(got, want):.2e}, same class for {same} of {len(photos)}")
print("PASS" if normalised < 1e-4 else "FAIL")
sys.exit(0 if normalised < 1e-4 else 1)
