"""reduction-over-batch-dim: a prediction taken over dim 0 of a batch of model outputs."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import ClassVar

from torchdoctor.agent.checks.analysis.batch_outputs import (
    bound_names,
    compared,
    in_loader_loop,
    in_loop,
    is_whole_model_output,
    output_before,
    scored_with_labels,
)
from torchdoctor.agent.checks.analysis.defuse import identifier, kwarg
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.checks.patterns import argument, constant_int
from torchdoctor.agent.models import Severity

# Reductions over the class dimension, and the position of `dim` in the method form.
_METHOD_DIM = {
    "argmax": 0, "argmin": 0, "softmax": 0, "log_softmax": 0, "max": 0, "min": 0, "topk": 1
}  # fmt: skip
_FUNCTIONS = {
    "torch.argmax": 1, "torch.argmin": 1, "torch.max": 1, "torch.min": 1, "torch.topk": 2,
    "torch.softmax": 1, "torch.log_softmax": 1, "torch.nn.functional.softmax": 1,
    "torch.nn.functional.log_softmax": 1,
}  # fmt: skip
_PROBABILITIES = frozenset({"softmax", "log_softmax"})
_EXTREMES = frozenset({"max", "min", "argmax", "argmin"})


class ReductionOverBatchDim(Rule):
    """Detects a class-dimension reduction (`argmax`, `max`, `topk`, `softmax`,
    `log_softmax`) taken over dim 0 of a model's whole output inside a loop over the batches
    of a data loader (or a torchtext-style `data_iter`), whose result is then compared with
    labels (`pred == y`, `pred.eq(y)`, `torch.max(out, 0)[1] == y`)
    or, for a softmax, fed to a loss: the output is `(batch, classes)`, so dim 0 is the batch.

    Why it matters: `output.argmax(0)` returns, for each class, the index of the example that
    scores highest, not a class per example; compared with a batch of labels it broadcasts or
    matches by accident, and accuracy is nonsense. A softmax over dim 0 normalises each class
    across the batch: the loss trains the model to rank examples, not to classify them, and
    results change with the batch size.

    A softmax or log_softmax over dim 0 of a model's output is reported whatever is done with
    it inside a loader loop (scores written out), and outside one when it reaches a loss
    through names, views and arithmetic (a step drawing `dataset.get_batch()`); so is one
    over dim 0 of the outputs scored against a fixed set (`torch.matmul(pooled,
    prototypes.T) / t`: rows are still examples), not against another batch of outputs
    (CLIP's `image @ text.T`, where either dim is a batch). So is one
    inside a model over a layer's output on a batch-flattened tensor (`x = self.fc(x.view(
    x.size(0), -1)); return F.softmax(x, dim=0)`): its rows are the examples; and an
    `nn.Softmax(dim=0)` / `nn.LogSoftmax(dim=0)` layer of a model (reported where it is
    built) that its methods apply only to such rows or to per-example scores stacked along
    dim 1 (`self.log_softmax(torch.stack(scores, 1))`).

    Also reported: a `max`/`argmax` over dim 0 of the outputs a local helper gathers over the
    dataset (`output = pass_data_iteratively(model, graphs)`, returning `torch.cat` of each
    minibatch's output along dim 0), compared with the labels.

    Also reported, wherever it is: a softmax over dim 0 whose result is then sampled or picked
    row by row along the last dim (`torch.multinomial(probs, 1)`, `torch.topk(probs, k,
    dim=-1)`) when its input has two or more dims (makemore's `logits[:, -1, :]`: a row per
    sequence), and a softmax over dim 0 whose result a class pick then takes
    along dim 1 (`np.argmax(nn.Softmax(dim=0)(scores).numpy(), axis=1)`: the pick says the
    classes are on dim 1, so the softmax normalised across the examples), and a log_softmax
    over dim 0 whose result a written-out cross-entropy sums along dim 1 (`log_prb =
    F.log_softmax(pred, dim=0)`, then `-(one_hot * log_prb).sum(dim=1)`: label smoothing),
    or along the last dim when those sums are then averaged (`-torch.mean(torch.sum(
    F.log_softmax(logits, 0) * clicks, -1))`, a VAE recommender's multinomial likelihood:
    one sum per row, so the rows are the examples; a last-dim sum left alone may be the one
    sum of a single vector and is not judged).
    Also a VAE's Gaussian KL term (`1 + log_var - mu.pow(2) - log_var.exp()`) summed over
    dim 0 and then averaged (`.sum(0).mean()`): the examples summed, the latent units averaged.
    And in a helper (`def accuracy(prediction, label)`) whose parameter every call
    of this module gives a model's whole output inside such a loop, or in a module-level
    accuracy helper whose first parameter it reduces and compares (called from another
    file); predictions handed to one call with the batch's labels (`metrics.update(targets,
    preds)`); and a `max`/`min`/`argmax` over dim 0 of a model's output in a loop that
    reaches a loss (DQN's `q_target(s_next).max(0)[0]` in the TD target: the best value of
    each action over the batch, not the best action of each transition).

    Also reported: a `max`/`argmax` over dim 0 (a literal, or a name bound only to 0 such as
    `node_dim = 0`) of scores that a loss of the same function reads with the labels, compared
    with them (a full-graph GNN step, no loader) or returned as the prediction beside the
    loss (a segmentation model's `forward` returning `x.max(0)[1], main_loss`, scored by its
    caller): the loss takes `(examples, classes)`.

    Also reported: a softmax, or a pick (`argmax`, `max`, `topk`), over the axis that the
    einsum making the tensor names `b` or `batch` in its literal output spec (`einsum(x, phi,
    "b m d, d n p -> b m n p").softmax(dim=0)`, soft-MoE's dispatch weights; Conv-TasNet's
    `torch.argmax(torch.einsum('bij,pij->bp', ...), dim=0)`, the best permutation picked
    across the batch), and an `nn.Softmax(dim=0)` layer applied
    to a view whose dim 0 folds the batch (`scores.view(batch_size * output_len, query_len)`).

    Also reported: a softmax or log_softmax over the one axis that the tensor's own view or
    reshape sizes with the batch size (`pi = pi.view(seq_len, bs, gaussians)`, then
    `log_softmax(pi, dim=-2)`): whatever the dim's number, it is the batch.

    Also reported: a sum over every element (`logp = dist.log_prob(a).sum()`) that the same
    function then joins with `+=`/`-=` to a sum per row (`logp -= (...).sum(axis=1)`): the
    per-row term says the value is one per example (SAC's squashed log-probability with its
    `sum(axis=-1)` lost), so the total adds the batch's terms to each.

    Also reported: a softmax written by hand over every entry (`probabilities = e /
    e.sum()`, its `sum(1, keepdim=True)` lost) whose rows are then read one entry each
    (`probabilities[range(n), y]`, a hand-written NLL): each row should be a distribution.

    Also reported: a softmax over dim d > 0, masked or scaled (`attn_ = F.softmax(scores,
    dim=1) * mask`), renormalised by its own sum over dim 0 (`attn_ / attn_.sum(0,
    keepdim=True)`): the renormalisation of a masked attention belongs on the softmax's axis
    (pointer-generator's attention); over dim 0 it mixes the batch's examples.

    Also reported: a softmax over dim 0 of a layer's scores regrouped into rows by a view with
    a leading `-1` (`x = self.encoder_attn(...)`, then `F.softmax(x.view(-1, self.input_size),
    dim=0)`: DA-RNN's input attention): the rows are the examples, so the weights are
    normalised across the batch instead of over each example's inputs. A view whose width is
    named as the batch (`scores.view(-1, batch_size)`, time-major attention) is not judged.
    The same for the scores of a batched matrix product regrouped that way (`energy =
    torch.bmm(queries, keys.transpose(1, 2))`, then `F.softmax(energy.view(-1, frames),
    dim=0)`: a listen-attend-spell attention); not for `torch.matmul`/`mm`, whose operands
    may be single matrices.

    Not reported: reductions over dim 1/-1 (unless the view names that axis the batch),
    values that are not a model's whole output (a row `logits[0]`, a stack of several
    outputs `torch.stack(outs).mean(0)`, a single example outside a loop, loops over single
    examples such as `zip(X, Y)`), results that are neither compared nor given to a loss.

    Example:
        for data, target in test_loader:
            output = model(data)
            pred = output.argmax(dim=0)
            correct += pred.eq(target).sum().item()

    Fix: reduce over the class dimension: `output.argmax(dim=1)` (`dim=-1` for sequence
    outputs), `F.log_softmax(output, dim=1)`.
    """

    id = "reduction-over-batch-dim"
    point = 3
    severity = Severity.HIGH
    title = "Class reduction taken over the batch dimension"
    items: ClassVar[tuple[str, ...]] = ("3.4",)
    triggers = Triggers(
        (*_METHOD_DIM, "sum()", "sum(0", "sum(dim=0"),  # `e / e.sum()`: a softmax by hand
        # a Gaussian KL term however its sum is written (`torch.sum(\n    1 + ..., 0)`)
        all_of=(("sum(",), ("exp",), ("log",)),
    )

    def applies(self, ctx: ModuleContext) -> bool:
        return "0" in ctx.source and any(name in ctx.source for name in _METHOD_DIM)

    def finish(self, ctx: ModuleContext) -> None:
        if "sum()" in ctx.source and "range(" in ctx.source:
            self._normalised_over_everything_then_picked_per_row(ctx)
        if "oftmax" in ctx.source and "keepdim" in ctx.source:
            self._softmax_renormalised_across_its_rows(ctx)
        if "sum(" in ctx.source and "exp" in ctx.source and "log" in ctx.source:
            self._gaussian_kl_summed_over_the_batch(ctx)
        if "sum()" in ctx.source:
            self._total_joined_with_row_sums(ctx)
        if not self.applies(ctx):
            return
        self._softmax_layers_over_the_batch(ctx)
        self._normalised_across_then_picked_along(ctx)
        self._softmax_over_an_axis_sized_by_the_batch(ctx)
        if "einsum" in ctx.source:
            self._softmax_over_an_einsum_batch_axis(ctx)
        flow = ctx.flow
        for call in flow.calls_named(_METHOD_DIM):
            reduced = _over_dim_zero(ctx, call)
            if reduced is None:
                continue
            if not self._wrong(ctx, call, reduced):
                continue
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call)}` reduces over dim 0 of `{ast.unparse(reduced)}`, the "
                "batch of model outputs: take the class dimension (dim=1 or -1)",
                data={"call": ast.unparse(call), "dim_at": _dim_at(ctx, call)},
            )

    def _total_joined_with_row_sums(self, ctx: ModuleContext) -> None:
        """`logp = dist.log_prob(a).sum()`, then `logp -= (...).sum(axis=1)`: a sum over
        every element (the batch included) joined by `+`/`-` with a sum per row (over dim 1
        or -1) in the same function. The per-row term says the value is one per example;
        the total adds the whole batch's terms to each (SAC's tanh-squashed log-probability
        with its `sum(axis=-1)` lost)."""
        for node in ctx.flow.nodes(ast.AugAssign):
            if not (isinstance(node.op, ast.Add | ast.Sub) and isinstance(node.target, ast.Name)):
                continue
            if not _row_sum(node.value):
                continue
            values = ctx.flow.reaching_or_all(node.target)
            function = ctx.enclosing_function(node)
            if len(values) != 1 or ctx.enclosing_function(values[0]) is not function:
                continue
            total = values[0]
            if not _total_sum(total):
                continue
            ctx.report(
                self,
                total,
                f"`{ast.unparse(total)}` sums over every dim, the batch included, and line "
                f"{node.lineno} then adds a sum per row (`{ast.unparse(node.value)}`): the "
                "value is one per example, so sum over the event dim (`.sum(-1)`)",
            )

    def _gaussian_kl_summed_over_the_batch(self, ctx: ModuleContext) -> None:
        """A VAE's Gaussian KL term (`1 + 2 * logstd - mean ** 2 - torch.exp(logstd) ** 2`,
        `1 + log_var - mu.pow(2) - log_var.exp()`) summed over dim 0 and then averaged: the
        per-example KL is the sum over the latent dim of a `(batch, latent)` tensor, so the
        sum runs over the examples and the mean over the latent units (VGAE's
        `.sum(1).mean()` turned `.sum(0).mean()`): the KL weight scales by batch / latent."""
        for call in ctx.flow.calls_named(("sum",)):
            summed = _summed_over_dim_zero(ctx, call)
            if summed is None or not _gaussian_kl_terms(summed) or not _then_averaged(ctx, call):
                continue
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call)}` sums the Gaussian KL term over dim 0, the examples, "
                "and the mean then runs over the latent units: sum over the latent dim "
                "(dim=1 or -1) and average over the batch",
                data={"call": ast.unparse(call), "dim_at": _dim_at(ctx, call)},
            )

    def _normalised_over_everything_then_picked_per_row(self, ctx: ModuleContext) -> None:
        """A softmax written by hand over the whole tensor (`probs = e / e.sum()`, the
        `sum(1, keepdim=True)` lost) whose rows are then read as distributions, one entry per
        row (`probs[range(n), y]`): each row should sum to one, the whole batch does."""
        for division in ctx.flow.nodes(ast.BinOp):
            if not isinstance(division.op, ast.Div) or not _sum_of_everything(division):
                continue
            names = _assigned_names(ctx, division)
            scope = ctx.enclosing_function(division)
            for name in names:
                for read in ctx.flow.reads_of(name):
                    if ctx.enclosing_function(read) is not scope or read.lineno <= division.lineno:
                        continue
                    if _picked_per_row(ctx, read):
                        ctx.report(
                            self,
                            division,
                            f"`{ast.unparse(division)}` normalises over every entry, but "
                            f"`{name}` is then read one entry per row: each row should be a "
                            "distribution; sum over the class dim (`.sum(1, keepdim=True)`)",
                        )
                        break

    def _softmax_renormalised_across_its_rows(self, ctx: ModuleContext) -> None:
        """A softmax over dim d > 0, masked or scaled (`attn_ = F.softmax(scores, dim=1) *
        mask`), then divided by its own sum over dim 0 (`attn_ / attn_.sum(0, keepdim=True)`):
        the renormalisation of a masked attention must run along the softmax's own axis; over
        dim 0 it mixes the rows, the examples of the batch (pointer-generator's attention)."""
        for division in ctx.flow.nodes(ast.BinOp):
            if not isinstance(division.op, ast.Div):
                continue
            total = _reaching_value(ctx, division.right)
            if not (
                isinstance(total, ast.Call)
                and isinstance(total.func, ast.Attribute)
                and total.func.attr == "sum"
                and _constant_dim(total, 0) == 0
                and _keeps_dim(total)
                and ast.dump(total.func.value) == ast.dump(division.left)
            ):
                continue
            softmax = _masked_softmax(ctx, division.left)
            if softmax is None:
                continue
            dim = _constant_dim(softmax, 0 if _method_form(ctx, softmax) else 1)
            if dim is None or dim <= 0:
                continue
            ctx.report(
                self,
                division,
                f"`{ast.unparse(division)}` renormalises `{ast.unparse(division.left)}`, a "
                f"softmax over dim {dim} (line {softmax.lineno}), by its sum over dim 0: each "
                f"row should sum to one along dim {dim}, as the softmax made it; dim 0 mixes "
                "the batch's examples",
                data={"dim": dim},
            )

    def _softmax_over_an_axis_sized_by_the_batch(self, ctx: ModuleContext) -> None:
        """`pi = pi.view(seq_len, bs, self.gaussians)`, then `log_softmax(pi, dim=-2)`: the
        tensor's own view names the axis the softmax normalises as the batch (world-models'
        mixture weights, normalised across the batch instead of over the Gaussians)."""
        for call, tensor, axis in _normalised_axes(ctx):
            shape = _viewed_shape(ctx, tensor) if axis != 0 else None
            if shape is None or not -len(shape) <= axis < len(shape):
                continue
            named = [i for i, size in enumerate(shape) if _batch_size_name(size)]
            if named != [axis % len(shape)]:
                continue  # no batch axis, another one, or two (a batch-by-batch matrix)
            size = ast.unparse(shape[named[0]])
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call)}` normalises over dim {axis}, the `{size}` axis of "
                f"`{ast.unparse(tensor)}`'s view: the batch; each example's values should sum "
                "to one over their own axis",
            )

    def _softmax_over_an_einsum_batch_axis(self, ctx: ModuleContext) -> None:
        """`logits = einsum(x, self.phi, "b m d, d n p -> b m n p")`, then
        `logits.softmax(dim=0)`: the contraction's own output spec names the axis the softmax
        normalises `b`, the batch (soft-MoE's dispatch weights, normalised across the batch
        instead of across the tokens)."""
        batched = [
            call
            for call in ctx.flow.calls_named(("einsum",))
            if any(_BATCH_AXIS.match(name) for name in _spec_output_axes(call) or ())
        ]
        if not batched:
            return  # no contraction whose output names a batch axis
        for call, tensor, axis in [*_normalised_axes(ctx), *_normalised_axes(ctx, _EINSUM_PICKS)]:
            axes = _einsum_output_axes(ctx, tensor)
            if axes is None or not -len(axes) <= axis < len(axes):
                continue
            batch = [i for i, name in enumerate(axes) if _BATCH_AXIS.match(name)]
            if batch != [axis % len(axes)]:
                continue
            picks = _reduction_name(ctx, call) not in _PROBABILITIES
            ctx.report(
                self,
                call,
                f"`{ast.unparse(call)}` {'picks' if picks else 'normalises'} over dim {axis}, "
                f"the `{axes[batch[0]]}` axis of the einsum that made `{ast.unparse(tensor)}` "
                f"(`... -> {' '.join(axes)}`): the batch; "
                + (
                    "each example's pick should be over its own axis"
                    if picks
                    else "each example's values should sum to one over their own axis"
                ),
            )

    def _softmax_layers_over_the_batch(self, ctx: ModuleContext) -> None:
        """`self.log_softmax = nn.LogSoftmax(dim=0)` in `__init__`, applied in a method of the
        same class to rows of examples: reported at the constructor, where the dim is set."""
        if "Softmax(" not in ctx.source:
            return
        for layer in ctx.flow.calls_named(("Softmax", "LogSoftmax")):
            if ctx.flow.qualname_of(layer) not in _SOFTMAX_LAYERS:
                continue
            dim = kwarg(layer, "dim")
            if dim is None and layer.args:
                dim = layer.args[0]
            if not (isinstance(dim, ast.Constant) and dim.value == 0 and dim.value is not False):
                continue
            attribute = _self_attribute_bound(ctx, layer)
            if attribute is None:
                continue
            applied = [
                call.args[0]
                for call in ctx.flow.calls_named((attribute,))
                if len(call.args) == 1
                and ast.unparse(call.func) == f"self.{attribute}"
                and _same_class(ctx, call, layer)
            ]
            if applied and all(_rows_of_examples(ctx, arg) for arg in applied):
                ctx.report(
                    self,
                    layer,
                    f"`{ast.unparse(layer)}` normalises over dim 0, and `self.{attribute}` is "
                    "applied to rows of examples: the batch; take the class or option "
                    "dimension (dim=1 or -1)",
                    data={
                        "call": ast.unparse(layer),
                        "dim_at": "dim" if kwarg(layer, "dim") else 0,
                    },
                )

    def _normalised_across_then_picked_along(self, ctx: ModuleContext) -> None:
        """`np.argmax(nn.Softmax(dim=0)(scores).cpu().numpy(), axis=1)`: the class picked along
        dim 1 of values a softmax normalised along dim 0. The pick says the classes lie on
        dim 1, so dim 0 holds the examples (the nodes of a graph): each column was normalised
        across them and a row's argmax no longer follows its own scores. The same for any
        softmax dim below the pick's (`F.softmax(logits, dim=1)` then `torch.argmax(logits,
        dim=2)` over (batch, tokens, labels): normalised across the tokens). Reported at the
        softmax, where the dim is set."""
        if "softmax" not in ctx.source.lower():
            return
        picks = ctx.flow.calls_named(("argmax", "max", "topk", "multinomial", "sum"))
        for pick in picks:
            summed = _cross_entropy_sum(ctx, pick)
            picked = summed or _picked_along(ctx, pick) or _picked_along_rows(ctx, pick)
            if picked is None or (summed is None and _reduction_tail(pick) == "sum"):
                continue
            value = _peeled(picked[0])
            if isinstance(value, ast.Name):  # `probs = F.softmax(x, dim=0)`, then the pick
                bound = ctx.flow.reaching_or_all(value)
                value = _peeled(bound[0]) if len(bound) == 1 else value
            found = _softmax_over(ctx, value)
            if found is None or (summed is not None and not _is_log_softmax(ctx, found[0])):
                continue
            if picked[1] < 0:  # the last dim: past dim 0 when the input has two dims or more
                rows = summed is not None  # a last-dim sum then averaged: rows of examples
                if found[1] != 0 or (
                    not rows and _least_rank(ctx, _first_arg(found[0], value)) < 2
                ):
                    continue
            elif not 0 <= found[1] < picked[1]:
                continue
            softmax, dim = found
            ctx.report(
                self,
                softmax,
                f"`{ast.unparse(softmax)}` normalises over dim {dim}, and "
                f"`{ast.unparse(pick.func)}` then picks the class along dim {picked[1]}: dim "
                f"{dim} holds {'the examples' if dim == 0 else 'positions, not classes'}, so "
                "each pick no longer follows its own scores; normalise over the class dim "
                f"({picked[1]})",
                data={"call": ast.unparse(softmax), "dim_at": _softmax_dim_at(softmax)},
            )

    @staticmethod
    def _wrong(ctx: ModuleContext, call: ast.Call, reduced: ast.expr) -> bool:
        name = _reduction_name(ctx, call)
        if name in _PROBABILITIES and _from_batch_flatten(ctx, reduced, 0):
            return True  # a classifier head's rows, normalised across the batch in forward
        if name in _PROBABILITIES and _layer_scores_regrouped(ctx, reduced):
            return True  # DA-RNN's `softmax(x.view(-1, self.input_size), dim=0)`
        if (
            name in _PROBABILITIES
            and (output_before(ctx, call, reduced) or _scores_against_fixed(ctx, reduced, 0))
            and (in_loader_loop(ctx, call) or _reaches_loss(ctx, call, 0))
        ):
            return True  # a batch of outputs normalised across its examples: no use is right
        if (
            name in _EXTREMES
            and in_loop(ctx, call)
            and is_whole_model_output(ctx, reduced)
            and _reaches_loss(ctx, call, 0)
        ):
            return True  # DQN's `q_target(s).max(0)[0]`: the best of each action over the batch
        if name in _EXTREMES and _gathered_outputs(ctx, reduced) and compared(ctx, call):
            return True  # `output = pass_data_iteratively(model, graphs)`: every batch's rows
        if (
            name in _EXTREMES
            and _classified_by_a_loss(ctx, call, reduced)
            and (compared(ctx, call) or _returned_pick(ctx, call))
        ):
            return True  # a loss reads the same scores as `(nodes, classes)`
        direct = in_loader_loop(ctx, call) and is_whole_model_output(ctx, reduced)
        if (
            not direct
            and not _parameter_given_batches(ctx, call, reduced)
            and not _scoring_helper_output(ctx, call, reduced)
        ):
            return False
        return (
            compared(ctx, call)
            or (name in _PROBABILITIES and _fed_to_loss(ctx, call))
            or (direct and scored_with_labels(ctx, call, _model_call(ctx, reduced)))
        )


