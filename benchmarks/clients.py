"""hfault on public training code the team did not write, run as a new user would.

    .venv/bin/python benchmarks/clients.py                       # every client, both modes
    .venv/bin/python benchmarks/clients.py nanogpt mingpt        # some clients
    .venv/bin/python benchmarks/clients.py --mode first-order    # one mode
    .venv/bin/python benchmarks/clients.py --rescore benchmarks/results/clients   # no runs
    .venv/bin/python benchmarks/clients.py --json table.json     # also write every row

The clients are checkouts of karpathy/nanoGPT (``nanogpt``), karpathy/minGPT (``mingpt``: the
adder; ``chargpt``), karpathy/makemore (``makemore``, its transformer on the ``names.txt`` it
ships), karpathy/ng-video-lecture (``ngvl``, the lecture's GPT with one module per head, on the
tiny Shakespeare it ships) and pytorch/examples (``wlm-adamw``, ``wlm-sgd``:
word_language_model; ``gat``: graph attention on a synthetic citation graph; ``tsp``:
time_sequence_prediction, LSTM cells trained by LBFGS with a closure; ``translation``:
language_translation, ``nn.Transformer`` on padded batches, with a stand-in for the ``torchtext``
it imports), karpathy/llm.c (``llmc``: its PyTorch reference ``train_gpt2.py`` on synthetic
token shards, with a small config added and a stand-in for the ``tiktoken`` it imports) and
lucidrains/x-transformers (``xt-copy``: ``train_copy.py``, an encoder-decoder on its generated
copy task, importing the checkout's own ``x_transformers``), Lightning-AI/pytorch-lightning
(``lightning-lm``: ``examples/pytorch/basics/transformer.py``, the demo ``Transformer`` of the
installed ``lightning`` under ``Trainer.fit``, its ``WikiText2`` file written as Zipf text; its
"healthy" variant is the demo as published, which feeds its decoder the target sequence itself, so
HF217's error there is right) and
lucidrains/PaLM-pytorch (``palm``: ``train.py``, byte-level on a synthetic ``enwik8.gz``,
importing the checkout's own ``palm_pytorch``), folders given with
``--nanogpt``, ``--mingpt``, ``--makemore``, ``--examples``, ``--ngvl``, ``--llmc``,
``--xtransformers``, ``--lightning``, ``--palm`` (default ``/tmp/clients/...``; e.g. ``git
--git-dir=<bare clone> archive HEAD gat | tar -x -C /tmp/clients/examples``; ``HEAD
examples/pytorch/basics`` into ``/tmp/clients/lightning``; PaLM's ``enwik8.gz`` is a Git LFS
object a bare clone may lack: archive the other paths), plus a tiny GPT-2 under the transformers
``Trainer`` (``benchmarks/clients/gpt2_trainer.py``). Packages the project's venv lacks go into
the ``--pydeps`` folder, put on the ``PYTHONPATH`` of the clients that need it only: ``pip
install --no-deps --target /tmp/clients/pydeps accelerate psutil`` for the ``Trainer``, ``einops
einx loguru torch-einops-utils frozendict`` for x-transformers (``einops`` also for PaLM).
Nothing of theirs lives in this repository: each run copies the scripts it needs into a
temporary folder, writes synthetic data there (no downloads), makes the few edits the venv
needs (no ``tensorboard``, ``requests``, ``matplotlib``, Triton or CUDA; NumPy 2: the prepare
functions say which) and, for the faulty variant, injects one bug by a textual edit of that
copy. A bug in a class that several modules share (an attention class
every block uses) names them all as its label; any of them ranked first is a hit. Each client ×
variant is run once plainly (the wall-time baseline; the tail of its output, with the script's
last printed losses, is kept in the index as ``plain_tail``) and under ``hfault diagnose`` in
full mode and with ``--no-curvature``, one process at a time with ``OMP_NUM_THREADS=1``.
Reports go to ``--keep`` (default ``benchmarks/results/clients/``) with an ``index.json`` of the
runs; ``--rescore DIR`` recomputes findings and verdicts of saved reports
with the current rule files (``rejudge()`` of ``benchmarks/accuracy.py``) and prints the table.
Not a test: it prints numbers.
"""

from __future__ import annotations

import argparse
import gzip
import itertools
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import rejudge
from samples import ROOT, matches, ranked_components

HERE = Path(__file__).resolve().parent
KEEP = HERE / "results" / "clients"
MODES = {"full": [], "first-order": ["--no-curvature"]}
VARIANTS = ("healthy", "bug")


# ---------------------------------------------------------------------------------------------
# synthetic data


def zipf_words(rng: random.Random, n: int) -> list[str]:
    """``n`` distinct lowercase pseudo-words, shortest first (frequent words are short)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    seen: set[str] = set()
    words: list[str] = []
    while len(words) < n:
        length = 2 + min(10, int(rng.expovariate(0.5)) + len(words) // 800)
        word = "".join(rng.choice(letters) for _ in range(length))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def zipf_text(seed: int, vocab: int, n_tokens: int, exponent: float = 1.1) -> list[list[str]]:
    """Lines of words from a long-tailed (Zipf) vocabulary with bigram structure: half of the
    time a word is followed by one of its 3 preferred successors, else by a Zipf draw. The
    vocabulary and bigrams depend on ``vocab`` only, the draws on ``seed``."""
    language = random.Random(vocab)  # the same words and bigrams in every split
    words = zipf_words(language, vocab)
    cum = list(itertools.accumulate(1.0 / (r + 1) ** exponent for r in range(vocab)))
    follow = {w: language.choices(words, cum_weights=cum, k=3) for w in words}
    rng = random.Random(seed)
    lines, total = [], 0
    draws = iter(())
    while total < n_tokens:
        length = rng.randint(6, 24)
        line = []
        for _ in range(length):
            if line and rng.random() < 0.5:
                line.append(rng.choice(follow[line[-1]]))
                continue
            word = next(draws, None)
            if word is None:
                draws = iter(rng.choices(words, cum_weights=cum, k=4096))
                word = next(draws)
            line.append(word)
        lines.append(line)
        total += length + 1
    return lines


def write_corpus(folder: Path, vocab: int, tokens: dict[str, int]) -> None:
    """``train.txt``/``valid.txt``/``test.txt`` in the word_language_model format (one sentence a
    line; words separated by spaces)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (split, n) in enumerate(tokens.items()):
        lines = zipf_text(seed=10 + i, vocab=vocab, n_tokens=n)
        (folder / f"{split}.txt").write_text("".join(" " + " ".join(w) + " \n" for w in lines))


