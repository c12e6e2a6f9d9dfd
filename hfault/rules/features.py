"""What rules can read: the named features of each subject, built from a report's data.

Rules see metrics, never hfault's objects. This module turns a report (the JSON-shaped dict of
``Report.to_dict()``) into *subjects* per scope — the run, each component, each coupled pair,
each attention module — each a mapping of feature name to value or :class:`Series` over the
measured steps. The vocabulary below is the contract with rule authors: a rule naming anything
else is rejected when it is loaded, and ``docs/rules.md`` lists it.

Peer comparisons live here, not in rules, because they need the other subjects: a rule compares a
component with ``*_peers`` (the median of the *other* components) or ``*_type_peers`` (the median
over components of the same block type: transformer blocks differ by orders of magnitude,
QK ≪ VO ≪ Norm, so a global threshold would only rediscover the block type).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hfault.fixes.lr_snippet import HAND_WRITTEN, param_access
from hfault.numbers import as_float, decode
from hfault.report.build import derive
from hfault.rules.batch_axis import batch_mixers
from hfault.rules.expr import Series

SCOPES = ("run", "component", "edge", "attention", "timeline")
LR_OUTLIER = 10.0
"""A component at this many times the median component's learning rate is trained apart."""

DIVERGED_RISE = 3.0
"""A sustained level (a median of 3 consecutive losses) this many times the first loss, above
zero-rise, before the first non-finite one: the run diverged, then broke (HF010's peak factor).
HF022 reports it; HF001 then ranks as its consequence."""


RUN_FEATURES: dict[str, str] = {
    "status": "how the script ended: completed, stopped (--max-steps), crashed or exited "
    "(os._exit)",
    "steps": "optimizer steps seen",
    "optimizer": "class name of the (first) optimizer",
    "own_update_loop": "the script updates its weights in its own loop, no torch optimizer (its "
    "steps are read from the weights; a learning rate, if any, is the one given with --lr, the "
    "same for every component)",
    "base_lr": "the largest learning rate an optimizer was created with",
    "lr_outlier": f"the component (≥ 16 entries) whose learning rate at the last measured step "
    f"is ≥ {LR_OUTLIER:g}× the median component's (its own param group), else none",
    "lr_outlier_ratio": "lr_outlier's learning rate over the median component's",
    "lr_note": "'; NAME trains at R× the median component's learning rate' for lr_outlier, "
    "else empty (for messages)",
    "weight_growth_median": "median weight growth (last/first snapshot) over the components of "
    "at least 16 parameters with init RMS ≥ 1e-3: how far the whole model moved",
    "components_judged": "number of components in weight_growth_median",
    "sample_mixing_module": "the first module, in forward order, that mixes the samples of the "
    "batch (the sample-mixing probe): the gradient of its output's last sample reaches the "
    "other samples' inputs; none when no module does, or when the batch cannot be told apart",
    "sample_mixing_modules": "how many modules do (the deepest ones: a block around a mixing "
    "attention is not counted again)",
    "sample_mixing_share": "the share of that gradient on the other samples (0 when independent)",
    "sample_mixing_batch": "the batch size it mixes along",
    "sample_mixing_positions": "the model input's other leading size (the positions)",
    "sample_mixing_peers": "modules that mix along the positions only",
    "sample_mixing_how": "how the batch axis was told from the positions: the loss's samples, or "
    "fewer modules mix along it",
    "sample_mixing_step": "the step it was measured at",
    "relative_step": "the largest, over the snapshots, of the median component's step size "
    "relative to its weights' RMS: lr/RMS(θ) under an adaptive optimizer (Adam family, RMSprop, "
    "Lion: their per-entry step is about the learning rate whatever the gradient), the measured "
    "update ratio ‖Δθ‖/‖θ‖ under any other; components of at least 16 parameters with RMS ≥ 1e-3",
    "relative_step_at": "the snapshot step where relative_step was largest",
    "relative_step_lr": "the median component's learning rate at that step",
    "attention_logit_growth": "the largest, over the attention modules measured at two steps or "
    "more, of last max_logit / max(first max_logit, 1): how far the largest pre-softmax logit "
    "grew over the run (none without attention)",
    "attention_logit_module": "the attention module of attention_logit_growth",
    "attention_logit_first": "its first measured max_logit",
    "attention_logit_last": "its last measured max_logit",
    "grad_died": "components (≥ 16 entries) whose gradient was non-zero at the first snapshot "
    "and a tensor of zeros (not None: not frozen) at each of the last two: they stopped learning "
    "mid-run",
    "grad_died_share": "grad_died over the components judged (those with a gradient at every "
    "snapshot)",
    "grad_died_judged": "components judged for grad_died",
    "grad_died_at": "the first snapshot from which every component in grad_died stayed at zero",
    "grad_died_count": "number of components in grad_died",
    "grad_alive": "the judged components whose gradient stayed non-zero (comma-separated; "
    "'none' when every one died)",
    "measured_steps": "number of snapshots",
    "loss": "series: the loss at every step (its own steps, not the snapshots')",
    "loss_points": "number of finite loss values",
    "loss_all_finite": "whether every recorded loss was finite",
    "loss_before_nonfinite": "series: the losses before the first non-finite one (empty when "
    "every loss was finite)",
    "loss_nonfinite_at": "the step of the first non-finite loss, else none",
    "loss_rise_before_nonfinite": "(the largest median of 3 consecutive losses before the first "
    "non-finite one − the first loss) / |first loss|, with at least 4 losses before it; none "
    "otherwise: how far the run diverged before it broke",
    "loss_peak_before_nonfinite": "that largest median of 3 consecutive losses",
    "loss_peak_step_before_nonfinite": "the step it ends at",
    "loss_diverged_before_nonfinite": "whether loss_rise_before_nonfinite > "
    f"{DIVERGED_RISE:g} − 1: the run diverged before it broke",
    "init_scale_max": "the largest init_scale over the components (HF008's statistic)",
    "phase": "the training phase whose losses a loss rule judges (1 = the first to step), when "
    "several phases (optimizers built one after the other, or a GAN's pair) have losses: a rule "
    "reading loss, loss_points or loss_all_finite is then judged once per phase, on that "
    "phase's series, with steps, optimizer and base_lr the phase's; none otherwise",
    "nonfinite": "whether a NaN/Inf was seen anywhere",
    "nonfinite_step": "step of the earliest non-finite value",
    "nonfinite_kind": "activation, loss, gradient or weight",
    "nonfinite_where": "module or component where it first appeared",
    "nonfinite_location": "readable place: 'output of module X', 'gradient of X'...",
    "nonfinite_value": "nan, inf or -inf",
    "nonfinite_component": "the component it is attributed to",
    "nonfinite_events": "number of non-finite events recorded",
    "nonfinite_rank": "under torchrun: the rank where it first appeared (its location says "
    "'on rank R'); null in a single process",
    "loss_input_kind": "what a log-likelihood loss was fed instead of logits/log-probabilities: "
    "probabilities (softmax before cross_entropy), not_log_probabilities (nll_loss without log), "
    "or none",
    "loss_input_function": "the loss function that was fed them (cross_entropy, nll_loss)",
    "loss_input_step": "the step of the first such call",
    "loss_input_share": "share of the checked calls that were fed them",
    "output_component": "the output layer feeding the flagged loss: the component of the parameter "
    "nearest its input in the autograd graph (a detector's class head, not its box head that "
    "runs after it), else the one whose module ran last in the forward",
    "stale_grad_steps": "of the first steps judged of the first optimizer whose gradients were "
    "not reset between steps, how many were not (zero_grad forgotten); 0 when every optimizer "
    "reset them",
    "stale_grad_checked": "how many steps of that optimizer were judged",
    "stale_grad_optimizer": "that optimizer's class (none when every optimizer reset its "
    "gradients)",
    "stale_grad_line": "where the script constructed it (file:line)",
    "frozen_modules": "modules with every parameter frozen (requires_grad off) in a model that "
    "otherwise trains",
    "frozen_untrained": "of those, the ones whose largest weight still looks freshly initialized "
    "(entry kurtosis <= 3.5)",
    "frozen_module": "the first frozen, untrained module in forward order",
    "frozen_kurtosis": "the kurtosis of its largest weight",
    "frozen_in_optimizer": "whether its parameters were handed to an optimizer",
    "next_token_share": "the smallest, over the measured steps, share of the cross_entropy "
    "targets that equal the model's input token one position later (next-token training: about "
    "1; any other task: about 1/vocabulary); none when no target was laid out like an "
    "embedding's input",
    "next_token_steps": "measured steps with such targets",
    "next_token_step": "the first of those steps",
    "attention_modules": "attention modules whose softmax over the keys the probe read at the "
    "first snapshot that read any",
    "attention_masked": "of those, the ones with at least one masked score (causal, padding...)",
    "attention_causal": "of those, the ones whose mask is causal (mask_offset 0)",
    "attention_causal_first": "the first of those",
    "attention_causal_aligned": "of those, the ones whose keys are as many as the positions of "
    "the ids the targets matched at their own position (all of them when that is unknown): an "
    "attention over other positions (a Decision Transformer's three tokens a step) does not read "
    "those ids where the targets are",
    "own_token_share": "the smallest, over the measured steps, share of the cross_entropy or "
    "nll_loss targets equal to the embedding's input at their own position (where the input "
    "token differs from the next one): about 0 for next-token training, 1 for targets never "
    "shifted",
    "attention_first": "the first of those modules in the forward",
    "label_fit_records": "measured steps at which the targets of a cross_entropy over 2 classes "
    "or more were ranked (the label-fit probe)",
    "label_fit_step": "the last of those steps",
    "label_fit_classes": "number of classes there",
    "label_fit_samples": "rows (samples, or samples × positions) read over the last two of them",
    "label_fit_accuracy": "share of those rows whose target was the model's first choice",
    "label_fit_accuracy_min": "the smaller of the two steps' shares",
    "label_fit_lower_half": "share of those rows whose target sat in the lower half of the "
    "model's ranking of the classes",
    "label_fit_lower_half_min": "the smaller of the two steps' shares",
    "label_fit_miss_rank": "mean normalized rank (0 first, 1 last) of the missed targets; about "
    "0.5 when they are random",
    "label_fit_confidence_ratio": "the model's mean confidence (its first choice's probability) "
    "on the rows whose target it ranks in the lower half, over its mean confidence on all rows: "
    "about 1 when those targets are random (the model predicts those rows like any other), "
    "lower when it misses where it is unsure",
    "label_fit_confidence_over_chance": "the model's mean confidence (its first choice's "
    "probability) times the number of classes, the larger of the last two steps: 1 when it "
    "predicts every class as likely (uniform), the number of classes when it is sure",
    "label_fit_tail_flatness": "how evenly the targets in the lower half of the model's ranking "
    "spread over its positions: their mean normalized rank, from 0.5 (all at the middle) to the "
    "mean of the lower-half positions (1: spread evenly, as random labels are; a model that has "
    "not fitted yet misses mostly just below the middle)",
    "label_fit_loss_trend": "mean loss over the last quarter of the steps up to label_fit_step "
    "over the mean of the quarter before: near 1 once the loss has levelled off",
    "curvature_error": "the first reason curvature could not be (fully) measured, or none",
    "curvature_error_step": "the step of that error",
    "curvature_blocked": "number of components whose curvature was blocked",
    "curvature_blocked_list": "their names (a list)",
    "curvature_error_component": "the first blocked component",
    "curvature_what": "readable: what could not be measured",
}

