"""ViT-B/16 backbone speed on CPU: our JAX CLIP (jit, fp32) against transformers' PyTorch CLIPModel (eager, fp32).

    python benchmarks/backbone.py            # full: image batch 4/64, text 100/1000 prompts, fwd and fwd+bwd
    python benchmarks/backbone.py --quick    # a couple of minutes: image batch 4/16, text 100 prompts

Both frameworks run in one process per case on the same CPU with the same thread count and random weights of the
same shapes. Each case is timed as the median of several runs after a warm-up, JAX and PyTorch runs interleaved so both
see the same machine load; JAX timings call the compiled executable and `block_until_ready`. Backward passes are
taken w.r.t. the inputs (images, token embeddings) as in prompt learning, never w.r.t. the frozen weights.
Achieved FLOP/s use XLA's own count (`compiled.cost_analysis()["flops"]`) for both frameworks, against a matmul
peak (a 4096^3 fp32 `jnp.dot`, best of 5) measured in the same run.

Allocator: by default the script calls glibc `mallopt` to keep freed memory in the heap (no mmap for large blocks,
no trimming), so that the large activation buffers of a batch-64 ViT are not page-faulted afresh on every call;
this applies to JAX and PyTorch alike. `--default-malloc` keeps glibc's defaults (see docs/performance.md).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tune_malloc() -> bool:
    """glibc: never mmap large blocks and never trim the heap, so big buffers are reused without page faults."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2 ** 31 - 1))


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, smaller cases (a couple of minutes)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per case (2 for runs over --long seconds)")
    p.add_argument("--long", type=float, default=20.0, help="runs longer than this many seconds are repeated twice")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads (all CPUs)")
    p.add_argument("--no-torch", action="store_true", help="JAX only")
    p.add_argument("--default-malloc", action="store_true", help="keep glibc's allocator defaults")
    p.add_argument("--only", default="", help="run only cases whose name contains this string")
    p.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)  # internal: one case per process
    return p.parse_args()


ARGS = parse_args()
MALLOC_TUNED = False if ARGS.default_malloc else tune_malloc()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from aple_jax.clip import model as clip_model  # noqa: E402
from aple_jax.clip.model import CLIP  # noqa: E402

CFG = clip_model.get_config("ViT-B/16")
CUT_LENGTH = 16   # typical "a photo of a {class}." prompts: EOT at positions 6..15, cut after the last EOT


def flops_of(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0]
    return float(cost.get("flops", float("nan")))


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def matmul_peak(n: int = 4096, tries: int = 5) -> tuple[float, float | None]:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot).lower(a, b).compile()
    dot(a, b).block_until_ready()
    best = min(timed(lambda: dot(a, b).block_until_ready()) for _ in range(tries))
    jax_peak = 2 * n ** 3 / best
    torch_peak = None
    if TORCH is not None:
        at, bt = TORCH.from_numpy(np.array(a)), TORCH.from_numpy(np.array(b))
        TORCH.mm(at, bt)
        torch_peak = 2 * n ** 3 / min(timed(lambda: TORCH.mm(at, bt)) for _ in range(tries))
    return jax_peak, torch_peak


# ------------------------------------------------------------------------------------------------------ JAX side

def jax_case(kind: str, mode: str, params, inputs):
    model = CLIP(CFG)
    if kind == "image":
        def feats(p, x):
            return model.apply({"params": p}, x, method=CLIP.encode_image)
        args = (params, inputs["images"])
    else:
        def feats(p, x, eot):
            return model.apply({"params": p}, x, eot, method=CLIP.encode_text)
        args = (params, inputs["embeds"], inputs["eot"])
    if mode == "fwd":
        fn = feats
    else:  # gradient w.r.t. the input embeddings only, never the (frozen) weights
        def fn(p, x, *rest):
            return jax.grad(lambda x: jnp.sum(feats(p, x, *rest) ** 2))(x)
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: compiled(*args).block_until_ready()), flops_of(compiled), compile_s


# -------------------------------------------------------------------------------------------------- torch side

