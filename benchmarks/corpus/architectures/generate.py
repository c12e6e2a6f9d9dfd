"""Write the architecture sweep's manifests: one family per transformers model type.

    .venv/bin/python benchmarks/corpus/architectures/generate.py            # all candidates
    .venv/bin/python benchmarks/corpus/architectures/generate.py --types opt,phi

For each type this builds ``program.py``'s model, runs the plain program once (no hfault), and
keeps the type only when it builds, runs in under ``--max-seconds`` and learns (validation loss
below ``LEARNS`` × the first loss). It then writes ``zoo/arch_TYPE.py`` (a two-line wrapper
that runs ``program.py --model TYPE``) and ``zoo/arch_TYPE.toml``, whose mutants are aimed by
rules fixed here in advance, never by reading hfault's results: the model's layers are its
largest ``nn.ModuleList`` of two or more blocks; a layer's attention is its outermost submodule
whose class name says "Attention"; its feed-forward input is the widest weight-carrying leaf
of the layer outside that attention; the head is the last module with ``CLASSES`` outputs.
Types whose code the corpus's own families already exercise are left out (``SEEN``), so the
sweep measures model code that nothing in hfault was tuned on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]

# Types with a corpus family of their own, or run under hfault in earlier sessions.
SEEN = {
    "bert", "gpt2", "bart", "llama", "vit", "t5", "distilbert", "electra", "roberta", "qwen2",
    "deberta-v2", "albert", "whisper", "longformer", "mpnet", "big_bird", "mobilebert",
    "roformer", "xlm-roberta", "squeezebert", "canine", "nystromformer", "ernie", "layoutlm",
    "funnel", "xlnet",
}
CANDIDATES = [
    "biogpt", "bloom", "convbert", "ctrl", "data2vec-text", "deberta", "falcon", "fnet",
    "gemma2", "gpt_bigcode", "gpt_neo", "gpt_neox", "gptj", "ibert", "jetmoe", "luke", "mbart",
    "megatron-bert", "mistral", "mixtral", "modernbert", "mpt", "mra", "mvp", "nemotron",
    "olmo2", "openai-gpt", "opt", "persimmon", "phi", "phi3", "qwen3", "rembert",
    "roberta-prelayernorm", "stablelm", "starcoder2", "xmod", "yoso", "esm", "reformer",
]
LEARNS = 0.7
STEPS = 100


def _program():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("arch_program", HERE / "program.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _has_weight(module: nn.Module) -> bool:
    return any(p.ndim >= 2 for p in module.parameters(recurse=False))


def aim(model: nn.Module, classes: int) -> dict[str, str]:
    """The modules the mutants target, found from the model's structure alone."""
    lists = [(name, m) for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) >= 2
             and len({type(c) for c in m}) == 1]
    if not lists:
        raise ValueError("no list of layers")
    where, layers = max(lists, key=lambda nm: sum(p.numel() for p in nm[1].parameters()))

    def attention(i: int) -> str:
        prefix = f"{where}.{i}"
        for name, m in layers[i].named_modules():
            if name and "attention" in type(m).__name__.lower():
                return f"{prefix}.{name}"
        raise ValueError(f"no attention in {prefix}")

    def feed_forward(i: int) -> str:
        att = attention(i)[len(f"{where}.{i}."):]
        leaves = [(name, m) for name, m in layers[i].named_modules()
                  if name and _has_weight(m) and not name.startswith(att + ".") and name != att
                  and not isinstance(m, nn.Embedding)]
        if not leaves:
            raise ValueError("no feed-forward weight")
        name, _ = max(leaves, key=lambda nm: max(p.numel()
                                                  for p in nm[1].parameters(recurse=False)))
        return f"{where}.{i}.{name}"

    heads = [name for name, m in model.named_modules()
             if name and _has_weight(m) and any(p.ndim >= 2 and classes in p.shape[:1]
                                                 for p in m.parameters(recurse=False))]
    if not heads:
        raise ValueError("no head")
    return {"first_attention": attention(0), "last_attention": attention(len(layers) - 1),
            "first_ffn": feed_forward(0), "head": heads[-1]}