COMPONENT_METRICS: dict[str, str] = {
    "grad_norm": "‖g_b‖ at the step (first micro-batch sum)",
    "grad_rms": "‖g_b‖/√n_b",
    "grad_scale": "‖g_b‖ the optimizer applied / ‖g_b‖ backward produced: the script's clipping "
    "or rescaling (1 = untouched, c/N under clip_grad_norm_)",
    "zero_grad_fraction": "share of exactly-zero (or missing) gradient entries",
    "grad_missing": "whether .grad stayed None",
    "update_ratio": "‖Δθ_b‖/‖θ_b‖ of the step's update",
    "weight_norm": "‖θ_b‖",
    "lr": "the component's learning rate (largest over its param groups)",
    "trace": "Hutchinson estimate of Tr(H_bb)",
    "trace_se": "its standard error",
    "lambda_max": "largest eigenvalue of H_bb (Lanczos)",
    "lambda_min": "smallest eigenvalue of H_bb (Lanczos)",
    "eig_residual": "Ritz residual bound of λmax/λmin",
    "lambda_precond": "λmax(P^-1/2 H_bb P^-1/2) for Adam-family optimizers",
    "lambda_tilde": "the λ the stability ratio uses (preconditioned for Adam)",
    "stability_ratio": "r_b = η_b·λ̃_b/τ (1 = the optimizer's stability limit)",
    "stability_tau": "τ: 2 (SGD), 2+2β (momentum), (2+2β₁)/(1−β₁) (Adam)",
    "suggested_lr": "min(η_b, 0.8·τ/λ̃_b)",
}

COMPONENT_FEATURES: dict[str, str] = {
    **{k: f"series: {v}" for k, v in COMPONENT_METRICS.items()},
    "step": "series: the snapshot steps themselves",
    "trace_t": "series: trace/trace_se, the t-statistic of the trace",
    "effective_ratio": "series: stability_ratio × grad_scale, r of the step actually taken "
    "(after the script's gradient clipping; = stability_ratio where grad_scale is unmeasured, "
    "and for Adam-family optimizers, whose m̂/√v̂ divides a steady gradient scale out)",
    "curvature_norm": "series: max(|λmax|, |λmin|) = ‖H_bb‖₂",
    "update_ratio_peers": "series: median update ratio of the other components",
    "grad_rms_peers": "series: median RMS gradient of the other components",
    "lambda_max_type_peers": "series: median λmax of the other components of the same type",
    "lr_peers": "series: median learning rate of the other components",
    "name": "the component's name",
    "role": "query, key, value, output, attention-pooling, cross-attention or other",
    "block_type": "the attention role, or else the name with the layer index as * "
    "(blocks.*.mlp.2: the same module in every layer)",
    "type_peers": "number of other components of the same block type",
    "layer": "layer index, or none",
    "attention": "the attention module it belongs to, or none",
    "numel": "number of parameters",
    "module_type": "class name of the module that owns the parameters",
    "table": "owned by an nn.Embedding or nn.EmbeddingBag, subclasses included (a lookup table: "
    "rows absent from a batch get no gradient)",
    "source": "file:line of the class that defines the component's module",
    "access": "a Python expression for the component's parameters, from `model` (what a fix "
    "snippet iterates over: a slice of a fused tensor reads the whole tensor)",
    "init_rms": "weight RMS at the first snapshot",
    "init_scale": "rms(W)·√fan_in of the largest ≥2-D weight before the first update (about "
    "0.2–1.4 for standard initializers; none for embeddings, biases, norm gains, scalars)",
    "init_scale_peers": "median init_scale of the other components",
    "table_rms_peers": "for an embedding table: the median init_rms of the model's other "
    "embedding tables (those of RMS ≥ 1e-3); none for other components or without a peer",
    "table_rms_ratio": "init_rms / table_rms_peers: how much larger this table's rows start than "
    "the other tables' (none without a peer)",
    "table_rms": "for an embedding table: init_rms; none for other components",
    "init_fan_in": "fan-in of that weight",
    "reaches_loss": "for a component that got no gradient at the first measured step: whether "
    "its values reached the loss at the next measured step, followed through every op of its "
    "forward (.detach() and .data included); none when not followed",
    "params_read": "for the same components: whether any op of that forward read its "
    "parameters (false: never called, bypassed, or an optional parameter no input looks up)",
    "lone_parameter": "the component is one parameter held beside a module's layers (a relative "
    "bias, a segment embedding, a logit scale), not a layer of its own",
    "output_returned": "for the same components: whether the module enclosing the component "
    "returned a value computed from it (an output of a sub-model, such as BertModel's pooler "
    "output, that the code around it may ignore)",
    "unused": "reaches_loss is false and the component is unused by design rather than dead: "
    "computed and returned by its enclosing module, then ignored (an unused pooler, an auxiliary "
    "output), a lone parameter nothing read (an optional embedding), or a layer never called "
    "inside a library's model (LUKE's entity attention, ESM's contact head: parts only some "
    "inputs use). A result dropped inside the enclosing module's own forward, or a layer the "
    "user's own module never called or bypassed, is not",
    "unweighted_last_layer": "the component's gradient is a tensor of exact zeros (not None) at "
    "every measured step, while its counterparts at other layer indices (the same name, another "
    "index) train, and it is in the last of those layers: what it computes reaches the loss only "
    "at positions the loss gives no weight (Longformer's last-layer global projections serve the "
    "question tokens a QA loss masks); a cut (a .detach()) leaves None, and starves the layers "
    "before it too",
    "qk_without_effect": "the component is the query or key projection of an attention whose "
    "values were the same at every key in every call seen at every measured step: whatever its "
    "weights, the attention outputs those values, so the projection gets no gradient worth the "
    "name (DETR's first decoder layer, whose queries start at zero: its self-attention's "
    "values are zero plus a bias)",
    "forward_position": "where the component's module first ran in the forward pass: 0 = first, "
    "1 = last (the report lists components in forward order); none when its weights are read "
    "without calling its module (the parameter-reach probe's `called`)",
    "init_mean_ratio": "|mean(W)|/std(W) of that weight before the first update (≈ 1/√numel "
    "for a zero-mean initializer)",
    "weight_growth": "‖θ_b‖ at the last snapshot / at the first",
    "weight_growth_peers": "median weight growth of the other components (init RMS ≥ 1e-3)",
    "weight_growth_peak": "the largest ‖θ_b‖ over the snapshots / at the first",
    "weight_growth_peak_peers": "median peak weight growth of the other components (init RMS "
    "≥ 1e-3)",
    "grad_rms_growth": "RMS gradient at the last snapshot / at the first (≥ 3 snapshots)",
    "pushed_by_component": "a component later in the forward whose weights grew ≥ 10× over the "
    "run and ≥ 10× more than this one's: every gradient and curvature of this component passes "
    "through its weights (chain rule), so they scale with its growth; none when there is none",
}

