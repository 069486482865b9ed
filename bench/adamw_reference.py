"""PyTorch's AdamW on the golden network, the reference of catdog's --weight-decay test
(tests/model_parity.rs, adamw_matches_pytorch_on_the_golden_network).

Usage: python bench/adamw_reference.py ../shared/golden/resnet18
Takes, for a few parameters, the values at train_golden.json's sample_indices (from
resnet18.pth; the head from head_init.npy) and their step-1 gradients (grad_sample), and
applies torch.optim.AdamW(lr=1e-3, weight_decay=0.5) three times with that gradient. Prints
the first 8 values of each after the three steps, as Rust arrays for the test. The decay is
large so that its term (lr * wd * value) is as large as Adam's own step: a coupled (L2) decay
or one applied after the update lands elsewhere.
"""
import json, os, sys
import numpy as np, torch

g = sys.argv[1]
golden = json.load(open(os.path.join(g, "train_golden.json")))
state = torch.load(os.path.join(g, "resnet18.pth"))
head = torch.from_numpy(np.load(os.path.join(g, "head_init.npy")))
state["fc.weight"], state["fc.bias"] = head[:, :512], head[:, 512]
for name in ["conv1.weight", "layer2.0.bn1.weight", "layer4.1.conv2.weight", "fc.weight", "fc.bias"]:
    idx = golden["sample_indices"][name]
    p = state[name].flatten()[idx].clone().float().requires_grad_(True)
    grad = torch.tensor(golden["fp32"]["grad_sample"][name], dtype=torch.float32)
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.5)
    for _ in range(3):
        p.grad = grad.clone()
        opt.step()
    values = ", ".join(repr(float(v)) for v in p.detach()[:8])
    print(f'("{name}", [{values}]),')