def torch_case(kind: str, mode: str, model, inputs):
    torch = TORCH
    if kind == "image":
        pixels = torch.from_numpy(np.asarray(inputs["images"]).transpose(0, 3, 1, 2).copy())
        if mode == "fwd":
            def run():
                with torch.no_grad():
                    model.get_image_features(pixel_values=pixels)
        else:
            def run():
                x = pixels.clone().requires_grad_(True)
                out = model.get_image_features(pixel_values=x)
                out = getattr(out, "pooler_output", out)
                (out ** 2).sum().backward()
        return run
    ids = torch.from_numpy(np.asarray(inputs["ids"]).astype(np.int64))
    if mode == "fwd":
        def run():
            with torch.no_grad():
                model.get_text_features(input_ids=ids)
        return run
    leaves = []

    def hook(_module, _inp, out):  # make the embeddings (tokens + positions) the differentiated input
        leaf = out.detach().requires_grad_(True)
        leaves.append(leaf)
        return leaf

    def run():
        handle = model.text_model.embeddings.register_forward_hook(hook)
        try:
            out = model.get_text_features(input_ids=ids)
            out = getattr(out, "pooler_output", out)
            (out ** 2).sum().backward()
            assert leaves.pop().grad is not None
        finally:
            handle.remove()
    return run


# ------------------------------------------------------------------------------------------------------- cases

def make_inputs(kind: str, size: int, length: int, params) -> dict:
    rng = np.random.default_rng(0)
    if kind == "image":
        return {"images": jnp.asarray(rng.standard_normal((size, 224, 224, 3), np.float32))}
    eot = rng.integers(6, CUT_LENGTH, size).astype(np.int32)
    eot[0] = CUT_LENGTH - 1
    ids = np.zeros((size, CFG.context_length), np.int32)
    for i, e in enumerate(eot):
        ids[i, 0] = CFG.vocab_size - 2
        ids[i, 1:e] = rng.integers(1, CFG.vocab_size - 2, e - 1)
        ids[i, e] = CFG.vocab_size - 1
    ids = ids[:, :length]
    embeds = CLIP(CFG).apply({"params": params}, jnp.asarray(ids), method=CLIP.embed_tokens)
    return {"ids": ids, "eot": jnp.asarray(eot), "embeds": embeds}


def case_list(quick: bool) -> list[tuple[str, int, int, str]]:
    """(kind, batch or prompts, text length, mode)."""
    if quick:
        img, img_bwd, txt = [4, 16], [4], [100]
        txt_bwd = [(100, 77), (100, CUT_LENGTH)]
    else:
        # fwd+bwd keeps every activation for the backward pass; per framework: image batch 64 ~8 GB,
        # 1000 x 77 text ~28 GB. This machine has 24 GB (shared), so those two cases are left out.
        img, img_bwd, txt = [4, 64], [4, 32], [100, 1000]
        txt_bwd = [(100, 77), (100, CUT_LENGTH), (1000, CUT_LENGTH)]
    cases = [("image", b, 0, "fwd") for b in img] + [("image", b, 0, "fwd+bwd") for b in img_bwd]
    cases += [("text", n, L, "fwd") for n in txt for L in (77, CUT_LENGTH)]
    cases += [("text", n, L, "fwd+bwd") for n, L in txt_bwd]
    return cases


def case_name(kind, size, length, mode) -> str:
    if kind == "image":
        return f"image, batch {size}, {mode}"
    return f"text, {size} prompts x {length} tokens, {mode}"


def bench(jax_run, torch_run) -> tuple[float, float | None, int]:
    """Interleaved timing: warm-up both, then alternate JAX/torch runs; medians."""
    first_j = timed(jax_run)
    first_t = timed(torch_run) if torch_run else 0.0
    repeats = ARGS.repeats if max(first_j, first_t) < ARGS.long else 2
    tj, tt = [], []
    for _ in range(repeats):
        tj.append(timed(jax_run))
        if torch_run:
            tt.append(timed(torch_run))
    return statistics.median(tj), (statistics.median(tt) if torch_run else None), repeats