MUTANTS: list[tuple[str, str, str | None, float | None]] = [
    # (the bug it stands for, operator, which aimed module, factor)
    ("one layer's attention at 100x the learning rate (a per-layer LR group gone wrong)",
     "lr_up", "last_attention", 100),
    ("the first feed-forward weight initialised 50x too large", "init_scale", "first_ffn", 50),
    ("attention logits multiplied by sqrt(head_dim) instead of divided (scale inverted)",
     "softmax_scale", "first_attention", 16),
    ("attention temperature far too high (logits x 0.02): attention nearly uniform",
     "softmax_scale", "last_attention", 0.02),
    ("the last attention block's output .detach()ed", "detach", "last_attention", None),
    ("the padding mask dropped in the first attention", "mask_drop", "first_attention", None),
    ("the first attention frozen by mistake", "freeze", "first_attention", None),
    ("learning rate far too large for the whole model", "lr_global", None, 30),
    ("optimizer.zero_grad() forgotten", "no_zero_grad", None, None),
    ("40% of the labels random", "label_noise", None, None),
    ("softmax probabilities handed to F.cross_entropy", "probs_into_loss", None, None),
]


def manifest(model_type: str, aims: dict[str, str], description: str,
             family: str | None = None, generator: str = "architectures/generate.py") -> str:
    blocks = []
    for comment, op, aimed, factor in MUTANTS:
        lines = [f"# {comment}", "[[mutant]]", f'op = "{op}"']
        if aimed is not None:
            lines.append(f'target = "{aims[aimed]}"')
        if factor is not None:
            lines.append(f"factor = {factor}")
        blocks.append("\n".join(lines) + "\n")
    family = family or f"arch_{model_type.replace('-', '_')}"
    head = f'''# Generated by {generator} (do not edit: re-run it).
family = "{family}"
description = "{description}"
steps = {STEPS}
seeds = [0]
healthy_seeds = [1]
head = "{aims["head"]}"
'''
    return head + "\n" + "\n".join(blocks)


WRAPPER = '''"""transformers {model_type}: architecture sweep (generated by generate.py)."""

import runpy
import sys
from pathlib import Path

sys.argv[1:1] = ["--model", "{model_type}"]
runpy.run_path(str(Path(__file__).resolve().parents[1] / "program.py"), run_name="__main__")
'''


def run_program(program: Path, args: list[str], timeout: float
                ) -> tuple[dict | None, float, str]:
    """One plain run of a corpus program (one math thread): its ``CORPUS_RESULT``, its seconds,
    and why there is none (the last line of its stderr, or "timed out")."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, str(program), *args], capture_output=True,
                              text=True, env=env, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None, time.perf_counter() - start, "timed out"
    seconds = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith("CORPUS_RESULT "):
            return json.loads(line[len("CORPUS_RESULT "):]), seconds, ""
    return None, seconds, (proc.stderr.strip().splitlines() or ["no output"])[-1][:160]


def plain_run(model_type: str, max_seconds: float) -> tuple[dict | None, float, str]:
    return run_program(HERE / "program.py", ["--model", model_type, "--steps", str(STEPS)],
                       max_seconds * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--types", help="comma-separated model types (default: CANDIDATES)")
    parser.add_argument("--max-seconds", type=float, default=25.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    program = _program()
    zoo = HERE / "zoo"
    zoo.mkdir(exist_ok=True)
    kept = []
    for model_type in (args.types.split(",") if args.types else CANDIDATES):
        if model_type in SEEN:
            print(f"{model_type:22} skipped: seen")
            continue
        try:
            torch.manual_seed(0)
            config = program.tiny_config(model_type)
            model = program.AutoModelForSequenceClassification.from_config(config)
            aims = aim(model, program.CLASSES)
        except Exception as exc:
            print(f"{model_type:22} dropped: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        result, seconds, why = plain_run(model_type, args.max_seconds)
        if result is None or not isinstance(result["val_loss"], float):
            print(f"{model_type:22} dropped: {why or 'non-finite loss'}")
            continue
        if seconds > args.max_seconds or result["val_loss"] > LEARNS * result["first_loss"]:
            print(f"{model_type:22} dropped: {seconds:.1f} s, loss {result['first_loss']:.3f} "
                  f"-> val {result['val_loss']:.3f}")
            continue
        cls = type(model).__name__
        description = (f"transformers {cls} from a tiny {type(config).__name__} (the "
                       f"architecture sweep's recipe: AdamW decay groups, warmup, clipping)")
        name = f"arch_{model_type.replace('-', '_')}"
        (zoo / f"{name}.toml").write_text(manifest(model_type, aims, description))
        (zoo / f"{name}.py").write_text(WRAPPER.format(model_type=model_type))
        kept.append(name)
        print(f"{model_type:22} kept: {seconds:.1f} s, loss {result['first_loss']:.3f} -> val "
              f"{result['val_loss']:.3f}; {json.dumps(aims)}", flush=True)
    split = zoo / "split.toml"
    split.write_text("# Generated by architectures/generate.py: every kept type, scored only.\n"
                     f"architectures = {json.dumps(sorted(kept))}\n")
    print(f"\n{len(kept)} types kept")


if __name__ == "__main__":
    main()
