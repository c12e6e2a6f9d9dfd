"""GPU device check: what hfault does on CUDA, in one run (under 10 minutes on one H100).

    python benchmarks/device_check.py               # on a CUDA machine
    python benchmarks/device_check.py --cpu-smoke   # tiny sizes on CPU, seconds (a suite test)

Everything hfault claims for CUDA was developed on a CPU box; this script is ready for the day a
GPU machine is lent. It prints one section per check and a final ``device check: N passed, M
failed`` line; the exit status is 1 when a check failed. Checked (PASS/FAIL):

1. **SDPA kernel switch**: a model calling ``scaled_dot_product_attention`` under
   ``hfault.watch(curvature=True)``. On the measured steps the fused kernels (flash,
   memory-efficient, cuDNN) are off and the forward runs on the math kernel (the output's
   autograd node says which kernel ran), on the other steps and after the block they are back;
   every curvature snapshot has no error.
2. **Curvature against a float64 dense reference**: a tiny float64 attention + MLP model on the
   device; ``H_bb v`` within 1e-10 (relative) of the dense double-backward Hessian computed on a
   CPU copy, block traces within 4 standard errors, λmin/λmax within their Ritz residuals (the
   tolerances of ``tests/curvature/test_exactness.py``).
3. **Bit-exact training**: a small pre-norm encoder (dropout on) trained plain, plain again and
   under ``hfault.watch`` (default first-order run, deterministic algorithms): the losses and
   every weight identical.

Measured (printed, not judged; the machine's noise would make a threshold flaky):

4. **Unmeasured-step overhead**: the same encoder's training loop timed plain and under hfault
   (no step scheduled for measurement; the first 5 steps of each run untimed), runs alternated in
   this process, minimum of the repeats.
5. **Snapshot time** of the default curvature snapshot (``measure_step`` with
   ``CurvatureConfig()``, as ``hfault diagnose --curvature`` runs it) against one AdamW step, for
   GPT-2 124M and DistilBERT-base built from their transformers configs (random init,
   synthetic tokens).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# cuBLAS needs this before CUDA starts for deterministic matrix products (check 3).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hfault  # noqa: E402
from hfault.capture.math_attention import MathAttention  # noqa: E402
from hfault.curvature import CurvatureSettings, HessianOperator, measure, whole  # noqa: E402
from hfault.curvature.dense import dense_hessian  # noqa: E402


@dataclass(frozen=True)
class Sizes:
    """Everything that differs between the GPU run and the CPU smoke run."""

    encoder_width: int
    encoder_layers: int
    encoder_seq: int
    encoder_batch: int
    exact_steps: int
    overhead_steps: int
    overhead_repeats: int
    snapshot_batch: int
    snapshot_seq: int
    snapshot_reps: int
    gpt2: dict[str, Any]
    distilbert: dict[str, Any]


GPU = Sizes(encoder_width=256, encoder_layers=4, encoder_seq=128, encoder_batch=32,
            exact_steps=30, overhead_steps=200, overhead_repeats=5, snapshot_batch=8,
            snapshot_seq=128, snapshot_reps=2, gpt2={}, distilbert={})
SMOKE = Sizes(encoder_width=16, encoder_layers=1, encoder_seq=8, encoder_batch=4,
              exact_steps=4, overhead_steps=3, overhead_repeats=1, snapshot_batch=2,
              snapshot_seq=8, snapshot_reps=1,
              gpt2={"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 64,
                    "n_positions": 16},
              distilbert={"n_layers": 1, "dim": 16, "n_heads": 2, "hidden_dim": 32,
                          "vocab_size": 64, "max_position_embeddings": 16})


class Results:
    """PASS/FAIL lines as they come, and the count at the end."""

    def __init__(self) -> None:
        self.failed: list[str] = []
        self.passed = 0

    def check(self, name: str, ok: bool, detail: str) -> None:
        print(f"  {'PASS' if ok else 'FAIL'} {name}: {detail}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------ 1. SDPA kernel switch
FLAGS = ("flash_sdp", "mem_efficient_sdp", "cudnn_sdp")


def sdpa_flags() -> tuple[bool, ...]:
    return tuple(getattr(torch.backends.cuda, f"{f}_enabled")() for f in FLAGS)


class RecordingAttention(nn.Module):
    """Self-attention through SDPA that logs, per forward, the SDPA flags and the kernel that
    ran (``ScaledDotProduct...Backward`` is a fused kernel; the math kernel is decomposed)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.log: list[tuple[tuple[bool, ...], bool]] = []

    def forward(self, x: Tensor) -> Tensor:
        b, t, w = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        node = y.grad_fn.name() if y.grad_fn is not None else ""
        self.log.append((sdpa_flags(), node.startswith("ScaledDotProduct")))
        return self.out(y.transpose(1, 2).reshape(b, t, w))


