"""How far PyTorch's own fp32 lands from float64 on train_golden.json's recipe.

A change of summation order alone (float64, one thread, channels_last) moves the step-1
gradients and, through Adam's sign-like first steps, the step-2 and step-3 losses. These
spreads are the floor for any fp32 implementation compared with the golden file.
Usage: python bench/golden_sensitivity.py ../shared/golden/resnet18
"""
import json, os, sys
import numpy as np, torch, torchvision

g = sys.argv[1]
gold = json.load(open(os.path.join(g, "train_golden.json")))
x0 = torch.from_numpy(np.load(os.path.join(g, "input.npy")))
head0 = torch.from_numpy(np.load(os.path.join(g, "head_init.npy")))
y = torch.tensor(gold["labels"])


def run(dtype=torch.float32, channels_last=False, threads=2):
    torch.set_num_threads(threads)
    m = torchvision.models.resnet18()
    m.load_state_dict(torch.load(os.path.join(g, "resnet18.pth")))
    m.fc = torch.nn.Linear(512, 2)
    with torch.no_grad():
        m.fc.weight.copy_(head0[:, :512])
        m.fc.bias.copy_(head0[:, 512])
    m = m.to(dtype).train()
    x = x0.to(dtype)
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    losses, grads = [], None
    for step in range(3):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(m(x), y)
        loss.backward()
        losses.append(loss.item())
        if step == 0:
            grads = {n: p.grad.double().flatten()[gold["sample_indices"][n]].numpy()
                     for n, p in m.named_parameters()}
        opt.step()
    return losses, grads


def relative_l2(a, b):
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


ref_losses, ref_grads = run(torch.float64)
print("float64 losses", ["%.6g" % v for v in ref_losses])
rows = [("train_golden.json fp32", gold["fp32"]["loss"],
         {n: np.array(v) for n, v in gold["fp32"]["grad_sample"].items()})]
for name, kw in [("fp32 contiguous, 2 threads", {}), ("fp32 contiguous, 1 thread", {"threads": 1}),
                 ("fp32 channels_last", {"channels_last": True})]:
    rows.append((name, *run(**kw)))
for name, losses, grads in rows:
    errs = sorted(((relative_l2(grads[n], ref_grads[n]), n) for n in ref_grads), reverse=True)
    loss_errs = ", ".join("%.1e" % (abs(a - b) / b) for a, b in zip(losses, ref_losses))
    print(f"{name}: losses off float64 by [{loss_errs}]; step-1 sampled gradients: "
          f"worst {errs[0][0]:.1e} ({errs[0][1]}), median {errs[len(errs) // 2][0]:.1e}")
