"""PyTorch's ResNet-18 on a GPU, the figures `catdog bench --device cuda` is set beside.

Usage: python gpu_torch_bench.py SIZE BATCH [BATCH ...]

For each batch size prints one line per measurement, in `catdog bench`'s units (img/s):
inference (eval, no grad) and a fine-tuning step (train mode, cross-entropy, backward, Adam),
fp32 weights, NCHW and channels_last. PyTorch's defaults are kept (cuDNN may use TF32 in
convolutions; the flags are printed), since that is what a user of PyTorch gets.
"""
import statistics
import sys
import time

import torch
import torchvision


def bench(fn, warm=3, reps=10):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    size = int(sys.argv[1])
    batches = [int(b) for b in sys.argv[2:]]
    dev = torch.device("cuda")
    print(
        f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, "
        f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}, "
        f"matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}"
    )
    torch.manual_seed(0)
    for bs in batches:
        for fmt in ("contiguous", "channels_last"):
            mf = torch.contiguous_format if fmt == "contiguous" else torch.channels_last
            m = torchvision.models.resnet18(num_classes=2).to(dev, memory_format=mf)
            x = torch.randn(bs, 3, size, size, device=dev).to(memory_format=mf)
            y = (torch.arange(bs, device=dev) % 2).long()
            m.eval()

            def infer():
                with torch.no_grad():
                    m(x)

            ti = bench(infer)
            m.train()
            opt = torch.optim.Adam(m.parameters(), lr=1e-3)
            loss = torch.nn.CrossEntropyLoss()

            def step():
                opt.zero_grad()
                loss(m(x), y).backward()
                opt.step()

            tt = bench(step)
            print(
                f"batch {bs} {size} px {fmt}: infer {bs / ti:.1f} img/s, "
                f"train-step {bs / tt:.1f} img/s"
            )
            del m, x, opt
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