def check_sdpa_switch(device: torch.device, results: Results) -> None:
    section("1. SDPA kernels: math on measured steps, fused otherwise")
    torch.manual_seed(0)
    # Half precision on CUDA so the flash kernel is eligible; the CPU flash kernel takes fp32.
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    attn = RecordingAttention(64, 4).to(device, dtype)
    head = nn.Linear(64, 4).to(device, dtype)
    model = nn.Sequential(attn, head)
    x = torch.randn(8, 32, 64, device=device, dtype=dtype)
    y = torch.randint(0, 4, (8,), device=device)
    before = sdpa_flags()
    steps, measured_at = 6, (2, 5)
    with hfault.watch(curvature=True, at=",".join(map(str, measured_at))) as run:
        opt = torch.optim.SGD(model.parameters(), lr=1e-2)
        for _ in range(steps):
            loss = F.cross_entropy(model(x).mean(1).float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    report = run.report or {}
    curv = {s["step"]: s["curvature"] for s in report.get("snapshots", []) if "curvature" in s}
    results.check("curvature measured", sorted(curv) == list(measured_at)
                  and all(c.get("error") is None for c in curv.values()),
                  f"snapshots at steps {sorted(curv)}, errors "
                  f"{[c.get('error') for c in curv.values()]}")
    fused_ok, flags_ok, rows = True, True, []
    for step, (flags, fused) in enumerate(attn.log, start=1):
        measured = step in measured_at
        flags_ok &= flags == ((False,) * len(FLAGS) if measured else before)
        fused_ok &= fused != measured
        rows.append(f"{step}:{'math' if not fused else 'fused'}")
    results.check("flags per step", flags_ok and len(attn.log) == steps,
                  f"fused kernels off exactly on steps {list(measured_at)} (before {before})")
    results.check("kernel per step", fused_ok, " ".join(rows))
    results.check("flags restored", sdpa_flags() == before, f"after the block {sdpa_flags()}")


# ------------------------------------------------------------------ 2. curvature vs dense
class TinyAttentionMLP(nn.Module):
    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 6), nn.Linear(6, 3)
        self.d = d

    def forward(self, x: Tensor) -> Tensor:
        s = self.q(x) @ self.k(x).transpose(-1, -2) / self.d**0.5
        h = torch.softmax(s, dim=-1) @ self.v(x)
        return self.fc2(torch.tanh(self.fc1(h.mean(1))))


def check_curvature(device: torch.device, results: Results) -> None:
    section("2. curvature on the device vs the float64 dense Hessian (CPU)")
    torch.manual_seed(0)
    cpu_model = TinyAttentionMLP().double()
    x = 2.0 * torch.randn(6, 5, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (6,))
    dev_model = TinyAttentionMLP().double().to(device)
    dev_model.load_state_dict(cpu_model.state_dict())
    names = [n for n, _ in cpu_model.named_parameters()]
    blocks = [whole(m, *[names.index(f"{m}.weight"), names.index(f"{m}.bias")])
              for m in ("q", "k", "v", "fc1", "fc2")]
    dense = dense_hessian(F.cross_entropy(cpu_model(x), y), list(cpu_model.parameters()))
    dx, dy = x.to(device), y.to(device)
    params = list(dev_model.parameters())
    op = HessianOperator(F.cross_entropy(dev_model(dx), dy), params, blocks)
    gen = torch.Generator(device=device).manual_seed(1)
    worst = 0.0
    for i, b in enumerate(blocks):
        v = torch.randn(op.numel(i), dtype=torch.float64, generator=gen, device=device)
        want = dense.sub(b, b) @ v.cpu()
        got = op.hvp_bb(i, v).cpu()
        worst = max(worst, float((got - want).norm() / want.norm()))
    results.check("H_bb v", worst <= 1e-10, f"max relative error {worst:.1e} (tolerance 1e-10)")
    snap = measure(op, CurvatureSettings(probes=24, lanczos_steps=30, tol=1e-6), generator=gen)
    op.close()
    scale = max(float(dense.eigvalsh(b).abs().max()) for b in blocks)
    trace_ok, eig_ok, lines = True, True, []
    for b in blocks:
        est, ev = snap.block(b.name), dense.eigvalsh(b)
        exact = dense.trace(b)
        trace_ok &= abs(est.trace - exact) <= 4 * est.trace_se + 1e-10 * scale
        assert est.lambda_max is not None and est.lambda_min is not None
        eig_ok &= (abs(est.lambda_max - float(ev[-1])) <= (est.eig_residual_max or 0.0)
                   + 1e-9 * scale
                   and abs(est.lambda_min - float(ev[0])) <= (est.eig_residual_min or 0.0)
                   + 1e-9 * scale)
        lines.append(f"{b.name} tr {est.trace:.4g}±{est.trace_se:.1g} (dense {exact:.4g}) "
                     f"λmax {est.lambda_max:.4g} (dense {float(ev[-1]):.4g})")
    print("    " + "\n    ".join(lines))
    results.check("block traces", trace_ok, "every block within 4 SE of the dense trace")
    results.check("lambda min/max", eig_ok, "every block within its Ritz residual")


