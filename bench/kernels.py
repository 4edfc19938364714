"""Each Triton kernel against its torch twin (the ops table's torch entry) on Stable Diffusion shapes.

On CUDA: median time from `triton.testing.do_bench`, reported as achieved TFLOP/s (attention:
4*B*H*Nq*Nk*D flops) or GB/s (the norms and GEGLU: bytes of one read of the input plus one write of the
output, the minimum traffic), next to the device's peak. Without CUDA: the compile report instead
(every launcher configuration compiled for sm_80 / sm_90: shared memory, registers, spills, wgmma).

    python -m bench.kernels

(As a module: run as a script, this file would shadow the PyPI `kernels` package that transformers imports.)
"""

import sys

import torch

from fastdiff import ops
from fastdiff.kernels import attention, compile_report, geglu, group_norm, layer_norm

# dense fp16 tensor-core FLOP per clock per SM (A100 312 TFLOP/s = 108 SMs x 1.41 GHz x 2048)
_TENSOR_FLOP_PER_CLOCK = {(8, 0): 2048, (8, 6): 1024, (8, 7): 1024, (8, 9): 1024, (9, 0): 4096}


def _peaks():
    p = torch.cuda.get_device_properties(0)
    bandwidth = 2 * p.memory_clock_rate * 1e3 * p.memory_bus_width / 8 / 1e9  # DDR: two transfers per clock
    flop = _TENSOR_FLOP_PER_CLOCK.get((p.major, p.minor), 0) * p.multi_processor_count * p.clock_rate * 1e3 / 1e12
    return p.name, bandwidth, flop


def _cases():
    """(name, triton fn, torch fn, args, work, unit): work in flop or bytes."""
    h = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.float16)  # noqa: E731
    cases = []
    for b, n_q, n_k, heads, d in ((2, 4096, 4096, 8, 40), (2, 4096, 77, 8, 40), (2, 1024, 1024, 10, 64),
                                  (2, 9216, 9216, 10, 64), (2, 256, 256, 8, 160)):
        q, k, v = h(b, n_q, heads * d), h(b, n_k, heads * d), h(b, n_k, heads * d)
        cases.append((f"attention B={b} Nq={n_q} Nk={n_k} H={heads} D={d}", attention.attention, ops.attention_torch,
                      (q, k, v, heads, d**-0.5, False), 4 * b * heads * n_q * n_k * d, "TFLOP/s"))
    for shape, channels_last in (((2, 320, 64, 64), False), ((2, 320, 64, 64), True), ((1, 512, 256, 256), False)):
        x = h(*shape)
        x = x.to(memory_format=torch.channels_last) if channels_last else x
        w, b = h(shape[1]), h(shape[1])
        cases.append((f"group_norm+silu {shape}{' channels_last' if channels_last else ''}", group_norm.group_norm,
                      ops.group_norm_torch, (x, 32, w, b, 1e-5, "silu"), 2 * x.numel() * 2, "GB/s"))
    x, w, b = h(2, 4096, 320), h(320), h(320)
    cases.append(("layer_norm (2, 4096, 320)", layer_norm.layer_norm, ops.layer_norm_torch, (x, w, b, 1e-5),
                  2 * x.numel() * 2, "GB/s"))
    x = h(2, 4096, 2560)
    cases.append(("geglu (2, 4096, 2560)", geglu.geglu, ops.geglu_torch, (x,), 1.5 * x.numel() * 2, "GB/s"))
    return cases


def bench_cuda():
    import triton.testing

    name, bandwidth, flop = _peaks()
    print(f"{name}: peak {bandwidth:.0f} GB/s, {flop:.0f} dense fp16 TFLOP/s; torch {torch.__version__}\n")
    print("| kernel | triton ms | torch ms | triton | torch | peak |\n|---|---|---|---|---|---|")
    for label, fn, ref, args, work, unit in _cases():
        ms = [triton.testing.do_bench(lambda f=f: f(*args), return_mode="median") for f in (fn, ref)]
        rate = [work / (t * 1e-3) / (1e12 if unit == "TFLOP/s" else 1e9) for t in ms]
        peak = flop if unit == "TFLOP/s" else bandwidth
        print(f"| {label} | {ms[0]:.3f} | {ms[1]:.3f} | {rate[0]:.1f} {unit} | {rate[1]:.1f} {unit} | {peak:.0f} |")


if __name__ == "__main__":
    if torch.cuda.is_available():
        bench_cuda()
    else:
        print("no CUDA device: compile report instead (sm_80 / sm_90, no GPU needed)\n", file=sys.stderr)
        compile_report.main([])