_MAX_LOSS_HOPS = 2
_SOFTMAX_LAYERS = frozenset({"torch.nn.Softmax", "torch.nn.LogSoftmax"})
_SOFTMAX_FUNCTIONS = frozenset(
    {
        "torch.softmax",
        "torch.log_softmax",
        "torch.nn.functional.softmax",
        "torch.nn.functional.log_softmax",
    }
)
_PICKS = frozenset({"numpy.argmax", "torch.argmax", "torch.max"})
# calls that carry the values unchanged (a copy to the host, out of autograd)
_CARRIERS = frozenset({"cpu", "detach", "numpy", "clone", "float", "contiguous"})


def _reaching_value(ctx: ModuleContext, expr: ast.expr) -> ast.expr:
    """What a name read holds where one binding reaches it (`normalization_factor` ->
    `attn_.sum(0, keepdim=True)`); `expr` itself otherwise."""
    if isinstance(expr, ast.Name):
        reached = ctx.flow.reaching(expr)
        if reached is not None:
            return reached
    return expr


def _constant_dim(call: ast.Call, position: int) -> int | None:
    """The `dim` a reduction is given as an integer literal (`dim=1`, `-1`, or positional at
    `position`), else None."""
    dim = kwarg(call, "dim")
    if dim is None and len(call.args) > position:
        dim = call.args[position]
    if isinstance(dim, ast.UnaryOp) and isinstance(dim.op, ast.USub):
        inner = dim.operand
        if isinstance(inner, ast.Constant) and isinstance(inner.value, int):
            return -inner.value
        return None
    if (
        isinstance(dim, ast.Constant)
        and isinstance(dim.value, int)
        and not isinstance(dim.value, bool)
    ):
        return dim.value
    return None