# ------------------------------------------------------------------ 3 and 4. the encoder
def make_encoder(sizes: Sizes, device: torch.device, dropout: float) -> nn.Module:
    w = sizes.encoder_width
    layer = nn.TransformerEncoderLayer(w, 4, 4 * w, dropout=dropout, batch_first=True,
                                       norm_first=True)
    return nn.Sequential(nn.TransformerEncoder(layer, sizes.encoder_layers,
                                               enable_nested_tensor=False),
                         nn.Linear(w, 4)).to(device)


def train_encoder(sizes: Sizes, device: torch.device, steps: int, *, dropout: float = 0.1,
                  watch: dict[str, Any] | None = None, untimed: int = 0
                  ) -> tuple[list[float], nn.Module, float]:
    """Losses, the trained model and the seconds of the steps after the first ``untimed`` (under
    ``hfault.watch(**watch)`` when given; the model and data are made first, so both runs see the
    same RNG stream)."""
    torch.manual_seed(0)
    model = make_encoder(sizes, device, dropout)
    x = torch.randn(sizes.encoder_batch, sizes.encoder_seq, sizes.encoder_width, device=device)
    y = torch.randint(0, 4, (sizes.encoder_batch,), device=device)
    losses: list[Tensor] = []

    def loop() -> float:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        start = time.perf_counter()
        for i in range(steps):
            if i == untimed:
                sync(device)
                start = time.perf_counter()
            loss = F.cross_entropy(model(x).mean(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.detach())
        sync(device)
        return time.perf_counter() - start

    if watch is None:
        seconds = loop()
    else:
        with hfault.watch(**watch):
            seconds = loop()
    return [float(v) for v in losses], model, seconds


@contextmanager
def deterministic() -> Iterator[None]:
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def check_bit_exact(sizes: Sizes, device: torch.device, results: Results) -> None:
    section("3. bit-exact training: plain vs under hfault (default run)")
    with deterministic():
        plain, m_plain, _ = train_encoder(sizes, device, sizes.exact_steps)
        again, _, _ = train_encoder(sizes, device, sizes.exact_steps)
        watched, m_watched, _ = train_encoder(sizes, device, sizes.exact_steps, watch={})
    results.check("plain is reproducible", plain == again,
                  "two plain runs give the same losses (else the next line means nothing)")
    same_weights = all(torch.equal(a, b) for a, b in zip(
        m_plain.state_dict().values(), m_watched.state_dict().values(), strict=True))
    diff = max(abs(a - b) for a, b in zip(plain, watched, strict=True))
    results.check("hfault vs plain", plain == watched and same_weights,
                  f"{len(plain)} losses identical: {plain == watched} (max difference "
                  f"{diff:.1e}), every weight identical: {same_weights}")


def overhead(sizes: Sizes, device: torch.device) -> None:
    section("4. unmeasured-step overhead (training-loop time, alternated runs, minimum)")
    # The first steps are not timed: they build the optimizer state, and under hfault the
    # components (once per run, not per step).
    steps, untimed = sizes.overhead_steps, 5
    never: dict[str, Any] = {"at": "100000"}  # no step measured (the last is, after the loop)
    train_encoder(sizes, device, 2, dropout=0.0)  # warm-up: kernels, allocator, cuBLAS
    train_encoder(sizes, device, 2, dropout=0.0, watch=never)
    plain, watched = [], []
    for _ in range(sizes.overhead_repeats):
        plain.append(train_encoder(sizes, device, untimed + steps, dropout=0.0,
                                   untimed=untimed)[2])
        watched.append(train_encoder(sizes, device, untimed + steps, dropout=0.0,
                                     watch=never, untimed=untimed)[2])
    ratio = min(watched) / min(plain)
    print(f"  encoder width {sizes.encoder_width}, {sizes.encoder_layers} layers, batch "
          f"{sizes.encoder_batch}x{sizes.encoder_seq}: plain {1e3 * min(plain) / steps:.2f} "
          f"ms/step, hfault {1e3 * min(watched) / steps:.2f} ms/step: ratio {ratio:.3f}x "
          f"(issue 15's target: <= 1.03x)", flush=True)


# ------------------------------------------------------------------ 5. snapshot time
def transformer_models(sizes: Sizes) -> dict[str, Callable[[], Any]]:
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        GPT2Config,
        GPT2LMHeadModel,
    )
    from transformers.utils import logging

    logging.set_verbosity_error()  # the tiny smoke configs draw warnings about token ids
    tiny = " (tiny smoke config)" if sizes.gpt2 else ""
    return {
        "GPT-2 124M" + tiny: lambda: GPT2LMHeadModel(GPT2Config(**sizes.gpt2)),
        "DistilBERT-base" + tiny: lambda: DistilBertForSequenceClassification(
            DistilBertConfig(**sizes.distilbert)),
    }