def char_text(n_chars: int) -> str:
    """``n_chars`` characters of Zipf-text sentences, capitalized and punctuated."""
    lines = zipf_text(seed=3, vocab=600, n_tokens=n_chars // 5)
    rng = random.Random(4)
    text_lines = []
    for line in lines:
        sentence = " ".join(line).capitalize()
        text_lines.append(sentence + rng.choice([".", ".", ",", "?", "!"]))
    return "\n".join(text_lines)[:n_chars]


def write_char_dataset(folder: Path, n_chars: int) -> None:
    """``train.bin``/``val.bin``/``meta.pkl`` as nanoGPT's ``data/shakespeare_char/prepare.py``
    writes them (uint16 ids, 90/10 split, ``vocab_size``/``itos``/``stoi``)."""
    import numpy as np

    data = char_text(n_chars)
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    itos = dict(enumerate(chars))
    ids = np.array([stoi[c] for c in data], dtype=np.uint16)
    cut = int(len(ids) * 0.9)
    folder.mkdir(parents=True, exist_ok=True)
    ids[:cut].tofile(folder / "train.bin")
    ids[cut:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)


def write_citation_graph(folder: Path, nodes: int, words: int, classes: int, seed: int = 5) -> None:
    """``cora.content``/``cora.cites`` in the Cora format the GAT example reads (``<id> <0/1 per
    word>... <class>`` a line; ``<cited> <citing>`` a line). Each paper's bag of words draws 15%
    from its class's 40 topic words, the rest at random, so features alone are weak; 80% of its
    1-5 citations stay within its class, picked by preferential attachment (a few papers are cited
    by many, as in Cora), so the graph carries the signal attention has to find."""
    rng = random.Random(seed)
    labels = [rng.randrange(classes) for _ in range(nodes)]
    topics = {c: rng.sample(range(words), 40) for c in range(classes)}
    lines = []
    for i, c in enumerate(labels):
        bag = {rng.choice(topics[c]) if rng.random() < 0.15 else rng.randrange(words)
               for _ in range(rng.randint(8, 20))}
        row = ["1" if w in bag else "0" for w in range(words)]
        lines.append(" ".join([str(1000 + i), *row, f"class_{c}"]))
    by_class = {c: [i for i in range(nodes) if labels[i] == c] for c in range(classes)}
    cites: set[tuple[int, int]] = set()
    cited = [1] * nodes
    for i, c in enumerate(labels):
        for _ in range(rng.randint(1, 5)):
            pool = by_class[c] if rng.random() < 0.8 else range(nodes)
            j = rng.choices(pool, weights=[cited[k] for k in pool])[0]
            if j != i and (1000 + j, 1000 + i) not in cites:
                cites.add((1000 + j, 1000 + i))
                cited[j] += 1
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cora.content").write_text("\n".join(lines) + "\n")
    (folder / "cora.cites").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(cites)))


# ---------------------------------------------------------------------------------------------
# clients


def edit(path: Path, old: str, new: str) -> None:
    """Replace ``old`` (which must occur exactly once) by ``new`` in ``path``."""
    text = path.read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"{path.name}: expected one {old!r}, found {text.count(old)}")
    path.write_text(text.replace(old, new))


@dataclass(frozen=True)
class Client:
    name: str
    source: str
    """The checkout option it comes from (``nanogpt``, ``mingpt``, ``examples``, ``makemore``,
    ``ngvl``, ``llmc``, ``xtransformers``, ``lightning``, ``palm``, ``own``)."""
    copy: str
    """The folder of the checkout copied into the work folder ("" = all of it)."""
    script: str
    """The script, relative to the work folder; the runs' working directory is its folder."""
    args: tuple[str, ...]
    steps: int
    bug: str
    label: str
    """The culprit module(s) as ``named_modules()`` names them, space-separated when the bug is in
    a class that several modules share (any of them ranked first is a hit)."""
    prepare: Callable[[Path, str], None]
    """``prepare(work, variant)``: write data, inject the bug."""
    pythonpath: bool = False
    """Put the work folder on ``PYTHONPATH`` (minGPT's projects import the ``mingpt`` package,
    x-transformers' scripts the ``x_transformers`` one, PaLM's the ``palm_pytorch`` one)."""
    pydeps: bool = False
    """Needs the ``--pydeps`` folder on ``PYTHONPATH`` (``accelerate`` for the ``Trainer``,
    ``einops`` and co. for x-transformers and PaLM)."""
    variants: tuple[str, ...] = VARIANTS
    note: str = ""
    options: tuple[str, ...] = field(default=())


NANOGPT_STEPS = 100


def prepare_nanogpt(work: Path, variant: str) -> None:
    write_char_dataset(work / "data" / "synth_char", n_chars=120_000)
    if variant == "bug":
        edit(work / "model.py", "        num_decay_params = sum(p.numel() for p in decay_params)\n",
             "        hot = param_dict['transformer.h.1.attn.c_attn.weight']  # its own group\n"
             "        optim_groups[0]['params'] = [p for p in decay_params if p is not hot]\n"
             "        optim_groups.append({'params': [hot], 'weight_decay': weight_decay,"
             " 'lr_mult': 100.0})\n"
             "        num_decay_params = sum(p.numel() for p in decay_params)\n")
        edit(work / "train.py", "        param_group['lr'] = lr\n",
             "        param_group['lr'] = lr * param_group.get('lr_mult', 1.0)\n")


def prepare_mingpt(work: Path, variant: str) -> None:
    if variant == "bug":
        edit(work / "mingpt" / "model.py",
             "            if pn.endswith('c_proj.weight'):\n",
             "            if pn == 'transformer.h.1.attn.c_attn.weight':\n"
             "                torch.nn.init.normal_(p, mean=0.0, std=1.0)\n"
             "            if pn.endswith('c_proj.weight'):\n")