def _keeps_dim(call: ast.Call) -> bool:
    keep = kwarg(call, "keepdim")
    return isinstance(keep, ast.Constant) and keep.value is True


def _masked_softmax(ctx: ModuleContext, value: ast.expr) -> ast.Call | None:
    """The softmax `value` holds, directly or multiplied by a mask or weight (`F.softmax(s,
    dim=1) * mask`), through the names it is bound to."""
    for _ in range(4):
        value = _reaching_value(ctx, value)
        if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Mult):
            found = [
                side for side in (value.left, value.right) if _masked_softmax(ctx, side) is not None
            ]
            return _masked_softmax(ctx, found[0]) if len(found) == 1 else None
        if isinstance(value, ast.Call):
            qual = ctx.flow.qualname_of(value) or ""
            if qual in ("torch.softmax", "torch.nn.functional.softmax"):
                return value
            return value if _method_form(ctx, value) else None
        if not isinstance(value, ast.Name):
            return None
    return None


def _method_form(ctx: ModuleContext, call: ast.Call) -> bool:
    """`scores.softmax(dim=1)`: the tensor method (its `dim` is the first argument)."""
    return (
        isinstance(call.func, ast.Attribute)
        and call.func.attr == "softmax"
        and ctx.flow.qualname_of(call) is None
    )


