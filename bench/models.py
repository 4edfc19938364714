"""fastdiff vs diffusers on the same weights: an SD1.5-size UNet forward on the CPU, and the memory a load takes.

    python -m bench.models [--runs 5] [--dtypes float32,bfloat16] [--threads N]

UNet2DConditionModel with SD 1.5's shape (block_out_channels 320/640/1280/1280, layers_per_block 2,
cross_attention_dim 768, attention_head_dim 8) and random weights, saved once to a temporary folder.
Forward at 32x32 latents, batch 2, 77-token context, no grad. The two libraries run alternately
(so machine load hits both alike) and the table prints the median time of each and the median of the
per-pair ratios fastdiff / diffusers (below 1: fastdiff is faster).

Load memory: a fresh process imports fastdiff, then `UNet2DConditionModel.from_pretrained(folder)`;
the growth of its peak resident set (VmHWM) over the resident set before the load, divided by the
size of the weights; measured right after the load (safetensors are memory-mapped, so pages not yet
read are not resident) and again after every weight has been read once.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

SD15 = dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, cross_attention_dim=768,
            attention_head_dim=8, sample_size=64, in_channels=4, out_channels=4)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    return dict(sample=torch.randn(2, 4, 32, 32, generator=g).to(dtype), timestep=torch.tensor(500),
                encoder_hidden_states=torch.randn(2, 77, 768, generator=g).to(dtype))


def _time(model, inputs) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model(**inputs)
    return time.perf_counter() - start


def compare(ref, model, dtype, runs: int) -> tuple[float, float, list[float], float]:
    """(median diffusers s, median fastdiff s, sorted per-pair ratios, max |difference| / max |diffusers|)."""
    inputs = _inputs(dtype)
    with torch.no_grad():
        want, got = ref(**inputs).sample, model(**inputs).sample  # also the warm-up
    err = ((got.double() - want.double()).abs().max() / want.double().abs().max()).item()
    pairs = []
    for i in range(runs):
        order = (ref, model) if i % 2 == 0 else (model, ref)
        times = {id(m): _time(m, inputs) for m in order}
        pairs.append((times[id(ref)], times[id(model)]))
    ref_s, fd_s = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return ref_s, fd_s, sorted(p[1] / p[0] for p in pairs), err


_LOAD_PROBE = """
import sys, torch, fastdiff
def status(key):
    with open('/proc/self/status') as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key))
before = status('VmRSS:')
model = fastdiff.UNet2DConditionModel.from_pretrained(sys.argv[1])
loaded = status('VmHWM:') - before
with torch.no_grad():  # read every weight once, so memory-mapped pages count too
    sum(float(p.double().sum()) for p in model.parameters())
print(loaded, status('VmHWM:') - before)
"""


def load_memory(folder: str) -> tuple[float, float, float]:
    """Peak resident-set growth (bytes) after from_pretrained, and after then reading every weight; weight bytes."""
    out = subprocess.run([sys.executable, "-c", _LOAD_PROBE, folder], check=True, capture_output=True, text=True)
    weights = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))
    loaded, touched = (float(v) for v in out.stdout.split()[-2:])
    return loaded, touched, float(weights)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import diffusers

    import fastdiff

    diffusers.utils.logging.set_verbosity_error()  # its dtype-cast advice is not about this comparison

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**SD15).eval()
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder)
        loaded, touched, weights = load_memory(folder)
        model = fastdiff.UNet2DConditionModel.from_pretrained(folder)
    print(f"machine: {machine()}\n")
    print("| UNet forward (SD1.5 size, 2x4x32x32, 77 tokens) | diffusers s | fastdiff s | "
          "fastdiff / diffusers, median (range) | max diff / max |out| |\n|---|---|---|---|---|")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        ref, model = ref.to(dtype), model.to(dtype)
        ref_s, fd_s, ratios, err = compare(ref, model, dtype, args.runs)
        print(f"| {name} | {ref_s:.3f} | {fd_s:.3f} | {statistics.median(ratios):.3f} "
              f"({ratios[0]:.2f}-{ratios[-1]:.2f}) | {err:.1e} |", flush=True)
    gib = 2**30
    print(f"\nload ({weights / gib:.2f} GiB of float32 weights): peak RSS growth {loaded / gib:.2f} GiB after "
          f"from_pretrained (weights memory-mapped, {loaded / weights:.2f}x), {touched / gib:.2f} GiB once every "
          f"weight has been read ({touched / weights:.2f}x)")


if __name__ == "__main__":
    main()
