"""The fused scheduler step: classifier-free guidance and one scheduler update in a single elementwise pass.

Fused: reading the [uncond; cond] model output and m = u + g (c − u) (g from a device tensor, so a new
guidance scale recompiles nothing), the scheduler's update x' from a per-step row of coefficients, the
optional clamp of x̂_0, ancestral noise, and the state the scheduler keeps between steps (multistep history
shifted in place, a stash, PNDM's accumulator). The equations and the row layout are in
fastdiff/schedulers/fused.py; every scheduler family with a fused step is this one kernel with different
rows and constexpr variant flags.

The row is read by the kernel itself at the device step index (plus a warm-up column from the device start
index for multistep solvers), so a replayed CUDA graph picks the right coefficients without the host.

Layout: every per-element tensor is contiguous with N elements (the history (L, N), the CFG output (2N,)),
all addressed with the same offsets; the history may be shifted in place because each element's slots are
read and written by the same program, oldest first. Dtypes: fp16, bf16, fp32 per tensor (they may differ:
DPM-Solver's SDE noise is fp32 next to fp16 latents); arithmetic in fp32, one rounding per store.
Limits: N·L < 2^31; at most fused.MAX_HISTORY history slots.
"""

import torch
import triton
import triton.language as tl

from fastdiff.schedulers.fused import COL, MAX_HISTORY, scheduler_step_ref  # noqa: F401 (the twin, see the end)
from fastdiff.schedulers.fused import WIDTH as _WIDTH

# table columns as constexpr globals the kernel can read (fastdiff.schedulers.fused.LAYOUT)
PX, PM, CLIP, DX, DP, SX, SS, SD, SH, AA, AM, XX, XM, XD, XH, XS, XA, XZ, PUSH, STASH = (
    tl.constexpr(COL[name]) for name in
    ("PX", "PM", "CLIP", "DX", "DP", "SX", "SS", "SD", "SH", "AA", "AM", "XX", "XM", "XD", "XH", "XS", "XA", "XZ",
     "PUSH", "STASH"))
WIDTH = tl.constexpr(_WIDTH)


@triton.jit
def _row_flag(R, COLUMN: tl.constexpr, mask):
    """mask & (row[COLUMN] != 0). The scalar flag is splat to the block first: Triton's interpreter cannot
    `&` a scalar comparison with a block mask (numpy returns a bool scalar there, not an array)."""
    return mask & ((tl.load(R + COLUMN) + tl.zeros(mask.shape, tl.float32)) != 0)