def _sum_of_everything(division: ast.BinOp) -> bool:
    """`e / e.sum()`: a tensor divided by its own sum over all its entries (no dim)."""
    divisor = division.right
    return (
        isinstance(divisor, ast.Call)
        and isinstance(divisor.func, ast.Attribute)
        and divisor.func.attr == "sum"
        and not divisor.args
        and not divisor.keywords
        and ast.dump(divisor.func.value) == ast.dump(division.left)
    )


def _assigned_names(ctx: ModuleContext, value: ast.expr) -> list[str]:
    parent = ctx.parents.get(value)
    if isinstance(parent, ast.Assign) and len(parent.targets) == 1:
        target = parent.targets[0]
        if isinstance(target, ast.Name):
            return [target.id]
    return []


def _picked_per_row(ctx: ModuleContext, read: ast.Name) -> bool:
    """`probs[range(n), y]`, `probs[torch.arange(n), y]`: one entry picked from each row."""
    subscript = ctx.parents.get(read)
    if not (isinstance(subscript, ast.Subscript) and subscript.value is read):
        return False
    index = subscript.slice
    if not (isinstance(index, ast.Tuple) and len(index.elts) == 2):
        return False
    rows = index.elts[0]
    return isinstance(rows, ast.Call) and (
        (isinstance(rows.func, ast.Name) and rows.func.id == "range")
        or ctx.flow.qualname_of(rows) == "torch.arange"
    )