def prepare_chargpt(work: Path, variant: str) -> None:
    """chargpt reads ``input.txt`` (tiny-shakespeare in its README) from its folder and samples
    from the context "O God, O God!" at iteration 0, so the text holds those characters."""
    text = char_text(200_000) + "\nO God, O God!\n"
    (work / "projects" / "chargpt" / "input.txt").write_text(text)
    if variant == "bug":  # the causal mask shifted by one: a position may not attend to itself
        edit(work / "mingpt" / "model.py",
             "torch.tril(torch.ones(config.block_size, config.block_size))",
             "torch.tril(torch.ones(config.block_size, config.block_size), diagonal=-1)")


def prepare_wlm(work: Path, variant: str) -> None:
    write_corpus(work / "data" / "synth", vocab=5000,
                 tokens={"train": 60_000, "valid": 4_000, "test": 4_000})
    if variant == "bug-sgd":  # the hand-written update: 100x on encoder layer 0's attention
        edit(work / "main.py",
             "            for p in model.parameters():\n"
             "                p.data.add_(p.grad, alpha=-lr)\n",
             "            for n, p in model.named_parameters():\n"
             "                scale = 100 if n.startswith('encoder.layers.0.self_attn.') else 1\n"
             "                p.data.add_(p.grad, alpha=-lr * scale)\n")
    if variant == "bug":
        edit(work / "main.py",
             "    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)\n",
             "    attn = [p for n, p in model.named_parameters()"
             " if n.startswith('encoder.layers.0.self_attn.')]\n"
             "    rest = [p for n, p in model.named_parameters()"
             " if not n.startswith('encoder.layers.0.self_attn.')]\n"
             "    optimizer = torch.optim.AdamW([{'params': rest},"
             " {'params': attn, 'lr': args.lr * 100}], lr=args.lr)\n")


def prepare_wlm_sgd(work: Path, variant: str) -> None:
    """word_language_model's default path: its own update loop, no torch.optim optimizer."""
    prepare_wlm(work, "bug-sgd" if variant == "bug" else variant)


def prepare_gpt2(work: Path, variant: str) -> None:
    shutil.copy(HERE / "clients" / "gpt2_trainer.py", work / "gpt2_trainer.py")


def prepare_makemore(work: Path, variant: str) -> None:
    """makemore trains on the ``names.txt`` it ships with. ``tensorboard`` is not installed, so
    its ``SummaryWriter`` becomes a no-op; it evaluates every 100 steps instead of 500, so that a
    short run prints a test loss."""
    edit(work / "makemore.py", "from torch.utils.tensorboard import SummaryWriter\n",
         "class SummaryWriter:  # tensorboard is not installed\n"
         "    def __init__(self, *args, **kwargs): pass\n"
         "    def add_scalar(self, *args, **kwargs): pass\n"
         "    def flush(self): pass\n")
    edit(work / "makemore.py", "if step > 0 and step % 500 == 0:",
         "if step > 0 and step % 100 == 0:")
    if variant == "bug":  # scores multiplied by sqrt(head size) instead of divided
        edit(work / "makemore.py",
             "att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))",
             "att = (q @ k.transpose(-2, -1)) * math.sqrt(k.size(-1))")


def prepare_gat(work: Path, variant: str) -> None:
    """A synthetic citation graph where the script expects Cora (no download; ``requests``, which
    only the download needs, is not installed), 500 papers instead of 2708, so the hard-coded
    test/val/train split (1200/400/rest) shrinks to 150/100/250."""
    write_citation_graph(work / "cora", nodes=500, words=300, classes=7)
    edit(work / "main.py", "import requests\n", "")
    edit(work / "main.py", "idx[:1200], idx[1200:1600], idx[1600:]",
         "idx[:150], idx[150:250], idx[250:]")
    if variant == "bug":  # the edge mask inverted: attention over the non-neighbours only
        edit(work / "main.py", "e = torch.where(adj_mat > 0, e, connectivity_mask)",
             "e = torch.where(adj_mat > 0, connectivity_mask, e)")


def prepare_ngvl(work: Path, variant: str) -> None:
    """The lecture's GPT trains on the ``input.txt`` it ships (tiny Shakespeare); its settings
    are module constants, which a user edits for a CPU: 2 layers of 4 heads, width 64, blocks
    of 32 characters, 300 steps at a learning rate of 1e-3, a short evaluation, no sampling."""
    script = work / "gpt.py"
    for old, new in (("batch_size = 64", "batch_size = 16"),
                     ("block_size = 256", "block_size = 32"),
                     ("max_iters = 5000", "max_iters = 300"),
                     ("eval_interval = 500", "eval_interval = 100"),
                     ("learning_rate = 3e-4", "learning_rate = 1e-3"),
                     ("eval_iters = 200", "eval_iters = 10"), ("n_embd = 384", "n_embd = 64"),
                     ("n_head = 6", "n_head = 4"), ("n_layer = 6", "n_layer = 2"),
                     ("max_new_tokens=500", "max_new_tokens=20")):
        edit(script, old, new)
    if variant == "bug":  # the causal mask line commented out in the Head class all heads share
        edit(script, "        wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))",
             "        # wei = wei.masked_fill(self.tril[:T, :T] == 0, float('-inf'))")


def prepare_translation(work: Path, variant: str) -> None:
    """language_translation imports torchtext (deprecated, not installed) for spaCy tokenizers,
    a vocabulary builder and Multi30k, which downloads: a stand-in package of ours
    (``benchmarks/clients/torchtext_stub``) serves a synthetic translation task under those
    names; the example's own collate function pads the batches (sequence-first, pad id 1) and
    its own ``create_mask`` builds the masks."""
    shutil.copytree(HERE / "clients" / "torchtext_stub", work / "torchtext",
                    ignore=shutil.ignore_patterns("__pycache__"))
    if variant == "bug":  # the encoder's padding mask not passed on to nn.Transformer
        edit(work / "src" / "model.py",
             "            None,\n            src_padding_mask,\n",
             "            None,\n            None,\n")


LLMC_MAGIC = 20240520


def write_llmc_shard(path: Path, tokens: list[int]) -> None:
    """One token shard as llm.c's ``dev/data`` scripts write it: a header of 256 int32 (magic
    20240520, version 1, the token count), then the tokens as uint16."""
    import numpy as np

    header = np.zeros(256, dtype=np.int32)
    header[:3] = (LLMC_MAGIC, 1, len(tokens))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.array(tokens, dtype=np.uint16).tobytes())