@triton.jit
def _scheduler_step_fwd(
    X,  # sample x (N)
    M,  # model output (N), or the CFG batch [uncond; cond] (2N) when HAS_CFG
    G,  # guidance scale g (1 element, fp32), read if HAS_CFG
    TABLE,  # coefficient rows (rows, WARMUP, WIDTH) fp32
    STEP,  # int64: the step index
    START,  # int64: the step the loop began at, read if WARMUP > 1
    Z,  # noise z (N), read if HAS_NOISE
    H,  # history (HISTORY, N) newest first; shifted in place with D pushed when the row's PUSH flag is set
    S,  # stash (N), read if HAS_STASH; overwritten with the new stash when the row's STASH flag is set
    A,  # accumulator (N), read and updated if HAS_ACC
    D_OUT,  # D (N), written if WRITE_D
    Y,  # x' (N)
    N,
    HAS_CFG: tl.constexpr,
    CLAMP: tl.constexpr,
    HAS_NOISE: tl.constexpr,
    HISTORY: tl.constexpr,  # L, history slots (0..MAX_HISTORY)
    READ_OLDEST: tl.constexpr,  # does the update weigh H_{L-1}? (else it is only shifted out)
    HAS_STASH: tl.constexpr,
    HAS_ACC: tl.constexpr,
    WRITE_D: tl.constexpr,
    WARMUP: tl.constexpr,  # J, rows per step
    BLOCK: tl.constexpr,
):
    # the row: table[step, min(step - start, J - 1)]
    step = tl.load(STEP)
    if WARMUP > 1:
        step = step * WARMUP + tl.minimum(step - tl.load(START), WARMUP - 1)
    R = TABLE + step * WIDTH

    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_CFG:  # m = u + g (c - u)
        u = tl.load(M + offs, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(M + N + offs, mask=mask, other=0.0).to(tl.float32)
        m = u + tl.load(G).to(tl.float32) * (c - u)
    else:
        m = tl.load(M + offs, mask=mask, other=0.0).to(tl.float32)

    p = tl.load(R + PX) * x + tl.load(R + PM) * m  # x̂_0 or ε̂
    if CLAMP:
        bound = tl.load(R + CLIP)
        p = tl.minimum(tl.maximum(p, -bound), bound)
    d = tl.load(R + DX) * x + tl.load(R + DP) * p  # what the scheduler keeps
    y = tl.load(R + XX) * x + tl.load(R + XM) * m + tl.load(R + XD) * d
    if HAS_STASH:
        s = tl.load(R + SX) * x + tl.load(R + SS) * tl.load(S + offs, mask=mask, other=0.0).to(tl.float32)
        s += tl.load(R + SD) * d

    # history, oldest slot first: weigh H_k, then move it to slot k+1 (already read) if the row pushes
    push = _row_flag(R, PUSH, mask)
    for j in tl.static_range(HISTORY):
        k = HISTORY - 1 - j
        if READ_OLDEST or k < HISTORY - 1:
            h = tl.load(H + k * N + offs, mask=mask, other=0.0)
            y += tl.load(R + XH + k) * h.to(tl.float32)
            if HAS_STASH:
                s += tl.load(R + SH + k) * h.to(tl.float32)
            if k < HISTORY - 1:
                tl.store(H + (k + 1) * N + offs, h, mask=push)
    if HISTORY > 0:
        tl.store(H + offs, d.to(H.dtype.element_ty), mask=push)

    if HAS_STASH:
        y += tl.load(R + XS) * s
        tl.store(S + offs, s.to(S.dtype.element_ty), mask=_row_flag(R, STASH, mask))
    if HAS_ACC:  # A' = AA A + AM m
        a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
        y += tl.load(R + XA) * a
        tl.store(A + offs, (tl.load(R + AA) * a + tl.load(R + AM) * m).to(A.dtype.element_ty), mask=mask)
    if HAS_NOISE:
        y += tl.load(R + XZ) * tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
    if WRITE_D:
        tl.store(D_OUT + offs, d.to(D_OUT.dtype.element_ty), mask=mask)
    tl.store(Y + offs, y.to(Y.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launcher
# --------------------------------------------------------------------------------------------

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# (BLOCK, warps): 4 elements per thread for small latents (SD's 1x4x64x64 = 16K elements -> 32 programs;
# the step is bound by launch latency there), 8 per thread with fewer programs for large ones
BLOCKS = {"small": (512, 4), "large": (2048, 8)}
SMALL = 1 << 18


def block_config(n: int) -> dict:
    block, warps = BLOCKS["small" if n <= SMALL else "large"]
    return dict(BLOCK=block, num_warps=warps, num_stages=1)


def _variant(x, model_output, guidance, table, noise, history, stash, accumulator, denoised, clamp, read_oldest):
    """The constexpr flags of one launch."""
    return dict(HAS_CFG=guidance is not None, CLAMP=bool(clamp), HAS_NOISE=noise is not None,
                HISTORY=0 if history is None else history.shape[0], READ_OLDEST=bool(read_oldest),
                HAS_STASH=stash is not None, HAS_ACC=accumulator is not None, WRITE_D=denoised is not None,
                WARMUP=table.shape[1])


def supported(x, model_output, guidance, table, step, start, noise, history, stash, accumulator, denoised,
              clamp=False, read_oldest=False) -> bool:
    n = x.numel()
    per_element = [t for t in (x, noise, stash, accumulator, denoised) if t is not None]
    slots = 0 if history is None else history.shape[0]
    cfg = 2 if guidance is not None else 1
    return (
        all(t.dtype in DTYPES and t.is_contiguous() and t.numel() == n and t.device == x.device for t in per_element)
        and model_output.dtype in DTYPES and model_output.is_contiguous() and model_output.numel() == cfg * n
        and (history is None or (history.dtype in DTYPES and history.is_contiguous() and history.numel() == slots * n
                                 and slots <= MAX_HISTORY))
        and table.dtype == torch.float32 and table.is_contiguous() and table.dim() == 3 and table.shape[2] == _WIDTH
        and step.dtype == torch.int64 and (table.shape[1] == 1 or (start is not None and start.dtype == torch.int64))
        and (guidance is None or guidance.numel() == 1)
        and max(slots, cfg) * n < 2**31
    )


def scheduler_step(x, model_output, guidance, table, step, start, noise, history, stash, accumulator, denoised,
                   clamp: bool = False, read_oldest: bool = False, out=None):
    """x' of one fused step (fastdiff/schedulers/fused.py); updates history / stash / accumulator / denoised in
    place. `out` (like x, in the promoted dtype of x and the model output) may be given."""
    args = (x, model_output, guidance, table, step, start, noise, history, stash, accumulator, denoised)
    if not supported(*args, clamp, read_oldest):
        raise ValueError(f"scheduler_step kernel does not support x{tuple(x.shape)} {x.dtype}, model output "
                         f"{tuple(model_output.shape)} {model_output.dtype}, table {tuple(table.shape)}")
    if out is None:
        out = torch.empty_like(x, dtype=torch.promote_types(x.dtype, model_output.dtype))
    assert out.shape == x.shape and out.is_contiguous()
    n = x.numel()
    cfg = block_config(n)
    unused = x  # any pointer for inputs a variant does not read
    _scheduler_step_fwd[(triton.cdiv(n, cfg["BLOCK"]),)](
        x, model_output, unused if guidance is None else guidance, table, step, step if start is None else start,
        *(unused if t is None else t for t in (noise, history, stash, accumulator, denoised)), out, n,
        **_variant(*args[:4], *args[6:], clamp, read_oldest), **cfg,
    )
    return out


# The widest constexpr variant of each fused family (a launch turns some of its flags off, which only removes
# code); tests/kernels/test_scheduler_step.py checks every family's launches are covered by one of these.
VARIANTS = {
    # name: (HAS_NOISE, CLAMP, HISTORY, READ_OLDEST, HAS_STASH, HAS_ACC, WRITE_D, WARMUP)
    "ddpm ddim lcm euler": (True, True, 0, False, False, False, True, 1),
    "heun kdpm2": (True, True, 1, True, True, False, False, 1),
    "lms": (False, False, 4, False, False, False, False, 1),
    "dpm multistep deis": (True, False, 3, False, False, False, False, 3),
    "dpm singlestep": (True, False, 3, False, True, False, False, 3),
    "unipc": (False, False, 3, True, True, False, False, 4),
    "pndm": (False, False, 3, True, True, True, False, 1),
    "all": (True, True, 4, True, True, True, True, 4),
}
FLAGS = ("HAS_NOISE", "CLAMP", "HISTORY", "READ_OLDEST", "HAS_STASH", "HAS_ACC", "WRITE_D", "WARMUP")


def compile_cases():
    """Every variant in both block configs: small blocks with fp16 and the CFG batch, large ones in bf16 (fp32
    where there is no history) without."""
    from fastdiff.kernels.compile_report import Case

    cases = []
    for name, flags in VARIANTS.items():
        for size, dtype, cfg in (("small", torch.float16, True),
                                 ("large", torch.bfloat16 if flags[2] else torch.float32, False)):
            block, warps = BLOCKS[size]
            pointers = dict.fromkeys(("X", "M", "Z", "H", "S", "A", "D_OUT", "Y"), dtype)
            pointers.update(G=torch.float32, TABLE=torch.float32, STEP=torch.int64, START=torch.int64)
            cases.append(Case(
                kernel=_scheduler_step_fwd, name=f"{name} cfg={cfg} {str(dtype)[6:]}", pointers=pointers,
                aligned=("N",), constexprs=dict(zip(FLAGS, flags), HAS_CFG=cfg, BLOCK=block),
                num_warps=warps, num_stages=1,
            ))
    return cases


# --------------------------------------------------------------------------------------------
# plain-PyTorch twin
# --------------------------------------------------------------------------------------------

# scheduler_step_ref (imported above) lives in fastdiff/schedulers/fused.py, next to the row layout and the
# tables the schedulers build: the torch entry of ops.scheduler_step, and the twin this kernel is tested against.