def _summed_over_dim_zero(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """What `x.sum(0)`, `x.sum(dim=0)` or `torch.sum(x, 0)` adds up over dim 0."""
    qualname = ctx.flow.qualname_of(call)
    if qualname == "torch.sum" and call.args:
        dim = argument(call, "dim", 1)
        summed: ast.expr = call.args[0]
    elif qualname is None and isinstance(call.func, ast.Attribute) and call.func.attr == "sum":
        dim = argument(call, "dim", 0)
        summed = call.func.value
    else:
        return None
    return summed if dim is not None and constant_int(dim) == 0 else None


def _gaussian_kl_terms(expr: ast.expr) -> bool:
    """`1 + log_var - mu ** 2 - exp(log_var)`: the constant 1, a log-variance (or log-std)
    name, a squared mean and an exponential, under one sum."""
    while isinstance(expr, ast.UnaryOp):
        expr = expr.operand
    names = [n for n in walk_tree(expr) if isinstance(n, ast.Name | ast.Attribute)]
    has_one = any(isinstance(n, ast.Constant) and n.value == 1 for n in walk_tree(expr))
    has_log = any("log" in (identifier(n) or "").lower() for n in names)
    has_exp = any(
        isinstance(n, ast.Call) and (identifier(n.func) or "") == "exp" for n in walk_tree(expr)
    )
    has_square = any(
        (isinstance(n, ast.BinOp) and isinstance(n.op, ast.Pow) and ast.unparse(n.right) == "2")
        or (
            isinstance(n, ast.Call)
            and identifier(n.func) == "pow"
            and n.args
            and ast.unparse(n.args[-1]) == "2"
        )
        for n in walk_tree(expr)
    )
    return isinstance(expr, ast.BinOp) and has_one and has_log and has_exp and has_square


def _then_averaged(ctx: ModuleContext, call: ast.Call) -> bool:
    """`<call>.mean()` or `torch.mean(<call>)`: the dim-0 sum is averaged over what is left."""
    parent = ctx.parents.get(call)
    if isinstance(parent, ast.Attribute) and parent.attr == "mean":
        return isinstance(ctx.parents.get(parent), ast.Call)
    return (
        isinstance(parent, ast.Call)
        and ctx.flow.qualname_of(parent) == "torch.mean"
        and bool(parent.args)
        and parent.args[0] is call
    )


def _reduction_tail(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else identifier(func)


def _cross_entropy_sum(ctx: ModuleContext, call: ast.Call) -> tuple[ast.expr, int] | None:
    """A cross-entropy written out: `-(one_hot * log_prb).sum(dim=1)` or `torch.sum(-true_dist
    * log_probs, dim=1)`, a target distribution times log-probabilities summed over the class
    dim (label smoothing). The factor that is a name (or call) other than the target, with
    that dim: the log-probabilities are normalised over it. The last dim (`torch.sum(
    F.log_softmax(logits, 0) * clicks, -1)`) counts only when the sums are then averaged
    (`torch.mean(...)`, `.mean()`): one sum per row, so the rows are the examples (a
    multinomial likelihood of a VAE recommender)."""
    if _reduction_tail(call) != "sum":
        return None
    qualname = ctx.flow.qualname_of(call)
    if qualname == "torch.sum" and call.args:
        summed, dim = call.args[0], constant_int(argument(call, "dim", 1))
    elif qualname is None and isinstance(call.func, ast.Attribute):
        summed, dim = call.func.value, constant_int(argument(call, "dim", 0))
    else:
        return None
    while isinstance(summed, ast.UnaryOp) and isinstance(summed.op, ast.USub):
        summed = summed.operand
    if dim == -1 and _then_averaged(ctx, call):
        pass  # `torch.mean(torch.sum(log_probs * x, -1))`: one sum per row, rows averaged
    elif dim is None or dim < 1:
        return None
    if not (isinstance(summed, ast.BinOp) and isinstance(summed.op, ast.Mult)):
        return None
    for factor in (summed.left, summed.right):
        while isinstance(factor, ast.UnaryOp) and isinstance(factor.op, ast.USub):
            factor = factor.operand
        if isinstance(factor, ast.Name | ast.Call):
            found = _softmax_over(ctx, _last_value(ctx, factor))
            if found is not None:
                return factor, dim
    return None


def _last_value(ctx: ModuleContext, value: ast.expr) -> ast.expr:
    if isinstance(value, ast.Name):
        bound = ctx.flow.reaching_or_all(value)
        return _peeled(bound[0]) if len(bound) == 1 else value
    return _peeled(value)


def _is_log_softmax(ctx: ModuleContext, softmax: ast.Call) -> bool:
    qualname = ctx.flow.qualname_of(softmax) or ""
    built = ctx.flow.constructed_as(softmax.func) or ""
    return (
        "log_softmax" in qualname
        or built.endswith("LogSoftmax")
        or (isinstance(softmax.func, ast.Attribute) and softmax.func.attr == "log_softmax")
    )


def _picked_along_rows(ctx: ModuleContext, call: ast.Call) -> tuple[ast.expr, int] | None:
    """What `torch.multinomial(p, n)` samples from (each row a distribution) or
    `torch.topk(p, k, dim=-1)` picks from along the last dim, with -1 for that dim."""
    qualname = ctx.flow.qualname_of(call)
    if qualname == "torch.multinomial" and call.args:
        return call.args[0], -1
    if qualname == "torch.topk" and call.args:
        dim = argument(call, "dim", 2)
        if dim is None or constant_int(dim) == -1:
            return call.args[0], -1
    return None


def _first_arg(softmax: ast.Call, value: ast.expr) -> ast.expr | None:
    """The tensor a softmax normalises: `F.softmax(x, ...)`'s `x`, or `layer(x)`'s `x`."""
    call = value if isinstance(value, ast.Call) and value.func is softmax else softmax
    return call.args[0] if call.args else None


def _least_rank(ctx: ModuleContext, value: ast.expr | None, hops: int = 0) -> int:
    """A lower bound on the number of dims of `value`, from an index that keeps several
    (`logits[:, -1, :]`: at least two), through names and scalar arithmetic (`/
    temperature`); 0 when unknown."""
    if value is None or hops > 3:
        return 0
    if isinstance(value, ast.BinOp):
        return max(_least_rank(ctx, value.left, hops + 1), _least_rank(ctx, value.right, hops + 1))
    if isinstance(value, ast.Name):
        bound = ctx.flow.reaching_or_all(value)
        return _least_rank(ctx, bound[0], hops + 1) if len(bound) == 1 else 0
    if isinstance(value, ast.Subscript) and isinstance(value.slice, ast.Tuple):
        parts = value.slice.elts
        if any(isinstance(p, ast.Starred) or ast.unparse(p) in ("None", "...") for p in parts):
            return 0
        return sum(isinstance(p, ast.Slice) for p in parts)
    return 0


def _picked_along(ctx: ModuleContext, call: ast.Call) -> tuple[ast.expr, int] | None:
    """What `np.argmax(x, axis=d)`, `torch.argmax(x, dim=d)`, `x.argmax(d)` or `x.max(d)`
    picks from, and `d` (a constant, not negative); None otherwise."""
    qualname = ctx.flow.qualname_of(call)
    if qualname in _PICKS:
        if not call.args:
            return None
        dim = constant_int(argument(call, "axis" if qualname.startswith("numpy") else "dim", 1))
        return (call.args[0], dim) if dim is not None and dim >= 0 else None
    if qualname is not None or not isinstance(call.func, ast.Attribute):
        return None
    dim = constant_int(argument(call, "dim", 0))
    return (call.func.value, dim) if dim is not None and dim >= 0 else None


_MATMULS = frozenset({"torch.matmul", "torch.mm"})


def _scores_against_fixed(ctx: ModuleContext, value: ast.expr, hops: int) -> bool:
    """A batch of model outputs scored against a fixed set (`torch.matmul(out, protos.T) /
    t`, `out @ self.centroids.T`): each row is still one example's scores, over prototypes,
    centroids or class embeddings that no model call produced. Scored against another batch
    of outputs (CLIP's `image @ text.T`), both dims are examples and either softmax is right."""
    if hops > _MAX_FLATTEN_HOPS:
        return False
    if isinstance(value, ast.Name):
        bound = ctx.flow.definitions(value)
        return bool(bound) and all(_scores_against_fixed(ctx, b, hops + 1) for b in bound)
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Div | ast.Mult):
        # scaled by a temperature: `sims / t`, `sims * scale`
        return _scores_against_fixed(ctx, value.left, hops + 1) and not _output_derived(
            ctx, value.right
        )
    left: ast.expr | None = None
    right: ast.expr | None = None
    if isinstance(value, ast.BinOp) and isinstance(value.op, ast.MatMult):
        left, right = value.left, value.right
    elif (
        isinstance(value, ast.Call)
        and len(value.args) == 2
        and ctx.flow.qualname_of(value) in _MATMULS
    ):
        left, right = value.args
    if left is None or right is None:
        return False
    return is_whole_model_output(ctx, left) and not _output_derived(ctx, right)


def _output_derived(ctx: ModuleContext, value: ast.expr) -> bool:
    """`value` may hold a model's output, as far as the data flow can tell."""
    if isinstance(value, ast.Attribute) and value.attr in ("T", "mT"):
        value = value.value
    return is_whole_model_output(ctx, value) or ctx.flow.graph_origin(value) == "output"


def _peeled(value: ast.expr) -> ast.expr:
    """`value` without the host copies around it: `s.cpu().detach().numpy()` -> `s`."""
    while True:
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr in _CARRIERS
            and not value.args
        ):
            value = value.func.value
        elif isinstance(value, ast.Attribute) and value.attr == "data":
            value = value.value
        else:
            return value


def _softmax_over(ctx: ModuleContext, value: ast.expr) -> tuple[ast.Call, int] | None:
    """`nn.Softmax(dim=d)(x)`, `F.softmax(x, dim=d)`, `x.softmax(d)`: the call that sets the
    dim (the layer for an inline layer) and `d`, a constant; None for any other value."""
    if not isinstance(value, ast.Call):
        return None
    layer = value.func
    found: tuple[ast.Call, ast.expr | None] | None = None
    if isinstance(layer, ast.Call) and ctx.flow.qualname_of(layer) in _SOFTMAX_LAYERS:
        found = layer, argument(layer, "dim", 0)
    elif ctx.flow.qualname_of(value) in _SOFTMAX_FUNCTIONS:
        found = value, argument(value, "dim", 1)
    elif (
        ctx.flow.qualname_of(value) is None
        and isinstance(layer, ast.Attribute)
        and layer.attr in _PROBABILITIES
    ):
        found = value, argument(value, "dim", 0)
    if found is None:
        return None
    dim = constant_int(found[1])
    return (found[0], dim) if dim is not None else None


def _softmax_dim_at(call: ast.Call) -> str | int:
    """Where the softmax's dim is written: the keyword, or its position."""
    if kwarg(call, "dim") is not None:
        return "dim"
    return 1 if len(call.args) > 1 else 0