EDGE_FEATURES: dict[str, str] = {
    "kappa": "series: κ_ab = ‖H_ab‖_F / sqrt(‖H_a·‖_F ‖H_b·‖_F), in [0, 1]",
    "kappa_se": "series: its standard error",
    "hfro": "series: ‖H_ab‖_F",
    "rho": "series: signed curvature correlation along the gradients",
    "step": "series: the snapshot steps",
    "source": "one end of the edge",
    "target": "the other end",
    "upstream": "the end in the earlier layer (where a cascade starts)",
    "downstream": "the end in the later layer",
    "source_role": "role of the source",
    "target_role": "role of the target",
    "source_layer": "layer of the source",
    "target_layer": "layer of the target",
    "cross_layer": "whether both layers are known and differ",
    "same_attention": "whether both belong to the same attention module",
    "path": "strongest coupling path from the downstream end to the output side",
}

ATTENTION_FEATURES: dict[str, str] = {
    "entropy_norm_mean": "series: mean attention entropy / log(keys the query may attend to; "
    "masked keys excluded, queries with one key left out), 1 = uniform, 0 = one-hot",
    "entropy_norm_head_min": "series: the lowest head's normalized entropy",
    "entropy_mean": "series: mean attention entropy (nats)",
    "max_logit": "series: largest pre-softmax attention logit",
    "mask_offset": "series: k of a causal-shaped mask (key j hidden from query i iff j − i > k; "
    "0 = causal, ≥ 1 = each query sees k keys ahead), none without one",
    "q_curv": "series: ‖H_QQ‖₂ of the module's query projection",
    "k_curv": "series: ‖H_KK‖₂ of its key projection",
    "v_curv": "series: ‖H_VV‖₂ of its value projection",
    "qk_v_ratio": "series: min(q_curv, k_curv) / v_curv",
    "step": "series: the snapshot steps",
    "module": "the attention module's path",
    "layer": "its layer index",
    "q_component": "its query component",
    "k_component": "its key component",
    "v_component": "its value component",
    "weakest_qk": "of query and key, the one with the smaller curvature (else the query; the "
    "attention module itself when no component of it is a query, key or value: a fused "
    "projection of unknown layout)",
    "q_weight_growth": "weight growth of the query projection",
    "k_weight_growth": "weight growth of the key projection",
    "fastest_qk": "of query and key, the one whose weights grew more (else the query)",
    "keys": "number of keys attended over (last measured)",
    "max_logit_peers": "median of the other attention modules' last max_logit (none without "
    "other attention modules)",
    "logit_std": "series: mean over rows of the spread (std) of the unmasked pre-softmax logits",
    "logit_gain": "series: the scores' spread per unit of query and key size, "
    "logit_std / (rms(q)·rms(k)·√d) from the operands of the product that made them: the "
    "scale the scores were given (1/√d for standard attention), whatever the input's size",
    "gain_first": "logit_gain at the first measured step (the initialization)",
    "qk_rms_first": "√(RMS(q)·RMS(k)) of the scores' two operands at the first measured step "
    "that has them: about 1 or less for an input a LayerNorm has normalized",
    "gain_peers": "the gain its peers share: the other attention modules of the same class (the "
    "same code), else of the same place in other layers; with three or more modules in all, the "
    "median of all of them (itself included); none without a peer",
    "gain_peer_count": "number of modules gain_peers is taken over",
    "gain_ratio": "gain_first / gain_peers, folded to be ≥ 1 (how far off, either way)",
    "gain_outlier": "whether this module, not its peer, is the odd one: always with two or more "
    "peers (their median stands for the model); with one, the one further from the other "
    "attention modules' median, or without any, from a standard scale (1/√d, or 1 when folded "
    "into the queries)",
    "gain_standard": "the standard gain nearest to gain_first: 1/√d (scaled after the "
    "product, SDPA's default) or 1 (1/√d folded into the queries, or an unscaled additive score)",
    "standard_ratio": "gain_first / gain_standard, folded to be ≥ 1: how far the scale the "
    "scores start with is from the nearer standard",
    "axis_fault": "why a softmax the module took over an axis other than the keys is wrong, "
    "first seen (none when every softmax normalized the key axis)",
    "axis_step": "the step axis_fault was first seen",
    "mask_none": "whether no logit of the module was masked at its first measured step",
    "causal_peers": "number of same-role modules of other layers with a causal mask "
    "(mask_offset 0) over as many keys as this one at their first measured step",
    "causal_peer": "one of them",
    "keys_first": "number of keys at the first measured step",
    "queries_first": "number of query rows at the first measured step (equal to keys_first in a "
    "self-attention; none in reports that predate it)",
    "keys_peers": "median keys_first of the same-role modules of other layers",
    "batch": "leading size of the loss input at the first measured step (its samples; samples × "
    "positions when the script flattens them)",
    "keys_peer_count": "number of same-role modules of other layers with a key count",
    "padding_mass": "at the first measured step that can read it, the mean attention weight "
    "that real queries (not padding themselves) of padded samples put on the keys that are "
    "padding of the model's input (a trailing or leading run of the pad id, or of all-zero "
    "feature vectors, whose length varies across samples); exactly 0 under a padding mask; none "
    "when the input is not padded or the keys are not its positions",
    "padding_share": "the mean share of those rows' keys that are padding (what uniform attention "
    "would put on them)",
    "padding_alike": "of those rows with two or more open padded keys, the share whose scores at "
    "every padded key are alike (within 1e-3 of the row's range): the padded states are one "
    "constant vector, a single 'null' key, not content read position by position; none when "
    "not measured",
    "padding_masked_peers": "other attention modules over the same padded positions whose "
    "padding_mass is 0 (they apply the mask)",
    "padding_peer": "one of them, else none",
    "input_axis_other": "when keys_first is one of the two leading sizes of the model's input "
    "at the first measured step and keys_peers the other: that other size (the axis the other "
    "layers attend over); none otherwise",
}

VOCABULARY: dict[str, dict[str, str]] = {
    "run": RUN_FEATURES,
    "component": {**RUN_FEATURES, **COMPONENT_FEATURES},
    "timeline": {**RUN_FEATURES, **COMPONENT_FEATURES},
    "edge": {**RUN_FEATURES, **EDGE_FEATURES},
    "attention": {**RUN_FEATURES, **ATTENTION_FEATURES},
}

PHASE_FEATURES = frozenset({"loss", "loss_points", "loss_all_finite", "loss_before_nonfinite",
                            "loss_nonfinite_at"})
"""A run-scope rule reading any of these is judged per phase when phases have their own losses."""

_ADAPTIVE = ("Adam", "NAdam", "RAdam", "RMSprop", "Lion")  # class-name prefixes (AdamW, Adamax..)
_TABLES = ("Embedding", "EmbeddingBag")  # reports from before components carried ``table``
_MIN_PEER_INIT_RMS = 1e-3  # zero-initialised parameters' growth is not a comparable peer
_PUSH_GROWTH = 10.0  # HF006's error-level growth: weights this much larger scale what flows through


@dataclass
class Subject:
    """One thing a rule is evaluated on: a scope, a key (for messages) and its features."""

    scope: str
    key: str
    features: dict[str, Any] = field(default_factory=dict)
    component: str | None = None