def prepare_llmc(work: Path, variant: str) -> None:
    """llm.c's PyTorch reference trains GPT-2 on token shards; its ``--model`` offers only GPT-2
    sizes (``d12`` and up: 124M parameters, a 50257-token vocabulary), which a user on a CPU
    shrinks by adding a config: the copy gets a ``d2`` (2 layers of 2 heads, width 64, blocks of
    64, a vocabulary of 257). ``tiktoken``, which the script imports and whose GPT-2 encoding
    downloads, is stood in for by a byte-level encoding of ours
    (``benchmarks/clients/tiktoken_stub``: bytes plus ``<|endoftext|>`` = 256), in which the
    Zipf-text sentences are written as train/val shards, one end-of-text token before each."""
    shutil.copytree(HERE / "clients" / "tiktoken_stub", work / "tiktoken",
                    ignore=shutil.ignore_patterns("__pycache__"))
    eot = 256
    tokens = [t for line in char_text(150_000).splitlines()
              for t in (eot, *line.encode("utf-8"))]
    cut = int(len(tokens) * 0.9)
    write_llmc_shard(work / "data" / "synth_train.bin", tokens[:cut])
    write_llmc_shard(work / "data" / "synth_val.bin", tokens[cut:])
    script = work / "train_gpt2.py"
    edit(script, '"d12", "d24", "d36", "d48"}', '"d2", "d12", "d24", "d36", "d48"}')
    edit(script, '            "d12": GPTConfig(',
         '            "d2": GPTConfig(block_size=64, vocab_size=257, n_layer=2, n_head=2,'
         ' n_embd=64),\n'
         '            "d12": GPTConfig(')
    if variant == "bug":  # the causal mask line commented out in the manual attention path
        mask = "att = att.masked_fill(self.bias[:,:,:T,:T] == 0, float('-inf'))"
        edit(script, mask, f"# {mask}")


XT_COPY_STEPS = 300
XT_COPY_HOT = "decoder.net.attn_layers.layers.0.1"
"""The decoder's first (causal) self-attention: its layers alternate self-attention,
cross-attention and feed-forward, index 1 of each is the module, index 0 its norm."""


def prepare_xt_copy(work: Path, variant: str) -> None:
    """x-transformers' copy task (an encoder-decoder whose decoder repeats the source after it
    once) is generated in the script; its settings are module constants, which a user edits for
    one CPU thread: 300 batches of 16 instead of 100,000 of 32, sources of 16 tokens instead of
    32 (as many as a batch has samples, as in the original), width 64 instead of 128, 2 layers
    of 4 heads in encoder and decoder instead of 3 of 8, a learning rate of 1e-3 instead of
    3e-4 (it then copies without error by step 200). The package is the checkout's own
    ``x_transformers``; its dependencies (einops, einx, loguru, torch-einops-utils, frozendict)
    come from the ``--pydeps`` folder."""
    script = work / "train_copy.py"
    for old, new in (("NUM_BATCHES = int(1e5)", f"NUM_BATCHES = {XT_COPY_STEPS}"),
                     ("BATCH_SIZE = 32", "BATCH_SIZE = 16"),
                     ("LEARNING_RATE = 3e-4", "LEARNING_RATE = 1e-3"),
                     ("ENC_SEQ_LEN = 32", "ENC_SEQ_LEN = 16"),
                     ("DEC_SEQ_LEN = 64 + 1", "DEC_SEQ_LEN = 32 + 1"),
                     ("    dim = 128,", "    dim = 64,"),
                     ("    enc_depth = 3,", "    enc_depth = 2,"),
                     ("    enc_heads = 8,", "    enc_heads = 4,"),
                     ("    dec_depth = 3,", "    dec_depth = 2,"),
                     ("    dec_heads = 8,", "    dec_heads = 4,")):
        edit(script, old, new)
    if variant == "bug":  # the decoder's first self-attention in its own group at 100x the lr
        edit(script, "optim = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)\n",
             f"hot = '{XT_COPY_HOT}.'\n"
             "optim = torch.optim.Adam([\n"
             "    {'params': [p for n, p in model.named_parameters() if not n.startswith(hot)]},\n"
             "    {'params': [p for n, p in model.named_parameters() if n.startswith(hot)],\n"
             "     'lr': LEARNING_RATE * 100},\n"
             "], lr=LEARNING_RATE)\n")


LIGHTNING_STEPS = 200
LIGHTNING_HOT = "transformer.decoder.layers.0.self_attn"
"""The decoder's first self-attention of the demo ``Transformer`` (an ``nn.Transformer``), named
as that module's ``named_modules()`` gives it: the example's ``LanguageModel`` holds it as
``model`` and calls it in ``training_step`` (the ``LightningModule``'s own ``forward`` never
runs), and hfault names components from the outermost modules seen running, so without the
wrapper's ``model.`` prefix."""