def _self_attribute_bound(ctx: ModuleContext, value: ast.Call) -> str | None:
    """`x` when `value` is assigned to `self.x` in an `__init__`."""
    bound = ctx.parents.get(value)
    fn = ctx.enclosing_function(value)
    if not (
        isinstance(bound, ast.Assign)
        and len(bound.targets) == 1
        and isinstance(bound.targets[0], ast.Attribute)
        and isinstance(bound.targets[0].value, ast.Name)
        and bound.targets[0].value.id == "self"
        and fn is not None
        and fn.name == "__init__"
    ):
        return None
    return bound.targets[0].attr


def _same_class(ctx: ModuleContext, a: ast.AST, b: ast.AST) -> bool:
    def owner(node: ast.AST) -> ast.AST | None:
        return next((n for n in ctx.ancestors(node) if isinstance(n, ast.ClassDef)), None)

    return owner(a) is not None and owner(a) is owner(b)


def _rows_of_examples(ctx: ModuleContext, value: ast.expr) -> bool:
    """A batch-flattened tensor or a layer's output over one, a view whose dim 0 is sized by
    the batch (`attention_scores.view(batch_size * output_len, query_len)`, PyTorch-NLP's
    attention: a row per example and position), or per-example scores stacked along dim 1
    (`torch.stack(scores, 1)`, `torch.cat(scores, 1)`: the candidates side by side, each
    column a vector over the batch)."""
    if _from_batch_flatten(ctx, value, 0):
        return True
    shape = _viewed_shape(ctx, value)
    if (
        shape is not None
        and len(shape) >= 2
        and _batch_sized(shape[0])
        and not any(_batch_sized(size) for size in shape[1:])
    ):
        return True  # `scores.view(batch_size * output_len, query_len)`: a row per example
    if isinstance(value, ast.Name):
        last = _last_binding(ctx, value)
        value = last if last is not None else value
    if not (
        isinstance(value, ast.Call)
        and ctx.flow.qualname_of(value) in ("torch.stack", "torch.cat")
        and value.args
    ):
        return False
    along = kwarg(value, "dim")
    if along is None and len(value.args) > 1:
        along = value.args[1]
    return isinstance(along, ast.Constant) and along.value == 1


_MAX_FLATTEN_HOPS = 3


def _batch_flatten(value: ast.expr) -> bool:
    """`x.view(x.size(0), -1)`, `x.reshape(x.shape[0], -1)`, `torch.flatten(x, 1)`,
    `x.flatten(1)`: the batch kept as dim 0, everything else flattened into dim 1."""
    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)):
        return False
    method, args = value.func.attr, value.args
    if method in ("view", "reshape") and len(args) == 2:
        first, second = args
        keeps_dim0 = (
            isinstance(first, ast.Call)
            and isinstance(first.func, ast.Attribute)
            and first.func.attr == "size"
            and len(first.args) == 1
            and isinstance(first.args[0], ast.Constant)
            and first.args[0].value == 0
        ) or (
            isinstance(first, ast.Subscript)
            and isinstance(first.value, ast.Attribute)
            and first.value.attr == "shape"
            and isinstance(first.slice, ast.Constant)
            and first.slice.value == 0
        )
        rest = isinstance(second, ast.UnaryOp) and ast.unparse(second) == "-1"
        return keeps_dim0 and rest
    if method == "flatten":
        target = args[1:] if ast.unparse(value.func.value) == "torch" else args
        start = target[0] if target else None
        return isinstance(start, ast.Constant) and start.value == 1
    return False


def _from_batch_flatten(ctx: ModuleContext, value: ast.expr, hops: int) -> bool:
    """`value` is, in its function, a batch-flattened tensor or a layer's output over one
    (`x_feat = x.view(x.size(0), -1); x = self.fc(x_feat)`): rows are examples, so dim 0 is
    the batch. Followed through plain names and single-argument layer calls."""
    if hops > _MAX_FLATTEN_HOPS:
        return False
    if _batch_flatten(value):
        return True
    if isinstance(value, ast.Call) and len(value.args) == 1 and not value.keywords:
        func = value.func
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "self"
        ):
            return _from_batch_flatten(ctx, value.args[0], hops + 1)
        return False
    if not isinstance(value, ast.Name):
        return False
    last = _last_binding(ctx, value)
    return last is not None and _from_batch_flatten(ctx, last, hops + 1)


def _layer_scores_regrouped(ctx: ModuleContext, value: ast.expr) -> bool:
    """`value` is a layer's output (`x = self.encoder_attn(...)`) regrouped by a view whose
    leading `-1` collects the batch into rows of a fixed width (`x.view(-1, self.input_size)`,
    the width not named as the batch): each row is one example's scores, so dim 0 counts the
    examples. A width named as the batch (`scores.view(-1, batch_size)`: positions by batch,
    time-major attention) is not judged. The same for the scores of a batched matrix product
    (`energy = torch.bmm(queries, keys.transpose(1, 2))`, then `energy.view(-1, frames)`):
    the rows are (example, step) pairs."""
    view = value
    if isinstance(value, ast.Name):
        values = ctx.flow.live_definitions(value)
        view = values[0] if len(values) == 1 else value
    shape = _viewed_shape(ctx, view)
    if shape is None or len(shape) != 2:
        return False
    first, second = shape
    if ast.unparse(first) != "-1" or ast.unparse(second) == "-1" or _batch_sized(second):
        return False
    if not (isinstance(view, ast.Call) and isinstance(view.func, ast.Attribute)):
        return False
    scores: ast.expr | None = view.func.value
    if isinstance(scores, ast.Name):
        scores = _last_binding(ctx, scores)
    if isinstance(scores, ast.Call) and _batched_product(ctx, scores):
        return True  # `torch.bmm(q, k.transpose(1, 2))`: dim 0 of the product is the batch
    return (
        isinstance(scores, ast.Call)
        and isinstance(scores.func, ast.Attribute)
        and isinstance(scores.func.value, ast.Name)
        and scores.func.value.id == "self"
        and ctx.enclosing_class(view) is not None
    )


_BATCHED_PRODUCTS = frozenset({"torch.bmm", "torch.baddbmm"})


def _batched_product(ctx: ModuleContext, call: ast.Call) -> bool:
    """`torch.bmm(q, k.transpose(1, 2))`, `torch.baddbmm(...)` or `q.bmm(k)`: a batched
    matrix product, whose operands and result are 3-D with the batch first (a listen-attend-
    spell decoder's attention energies). `torch.matmul`/`mm` are not: their operands may be
    single matrices."""
    if ctx.flow.qualname_of(call) in _BATCHED_PRODUCTS:
        return True
    return (
        ctx.flow.qualname_of(call) is None
        and isinstance(call.func, ast.Attribute)
        and call.func.attr == "bmm"
        and len(call.args) == 1
    )


def _statement_of(ctx: ModuleContext, node: ast.AST) -> ast.AST | None:
    for anc in [node, *ctx.ancestors(node)]:
        if isinstance(anc, ast.stmt):
            return anc
    return None


def _last_binding(ctx: ModuleContext, name: ast.Name) -> ast.expr | None:
    """The value of the last plain assignment to `name` before it is read, in the same
    block of the same function (straight-line code: `x = self.fc(x_feat)` then
    `F.softmax(x, dim=0)`); None when the binding before it is elsewhere or unknown."""
    use = _statement_of(ctx, name)
    scope = ctx.enclosing_function(name)
    before = [
        v
        for v in ctx.flow.definitions(name)
        if ctx.enclosing_function(v) is scope and getattr(v, "lineno", 0) < name.lineno
    ]
    if use is None or not before:
        return None
    value = max(before, key=lambda v: (v.lineno, v.col_offset))
    bound = ctx.parents.get(value)
    if not (
        isinstance(bound, ast.Assign)
        and len(bound.targets) == 1
        and isinstance(bound.targets[0], ast.Name)
        and ctx.parents.get(bound) is ctx.parents.get(use)
    ):
        return None
    return value


