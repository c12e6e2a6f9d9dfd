"""A stand-in for the few ``torchtext`` names pytorch/examples' language_translation imports.

torchtext is deprecated, not installed, and its ``Multi30k`` downloads; this package (ours)
serves a synthetic translation task instead, so the example's own code (its collate function,
its masks, its model and training loop) runs unchanged. Copied into the client's work folder as
``torchtext`` by ``benchmarks/clients.py``; never imported by hfault.
"""