def prepare_lightning_lm(work: Path, variant: str) -> None:
    """Lightning's ``examples/pytorch/basics/transformer.py``: its ``LanguageModel`` wraps the
    demo ``Transformer`` of the installed ``lightning.pytorch.demos`` and trains it with
    ``Trainer.fit`` on the demo ``WikiText2``, which downloads ``data/wikitext-2.txt`` with
    ``requests`` (not installed; its ``download()`` raises without it even when the file is
    there). The copy gets Zipf-text sentences in that file (a vocabulary of 2,000 words, 40,000
    tokens: about 1,070 blocks of 35) and reads it with ``download=False``; the script has no
    CLI, so a user on a CPU edits it: 100/100 blocks for validation/test instead of 2,000/2,000,
    width 64 and a feed-forward of 128 instead of 200/200, and ``max_steps=200`` on one CPU
    device instead of 20 epochs, without checkpoints. Lightning's notices go to stderr, after
    the progress bar and test table on stdout, so the copy prints the logged losses to stderr
    after ``fit`` and ``test`` (the plain run's tail keeps them)."""
    lines = zipf_text(seed=10, vocab=2000, n_tokens=40_000)
    (work / "data").mkdir(exist_ok=True)
    (work / "data" / "wikitext-2.txt").write_text(
        "".join(" " + " ".join(line) + " \n" for line in lines))
    script = work / "transformer.py"
    for old, new in (("dataset = WikiText2()", "dataset = WikiText2(download=False)"),
                     ("[n - 4000, 2000, 2000]", "[n - 200, 100, 100]"),
                     ("Transformer(vocab_size=vocab_size)",
                      "Transformer(vocab_size=vocab_size, ninp=64, nhid=128)"),
                     ("L.Trainer(gradient_clip_val=0.25, max_epochs=20)",
                      f"L.Trainer(gradient_clip_val=0.25, max_steps={LIGHTNING_STEPS}, "
                      "accelerator='cpu', devices=1, enable_checkpointing=False)"),
                     ("    trainer.fit(model, train_dataloader, val_dataloader)\n"
                      "    trainer.test(model, test_dataloader)\n",
                      "    trainer.fit(model, train_dataloader, val_dataloader)\n"
                      "    import sys\n"
                      "    print('fit:', {k: round(float(v), 4) for k, v in"
                      " trainer.callback_metrics.items()}, file=sys.stderr)\n"
                      "    trainer.test(model, test_dataloader)\n"
                      "    print('test:', {k: round(float(v), 4) for k, v in"
                      " trainer.callback_metrics.items()}, file=sys.stderr)\n")):
        edit(script, old, new)
    if variant == "bug":  # the decoder's first self-attention initialized at std 1.0 (~11x)
        edit(script, "        self.model = Transformer(vocab_size=vocab_size, ninp=64, nhid=128)\n",
             "        self.model = Transformer(vocab_size=vocab_size, ninp=64, nhid=128)\n"
             "        attn = self.model.transformer.decoder.layers[0].self_attn\n"
             "        torch.nn.init.normal_(attn.in_proj_weight, std=1.0)\n")


PALM_STEPS = 200
PALM_DEPTH = 2


def prepare_palm(work: Path, variant: str) -> None:
    """lucidrains/PaLM-pytorch's ``train.py`` trains a PaLM (parallel attention and feed-forward
    blocks, multi-query attention, rotary embeddings) byte-level on enwik8, which it reads from
    ``examples/enwik8_deepspeed/data/enwik8.gz`` (Git LFS in the repository): the copy gets
    500,000 bytes of Zipf-text sentences there, split 450,000/50,000 instead of 90M/5M. Its
    settings are module constants, which a user edits for one CPU thread: the plain-PyTorch
    ``PaLM`` of the package instead of its Triton one (CUDA kernels), no ``.cuda()`` calls, 200
    steps instead of 100,000 (each still accumulates 4 batches of 4), sequences of 128 instead of
    1,024, width 128, 2 blocks of 4 heads of 32 instead of 8 blocks of 8 heads of 64, a learning
    rate of 1e-3 instead of 2e-4, and 32 generated bytes instead of 512 at step 0. NumPy 2
    removed the binary mode of ``np.fromstring``, so the bytes are read with ``np.frombuffer``.
    The package is the checkout's own ``palm_pytorch``; ``einops`` comes from ``--pydeps``."""
    data = work / "examples" / "enwik8_deepspeed" / "data" / "enwik8.gz"
    data.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(data, "wb") as f:
        f.write(char_text(500_000).encode("utf-8"))
    script = work / "train.py"
    for old, new in (("from palm_pytorch.triton import PaLM", "from palm_pytorch import PaLM"),
                     ("model.cuda()\n", ""), ("return full_seq.cuda()", "return full_seq"),
                     ("NUM_BATCHES = int(1e5)", f"NUM_BATCHES = {PALM_STEPS}"),
                     ("LEARNING_RATE = 2e-4", "LEARNING_RATE = 1e-3"),
                     ("GENERATE_LENGTH = 512", "GENERATE_LENGTH = 32"),
                     ("SEQ_LEN = 1024", "SEQ_LEN = 128"),
                     ("PaLM(num_tokens=256, dim=512, depth=8)",
                      f"PaLM(num_tokens=256, dim=128, depth={PALM_DEPTH}, dim_head=32, heads=4)"),
                     ("np.fromstring(file.read(int(95e6)), dtype=np.uint8)",
                      "np.frombuffer(file.read(int(95e6)), dtype=np.uint8).copy()"),
                     ("np.split(X, [int(90e6)])", "np.split(X, [int(45e4)])")):
        edit(script, old, new)
    if variant == "bug":  # scores multiplied by sqrt(head size) instead of divided (x32)
        edit(work / "palm_pytorch" / "palm_pytorch.py", "self.scale = dim_head**-0.5",
             "self.scale = dim_head**0.5")


TSP_LENGTH = 120