def _median(values: Iterable[float | None]) -> float | None:
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return float(statistics.median(finite)) if finite else None


class Features:
    """Subjects of every scope for one report."""

    def __init__(self, report: Mapping[str, Any], graph_paths: Mapping[str, str] | None = None):
        self.report = derive(report)  # a report saved before a derived metric judges the same
        self.snapshots: list[Mapping[str, Any]] = list(report.get("snapshots", []))
        self.steps = tuple(int(s["step"]) for s in self.snapshots)
        self.components: list[Mapping[str, Any]] = list(report.get("components", []))
        self.by_name = {c["name"]: c for c in self.components}
        self.graph_paths = dict(graph_paths or {})
        self.run = self._run_features()
        self.phase_runs = self._phase_subjects()
        self._component_cache: dict[str, dict[str, Any]] | None = None

    # -------------------------------------------------------------- helpers
    def _metric(self, name: str, key: str) -> tuple[Any, ...]:
        return tuple(decode(s["metrics"].get(name, {}).get(key)) for s in self.snapshots)

    def series(self, values: Sequence[Any]) -> Series:
        return Series(self.steps, tuple(values))

    # -------------------------------------------------------------- run
    def _loss_input_features(self) -> dict[str, Any]:
        events = list(self.report.get("loss_inputs") or [])
        first = events[0] if events else {}
        checked = first.get("calls_checked") or 0
        return {
            "loss_input_kind": first.get("kind"),
            "loss_input_function": first.get("function"),
            "loss_input_step": first.get("step"),
            "loss_input_share": first.get("calls_flagged", 0) / checked if checked else None,
            "output_component": first.get("output_component"),
        }

    @staticmethod
    def _stale_grad_features(optimizers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        stale = next((o for o in optimizers
                      if (o.get("gradient_reset") or {}).get("stale")), None)
        reset = (stale or {}).get("gradient_reset") or {}
        source = (stale or {}).get("source") or {}
        return {
            "stale_grad_steps": reset.get("stale", 0),
            "stale_grad_checked": reset.get("checked", 0),
            "stale_grad_optimizer": stale.get("class") if stale else None,
            "stale_grad_line": (f"{source.get('file')}:{source.get('line')}"
                                if source.get("file") else None),
        }

    def _frozen_features(self) -> dict[str, Any]:
        frozen = list(self.report.get("frozen") or [])
        untrained = [e for e in frozen if e.get("untrained")]
        first = untrained[0] if untrained else {}
        return {
            "frozen_modules": len(frozen),
            "frozen_untrained": len(untrained),
            "frozen_module": first.get("module"),
            "frozen_kurtosis": as_float(first.get("kurtosis")),
            "frozen_in_optimizer": first.get("in_optimizer"),
        }

    def _next_token_features(self) -> dict[str, Any]:
        """Next-token training, and whether any attention masks anything (HF215): the smallest
        share over the measured steps (a next-token task matches at every step), and the
        attention modules of the first snapshot that recorded any (mask or no mask is settled
        at the first forward)."""
        records = list(self.report.get("next_token") or [])
        shares = [as_float(r.get("next_token_share")) for r in records]
        known = [x for x in shares if x is not None]
        first: Mapping[str, Any] = next(
            (s["attention"] for s in self.snapshots if s.get("attention")), {})
        modules = [name for name, st in first.items()
                   if isinstance(st, Mapping) and st.get("calls")]
        masked = [name for name in modules if (as_float(first[name].get("masked_share")) or 0) > 0]
        causal = [name for name in modules if first[name].get("mask_offset") == 0]
        own = [x for r in records if (x := as_float(r.get("own_token_share"))) is not None]
        lengths = {int(n) for r in records if (n := r.get("own_token_positions"))}
        aligned = [name for name in causal if not lengths or first[name].get("keys") in lengths]
        return {"next_token_share": min(known) if known else None,
                "own_token_share": min(own) if own else None,
                "attention_causal": len(causal),
                "attention_causal_first": causal[0] if causal else None,
                "attention_causal_aligned": len(aligned),
                "next_token_steps": len(known),
                "next_token_step": records[0].get("step") if records else None,
                "attention_modules": len(modules),
                "attention_masked": len(masked),
                "attention_first": modules[0] if modules else None}

    def _label_fit_features(self) -> dict[str, Any]:
        """The last two measured steps pooled: one step of a small batch is a few dozen rows."""
        records = [r for r in self.report.get("label_fit") or [] if r.get("samples")]
        last = records[-2:]
        rows = [float(r["samples"]) for r in last]
        misses = [n * (1 - float(r["accuracy"])) for n, r in zip(rows, last, strict=True)]
        lower = [n * float(r["lower_half"]) for n, r in zip(rows, last, strict=True)]
        confidence = _pooled(rows, [as_float(r.get("confidence")) for r in last])
        confidence_lower = _pooled(lower, [as_float(r.get("confidence_lower_half"))
                                           for r in last])
        return {
            "label_fit_records": len(records),
            "label_fit_step": last[-1]["step"] if last else None,
            "label_fit_classes": last[-1]["classes"] if last else None,
            "label_fit_samples": int(sum(rows)),
            "label_fit_accuracy": _pooled(rows, [float(r["accuracy"]) for r in last]),
            "label_fit_accuracy_min": min((float(r["accuracy"]) for r in last), default=None),
            "label_fit_lower_half": _pooled(rows, [float(r["lower_half"]) for r in last]),
            "label_fit_lower_half_min": min((float(r["lower_half"]) for r in last), default=None),
            "label_fit_miss_rank": _pooled(misses, [as_float(r["miss_rank_mean"]) for r in last]),
            "label_fit_loss_trend": self._loss_trend(int(last[-1]["step"])) if last else None,
            "label_fit_confidence_over_chance": max(
                (c * int(r["classes"]) for r in last
                 if (c := as_float(r.get("confidence"))) is not None), default=None),
            "label_fit_confidence_ratio": (confidence_lower / confidence
                                           if confidence and confidence_lower is not None
                                           else None),
            "label_fit_tail_flatness": _tail_flatness(
                _pooled(lower, [as_float(r.get("lower_half_rank_mean")) for r in last]),
                int(last[-1]["classes"]) if last else 0),
        }

    def _loss_trend(self, until: int) -> float | None:
        timeline = self.report.get("timeline", {}).get("loss", [])
        losses = [v for p in timeline if int(p["step"]) <= until
                  and (v := as_float(p["loss"])) is not None and math.isfinite(v)]
        quarter = len(losses) // 4
        if quarter == 0:
            return None
        before = sum(losses[-2 * quarter:-quarter]) / quarter
        return sum(losses[-quarter:]) / quarter / before if before > 0 else None

    def _run_features(self) -> dict[str, Any]:
        run = self.report.get("run", {})
        timeline = self.report.get("timeline", {}).get("loss", [])
        optimizers = run.get("optimizers") or []
        out: dict[str, Any] = {
            "status": run.get("status"),
            "steps": run.get("steps"),
            "optimizer": optimizers[0]["class"] if optimizers else None,
            "own_update_loop": any(o.get("class") == HAND_WRITTEN for o in optimizers),
            "base_lr": max((x for x in (as_float(o.get("lr")) for o in optimizers)
                            if x is not None), default=None),
            "measured_steps": len(self.snapshots),
            **self._loss_input_features(),
            **self._frozen_features(),
            **self._stale_grad_features(optimizers),
            **self._label_fit_features(),
            **self._next_token_features(),
            **_loss_features([(p["step"], p["loss"]) for p in timeline]),
            "phase": None,
        }
        growths = []
        for comp in self.components:
            if int(comp.get("numel") or 0) < 16:
                continue
            g, rms = self._growth(comp["name"], self._metric(comp["name"], "weight_norm"))
            if g is not None and rms is not None and rms >= _MIN_PEER_INIT_RMS:
                growths.append(g)
        out["init_scale_max"] = max(
            (v for v in (as_float((c.get("init") or {}).get("scale")) for c in self.components)
             if v is not None), default=None)
        out["weight_growth_median"] = _median(growths)
        out["components_judged"] = len(growths)
        out.update(self._relative_step(optimizers))
        out.update(self._attention_logit_growth())
        out.update(self._grad_died())
        out.update(self._lr_outlier())
        out.update(self._sample_mixing())
        out.update(self._nonfinite())
        out.update(self._curvature_errors())
        return out

    def _grad_died(self) -> dict[str, Any]:
        """The components whose gradient went from non-zero to exactly zero and stayed there
        (HF019). A network whose ReLUs all died, or whose softmax/tanh units saturated after one
        step too large, gets exactly zero gradients below the break for the rest of the run;
        a component that never had a gradient is HF003's, and a healthy run's gradients are
        noisy, never exactly zero in every entry."""
        none: dict[str, Any] = {"grad_died": [], "grad_died_share": None, "grad_died_judged": 0,
                                "grad_died_count": 0, "grad_died_at": None, "grad_alive": ""}
        if len(self.snapshots) < 3:
            return none
        died, alive, since = [], [], []
        for comp in self.components:
            if int(comp.get("numel") or 0) < 16:
                continue
            read = [as_float(z) for z in self._metric(comp["name"], "zero_grad_fraction")]
            zero = [z for z in read if z is not None]
            if len(zero) < len(read):
                continue
            # a gradient of zeros, not none: a module frozen or left out of the loss on purpose
            # part-way through (a backbone frozen after warm-up) has no gradient at all
            missing = self._metric(comp["name"], "grad_missing")
            if zero[0] < 1 and zero[-1] >= 1 and zero[-2] >= 1 and not any(missing[-2:]):
                died.append(comp["name"])
                first = len(zero) - 1
                while first > 0 and zero[first - 1] >= 1:
                    first -= 1
                since.append(first)
            else:
                alive.append(comp["name"])
        judged = len(died) + len(alive)
        if not judged:
            return none
        return {"grad_died": died, "grad_died_share": len(died) / judged,
                "grad_died_judged": judged, "grad_died_count": len(died),
                "grad_died_at": self.steps[max(since)] if since else None,
                "grad_alive": ", ".join(alive) or "none"}

    def _lr_outlier(self) -> dict[str, Any]:
        """The component trained at a learning rate many times the others' (its own param
        group), at the last measured step: when the whole run diverges, it is the first suspect.
        Components of fewer than 16 entries (scalars, temperatures) are left out."""
        none: dict[str, Any] = {"lr_outlier": None, "lr_outlier_ratio": None, "lr_note": ""}
        if not self.snapshots:
            return none
        metrics = self.snapshots[-1]["metrics"]
        lrs = {c["name"]: lr for c in self.components if int(c.get("numel") or 0) >= 16
               and (lr := as_float((metrics.get(c["name"]) or {}).get("lr"))) is not None
               and lr > 0}
        median = _median(lrs.values())
        if len(lrs) < 3 or not median:
            return none
        top = max(lrs, key=lambda name: lrs[name])
        ratio = lrs[top] / median
        if ratio < LR_OUTLIER:
            return none
        return {"lr_outlier": top, "lr_outlier_ratio": ratio,
                "lr_note": f"; {top} trains at {ratio:.3g}× the median component's learning rate"}

    def _sample_mixing(self) -> dict[str, Any]:
        record = self.report.get("sample_mixing")
        found = batch_mixers(record)
        culprits = found["culprits"]
        first = culprits[0] if culprits else None
        share = None
        if first is not None and record:
            entry = next(m for m in record["modules"] if m["module"] == first)
            share = max((as_float(v) or 0.0 for v, size in zip(entry["shares"], entry["sizes"],
                                                              strict=True)
                         if size == found["batch"]), default=None)
        return {"sample_mixing_module": first, "sample_mixing_modules": len(culprits),
                "sample_mixing_share": share, "sample_mixing_batch": found["batch"],
                "sample_mixing_positions": found["positions"],
                "sample_mixing_peers": found["peers"], "sample_mixing_how": found["how"],
                "sample_mixing_step": (record or {}).get("step")}

    def _relative_step(self, optimizers: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """How far one step moves the median component, relative to its weights (HF018).

        Adaptive optimizers normalize each entry's step to about the learning rate, so lr/RMS(θ)
        is the step's relative size whatever the gradient (a run whose gradients vanished after
        a blow-up still has it); other optimizers' steps scale with the gradient and are read as
        measured."""
        classes = [str(o.get("class") or "") for o in optimizers]
        best: tuple[float, int, float | None] | None = None
        for snap in self.snapshots:
            sizes: list[tuple[float, float | None]] = []
            for comp in self.components:
                numel = int(comp.get("numel") or 0)
                metrics = snap["metrics"].get(comp["name"]) or {}
                norm = as_float(metrics.get("weight_norm"))
                if numel < 16 or norm is None or not math.isfinite(norm):
                    continue
                rms = norm / math.sqrt(numel)
                if rms < _MIN_PEER_INIT_RMS:
                    continue
                index = comp.get("optimizer")
                cls = classes[index] if isinstance(index, int) and index < len(classes) else ""
                lr = as_float(metrics.get("lr"))
                if cls.startswith(_ADAPTIVE):
                    size = lr / rms if lr is not None else None
                else:
                    size = as_float(metrics.get("update_ratio"))
                if size is not None and math.isfinite(size):
                    sizes.append((size, lr))
            if len(sizes) < 4:
                continue
            sizes.sort(key=lambda x: x[0])
            size, lr = sizes[len(sizes) // 2]
            if best is None or size > best[0]:
                best = (size, int(snap["step"]), lr)
        return {"relative_step": best[0] if best else None,
                "relative_step_at": best[1] if best else None,
                "relative_step_lr": best[2] if best else None}

    def _values_constant(self, module: str | None) -> bool:
        """Whether ``module``'s values were the same at every key in every call seen, at every
        measured step that saw them (and one did)."""
        if module is None:
            return False
        shares = [as_float(((s.get("attention") or {}).get(module) or {}).get("values_constant"))
                  for s in self.snapshots]
        seen = [v for v in shares if v is not None]
        return bool(seen) and all(v >= 1 for v in seen)

    def _unweighted_last_layer(self, comp: Mapping[str, Any],
                               raw: Mapping[str, Mapping[str, tuple[Any, ...]]]) -> bool:
        """Whether ``comp`` is the last layer's copy of a component that trains in the layers
        before, with an exact-zero gradient tensor at every snapshot (see the feature's text)."""
        layer, name = comp.get("layer"), comp["name"]
        zeros = [as_float(v) for v in raw[name]["zero_grad_fraction"]]
        missing = raw[name]["grad_missing"]
        if (layer is None or not zeros or any(z is None or z < 1 for z in zeros)
                or any(m is not False for m in missing)):
            return False
        key = _layer_key(name, int(layer))
        counterparts = [c for c in self.components if c["name"] != name
                        and c.get("layer") is not None
                        and _layer_key(c["name"], int(c["layer"])) == key]
        if not counterparts or any(int(c["layer"]) >= int(layer) for c in counterparts):
            return False
        return any(any(z is not None and z < 1
                       for z in (as_float(v) for v in raw[c["name"]]["zero_grad_fraction"]))
                   for c in counterparts)

    def _attention_logit_growth(self) -> dict[str, Any]:
        """The attention module whose largest logit grew the most over the run (HF218): logits
        that grow by orders of magnitude while every step is large are what a learning rate too
        large does to attention first."""
        series: dict[str, list[float]] = {}
        for snap in self.snapshots:
            for module, record in (snap.get("attention") or {}).items():
                value = as_float(decode((record or {}).get("max_logit")))
                if value is not None and math.isfinite(value):
                    series.setdefault(module, []).append(value)
        best: tuple[float, str, float, float] | None = None
        for module, values in series.items():
            if len(values) < 2:
                continue
            growth = values[-1] / max(values[0], 1.0)
            if best is None or growth > best[0]:
                best = (growth, module, values[0], values[-1])
        return {"attention_logit_growth": best[0] if best else None,
                "attention_logit_module": best[1] if best else None,
                "attention_logit_first": best[2] if best else None,
                "attention_logit_last": best[3] if best else None}

    def _phase_subjects(self) -> list[Subject]:
        """One run subject per phase that has its own loss series (the report lists them when
        more than one phase has losses): its loss features, last step, optimizer and rate."""
        phases = [p for p in self.report.get("phases") or [] if p.get("losses")]
        if len(phases) < 2:
            return []
        out = []
        for phase in phases:
            features = {
                **self.run,
                **_loss_features(phase["losses"]),
                "steps": phase.get("last_step"),
                "optimizer": phase.get("class"),
                "base_lr": as_float(phase.get("lr")),
                "phase": phase["phase"],
            }
            key = (f"phase {phase['phase']} of {len(phases)}: {phase.get('class')}, steps "
                   f"{phase.get('first_step')}–{phase.get('last_step')}")
            out.append(Subject("run", key, features))
        return out

    def _nonfinite(self) -> dict[str, Any]:
        events = list(self.report.get("numerics", []))
        kinds = ("activation", "loss", "gradient", "weight")
        out: dict[str, Any] = {"nonfinite": bool(events), "nonfinite_events": len(events)}
        first = min(events, key=lambda e: (e["step"], kinds.index(e["kind"])), default=None)
        where = first["where"] if first else None
        texts = {
            "activation": "output of module {w}",
            "loss": "loss (all module outputs were finite)",
            "gradient": "gradient of {w}",
            "weight": "weights of {w}",
        }
        rank = first.get("rank") if first else None  # under torchrun: the rank that saw it
        location = texts[first["kind"]].format(w=where) if first else None
        if first is not None and location is not None and first.get("op"):
            location += f", made by {first['op']} at {first['file']}:{first['line']}"
            if first.get("op_step") != first["step"]:
                location += f" (seen at step {first['op_step']})"
        if location is not None and rank is not None:
            location += f" on rank {rank}"
        out.update(
            nonfinite_step=first["step"] if first else None,
            nonfinite_kind=first["kind"] if first else None,
            nonfinite_where=where,
            nonfinite_value=first["value"] if first else None,
            nonfinite_location=location,
            nonfinite_component=self._component_of(where, first["kind"]) if first else None,
            nonfinite_rank=rank,
        )
        return out

    def _component_of(self, where: str | None, kind: str) -> str | None:
        """The component that is, or is nearest inside, the module an event names."""
        if where is None or kind in ("gradient", "weight") or where in self.by_name:
            return where
        inside = [n for n in self.by_name if n.startswith(where + ".")]
        return inside[0] if inside else where

    def _curvature_errors(self) -> dict[str, Any]:
        for snap in self.snapshots:
            curv = snap.get("curvature") or {}
            if curv.get("error"):
                blocked = list(curv.get("blocked") or [])
                shown = ", ".join(blocked[:4]) + (" ..." if len(blocked) > 4 else "")
                what = (
                    f"the curvature of {len(blocked)} component(s) ({shown})"
                    if blocked else "the couplings between components"
                )
                return {
                    "curvature_error": curv["error"],
                    "curvature_error_step": snap["step"],
                    "curvature_blocked": len(blocked),
                    "curvature_blocked_list": blocked,
                    "curvature_error_component": blocked[0] if blocked else None,
                    "curvature_what": what,
                }
        return dict.fromkeys(
            ("curvature_error", "curvature_error_step", "curvature_error_component",
             "curvature_what"), None
        ) | {"curvature_blocked": 0, "curvature_blocked_list": []}

    # -------------------------------------------------------------- components
    def _block_type(self, comp: Mapping[str, Any]) -> str:
        """Attention roles are types; any other component's type is its position in the
        repeated layer (``blocks.*.mlp.2``): the same module in every layer, not every Linear."""
        if comp["role"] != "other":
            return comp["role"]
        parts = comp["name"].split(".")
        layer = comp.get("layer")
        if layer is not None and str(layer) in parts:
            parts[parts.index(str(layer))] = "*"
        return ".".join(parts)

    def _all_components(self) -> dict[str, dict[str, Any]]:
        if self._component_cache is not None:
            return self._component_cache
        raw: dict[str, dict[str, tuple[Any, ...]]] = {
            c["name"]: {k: self._metric(c["name"], k) for k in COMPONENT_METRICS}
            for c in self.components
        }
        growth = {name: self._growth(name, m["weight_norm"]) for name, m in raw.items()}
        peak = {name: self._peak_growth(m["weight_norm"]) for name, m in raw.items()}
        out: dict[str, dict[str, Any]] = {}
        last = max(1, len(self.components) - 1)
        table_rms = {c["name"]: _first_rms(raw[c["name"]]["weight_norm"], c.get("numel"))
                     for c in self.components if _is_table(c)}
        for index, comp in enumerate(self.components):
            name, m = comp["name"], raw[comp["name"]]
            others = [n for n in raw if n != name]
            kind = self._block_type(comp)
            same = [n for n in others if self._block_type(self.by_name[n]) == kind]
            f: dict[str, Any] = {k: self.series(v) for k, v in m.items()}
            f["step"] = self.series(self.steps)
            f["trace_t"] = self.series([_ratio(t, se) for t, se in zip(m["trace"], m["trace_se"],
                                                                         strict=True)])
            f["effective_ratio"] = self.series(self._metric(name, "effective_ratio"))
            f["curvature_norm"] = self.series(
                [_spectral(a, b) for a, b in zip(m["lambda_max"], m["lambda_min"], strict=True)]
            )
            for key in ("update_ratio", "grad_rms", "lr"):
                f[f"{key}_peers"] = self.series(
                    [_median(as_float(raw[n][key][i]) for n in others)
                     for i in range(len(self.steps))]
                )
            f["lambda_max_type_peers"] = self.series(
                [_median(as_float(raw[n]["lambda_max"][i]) for n in same)
                 for i in range(len(self.steps))]
            )
            init_rms = _first_rms(m["weight_norm"], comp.get("numel"))
            growth_peers = [n for n in others if (peer_init := growth[n][1]) is not None
                            and peer_init >= _MIN_PEER_INIT_RMS]
            init = comp.get("init") or {}
            reach = (self.report.get("param_reach") or {}).get("components") or {}
            followed = reach.get(name) or {}
            held = list(comp.get("parameters") or [])
            lone = len(held) == 1 and (name == held[0] or name.endswith("." + str(held[0])))
            tables = _median(v for n, v in table_rms.items() if n != name and v is not None
                             and v >= _MIN_PEER_INIT_RMS) if name in table_rms else None
            f.update(
                table_rms=table_rms.get(name),
                table_rms_peers=tables,
                table_rms_ratio=_ratio(init_rms, tables),
                init_scale=as_float(init.get("scale")),
                init_scale_peers=_median(
                    as_float((self.by_name[n].get("init") or {}).get("scale")) for n in others),
                init_mean_ratio=as_float(init.get("mean_ratio")),
                init_fan_in=as_float(init.get("fan_in")),
                reaches_loss=followed.get("reaches_loss"),
                params_read=followed.get("read"),
                output_returned=followed.get("returned"),
                lone_parameter=lone,
                unused=(followed.get("reaches_loss") is False
                        and (followed.get("returned") is True
                             or (lone and followed.get("read") is False)
                             or (followed.get("called") is False
                                 and followed.get("library") is True))),
                unweighted_last_layer=self._unweighted_last_layer(comp, raw),
                qk_without_effect=(comp["role"] in ("query", "key")
                                   and self._values_constant(comp.get("attention"))),
                # a module whose weights are read without calling it (a token parameter held
                # in an nn.Embedding and concatenated by its parent) has no place of its own
                forward_position=None if followed.get("called") is False else index / last,
                name=name,
                role=comp["role"],
                block_type=kind,
                type_peers=len(same),
                layer=comp.get("layer"),
                attention=comp.get("attention"),
                numel=comp.get("numel"),
                module_type=comp.get("module_type"),
                table=_is_table(comp),
                source=_where(comp.get("source")),
                access=param_access(comp),
                init_rms=init_rms,
                weight_growth=growth[name][0],
                weight_growth_peers=_median(growth[n][0] for n in growth_peers),
                weight_growth_peak=peak[name],
                weight_growth_peak_peers=_median(peak[n] for n in growth_peers),
                grad_rms_growth=self._grad_growth(m["grad_rms"]),
                pushed_by_component=self._pushed_by(index, growth),
            )
            out[name] = f
        self._component_cache = out
        return out

    def _pushed_by(self, index: int,
                   growth: Mapping[str, tuple[float | None, float | None]]) -> str | None:
        """The component after ``index`` in the forward whose weights grew the most, when that
        growth is ≥ ``_PUSH_GROWTH`` and that many times this component's own."""
        own = growth[self.components[index]["name"]][0] or 1.0
        best: tuple[float, str] | None = None
        for comp in self.components[index + 1:]:
            g, init_rms = growth[comp["name"]]
            if g is None or init_rms is None or init_rms < _MIN_PEER_INIT_RMS:
                continue
            if g >= _PUSH_GROWTH and g >= _PUSH_GROWTH * own and (best is None or g > best[0]):
                best = (g, comp["name"])
        return best[1] if best else None

    def _growth(self, name: str, norms: Sequence[Any]) -> tuple[float | None, float | None]:
        """(last/first weight norm, first weight RMS)."""
        values = [as_float(v) for v in norms]
        present = [v for v in values if v is not None]
        numel = max(1, int(self.by_name[name].get("numel") or 1))
        if len(present) < 2 or not present[0]:
            return None, (present[0] / math.sqrt(numel) if present else None)
        return present[-1] / present[0], present[0] / math.sqrt(numel)

    @staticmethod
    def _peak_growth(norms: Sequence[Any]) -> float | None:
        """The largest ‖θ_t‖/‖θ_first‖ over the snapshots: how far the weights went, where a
        decay that grows with the learning rate (AdamW's) may have pulled them back by the end."""
        present = [v for v in (as_float(x) for x in norms) if v is not None and math.isfinite(v)]
        if len(present) < 2 or not present[0]:
            return None
        return max(present) / present[0]

    @staticmethod
    def _grad_growth(rms: Sequence[Any]) -> float | None:
        values = [v for v in (as_float(x) for x in rms) if v is not None and math.isfinite(v)]
        if len(values) < 3 or values[0] <= 0:
            return None
        return values[-1] / values[0]

    def component_features(self, name: str) -> dict[str, Any]:
        return self._all_components().get(name, {})

    def component_subjects(self) -> list[Subject]:
        return [
            Subject("component", name, {**self.run, **f}, component=name)
            for name, f in self._all_components().items()
        ]

    # -------------------------------------------------------------- edges
    def edge_subjects(self) -> list[Subject]:
        pairs: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = {}
        for i, snap in enumerate(self.snapshots):
            for e in (snap.get("graph") or {}).get("edges", []):
                key = (e["source"], e["target"])
                pairs.setdefault(key, {})[i] = e
        subjects = []
        for (a, b), by_index in pairs.items():
            ca, cb = self.by_name.get(a, {}), self.by_name.get(b, {})
            la, lb = ca.get("layer"), cb.get("layer")
            up, down = (b, a) if la is not None and lb is not None and lb < la else (a, b)
            f: dict[str, Any] = {
                key: self.series(
                    [decode(by_index[i].get(key)) if i in by_index else None
                     for i in range(len(self.steps))]
                )
                for key in ("kappa", "kappa_se", "hfro", "rho")
            }
            f.update(
                step=self.series(self.steps),
                source=a,
                target=b,
                upstream=up,
                downstream=down,
                source_role=ca.get("role"),
                target_role=cb.get("role"),
                source_layer=la,
                target_layer=lb,
                cross_layer=la is not None and lb is not None and la != lb,
                same_attention=ca.get("attention") is not None
                and ca.get("attention") == cb.get("attention"),
                path=self.graph_paths.get(down) or f"{up} → {down}",
            )
            subjects.append(Subject("edge", f"{a} ~ {b}", {**self.run, **f}, component=up))
        return subjects

    # -------------------------------------------------------------- attention
    def attention_subjects(self) -> list[Subject]:
        modules: list[str] = []
        for snap in self.snapshots:
            for module in snap.get("attention") or {}:
                if module not in modules:
                    modules.append(module)
        comps = self._all_components()
        last_logit = {
            m: _last_num(decode((s.get("attention") or {}).get(m, {}).get("max_logit"))
                         for s in self.snapshots)
            for m in modules
        }
        # Each module's record at its first measured step (the initialization): what the
        # peer comparisons read.
        first: dict[str, Mapping[str, Any]] = {
            m: next((a for a in ((s.get("attention") or {}).get(m) for s in self.snapshots)
                     if a), {})
            for m in modules
        }
        def first_known(module: str, key: str) -> Any:
            """The module's first measured value of ``key``: a module found computing attention
            at the first step (not named as attention) has its operands from the second on."""
            return next((v for s in self.snapshots
                         if (v := ((s.get("attention") or {}).get(module) or {}).get(key))
                         is not None), None)

        # Padding is read at the first step that could read it: where a pad's key is exactly 0
        # (its state zeroed before a bias-free projection at initialization, as ESM's
        # embeddings do) the weights cannot tell a dropped mask from one multiplied in.
        padding: dict[str, Mapping[str, Any]] = {
            m: next((a for a in ((s.get("attention") or {}).get(m) for s in self.snapshots)
                     if a and a.get("padding_mass") is not None), {})
            for m in modules
        }
        first_gain = {m: as_float(first_known(m, "logit_gain")) for m in modules}
        first_inner = {m: first_known(m, "inner") for m in modules}
        subjects = []
        for module in modules:
            stats = [(s.get("attention") or {}).get(module, {}) for s in self.snapshots]
            same_role = [m for m in modules if m != module and _role_of(m) == _role_of(module)]
            axis = next(((step, st["axis_fault"])
                         for step, st in zip(self.steps, stats, strict=True)
                         if st.get("axis_fault")), (None, None))
            # A layer that lost its causal mask still reads its peers' sequence: a same-place
            # module over another number of keys is another role (x-transformers lists self-
            # and cross-attention blocks of a layer in one list: one path for both).
            keys_here = first[module].get("keys")
            causal = [m for m in same_role if first[m].get("mask_offset") == 0
                      and (not keys_here or not first[m].get("keys")
                           or first[m].get("keys") == keys_here)]
            kind = first[module].get("type")
            same_code = [m for m in modules if m != module and kind is not None
                         and first[m].get("type") == kind] or same_role
            group = [m for m in [module, *same_code] if first_gain[m]]
            # Three or more: the median of the group (itself included) stands for the code, so one
            # odd module cannot drag it; two: the other one.
            gain_peers = (_median(first_gain[m] for m in group) if len(group) >= 3
                          else _median(first_gain[m] for m in same_code))
            members = [c for c in self.components if c.get("attention") == module]

            def role(r: str, members: list[Mapping[str, Any]] = members) -> str | None:
                return next((c["name"] for c in members if c["role"] == r), None)

            q, k, v = role("query"), role("key"), role("value")

            def curv(name: str | None) -> Series:
                if name is None:
                    return self.series([None] * len(self.steps))
                return comps[name]["curvature_norm"]

            qc, kc, vc = curv(q), curv(k), curv(v)
            qk = [_min2(a, b) for a, b in zip(qc.values, kc.values, strict=True)]
            f: dict[str, Any] = {
                key: self.series([decode(st.get(key)) for st in stats])
                for key in ("entropy_norm_mean", "entropy_norm_head_min", "entropy_mean",
                            "max_logit", "mask_offset")
            }
            weakest = q
            last_q, last_k = _last_num(qc.values), _last_num(kc.values)
            if last_q is not None and last_k is not None and last_k < last_q:
                weakest = k
            qg = comps[q]["weight_growth"] if q else None
            kg = comps[k]["weight_growth"] if k else None
            fastest = k if kg is not None and (qg is None or kg > qg) else q
            layer = next((c.get("layer") for c in members if c.get("layer") is not None), None)
            f.update(
                q_curv=qc,
                k_curv=kc,
                v_curv=vc,
                qk_v_ratio=self.series([_ratio(a, b) for a, b in zip(qk, vc.values,
                                                                      strict=True)]),
                step=self.series(self.steps),
                module=module,
                layer=layer,
                q_component=q,
                k_component=k,
                v_component=v,
                weakest_qk=weakest or k or v or module,
                keys=_last_num([st.get("keys") for st in stats]),
                q_weight_growth=qg,
                k_weight_growth=kg,
                fastest_qk=fastest or weakest or module,
                max_logit_peers=_median(v for m, v in last_logit.items() if m != module),
                logit_std=self.series([as_float(st.get("logit_std")) for st in stats]),
                logit_gain=self.series([as_float(st.get("logit_gain")) for st in stats]),
                gain_first=first_gain[module],
                gain_peers=gain_peers,
                gain_peer_count=len([m for m in same_code if first_gain[m]]),
                gain_ratio=_fold(first_gain[module], gain_peers),
                gain_outlier=_odd_one(module, same_code, first_gain, first_inner),
                gain_standard=_standard_scale(first_gain[module], first_inner[module]),
                qk_rms_first=as_float(first_known(module, "qk_rms")),
                standard_ratio=_off_standard(first_gain[module], first_inner[module]),
                axis_fault=axis[1],
                axis_step=axis[0],
                mask_none=first[module].get("masked_share") == 0,
                causal_peers=len(causal),
                keys_first=first[module].get("keys"),
                queries_first=first[module].get("queries"),
                keys_peers=_median(float(k) for k in (first[m].get("keys") for m in same_role)
                                   if k),
                batch=first[module].get("batch"),
                input_axis_other=_other_axis(first[module]),
                keys_peer_count=len([m for m in same_role if first[m].get("keys")]),
                causal_peer=causal[0] if causal else None,
            )
            masking = [m for m in modules if m != module
                       and (as_float(padding[m].get("padding_mass")) or 0.0) == 0.0
                       and padding[m].get("padding_mass") is not None]
            f.update(
                padding_mass=as_float(padding[module].get("padding_mass")),
                padding_share=as_float(padding[module].get("padding_share")),
                padding_alike=as_float(padding[module].get("padding_alike")),
                padding_masked_peers=len(masking),
                padding_peer=masking[0] if masking else None,
            )
            subjects.append(Subject("attention", module, {**self.run, **f},
                                    component=weakest or module))
        return subjects

    def subjects(self, scope: str, reads: frozenset[str] = frozenset()) -> list[Subject]:
        """The subjects of ``scope``; a run-scope rule that ``reads`` a loss feature gets one per
        phase when phases have their own losses."""
        if scope == "run":
            if reads & PHASE_FEATURES and self.phase_runs:
                return self.phase_runs
            return [Subject("run", "run", dict(self.run))]
        if scope in ("component", "timeline"):
            return self.component_subjects()
        if scope == "edge":
            return self.edge_subjects()
        if scope == "attention":
            return self.attention_subjects()
        raise ValueError(f"unknown scope {scope!r}")


def _first_rms(norms: Sequence[Any], numel: Any) -> float | None:
    """A weight's RMS at its first snapshot, from its norm."""
    first = next((x for x in map(as_float, norms) if x is not None), None)
    return first / math.sqrt(max(1, int(numel or 1))) if first is not None else None


def _loss_features(points: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """``loss``, ``loss_points`` and ``loss_all_finite`` of ``[step, loss]`` pairs."""
    losses = tuple(as_float(v) for _, v in points)
    finite = [v for v in losses if v is not None and math.isfinite(v)]
    steps = tuple(int(s) for s, _ in points)
    bad = next((i for i, v in enumerate(losses) if v is not None and not math.isfinite(v)), None)
    return {
        "loss": Series(steps, losses),
        "loss_points": len(finite),
        "loss_all_finite": len(finite) == len(losses),
        "loss_before_nonfinite": (Series(steps[:bad], losses[:bad]) if bad is not None
                                  else Series((), ())),
        "loss_nonfinite_at": steps[bad] if bad is not None else None,
        **_divergence_before(steps[:bad] if bad is not None else (),
                             losses[:bad] if bad is not None else ()),
    }


def _divergence_before(steps: Sequence[int], losses: Sequence[float | None]) -> dict[str, Any]:
    """How far the losses before a non-finite one rose above the first: the largest median of 3
    consecutive ones (its value and step) and its rise relative to |first|; none with fewer
    than 4."""
    pairs = [(s, v) for s, v in zip(steps, losses, strict=True)
             if v is not None and math.isfinite(v)]
    if len(pairs) < 4:
        return {"loss_rise_before_nonfinite": None, "loss_peak_before_nonfinite": None,
                "loss_peak_step_before_nonfinite": None,
                "loss_diverged_before_nonfinite": False}
    levels = [(statistics.median(v for _, v in pairs[i - 2:i + 1]), pairs[i][0])
              for i in range(2, len(pairs))]
    peak, at = max(levels, key=lambda level: level[0])
    rise = (peak - pairs[0][1]) / max(abs(pairs[0][1]), 1e-8)
    return {"loss_rise_before_nonfinite": rise, "loss_peak_before_nonfinite": peak,
            "loss_peak_step_before_nonfinite": at,
            "loss_diverged_before_nonfinite": rise > DIVERGED_RISE - 1}


def _pooled(weights: Sequence[float], values: Sequence[float | None]) -> float | None:
    """The weighted mean of the values (a value is left out where its weight is 0: a step
    without missed or lower-half rows has no mean for them); None when nothing is left or a
    weighted value is missing (a report from before the field existed)."""
    pairs = [(w, v) for w, v in zip(weights, values, strict=True) if w > 0]
    total = sum(w for w, _ in pairs)
    if total <= 0 or any(v is None for _, v in pairs):
        return None
    return sum(w * v for w, v in pairs if v is not None) / total


def _other_axis(record: Mapping[str, Any]) -> int | None:
    """For an attention record whose key count is one leading size of the model's input: the
    other one (the peers of a module that attends over the wrong axis attend over it)."""
    axes, keys = record.get("input_axes"), record.get("keys")
    if not isinstance(axes, list) or len(axes) != 2 or not keys or axes[0] == axes[1]:
        return None
    if keys == axes[0]:
        return int(axes[1])
    if keys == axes[1]:
        return int(axes[0])
    return None


def _where(source: Any) -> str | None:
    if isinstance(source, Mapping) and source.get("file"):
        return f"{source['file']}:{source.get('line')}"
    return None


def _ratio(a: Any, b: Any) -> float | None:
    a, b = as_float(a), as_float(b)
    if a is None or b is None or b == 0 or not math.isfinite(b):
        return None
    return a / b


def _spectral(lmax: Any, lmin: Any) -> float | None:
    a, b = as_float(lmax), as_float(lmin)
    if a is None or b is None:
        return None
    return max(abs(a), abs(b))


def _min2(a: Any, b: Any) -> float | None:
    values = [v for v in (as_float(a), as_float(b)) if v is not None]
    return min(values) if values else None


def _odd_one(module: str, peers: list[str], first: dict[str, float | None],
             inner: dict[str, int | None]) -> bool:
    """With one peer, two modules disagree and either may be wrong. The odd one is the one
    further (in log) from the median of the remaining attention modules; without any, the one
    further from a standard scale: 1/√d after the product (or SDPA's default), or 1 when the
    1/√d is folded into the queries before it (``nn.MultiheadAttention``), or an unscaled
    additive score."""
    peers = [m for m in peers if first[m]]
    if len(peers) != 1:
        return True
    other = peers[0]
    mine, theirs = first[module], first[other]
    if not mine or not theirs:
        return True
    rest = _median(v for m, v in first.items() if m != module and m != other)
    if rest is not None:
        return abs(math.log(mine / rest)) >= abs(math.log(theirs / rest))

    return (_off_standard(mine, inner.get(module)) or 1.0) >= (
        _off_standard(theirs, inner.get(other)) or 1.0)


def _standard_scale(gain: float | None, inner: int | None) -> float | None:
    """The standard gain nearest (in log) to ``gain``: 1/√d when the scores are scaled after
    the product (or SDPA's default), 1 when the 1/√d is folded into the queries before it
    (``nn.MultiheadAttention``) or the score is an unscaled additive one. Which convention a
    module follows is not observable, so the nearer one is taken: a wrong scale must be far
    from both."""
    if gain is None or gain <= 0:
        return None
    if not inner or inner <= 1:
        return 1.0
    scaled = 1.0 / math.sqrt(inner)
    return scaled if abs(math.log(gain / scaled)) < abs(math.log(gain)) else 1.0


def _off_standard(gain: float | None, inner: int | None) -> float | None:
    """How many times ``gain`` is from the nearer standard scale (≥ 1)."""
    return _fold(gain, _standard_scale(gain, inner))


def _fold(value: float | None, reference: float | None) -> float | None:
    """max(value/reference, reference/value): how many times off, in either direction."""
    if value is None or reference is None or value <= 0 or reference <= 0:
        return None
    return max(value / reference, reference / value)


def _role_of(module: str) -> str:
    """A module's place in its layer: the path with layer indices masked (``h.#.attn``)."""
    return re.sub(r"(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)", "#", module)


def _last_num(values: Iterable[Any]) -> float | None:
    present = [v for v in (as_float(x) for x in values) if v is not None]
    return present[-1] if present else None


def _layer_key(name: str, layer: int) -> str:
    """The name with its layer index replaced: counterparts in other layers share it."""
    return re.sub(rf"(^|\.){layer}(?=\.|$)", r"\1#", name, count=1)


def _is_table(component: Mapping[str, Any]) -> bool:
    """An embedding table, subclasses included (a position table named after its model)."""
    return bool(component.get("table")) or component.get("module_type") in _TABLES


def _tail_flatness(rank_mean: float | None, classes: int) -> float | None:
    """Where the lower-half targets' mean normalized rank sits between the middle (0.5) and the
    mean of the lower-half positions (what targets spread evenly over them give): random labels
    land on every position alike, a model that has not fitted yet misses just below the middle.
    1 with two classes (the lower half is one position)."""
    if rank_mean is None or classes < 2:
        return None
    positions = [i / (classes - 1) for i in range(classes) if i / (classes - 1) >= 0.5]
    even = sum(positions) / len(positions)
    return (rank_mean - 0.5) / (even - 0.5)