def snapshot_time(sizes: Sizes, device: torch.device) -> None:
    from hfault.components import build_components
    from hfault.probes.curvature_probe import CurvatureConfig, measure_step

    section("5. default curvature snapshot vs one AdamW step (random init, synthetic tokens)")
    for name, make in transformer_models(sizes).items():
        torch.manual_seed(0)
        model = make().to(device)
        vocab = model.config.vocab_size
        ids = torch.randint(0, vocab, (sizes.snapshot_batch, sizes.snapshot_seq), device=device)
        gpt = "GPT" in name
        labels = ids if gpt else torch.randint(0, 2, (sizes.snapshot_batch,), device=device)

        def loss_fn(model: nn.Module = model, ids: Tensor = ids, labels: Tensor = labels
                    ) -> Tensor:
            return model(input_ids=ids, labels=labels).loss

        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(opt: torch.optim.Optimizer = opt, loss_fn: Callable[[], Tensor] = loss_fn
                 ) -> None:
            opt.zero_grad()
            loss_fn().backward()
            opt.step()

        for _ in range(3):  # warm-up, and every block gets an Adam preconditioner
            step()
        opt.zero_grad(set_to_none=True)
        comps = build_components([opt], list(model.modules()))
        params = sum(p.numel() for p in model.parameters())
        step_s = snap_s = float("inf")
        hvps, error = 0, None
        math = MathAttention()  # what the curvature probe does on a measured step
        for _ in range(sizes.snapshot_reps):
            sync(device)
            t0 = time.perf_counter()
            step()
            sync(device)
            step_s = min(step_s, time.perf_counter() - t0)
            math.enter()
            try:
                sync(device)
                t0 = time.perf_counter()
                rec = measure_step(1, loss_fn(), 1.0, comps, [opt], CurvatureConfig())
                sync(device)
                snap_s = min(snap_s, time.perf_counter() - t0)
            finally:
                math.exit()
            error = rec.error
            hvps = rec.snapshot.hvp_count if rec.snapshot is not None else 0
        peak = (f", peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"
                if device.type == "cuda" else "")
        print(f"  {name}: {params / 1e6:.1f}M params, {len(comps)} components, batch "
              f"{sizes.snapshot_batch}x{sizes.snapshot_seq}: AdamW step {1e3 * step_s:.1f} ms, "
              f"snapshot {snap_s:.2f} s ({hvps} HVPs) = {snap_s / step_s:.0f} steps{peak}"
              + (f"; ERROR {error}" if error else ""), flush=True)
        del model, opt, comps
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny sizes on the CPU: checks that the script runs (seconds)")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        device, sizes = torch.device("cpu"), SMOKE
    elif not torch.cuda.is_available():
        print("device_check: no CUDA device (use --cpu-smoke on a CPU machine)", file=sys.stderr)
        return 2
    else:
        device, sizes = torch.device("cuda"), GPU
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (smoke sizes)"
    print(f"device check on {name}; torch {torch.__version__}", flush=True)
    start = time.perf_counter()
    results = Results()
    check_sdpa_switch(device, results)
    check_curvature(device, results)
    check_bit_exact(sizes, device, results)
    overhead(sizes, device)
    snapshot_time(sizes, device)
    print(f"\ndevice check: {results.passed} passed, {len(results.failed)} failed"
          + (f" ({', '.join(results.failed)})" if results.failed else "")
          + f"; {time.perf_counter() - start:.0f} s", flush=True)
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