def prepare_tsp(work: Path, variant: str) -> None:
    """The example's own data generator with sequences of 120 samples instead of 1000 (about one
    period) and 120 predicted future values instead of 1000; ``matplotlib`` is not installed, so
    the per-step plots go; the data file holds a numpy array, which ``torch.load`` refuses since
    torch 2.6 unless ``weights_only=False``."""
    edit(work / "generate_sine_wave.py", "L = 1000\n", f"L = {TSP_LENGTH}\n")
    subprocess.run([sys.executable, "generate_sine_wave.py"], cwd=work, check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    train = work / "train.py"
    edit(train, "import matplotlib\nmatplotlib.use('Agg')\nimport matplotlib.pyplot as plt\n", "")
    text = train.read_text()
    train.write_text(text[:text.index("        # draw the result\n")])
    edit(train, "torch.load('traindata.pt')", "torch.load('traindata.pt', weights_only=False)")
    edit(train, "future = 1000\n", f"future = {TSP_LENGTH}\n")
    if variant == "bug":  # "truncated BPTT" done at every time step: lstm1 learns no recurrence
        edit(train, "h_t, c_t = self.lstm1(input_t, (h_t, c_t))",
             "h_t, c_t = self.lstm1(input_t, (h_t.detach(), c_t.detach()))")


WLM_ARGS = ("--model", "Transformer", "--data", "data/synth", "--emsize", "64", "--nhid", "128",
            "--nlayers", "2", "--nhead", "2", "--bptt", "35", "--batch_size", "20",
            "--dropout", "0.1", "--epochs", "1", "--log-interval", "20", "--save", "model.pt")

LLMC_STEPS = 200
LLMC_ARGS = ("--input_bin=data/synth_train.bin", "--input_val_bin=data/synth_val.bin",
             "--model=d2", "--batch_size=8", "--sequence_length=64", "--total_batch_size=512",
             f"--num_iterations={LLMC_STEPS}", "--learning_rate=3e-3", "--warmup_iters=10",
             "--learning_rate_decay_frac=0.1", "--weight_decay=0.1", "--val_loss_every=50",
             "--val_max_steps=5", "--overfit_single_batch=0", "--device=cpu", "--dtype=float32",
             "--write_tensors=0", "--compile=0", "--flash=0", "--output_dir=out")

CLIENTS = [
    Client("nanogpt", "nanogpt", "", "train.py",
           ("--dataset=synth_char", "--device=cpu", "--compile=False", "--n_layer=2",
            "--n_head=2", "--n_embd=64", "--block_size=64", "--batch_size=8",
            "--gradient_accumulation_steps=1", f"--max_iters={NANOGPT_STEPS}",
            f"--lr_decay_iters={NANOGPT_STEPS}", "--eval_interval=50", "--eval_iters=5",
            "--log_interval=20", "--dtype=float32", "--wandb_log=False", "--learning_rate=1e-3",
            "--min_lr=1e-4", "--warmup_iters=10", "--dropout=0.0", "--out_dir=out",
            "--always_save_checkpoint=False"),
           NANOGPT_STEPS,
           "learning rate x100 on block 1's attention c_attn (its own param group with an lr_mult "
           "that the training loop's LR schedule multiplies in)",
           "transformer.h.1.attn.c_attn", prepare_nanogpt),
    Client("mingpt", "mingpt", "", "projects/adder/adder.py",
           ("--trainer.max_iters=150", "--trainer.num_workers=0", "--trainer.device=cpu",
            "--trainer.batch_size=32", "--system.work_dir=out"),
           150,
           "init std 1.0 instead of 0.02 (x50) for block 1's attention c_attn",
           "transformer.h.1.attn.c_attn", prepare_mingpt, pythonpath=True),
    Client("chargpt", "mingpt", "", "projects/chargpt/chargpt.py",
           ("--trainer.max_iters=200", "--trainer.num_workers=0", "--trainer.device=cpu",
            "--trainer.batch_size=32", "--model.model_type=gpt-nano", "--data.block_size=64",
            "--system.work_dir=out"),
           200,
           "causal mask built with tril(diagonal=-1): no position attends to itself, the first "
           "has no key at all (its softmax row is NaN), in the attention class every block shares",
           "transformer.h.0.attn transformer.h.1.attn transformer.h.2.attn", prepare_chargpt,
           pythonpath=True),
    Client("wlm-adamw", "examples", "word_language_model", "main.py",
           (*WLM_ARGS, "--use-optimizer", "--lr", "1e-3"), 80,
           "learning rate x100 on encoder layer 0's self-attention (its own AdamW param group)",
           "encoder.layers.0.self_attn", prepare_wlm),
    Client("wlm-sgd", "examples", "word_language_model", "main.py",
           (*WLM_ARGS, "--lr", "5"), 80,
           "learning rate x100 on encoder layer 0's self-attention in the script's own update "
           "loop", "encoder.layers.0.self_attn", prepare_wlm_sgd,
           note="default path: hand-written SGD update, no torch.optim optimizer"),
    Client("gpt2-trainer", "own", "", "gpt2_trainer.py",
           ("--max-steps", "120", "--out", "out"), 120,
           "learning rate x100 on block 1's attention c_attn (its own AdamW param group passed "
           "to the Trainer, --lr-scale 100)",
           "transformer.h.1.attn.c_attn", prepare_gpt2, pydeps=True),
    Client("makemore", "makemore", "", "makemore.py",
           ("--type", "transformer", "--n-layer", "2", "--n-head", "2", "--n-embd", "128",
            "--num-workers", "0", "--max-steps", "301", "--work-dir", "out"), 301,
           "attention scores multiplied by sqrt(head size) instead of divided (x64 for a head "
           "size of 64), in the attention class both blocks share",
           "transformer.h.0.attn transformer.h.1.attn", prepare_makemore),
    Client("gat", "examples", "gat", "main.py",
           ("--epochs", "100", "--val-every", "20", "--no-accel"), 100,
           "edge mask inverted (torch.where's branches swapped): each node attends to its "
           "non-neighbours, in the layer class both GAT layers share", "gat1 gat2", prepare_gat,
           note="full-batch graph training, one step an epoch"),
    Client("ngvl", "ngvl", "", "gpt.py", (), 300,
           "causal mask line commented out in the Head class every head of every block shares",
           " ".join(f"blocks.{b}.sa.heads.{h}" for b in range(2) for h in range(4)),
           prepare_ngvl, note="tiny Shakespeare as shipped; one nn.Module per head"),
    Client("translation", "examples", "language_translation", "main.py",
           ("--epochs", "2", "--batch", "32", "--enc_layers", "2", "--dec_layers", "2",
            "--embed_size", "64", "--attn_heads", "4", "--dim_feedforward", "128",
            "--lr", "5e-4", "--logging_dir", "out/"), 200,
           "the source padding mask not passed to nn.Transformer (None in its place): the "
           "encoder's self-attention reads the padding of every shorter sentence",
           "transformer.encoder.layers.0.self_attn transformer.encoder.layers.1.self_attn",
           prepare_translation,
           note="nn.Transformer, sequence-first, padded batches; torchtext stood in for"),
    Client("llmc", "llmc", "", "train_gpt2.py", LLMC_ARGS, LLMC_STEPS,
           "causal mask line commented out in the manual attention path: "
           "every position attends to the future too, in the attention class both blocks share",
           "transformer.h.0.attn transformer.h.1.attn", prepare_llmc,
           note="llm.c's PyTorch reference; a d2 config added; tiktoken stood in for"),
    Client("xt-copy", "xtransformers", "", "train_copy.py", (), XT_COPY_STEPS,
           "learning rate x100 on the decoder's first self-attention (its own Adam param group "
           "in the training script)", XT_COPY_HOT, prepare_xt_copy, pythonpath=True,
           pydeps=True, note="lucidrains/x-transformers' encoder-decoder on its copy task"),
    Client("lightning-lm", "lightning", "examples/pytorch/basics", "transformer.py", (),
           LIGHTNING_STEPS,
           "the decoder's first self-attention re-initialized by the LightningModule with "
           "normal(std=1.0) on its in_proj_weight (about 11x its xavier scale)", LIGHTNING_HOT,
           prepare_lightning_lm,
           note="Lightning's Trainer.fit on its demo Transformer; WikiText2 stood in for"),
    Client("palm", "palm", "", "train.py", (), PALM_STEPS,
           "attention scores multiplied by sqrt(head size) instead of divided (x32 for a head "
           "size of 32), in the parallel block class both blocks share",
           " ".join(f"net.{i + 1}.fn" for i in range(PALM_DEPTH)), prepare_palm,
           pythonpath=True, pydeps=True,
           note="lucidrains/PaLM-pytorch on synthetic enwik8; 4 accumulated batches a step"),
    Client("tsp", "examples", "time_sequence_prediction", "train.py", ("--steps", "5"), 5,
           "lstm1's recurrent state detached at every time step (truncated BPTT of one step)",
           "lstm1", prepare_tsp, note="LBFGS with a closure (up to 20 evaluations a step)"),
]


# ---------------------------------------------------------------------------------------------
# running


PYDEPS: list[Path] = []


def env_for(work: Path, client: Client) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    paths = [str(work)] if client.pythonpath else []
    if client.pydeps:
        paths += [str(p) for p in PYDEPS]
    if paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def script_args(client: Client, variant: str) -> list[str]:
    args = list(client.args)
    if client.name == "gpt2-trainer" and variant == "bug":
        args += ["--lr-scale", "100"]
    return args


def setup(client: Client, variant: str, checkouts: dict[str, Path], tmp: Path) -> Path:
    """A fresh work folder for one run: the client's files, its data, the bug if any."""
    work = tmp / f"{client.name}-{variant}"
    if work.exists():
        shutil.rmtree(work)
    if client.source == "own":
        work.mkdir(parents=True)
    else:
        src = checkouts[client.source] / client.copy
        if not src.is_dir():
            raise SystemExit(f"clients: no checkout at {src} (see --{client.source})")
        shutil.copytree(src, work, ignore=shutil.ignore_patterns(".git", "*.bin", "*.pt"))
    client.prepare(work, variant)
    return work


def hfault_cmd() -> list[str]:
    exe = Path(sys.executable).parent / "hfault"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "hfault"]