def _reaches_loss(ctx: ModuleContext, node: ast.expr, hops: int) -> bool:
    """`node`'s value is an argument of a loss call, directly or inside the expression that
    holds it, or through the names that expression is bound to (in its function)."""
    scope = ctx.enclosing_function(node)
    child: ast.AST = node
    parent = ctx.parents.get(child)
    while isinstance(parent, ast.expr):
        if (
            isinstance(parent, ast.Call)
            and child in parent.args
            and ctx.flow.is_loss_callee(parent.func)
        ):
            return True
        child, parent = parent, ctx.parents.get(parent)
    if hops >= _MAX_LOSS_HOPS or not isinstance(parent, ast.Assign):
        return False
    names = [
        name
        for target in parent.targets
        for name in (target.elts if isinstance(target, ast.Tuple | ast.List) else [target])
        if isinstance(name, ast.Name)
    ]  # `values, _ = out.max(0)`: either element
    for target in names:
        for read in ctx.flow.reads_of(target.id):
            if (
                ctx.enclosing_function(read) is scope
                and read.lineno > parent.lineno
                and _reaches_loss(ctx, read, hops + 1)
            ):
                return True
    return False


def _parameter_given_batches(ctx: ModuleContext, call: ast.Call, reduced: ast.expr) -> bool:
    """`reduced` is a parameter of the enclosing function, and every call of that function in
    this module passes a model's whole output for it from a loop over a loader."""
    fn = ctx.enclosing_function(call)
    if not isinstance(reduced, ast.Name) or not isinstance(fn, ast.FunctionDef):
        return False
    params = [a.arg for a in fn.args.args]
    if reduced.id not in params or ctx.flow.definitions(reduced):
        return False
    position = params.index(reduced.id)
    callers = [
        c
        for c in ctx.flow.calls_named((fn.name,))
        if isinstance(c.func, ast.Name) and ctx.enclosing_function(c) is not fn
    ]
    if not callers:
        return False
    for caller in callers:
        given = kwarg(caller, reduced.id)
        if given is None and len(caller.args) > position:
            given = caller.args[position]
        if given is None or not in_loader_loop(ctx, caller):
            return False
        if not is_whole_model_output(ctx, given):
            return False
    return True


def _model_call(ctx: ModuleContext, value: ast.expr) -> ast.Call | None:
    """The model call whose output `value` holds (through names, `.detach()`-style calls)."""
    for source in ctx.flow.sources(value):
        node = source
        while isinstance(node, ast.Call | ast.Attribute):
            if isinstance(node, ast.Call) and ctx.flow.is_model_call(node):
                return node
            node = node.func if isinstance(node, ast.Call) else node.value
    return None


_SCORING_HELPER = re.compile(r"^(compute_|calc_|get_)?(acc|accuracy|correct|num_correct)$")


def _scoring_helper_output(ctx: ModuleContext, call: ast.Call, reduced: ast.expr) -> bool:
    """`reduced` is the first parameter of a module-level helper named like an accuracy
    (`def accuracy(output, labels)`, the GCN/GAT scripts' helper, called from another file
    with the model's output): its predictions are one class per row."""
    fn = ctx.enclosing_function(call)
    if not isinstance(fn, ast.FunctionDef) or not isinstance(ctx.parents.get(fn), ast.Module):
        return False
    if not _SCORING_HELPER.match(fn.name) or not isinstance(reduced, ast.Name):
        return False
    params = [a.arg for a in fn.args.args]
    return bool(params) and params[0] == reduced.id and not ctx.flow.definitions(reduced)


def _gathered_outputs(ctx: ModuleContext, reduced: ast.expr) -> bool:
    """`reduced` is what a local helper returns by joining a list of a model's whole outputs
    along dim 0 (`output.append(model(batch).detach())` in a loop over minibatches, then
    `return torch.cat(output, 0)`): the dataset's outputs, one row per example."""
    if not isinstance(reduced, ast.Name):
        return False
    bound = ctx.flow.definitions(reduced)
    calls = [b for b in bound if isinstance(b, ast.Call)]
    if not bound or len(calls) != len(bound):
        return False
    for helper_call in calls:
        returned = ctx.flow.returns_of(helper_call)
        if not returned or not all(_joined_outputs(ctx, r) for r in returned):
            return False
    return True


def _joined_outputs(ctx: ModuleContext, value: ast.expr) -> bool:
    """`torch.cat(outputs, 0)` (or `dim=0`, or no dim) of a list whose every append in a loop
    is a model's whole output."""
    if not (isinstance(value, ast.Call) and ctx.flow.qualname_of(value) in _ROW_JOINS):
        return False
    if not value.args or not isinstance(value.args[0], ast.Name):
        return False
    dim = argument(value, "dim", 1)
    if dim is not None and constant_int(dim) != 0:
        return False
    name = value.args[0].id
    scope = ctx.enclosing_function(value)
    values = []
    for read in ctx.flow.reads_of(name):
        method = ctx.parents.get(read)
        if ctx.enclosing_function(read) is not scope or not isinstance(method, ast.Attribute):
            continue
        call = ctx.parents.get(method)
        if method.attr != "append" or not isinstance(call, ast.Call):
            continue
        if len(call.args) != 1 or not in_loop(ctx, call):
            return False
        values.append(call.args[0])
    return bool(values) and all(is_whole_model_output(ctx, v) for v in values)


_ROW_JOINS = frozenset({"torch.cat", "torch.concat", "torch.vstack"})


def _reduction_name(ctx: ModuleContext, call: ast.Call) -> str:
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        return qual.rsplit(".", 1)[-1]
    return call.func.attr if isinstance(call.func, ast.Attribute) else ""


_EINSUM_PICKS = frozenset({"argmax", "argmin", "max", "min", "topk"})


def _normalised_axes(
    ctx: ModuleContext, names: frozenset[str] = _PROBABILITIES
) -> Iterator[tuple[ast.Call, ast.expr, int]]:
    """(call, tensor, axis) for each softmax/log-softmax/normalisation call of the module
    (or each pick among `names`: `argmax`, `max`, `topk`) given a constant dim, by keyword or
    at its position."""
    for call in ctx.flow.calls_named(tuple(names)):
        located = _dim_position(ctx, call)
        if located is None:
            continue
        position, tensor = located
        dim = kwarg(call, "dim")
        if dim is None and len(call.args) > position:
            dim = call.args[position]
        axis = constant_int(dim)
        if axis is not None:
            yield call, tensor, axis


def _dim_position(ctx: ModuleContext, call: ast.Call) -> tuple[int, ast.expr] | None:
    """Where a reduction's positional `dim` goes, and the tensor it reduces."""
    qual = ctx.flow.qualname_of(call)
    if qual is not None:
        position = _FUNCTIONS.get(qual)
        if position is None or not call.args:
            return None
        return position, call.args[0]
    if isinstance(call.func, ast.Attribute) and call.func.attr in _METHOD_DIM:
        return _METHOD_DIM[call.func.attr], call.func.value
    return None


def _dim_at(ctx: ModuleContext, call: ast.Call) -> str | int:
    """'dim' when the call names its dimension, else its position (for the codemod)."""
    located = _dim_position(ctx, call)
    return "dim" if kwarg(call, "dim") is not None or located is None else located[0]


