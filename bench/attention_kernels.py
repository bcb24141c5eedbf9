"""Causal attention kernels available to the hf engine, forward + backward, on the Llama-3.2-1B shape.

    python bench/attention_kernels.py [--batch 16] [--seq 2048]

Which kernel should full-length (unpadded) rows use? Each option gets the tensors in the layout
transformers hands to the engine's attention function ((batch, heads, seq, dim), grouped-query
keys/values) and returns (batch, seq, heads, dim), so layout changes are counted in its time.
Not part of the test suite: timings never decide a test.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def sdpa(backend: SDPBackend | None, expand_kv: bool):
    def run(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        groups = q.shape[1] // k.shape[1]
        if expand_kv:
            k, v = (t.repeat_interleave(groups, dim=1) for t in (k, v))
        if backend is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=not expand_kv)
        else:
            with sdpa_kernel([backend]):
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=not expand_kv)
        return out.transpose(1, 2)
    return run


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    batch, heads, seq, dim = q.shape
    cu = torch.arange(0, (batch + 1) * seq, seq, dtype=torch.int32, device=q.device)
    flat = [t.transpose(1, 2).reshape(batch * seq, t.shape[1], dim) for t in (q, k, v)]
    out = torch.ops.aten._flash_attention_forward(*flat, cu, cu, seq, seq, 0.0, True, False)[0]
    return out.view(batch, seq, heads, dim)


def timed(run, q, k, v, repeats: int = 10) -> float:
    grad = torch.randn(q.shape[0], q.shape[2], q.shape[1], q.shape[3], device=q.device, dtype=q.dtype)
    for i in range(repeats + 3):
        if i == 3:
            torch.cuda.synchronize()
            started = time.perf_counter()
        out = run(q, k, v)
        out.backward(grad)
    torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=2048)
    args = parser.parse_args()
    torch.manual_seed(0)
    shape = dict(device="cuda", dtype=torch.bfloat16, requires_grad=True)
    # transformers transposes (batch, seq, heads, dim) projections to (batch, heads, seq, dim): non-contiguous views
    q = torch.randn(args.batch, args.seq, 32, 64, **shape).transpose(1, 2)
    k = torch.randn(args.batch, args.seq, 8, 64, **shape).transpose(1, 2)
    v = torch.randn(args.batch, args.seq, 8, 64, **shape).transpose(1, 2)
    flops = 4 * args.batch * args.seq**2 * 32 * 64 / 2 * 3.5  # causal; backward = 2.5x forward
    options = {
        "sdpa default (cuDNN), enable_gqa": sdpa(None, False),
        "sdpa cuDNN, enable_gqa": sdpa(SDPBackend.CUDNN_ATTENTION, False),
        "sdpa flash (FA2), enable_gqa": sdpa(SDPBackend.FLASH_ATTENTION, False),
        "sdpa cuDNN, keys/values repeated": sdpa(SDPBackend.CUDNN_ATTENTION, True),
        "FA2 variable-length entry, uniform rows": flash_varlen,
    }
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__}; batch {args.batch} x seq {args.seq}, "
          "32 query heads, 8 key/value heads, head dim 64, bf16, causal; forward + backward")
    for name, run in options.items():
        try:
            ms = timed(run, q, k, v)
            print(f"| {name} | {ms:.2f} ms | {flops / ms / 1e9:.0f} TFLOP/s |", flush=True)
        except RuntimeError as error:
            print(f"| {name} | failed: {str(error).splitlines()[0][:100]} | |", flush=True)


if __name__ == "__main__":
    main()