def run_plain(client: Client, variant: str, work: Path) -> tuple[float, int, str]:
    script = work / client.script
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(script), *script_args(client, variant)],
                          cwd=script.parent, env=env_for(work, client), capture_output=True,
                          text=True, check=False)
    return time.perf_counter() - start, proc.returncode, (proc.stdout + proc.stderr)[-1500:]


def run_hfault(client: Client, variant: str, mode: str, work: Path,
               out: Path) -> tuple[float, int, str]:
    script = work / client.script
    out.unlink(missing_ok=True)
    cmd = [*hfault_cmd(), "diagnose", str(script), "--max-steps", str(client.steps),
           "--json", str(out), "-q", "--fail-on", "never", *MODES[mode], *client.options,
           "--", *script_args(client, variant)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=script.parent, env=env_for(work, client),
                          capture_output=True, text=True, check=False)
    return time.perf_counter() - start, proc.returncode, proc.stderr.strip()[-1500:]


# ---------------------------------------------------------------------------------------------
# scoring and the table


def row_for(entry: dict, report: dict | None) -> dict:
    """One table row from an index entry and its (possibly rejudged) report."""
    row = {k: entry[k] for k in ("client", "variant", "mode", "label", "bug", "exit",
                                 "hfault_s", "plain_s", "plain_exit", "note")}
    row["error"] = entry.get("error", "")
    row["plain_tail"] = entry.get("plain_tail", "")
    if report is None:
        row.update(verdict="no report", status=None, counts={}, rules=[], first=None,
                   rank=None, top1=None)
        return row
    findings = report.get("findings", [])
    counts = {s: sum(f["severity"] == s for f in findings) for s in ("error", "warning", "info")}
    comps = ranked_components(report)
    label = tuple(entry["label"].split())
    rank = next((i + 1 for i, c in enumerate(comps) if matches(c, label)), None)
    row.update(
        verdict=report["summary"]["verdict"], status=report["run"].get("status"), counts=counts,
        rules=[{"rule": f["rule"], "severity": f["severity"], "component": f.get("component"),
                "step": f.get("step"), "message": f.get("message", "")} for f in findings],
        first=comps[0] if comps else None, rank=rank,
        top1=(rank == 1) if label else None,
    )
    return row


def short(name: str | None, width: int = 34) -> str:
    if not name:
        return "-"
    return name if len(name) <= width else "…" + name[-(width - 1):]