def _over_dim_zero(ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
    """The tensor a reduction reduces when it reduces over dim 0, else None."""
    located = _dim_position(ctx, call)
    if located is None:
        return None
    position, tensor = located
    dim = kwarg(call, "dim")
    if dim is None and len(call.args) > position:
        dim = call.args[position]
    if isinstance(dim, ast.Name):
        values = ctx.flow.definitions(dim)  # `node_dim = 0  # node axis`, then `dim=node_dim`
        if values and all(constant_int(v) == 0 for v in values):
            return tensor
    if isinstance(dim, ast.Constant) and dim.value == 0 and not isinstance(dim.value, bool):
        return tensor
    return None


def _classified_by_a_loss(ctx: ModuleContext, call: ast.Call, reduced: ast.expr) -> bool:
    """The reduced tensor is also the prediction a loss of the same function reads with the
    labels (`loss = cross_entropy_loss(scores, labels)`, a full-graph GNN step with no loader):
    a loss takes `(batch, classes)`, so its dim 0 is the examples. Not when the function also
    reads it transposed (CLIP's `cross_entropy(logits, gt) + cross_entropy(logits.t(), gt)`):
    a square matrix of pairs, whose either dim is a batch."""
    if not isinstance(reduced, ast.Name):
        return False
    scope = ctx.enclosing_function(call)
    reads = [r for r in ctx.flow.reads_of(reduced.id) if ctx.enclosing_function(r) is scope]
    if any(_transposed(ctx, read) for read in reads):
        return False
    for read in reads:
        parent = ctx.parents.get(read)
        if (
            isinstance(parent, ast.Call)
            and parent.args
            and parent.args[0] is read
            and len(parent.args) > 1
            and ctx.enclosing_function(parent) is scope
            and ctx.flow.is_loss_callee(parent.func)
        ):
            return True
    return False


def _reduction_dims(call: ast.expr) -> list[ast.expr] | None:
    """The dims of `x.sum(...)` / `x.mean(...)` (positional or `dim=`/`axis=`); None when
    `call` is no such method call."""
    if not (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr in ("sum", "mean")
        and not (isinstance(call.func.value, ast.Name) and call.func.value.id in ("torch", "np"))
    ):
        return None
    return [*call.args, *(k.value for k in call.keywords if k.arg in ("dim", "axis"))]


def _total_sum(call: ast.expr) -> bool:
    """`x.sum()`: over every element."""
    dims = _reduction_dims(call)
    return dims is not None and not dims and not getattr(call, "keywords", None)


def _row_sum(call: ast.expr) -> bool:
    """`x.sum(axis=1)`, `x.sum(-1)`: a sum per row of a batch."""
    dims = _reduction_dims(call)
    return dims is not None and len(dims) == 1 and constant_int(dims[0]) in (1, -1)


def _returned_pick(ctx: ModuleContext, call: ast.Call) -> bool:
    """The indices of the reduction are returned (`return x.max(0)[1], main_loss, aux_loss`:
    a segmentation model's `forward` handing its prediction and its loss to the caller,
    which scores the prediction against the labels)."""
    node: ast.AST = call
    parent = ctx.parents.get(call)
    name = call.func.attr if isinstance(call.func, ast.Attribute) else ""
    if name in ("max", "min") or (ctx.flow.qualname_of(call) or "") in ("torch.max", "torch.min"):
        if not isinstance(parent, ast.Subscript):
            return False
        index = parent.slice
        if not (isinstance(index, ast.Constant) and index.value == 1):
            return False
        node, parent = parent, ctx.parents.get(parent)
    if isinstance(parent, ast.Tuple) and node in parent.elts:
        parent = ctx.parents.get(parent)
    return isinstance(parent, ast.Return)


def _transposed(ctx: ModuleContext, read: ast.expr) -> bool:
    """`x.t()`, `x.T`, `x.mT`, `x.transpose(0, 1)`, `x.permute(1, 0)` of a read `x`."""
    parent = ctx.parents.get(read)
    if not isinstance(parent, ast.Attribute) or parent.value is not read:
        return False
    if parent.attr in ("T", "mT"):
        return True
    called = ctx.parents.get(parent)
    return isinstance(called, ast.Call) and called.func is parent and parent.attr in _TRANSPOSES


_TRANSPOSES = frozenset({"t", "transpose", "permute", "swapaxes"})


def _fed_to_loss(ctx: ModuleContext, call: ast.Call) -> bool:
    """The probabilities reach a loss: as its argument, directly or through a name."""
    reads = [r for name in bound_names(ctx, call) for r in ctx.flow.reads_of(name.id)]
    for value in [call, *reads]:
        parent = ctx.parents.get(value)
        if (
            isinstance(parent, ast.Call)
            and value in parent.args
            and ctx.flow.is_loss_callee(parent.func)
            and ctx.enclosing_function(parent) is ctx.enclosing_function(call)
        ):
            return True
    return False


_BATCH_SIZE = re.compile(
    r"^(bs|bsz|bsize|b_size|batch|batch_size|batchsize|n_batch|num_batch)$", re.I
)
_VIEWS = frozenset({"view", "reshape"})


def _batch_size_name(size: ast.expr) -> bool:
    """`bs`, `batch_size`, `self.batch_size`: a size named as the batch."""
    name = size.id if isinstance(size, ast.Name) else getattr(size, "attr", "")
    return bool(_BATCH_SIZE.match(name))


def _batch_sized(size: ast.expr) -> bool:
    """A size named as the batch, or a product that folds it with other axes (`batch_size *
    output_len`: the batch and the positions flattened into one axis)."""
    if isinstance(size, ast.BinOp) and isinstance(size.op, ast.Mult):
        return _batch_sized(size.left) or _batch_sized(size.right)
    return _batch_size_name(size)


def _viewed_shape(ctx: ModuleContext, tensor: ast.expr) -> list[ast.expr] | None:
    """The sizes of the view or reshape that made `tensor` (`x.view(a, b, c)`, `x.reshape((a,
    b))`, `torch.reshape(x, (a, b))`), itself or the one value its name holds here."""
    if isinstance(tensor, ast.Name):
        values = ctx.flow.live_definitions(tensor)
        if len(values) != 1:
            return None
        tensor = values[0]
    if not isinstance(tensor, ast.Call) or tensor.keywords:
        return None
    func = tensor.func
    if ctx.flow.qualname_of(tensor) == "torch.reshape" and len(tensor.args) == 2:
        sizes = [tensor.args[1]]
    elif isinstance(func, ast.Attribute) and func.attr in _VIEWS:
        sizes = list(tensor.args)
    else:
        return None
    if len(sizes) == 1 and isinstance(sizes[0], ast.Tuple | ast.List):
        sizes = list(sizes[0].elts)
    if any(isinstance(s, ast.Starred) for s in sizes):
        return None
    return sizes


# An einsum output axis named as the batch (`b` by the near-universal convention).
_BATCH_AXIS = re.compile(r"^(b|bs|bsz|batch)$", re.I)


def _einsum_output_axes(ctx: ModuleContext, tensor: ast.expr) -> list[str] | None:
    """The output axis names of the einsum that made `tensor` (itself or the one value its
    name holds here): `torch.einsum("bmd,dnp->bmnp", ...)` -> b m n p, einops'
    `einsum(x, y, "b m d, d n p -> b m n p")` -> b m n p. None when not an einsum, when the
    spec is not a literal, or when an axis is a group or an ellipsis."""
    if isinstance(tensor, ast.Name):
        values = ctx.flow.live_definitions(tensor)
        if len(values) != 1:
            return None
        tensor = values[0]
    if not (isinstance(tensor, ast.Call) and _identifier_tail(tensor.func) == "einsum"):
        return None
    return _spec_output_axes(tensor)


def _spec_output_axes(call: ast.Call) -> list[str] | None:
    """The output axes the literal spec of an einsum call names (see `_einsum_output_axes`)."""
    specs = [
        a.value
        for a in call.args
        if isinstance(a, ast.Constant) and isinstance(a.value, str) and "->" in a.value
    ]
    if len(specs) != 1:
        return None
    output = specs[0].split("->", 1)[1].strip()
    if not output or any(c in output for c in "().") or output.count("->"):
        return None
    return output.split() if " " in output else list(output)


def _identifier_tail(func: ast.expr) -> str:
    """`einsum` for `torch.einsum`, `einops.einsum` and a bare `einsum`."""
    if isinstance(func, ast.Attribute):
        return func.attr
    return func.id if isinstance(func, ast.Name) else ""
