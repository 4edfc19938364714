"""A roofline model of the GPU step, computed without a GPU: `python -m bench.roofline`.

One UNet call (batch 2: classifier-free guidance) and one VAE decode are traced on the meta device,
for fastdiff and for diffusers, at two shapes:

    sd15   SD1.5 UNet, 512x512 (64x64 latents), 77-token context; VAE decode 64x64 -> 512x512.
    sdxl   SDXL base's UNet (320/640/1280, transformer depths 1/2/10, head dim 64, linear projections,
           context 2048) at 1024x1024 (128x128 latents) WITHOUT the "text_time" addition embedding
           (fastdiff does not implement it; it is a 2-layer MLP on a 2x2816 vector, < 0.01% of the
           FLOPs); SD VAE decode 128x128 -> 1024x1024 (SDXL's VAE has the same architecture).

A dispatch mode sees every op and turns it into kernels. This is a MODEL, not a measurement:

  * a kernel reads each tensor input once and writes each output once (weights included), bf16;
    no reuse through caches between kernels;
  * its time is max(FLOPs / peak, bytes / bandwidth) on an H100 SXM (989 TFLOP/s dense bf16,
    3.35 TB/s); kernels run back to back; a per-launch host cost is added in a second column;
  * FLOPs are torch.utils.flop_counter's formulas (matmuls, convolutions, attention); elementwise
    ops and norms count no FLOPs (they are bandwidth-bound: their time comes from their bytes);
  * views (view, reshape without copy, permute, transpose, expand, split, ...) and allocations are
    metadata: no kernel, no bytes, for both systems;
  * fastdiff (Triton backend): each fastdiff custom op (attention, group_norm[+SiLU][+time-embedding
    shift], layer_norm, geglu, linear[+bias][+GEGLU][+residual]) is one fused kernel; every other aten
    op is one kernel;
  * diffusers (eager): every aten op is one kernel, except scaled_dot_product_attention, which is
    one fused kernel as it runs on CUDA (flash / memory-efficient; the output comes back in the
    (B, N, H, D) memory layout those kernels use, so diffusers' transpose-reshape after it is free);
  * what-if column: each elementwise kernel (add, mul, div, SiLU, GELU, GEGLU) whose input is the only
    use of a GEMM or convolution output runs in that producer's epilogue instead (bias + residual add,
    time-embedding add, GEGLU gate), saving the write and the read-back of the intermediate.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.utils.flop_counter as flop_counter
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from bench.presets import _sd_unet, _sd_vae

H100 = dict(name="H100 SXM", flops=989e12, bandwidth=3.35e12)
LAUNCH_US = 5.0  # host cost of one eager kernel launch (PyTorch eager issue rate, order of magnitude)
DTYPE = torch.bfloat16

SDXL_UNET = _sd_unet(
    sample_size=128, block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
)
# (UNet config, latent side, context width) per shape; the VAE is SD's in both.
SHAPES = {"sd15": (_sd_unet(), 64, 768), "sdxl": (SDXL_UNET, 128, 2048)}

aten = torch.ops.aten
# Not views by schema, but metadata or allocation only: no kernel runs.
_FREE = {aten._unsafe_view, aten.empty, aten.empty_strided, aten.empty_like, aten.lift_fresh, aten.detach,
         aten.alias, aten.new_empty, aten.new_empty_strided}


@dataclass
class Kernel:
    op: str
    flops: float
    bytes: float
    reads: tuple[int, ...] = ()  # the tensors read, by the id of the tensor they are a view of
    writes: tuple[tuple[int, int], ...] = ()  # (id, bytes) of the tensors written

    def seconds(self, hw=H100) -> float:
        return max(self.flops / hw["flops"], self.bytes / hw["bandwidth"])


def _footprint(t: torch.Tensor) -> int:
    """Bytes a kernel touches in `t`: broadcast (stride-0) dimensions hold one element, not `size`."""
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        elements *= size if stride != 0 else 1
    return elements * t.element_size()


def _bytes(*trees) -> int:
    seen, total = set(), 0
    for leaf in tree_leaves(trees):
        if isinstance(leaf, torch.Tensor) and id(leaf) not in seen:
            seen.add(id(leaf))
            total += _footprint(leaf)
    return total


def _attention_flops(q, k, v, heads: int) -> int:
    """fastdiff's (B, N, heads*D) layout, counted with flop_counter's SDPA formula on (B, H, N, D)."""
    split = lambda t: (t.shape[0], heads, t.shape[1], t.shape[2] // heads)  # noqa: E731
    return flop_counter.sdpa_flop_count(split(q), split(k), split(v))


def _linear_flops(x, weight, *rest) -> int:
    """A GEMM's 2 M N K, N all of the weight's rows (GEGLU's two halves included); the epilogue is free."""
    return 2 * x.numel() * weight.shape[0]


def _flops(func, args, kwargs, out) -> int:
    if func._overloadpacket is torch.ops.fastdiff.attention:
        return _attention_flops(*args[:4])
    if func._overloadpacket is torch.ops.fastdiff.linear:
        return _linear_flops(*args)
    formula = flop_counter.flop_registry.get(func._overloadpacket)
    return formula(*args, **kwargs, out_val=out) if formula else 0


def _tensors(tree) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


class KernelTrace(TorchDispatchMode):
    """Records one Kernel per op that launches one (views and allocations are free), and which tensors
    each kernel reads and writes, a view counting as the tensor it views (for the fusion analysis)."""

    def __init__(self):
        super().__init__()
        self.kernels: list[Kernel] = []
        self._base: dict[int, int] = {}
        self._alive: list[torch.Tensor] = []  # keeps every traced tensor alive, so no id() is reused

    def root(self, t: torch.Tensor) -> int:
        return self._base.get(id(t), id(t))

    def record(self, name: str, flops: float, inputs, outputs):
        inputs, outputs = _tensors(inputs), _tensors(outputs)
        self._alive += inputs + outputs
        self.kernels.append(Kernel(name, flops, _bytes(inputs, outputs), tuple(self.root(t) for t in inputs),
                                   tuple((id(t), _footprint(t)) for t in outputs)))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.is_view or func._overloadpacket in _FREE:
            source = _tensors((args, kwargs))
            for view in _tensors(out):
                if source:
                    self._base[id(view)] = self.root(source[0])
                self._alive.append(view)
            return out
        name = func._overloadpacket.__name__ if func.namespace == "aten" else f"{func.namespace}::{func._opname}"
        self.record(name, _flops(func, args, kwargs, out), (args, kwargs), out)
        return out


class FusedSDPA(TorchFunctionMode):
    """scaled_dot_product_attention as the one fused kernel it is on CUDA (meta would decompose it)."""

    def __init__(self, trace: KernelTrace):
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        if kwargs.get("attn_mask") is not None or len(args) > 3:
            raise NotImplementedError("the model counts unmasked attention only")
        b, h, n, _ = q.shape
        out = q.new_empty((b, n, h, v.shape[-1])).transpose(1, 2)  # flash/efficient kernels' output layout
        self.trace.record("sdpa (fused)", flop_counter.sdpa_flop_count(q.shape, k.shape, v.shape), (q, k, v), out)
        return out


def _build(library: str, kind: str, config: dict):
    if library == "diffusers":
        import diffusers as lib
    else:
        import fastdiff as lib
    with torch.device("meta"):
        model = getattr(lib, kind)(**config)
    return model.to(DTYPE).eval()


def trace(library: str, kind: str, config: dict, inputs: dict) -> list[Kernel]:
    """Kernels of one forward of `kind` (UNet2DConditionModel or AutoencoderKL decode) on meta tensors."""
    model = _build(library, kind, config)
    kernels = KernelTrace()
    attention = FusedSDPA(kernels) if library == "diffusers" else contextlib.nullcontext()
    with torch.no_grad(), kernels, attention:
        model.decode(inputs["z"]) if kind == "AutoencoderKL" else model(**inputs)
    return kernels.kernels


def workloads(shape: str) -> dict[str, tuple[str, dict, dict]]:
    """name -> (model class, config, meta inputs): one CFG UNet step and one VAE decode (one image)."""
    unet, side, context = SHAPES[shape]
    meta = dict(device="meta", dtype=DTYPE)
    step = dict(sample=torch.empty(2, 4, side, side, **meta), timestep=torch.empty((), device="meta"),
                encoder_hidden_states=torch.empty(2, 77, context, **meta))
    return {"UNet step (CFG, batch 2)": ("UNet2DConditionModel", unet, step),
            "VAE decode (1 image)": ("AutoencoderKL", _sd_vae(), {"z": torch.empty(1, 4, side, side, **meta)})}


def summarize(kernels: list[Kernel], launch_us: float) -> dict[str, float]:
    seconds = sum(k.seconds() for k in kernels)
    fused, saved = epilogue_fusion(kernels)
    return {"kernels": len(kernels), "gb": sum(k.bytes for k in kernels) / 1e9,
            "tflop": sum(k.flops for k in kernels) / 1e12, "ms": 1e3 * seconds,
            "ms_with_launch": 1e3 * seconds + len(kernels) * launch_us / 1e3,
            "epilogue_fusion": {"kernels_removed": fused, "gb_saved": saved / 1e9}}


# What-if: an elementwise kernel folded into the epilogue of the GEMM / convolution that produced its
# input, as cuBLASLt / CUTLASS / Triton matmul epilogues do (bias + residual add, GEGLU's gate, ...).
_PRODUCERS = {"convolution", "addmm", "mm", "bmm", "baddbmm", "fastdiff::linear"}
_ELEMENTWISE = {"add", "mul", "div", "silu", "gelu", "fastdiff::geglu"}


def epilogue_fusion(kernels: list[Kernel]) -> tuple[int, float]:
    """(kernels removed, bytes saved) if every elementwise kernel whose input is the sole use of a GEMM or
    convolution output ran in that producer's epilogue: the intermediate is neither written nor read back,
    2x its bytes saved. Each producer takes at most one such consumer."""
    uses = collections.Counter(r for k in kernels for r in set(k.reads))
    producer: dict[int, tuple[int, int]] = {}  # tensor id -> (producing kernel index, bytes)
    taken, saved = set(), 0
    for i, k in enumerate(kernels):
        if k.op in _ELEMENTWISE:
            for r in k.reads:
                j, nbytes = producer.get(r, (None, 0))
                if j is not None and j not in taken and uses[r] == 1:
                    taken.add(j)
                    saved += 2 * nbytes
                    break
        if k.op in _PRODUCERS:
            producer.update({tid: (i, nbytes) for tid, nbytes in k.writes})
    return len(taken), float(saved)


def by_op(kernels: list[Kernel]) -> dict[str, tuple[int, float]]:
    """op -> (kernel count, GB): where the bytes go."""
    table: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for k in kernels:
        table[k.op][0] += 1
        table[k.op][1] += k.bytes / 1e9
    return {op: (int(n), gb) for op, (n, gb) in table.items()}


def model(shapes=("sd15", "sdxl"), launch_us: float = LAUNCH_US) -> dict:
    """Every (shape, workload, system) traced and summarized; the per-op breakdown kept for the report."""
    result = {}
    for shape in shapes:
        for name, (kind, config, inputs) in workloads(shape).items():
            row = {}
            for system, library in (("fastdiff (Triton)", "fastdiff"), ("diffusers (eager)", "diffusers")):
                kernels = trace(library, kind, config, inputs)
                row[system] = summarize(kernels, launch_us) | {"by_op": by_op(kernels)}
            result[f"{shape}: {name}"] = row
    return result


def markdown(result: dict, launch_us: float = LAUNCH_US) -> str:
    head = (f"Roofline, **modeled** (not measured) on an {H100['name']} ({H100['flops'] / 1e12:.0f} TFLOP/s dense "
            f"bf16, {H100['bandwidth'] / 1e12:.2f} TB/s), bf16, per kernel max(FLOPs/peak, bytes/bandwidth):\n\n"
            f"| workload | system | kernels | GB moved | TFLOP | modeled ms | modeled ms + {launch_us:g} µs/launch "
            f"| bytes vs diffusers | what-if, epilogue fusion: kernels, GB (vs diffusers) |\n"
            f"|---|---|---|---|---|---|---|---|---|")
    rows = []
    for workload, systems in result.items():
        reference = systems["diffusers (eager)"]["gb"]
        for system, s in systems.items():
            fused = s["epilogue_fusion"]
            gb = s["gb"] - fused["gb_saved"]
            rows.append(f"| {workload} | {system} | {s['kernels']} | {s['gb']:.2f} | {s['tflop']:.2f} | "
                        f"{s['ms']:.2f} | {s['ms_with_launch']:.2f} | {100 * s['gb'] / reference:.0f}% | "
                        f"{s['kernels'] - fused['kernels_removed']}, {gb:.2f} ({100 * gb / reference:.0f}%) |")
    return head + "\n" + "\n".join(rows)


def breakdown(result: dict, workload: str, top: int = 12) -> str:
    """The ops that move the most bytes, side by side: kernels and GB per system."""
    fast, eager = (result[workload][s]["by_op"] for s in ("fastdiff (Triton)", "diffusers (eager)"))
    ops = sorted(set(fast) | set(eager), key=lambda op: -max(fast.get(op, (0, 0))[1], eager.get(op, (0, 0))[1]))
    lines = [f"Where the bytes go, {workload} (modeled):\n", "| op | fastdiff kernels | fastdiff GB | "
             "diffusers kernels | diffusers GB |", "|---|---|---|---|---|"]
    for op in ops[:top]:
        f, e = fast.get(op, (0, 0.0)), eager.get(op, (0, 0.0))
        lines.append(f"| {op} | {f[0]} | {f[1]:.3f} | {e[0]} | {e[1]:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(prog="python -m bench.roofline", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="sd15,sdxl", help=f"comma-separated, of {sorted(SHAPES)}")
    parser.add_argument("--launch-us", type=float, default=LAUNCH_US, help="host cost per kernel launch, µs")
    parser.add_argument("--top", type=int, default=12, help="ops shown in the per-op breakdown")
    parser.add_argument("--json", default=None, help="also write the numbers here")
    args = parser.parse_args(argv)
    result = model(tuple(args.shapes.split(",")), args.launch_us)
    print(markdown(result, args.launch_us) + "\n")
    for workload in result:
        if "UNet" in workload:
            print(breakdown(result, workload, args.top) + "\n")
    print("Assumptions:" + __doc__.split("This is a MODEL, not a measurement:", 1)[1].rstrip())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