def print_table(rows: list[dict]) -> None:
    head = (f"{'client':<13}{'variant':<8}{'mode':<12}{'exit':>4} {'verdict':<11}{'E/W/I':<8}"
            f"{'first-ranked':<35}{'label':<30}{'hit':<5}{'hfault s':>9}{'plain s':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        c = r["counts"]
        ewi = f"{c.get('error', 0)}/{c.get('warning', 0)}/{c.get('info', 0)}" if c else "-"
        hit = "-" if r["top1"] is None else ("yes" if r["top1"] else f"r{r['rank'] or '-'}")
        labels = r["label"].split()
        label = f"{labels[0]} +{len(labels) - 1}" if len(labels) > 1 else r["label"]
        plain = "-" if r["plain_s"] is None else f"{r['plain_s']:.1f}"
        print(f"{r['client']:<13}{r['variant']:<8}{r['mode']:<12}{r['exit']:>4} "
              f"{r['verdict']:<11}{ewi:<8}{short(r['first']):<35}{short(label, 29):<30}"
              f"{hit:<5}{r['hfault_s']:>9.1f}{plain:>8}")
        fired = ", ".join(f"{f['rule']}[{f['severity'][0].upper()}]@{f['component'] or 'run'}"
                          for f in r["rules"])
        if fired:
            print(f"{'':<4}rules: {fired}")
        if r["error"]:
            print(f"{'':<4}note: {r['error'].splitlines()[-1][:160]}")
    print()
    print("Findings on healthy runs (false alarms):")
    any_alarm = False
    for r in rows:
        if r["variant"] != "healthy":
            continue
        for f in r["rules"]:
            any_alarm = True
            print(f"  {r['client']} {r['mode']}: {f['rule']} {f['severity']} "
                  f"{f['component'] or '(run)'} @ step {f['step']}: {f['message'][:200]}")
    if not any_alarm:
        print("  none")
    print()
    print("Bugs:")
    for name in dict.fromkeys(r["client"] for r in rows):
        r = next((x for x in rows if x["client"] == name and x["variant"] == "bug"), None)
        if r:
            print(f"  {name}: {r['bug']} (label {r['label']})")


def rescore(folder: Path) -> list[dict]:
    index = json.loads((folder / "index.json").read_text())
    rows = []
    for entry in index:
        path = folder / entry["report"] if entry.get("report") else None
        report = rejudge(json.loads(path.read_text())) if path and path.exists() else None
        rows.append(row_for(entry, report))
    return rows


def run_all(clients: list[Client], modes: list[str], checkouts: dict[str, Path],
            keep: Path) -> list[dict]:
    keep.mkdir(parents=True, exist_ok=True)
    index_path = keep / "index.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else []
    rows = []
    with tempfile.TemporaryDirectory(prefix="hfault-clients-") as tmp:
        for client in clients:
            for variant in client.variants:
                work = setup(client, variant, checkouts, Path(tmp))
                plain_s, plain_exit, plain_tail = run_plain(client, variant, work)
                print(f"[{client.name} {variant}] plain {plain_s:.1f}s exit {plain_exit}",
                      file=sys.stderr, flush=True)
                if plain_exit != 0:
                    print(plain_tail, file=sys.stderr)
                for mode in modes:
                    work = setup(client, variant, checkouts, Path(tmp))
                    name = f"{client.name}.{variant}.{mode}.json"
                    seconds, code, err = run_hfault(client, variant, mode, work, keep / name)
                    has_report = (keep / name).exists()
                    print(f"[{client.name} {variant} {mode}] hfault {seconds:.1f}s exit {code}"
                          + ("" if has_report else f": {err.splitlines()[-1] if err else ''}"),
                          file=sys.stderr, flush=True)
                    entry = {"client": client.name, "variant": variant, "mode": mode,
                             "label": client.label if variant == "bug" else "",
                             "bug": client.bug, "note": client.note, "exit": code,
                             "hfault_s": round(seconds, 2), "plain_s": round(plain_s, 2),
                             "plain_exit": plain_exit, "plain_tail": plain_tail[-600:],
                             "steps": client.steps,
                             "args": script_args(client, variant),
                             "report": name if has_report else None,
                             "error": "" if code in (0, 1) else err}
                    index = [e for e in index if (e["client"], e["variant"], e["mode"])
                             != (client.name, variant, mode)]
                    index.append(entry)
                    index_path.write_text(json.dumps(index, indent=1) + "\n")
                    report = json.loads((keep / name).read_text()) if has_report else None
                    rows.append(row_for(entry, report))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("clients", nargs="*", help="client names (default: all)")
    parser.add_argument("--mode", choices=[*MODES, "both"], default="both")
    parser.add_argument("--nanogpt", type=Path, default=Path("/tmp/clients/nanogpt"))
    parser.add_argument("--mingpt", type=Path, default=Path("/tmp/clients/mingpt"))
    parser.add_argument("--examples", type=Path, default=Path("/tmp/clients/examples"))
    parser.add_argument("--makemore", type=Path, default=Path("/tmp/clients/makemore"))
    parser.add_argument("--ngvl", type=Path, default=Path("/tmp/clients/ngvl"),
                        help="karpathy/ng-video-lecture (gpt.py and its input.txt)")
    parser.add_argument("--llmc", type=Path, default=Path("/tmp/clients/llmc"),
                        help="karpathy/llm.c (its train_gpt2.py)")
    parser.add_argument("--xtransformers", type=Path, default=Path("/tmp/clients/xtransformers"),
                        help="lucidrains/x-transformers (train_copy.py and its x_transformers)")
    parser.add_argument("--lightning", type=Path, default=Path("/tmp/clients/lightning"),
                        help="Lightning-AI/pytorch-lightning (its examples/pytorch/basics)")
    parser.add_argument("--palm", type=Path, default=Path("/tmp/clients/palm"),
                        help="lucidrains/PaLM-pytorch (train.py and its palm_pytorch)")
    parser.add_argument("--pydeps", type=Path, default=Path("/tmp/clients/pydeps"),
                        help="extra packages (pip install --no-deps --target DIR ...): "
                        "accelerate psutil for the transformers Trainer client; einops einx "
                        "loguru torch-einops-utils frozendict for xt-copy; einops for palm")
    parser.add_argument("--keep", type=Path, default=KEEP, help="where reports are kept")
    parser.add_argument("--rescore", type=Path, help="re-score the saved reports of DIR; no runs")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    if args.rescore:
        rows = rescore(args.rescore)
        if args.clients:
            rows = [r for r in rows if r["client"] in args.clients]
    else:
        unknown = set(args.clients) - {c.name for c in CLIENTS}
        if unknown:
            parser.error(f"unknown client(s) {sorted(unknown)}; known: "
                         f"{[c.name for c in CLIENTS]}")
        clients = [c for c in CLIENTS if not args.clients or c.name in args.clients]
        if args.pydeps.is_dir():
            PYDEPS.append(args.pydeps)
        modes = list(MODES) if args.mode == "both" else [args.mode]
        checkouts = {"nanogpt": args.nanogpt, "mingpt": args.mingpt,
                     "examples": args.examples, "makemore": args.makemore, "ngvl": args.ngvl,
                     "llmc": args.llmc, "xtransformers": args.xtransformers,
                     "lightning": args.lightning, "palm": args.palm,
                     "own": ROOT}
        rows = run_all(clients, modes, checkouts, args.keep)
    print_table(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