def run_case(index: int) -> None:
    """Child process: one case, JSON on the last stdout line."""
    kind, size, length, mode = case_list(ARGS.quick)[index]
    params = clip_model.init_params(CFG)
    torch_model = None
    if TORCH is not None:
        import transformers

        TORCH.manual_seed(0)
        torch_model = transformers.CLIPModel(transformers.CLIPConfig(vision_config=dict(patch_size=16))).eval()
        for p in torch_model.parameters():
            p.requires_grad_(False)
    inputs = make_inputs(kind, size, length, params)
    jax_run, flops, compile_s = jax_case(kind, mode, params, inputs)
    torch_run = torch_case(kind, mode, torch_model, inputs) if torch_model is not None else None
    tj, tt, n = bench(jax_run, torch_run)
    rss_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    print(json.dumps(dict(name=case_name(kind, size, length, mode), jax_s=tj, torch_s=tt, flops=flops,
                          compile_s=compile_s, repeats=n, rss_gb=rss_gb)))


def main() -> None:
    print(f"# backbone benchmark: ViT-B/16 fp32 on {platform.processor() or platform.machine()}, "
          f"{len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f}", flush=True)
    print(f"jax {jax.__version__} ({jax.devices()[0].platform}), torch "
          f"{TORCH.__version__ if TORCH else 'n/a'} ({ARGS.threads} threads), XLA_FLAGS="
          f"{os.environ.get('XLA_FLAGS', '')!r}, malloc tuned: {MALLOC_TUNED}", flush=True)
    peak_j, peak_t = matmul_peak()
    print(f"matmul peak (4096^3 fp32, best of 5): jax {peak_j / 1e9:.0f} GFLOP/s"
          + (f", torch {peak_t / 1e9:.0f} GFLOP/s" if peak_t else ""), flush=True)

    rows = []
    child_args = [a for a in sys.argv[1:] if not a.startswith("--case")]
    for index, case in enumerate(case_list(ARGS.quick)):
        name = case_name(*case)
        if ARGS.only and ARGS.only not in name:
            continue
        # one process per case: each starts from a clean heap and gives its memory back when done
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), *child_args, f"--case={index}"],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"  {name}: FAILED (exit {proc.returncode})\n{proc.stderr[-2000:]}", flush=True)
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(r)
        tj, tt = r["jax_s"], r["torch_s"]
        print(f"  {name}: jax {tj * 1e3:.0f} ms (compile {r['compile_s']:.1f} s), torch "
              f"{tt * 1e3 if tt else float('nan'):.0f} ms, speed-up {(tt / tj) if tt else float('nan'):.2f}x, "
              f"{r['flops'] / tj / 1e9:.0f} GFLOP/s ({r['flops'] / tj / peak_j:.0%} of peak), median of "
              f"{r['repeats']}, peak RSS {r['rss_gb']:.1f} GB, load {os.getloadavg()[0]:.1f}", flush=True)
    peak_j2, _ = matmul_peak()
    peak = max(peak_j, peak_j2)

    cmd = "python benchmarks/backbone.py" + " ".join([""] + sys.argv[1:])
    print()
    print(f"Command: `{cmd}` (jax {jax.__version__}, torch {TORCH.__version__ if TORCH else 'n/a'}, "
          f"{len(os.sched_getaffinity(0))} CPUs, matmul peak {peak / 1e9:.0f} GFLOP/s (best of the runs at the start "
          f"and the end); load average at the end {os.getloadavg()[0]:.2f})")
    print()
    print("| case | JAX jit (ms) | PyTorch eager (ms) | JAX speed-up | GFLOP | JAX GFLOP/s | % of matmul peak |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        tj, tt, flops = r["jax_s"], r["torch_s"], r["flops"]
        print(f"| {r['name']} | {tj * 1e3:.0f} | {tt * 1e3 if tt else float('nan'):.0f} | "
              f"{(tt / tj) if tt else float('nan'):.2f}x | {flops / 1e9:.0f} | {flops / tj / 1e9:.0f} | "
              f"{flops / tj / peak:.0%} |")


if ARGS.no_torch:
    TORCH = None
else:
    import torch as TORCH

    TORCH.set_num_threads(ARGS.threads)

if __name__ == "__main__":
    if ARGS.case is not None:
        run_case(ARGS.case)
    else:
        main()
