"""The SDPA codemod against attention as people write it.

Each fixture in tests/fixtures/attention_shapes reproduces the shape of a public
implementation (named in its header; the code itself is written here, none is copied). A
fixture with `NAME.after.py` must become exactly that, the fused call computing the same values
as the hand-written one; a fixture with `NAME.reason` must be refused with that reason.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

SHAPES = Path(__file__).parents[1] / "fixtures" / "attention_shapes"
FIXABLE = sorted(p.name.removesuffix(".after.py") for p in SHAPES.glob("*.after.py"))
REFUSED = sorted(p.stem for p in SHAPES.glob("*.reason"))


def _target(source: str) -> FixTarget:
    line = next(i for i, text in enumerate(source.splitlines(), 1) if text.endswith("# target"))
    return FixTarget(rule="manual-attention", file="m.py", line=line, end_line=line)


def _codemod():  # type: ignore[no-untyped-def]
    codemod = codemod_for("manual-attention")
    assert codemod is not None
    return codemod


def test_the_collection_covers_thirty_shapes() -> None:
    assert len(FIXABLE) + len(REFUSED) >= 30
    assert not set(FIXABLE) & set(REFUSED)


@pytest.mark.parametrize("name", FIXABLE)
def test_fixable_shape_becomes_one_fused_call(name: str) -> None:
    source = (SHAPES / f"{name}.py").read_text()
    fixed = _codemod().transform(source, _target(source))
    assert fixed == (SHAPES / f"{name}.after.py").read_text()
    assert _codemod().explain(source, _target(source)) is None


@pytest.mark.parametrize("name", REFUSED)
def test_unfixable_shape_is_refused_with_its_reason(name: str) -> None:
    source = (SHAPES / f"{name}.py").read_text()
    assert _codemod().transform(source, _target(source)) is None
    reason = _codemod().explain(source, _target(source))
    assert reason is not None and (SHAPES / f"{name}.reason").read_text().strip() in reason


def _inputs(name: str) -> tuple[str, dict[str, object], tuple[object, ...]]:
    """What to build and call for each fixable fixture: (callable, init kwargs, call args)."""
    import torch

    heads = (torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4), torch.randn(2, 3, 6, 4))
    additive = torch.full((6, 6), float("-inf")).triu(diagonal=1)
    padding = torch.ones(2, 1, 1, 6, dtype=torch.long)
    padding[0, ..., 4:] = 0
    folded = (torch.randn(6, 5, 4), torch.randn(6, 7, 4), torch.randn(6, 7, 4))
    hidden = torch.zeros(6, 5, 7, dtype=torch.bool)
    hidden[:, :, 5:] = True
    keys = torch.ones(6, 6)  # the last two keys padded out, no row fully masked
    keys[:, 4:] = 0
    table: dict[str, tuple[str, dict[str, object], tuple[object, ...]]] = {
        "baddbmm_beta_zero": ("AttnProcessor", {"dim": 16, "heads": 2}, (torch.randn(2, 5, 16),)),
        "bmm_softmax_dim2": ("ScaledDotProductAttention", {"temperature": 2.0}, (*folded, hidden)),
        "einsum_attend": ("Attend", {"dropout": 0.1}, heads),
        "ddpm_attn_block_shape_assert": ("AttnBlock", {"in_ch": 8}, (torch.randn(2, 8, 3, 4),)),
        "dropout_after_assert": (
            "GroupedQueryAttention",
            {"d_in": 16, "d_out": 16, "num_heads": 4, "num_kv_groups": 2, "dropout": 0.1},
            (torch.randn(2, 6, 16),),
        ),
        "einsum_channels_first": ("ChannelsFirstQKV", {"n_heads": 2}, (torch.randn(2, 24, 5),)),
        "einsum_channels_first_viewed": ("ChunkedQKV", {"n_heads": 2}, (torch.randn(2, 24, 5),)),
        "einsum_tokens_before_heads": (
            "HeadsSelfAttention",
            {"feats": 16, "head": 4},
            (torch.randn(2, 5, 16),),
        ),
        "einsum_cross_context": (
            "CrossAttention",
            {"query_dim": 16, "context_dim": 12},
            (torch.randn(2, 5, 16), torch.randn(2, 7, 12)),
        ),
        "bert_extended_mask": (
            "SelfAttention",
            {"head_size": 4},
            (*heads, (1.0 - padding.float()) * -10000.0),
        ),
        "swin_bias_only": (
            "WindowAttention",
            {"dim": 16, "window_size": 5, "num_heads": 2},
            (torch.randn(3, 5, 16),),
        ),
        "sqrt_tensor_inline": ("scaled_dot_product", {}, heads),
        "vae_attn_block": ("AttnBlock", {"in_channels": 8}, (torch.randn(2, 8, 3, 4),)),
        "position_attention_inline_scores": (
            "PositionAttention",
            {"in_channels": 16},
            (torch.randn(2, 16, 3, 4),),
        ),
        "gpt_inline_weights": (
            "CausalSelfAttention",
            {"n_embd": 16, "n_head": 2, "block_size": 8},
            (torch.randn(2, 6, 16),),
        ),
        "padding_inline_return": (
            "short_attention",
            {},
            (*heads, padding[:, 0, 0, :].bool()),
        ),
        "local_triu_mask": ("SelfAttention", {"n_embd": 16, "n_head": 2}, (torch.randn(2, 6, 16),)),
        "local_triu_viewed": ("CausalAttention", {"head_dim": 4}, heads),
        "mask_argument_square": ("Decoder", {"dim": 16, "heads": 2}, (torch.randn(2, 6, 16),)),
        "mask_argument_cache_offset": (
            "Decoder",
            {"dim": 16, "heads": 2},
            (torch.randn(2, 6, 16),),
        ),
        "kv_cache_offset": (
            "CachedAttention",
            {"block_size": 8},
            (heads[0][:, :, 4:], heads[1], heads[2], None),
        ),
        "perceiver_rowmax": (
            "PerceiverAttention",
            {"dim": 16},
            (torch.randn(2, 5, 16), torch.randn(2, 3, 16)),
        ),
        "functional_dropout": (
            "CausalSelfAttention",
            {"n_embd": 16, "n_head": 2, "block_size": 8},
            (torch.randn(2, 6, 16),),
        ),
        "llama2c_additive_causal": (
            "Attention",
            {"dim": 16, "n_heads": 4, "n_kv_heads": 2, "max_seq_len": 8},
            (torch.randn(2, 6, 16),),
        ),
        "nystrom_additive_bias": (
            "SoftmaxAttention",
            {"head_dim": 4},
            (*heads, padding[:, 0, 0, :].float()),
        ),
        "seq2seq_permute_inline_dropout": (
            "MultiHeadAttentionLayer",
            {"hid_dim": 12, "n_heads": 3, "dropout": 0.1},
            (*heads, padding),
        ),
        "key_bound_first_causal": ("CausalAttention", {"max_len": 8}, heads),
        "llama_additive_mask": (
            "Attention",
            {"dim": 16, "n_heads": 2},
            (torch.randn(2, 6, 16), additive),
        ),
        "ngvideo_head": (
            "Head",
            {"n_embd": 16, "head_size": 8, "block_size": 8, "dropout": 0.1},
            (torch.randn(2, 6, 16),),
        ),
        "padding_mask_inf": ("attention", {}, (*heads[:2], heads[2], padding)),
        "temperature_encoder": ("EncoderAttention", {"temperature": 2.0}, heads),
        "triu_inplace": (
            "MultiHeadAttention",
            {"d_in": 16, "d_out": 16, "context_length": 8, "dropout": 0.1, "num_heads": 2},
            (torch.randn(2, 6, 16),),
        ),
        "vit_softmax_module": (
            "Attention",
            {"dim": 16, "heads": 2, "dim_head": 8},
            (torch.randn(2, 5, 16),),
        ),
        "renamed_scale_padding": ("ScaledAttention", {"d_head": 4}, (*heads, padding)),
        "method_softmax_dtype_bias": ("BaseAttention", {}, (*heads, 1 - padding)),
        "softmax_input_keyword": (
            "Head",
            {"n_embd": 16, "head_size": 8, "context_length": 8},
            (torch.randn(2, 6, 16),),
        ),
        "key_permuted_in_place": (
            "SelfAttention",
            {"dim": 16, "heads": 2},
            (torch.randn(2, 5, 16),),
        ),
        "bmm_permuted_key_left_scale": (
            "FoldedAttention",
            {"d_keys": 4, "dropout": 0.1},
            folded,
        ),
        "inline_softmax_module": ("CausalAttention", {"n_ctx": 8, "head_dim": 4}, heads),
        "levit_bias_by_mode": ("Attention", {"dim": 16}, (torch.randn(2, 9, 16),)),
        "einsum_temperature_left": ("FullAttention", {"attention_dropout": 0.1}, heads),
        "dtype_kept_for_cast": ("QKVMultiheadAttention", {"n_heads": 3}, heads),
        "sam_two_way_cross": (
            "Attention",
            {"embedding_dim": 16, "num_heads": 2},
            (torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.randn(2, 7, 16)),
        ),
        "pvt_spatial_reduction": (
            "Attention",
            {"dim": 16, "num_heads": 2, "attn_drop": 0.1, "sr_ratio": 2},
            (torch.randn(2, 16, 16), 4, 4),
        ),
        "llama_decode_cache": (
            "SelfAttention",
            {"head_dim": 4},
            (torch.randn(2, 1, 3, 4), torch.randn(2, 6, 3, 4), torch.randn(2, 6, 3, 4)),
        ),
        "bmm_inf_capitalised": ("FoldedDotProduct", {"dim": 4}, (*folded, hidden)),
        "exists_inf_padding": ("Attend", {"scale": 0.5, "dropout": 0.1}, (*heads, padding.bool())),
        "folded_heads_reshape_method": (
            "MultiheadAttention",
            {"d_token": 16, "n_heads": 2, "dropout": 0.1},
            (torch.randn(2, 5, 16), torch.randn(2, 7, 16)),
        ),
        "weights_dropped_under_new_name": (
            "Attention",
            {"dim": 16, "dropout": 0.1},
            (torch.randn(2, 5, 16),),
        ),
        "scale_module_before_attention": (
            "Attention",
            {"dim": 16, "head_dim": 4, "attn_drop": 0.1},
            (torch.randn(2, 5, 16),),
        ),
        "causal_buffer_in_other_class": ("EncoderAttention", {"d_head": 4, "mask": keys}, heads),
        "causal_ones_like_binding": (
            "MaskedSelfAttention",
            {"d_model": 16, "n_heads": 2},
            (torch.randn(2, 6, 16),),
        ),
        "causal_flag_ones_like": (
            "SelfAttention",
            {"n_heads": 2, "d_embed": 16},
            (torch.randn(2, 6, 16), True),
        ),
        "learned_head_temperature": (
            "Attention",
            {"dim": 8, "num_heads": 2},
            (torch.randn(2, 8, 3, 4),),
        ),
        "einsum_operand_list": (
            "Attention",
            {"dim": 16, "num_heads": 2, "attn_drop": 0.1},
            (torch.randn(2, 5, 16),),
        ),
    }
    return table[name]


@pytest.mark.parametrize("name", FIXABLE)
def test_the_fused_call_computes_what_the_hand_written_one_did(name: str) -> None:
    """In eval mode (dropout off) both versions give the same output on the same weights."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    what, init, args = _inputs(name)
    outputs = []
    for path in (SHAPES / f"{name}.py", SHAPES / f"{name}.after.py"):
        namespace: dict[str, object] = {"__name__": f"shape_{name}"}
        exec(compile(path.read_text(), str(path), "exec"), namespace)  # our own fixture
        built = namespace[what]
        torch.manual_seed(1)
        if isinstance(built, type):
            module = built(**init).eval()
            outputs.append(module(*args))
        else:
            outputs.append(built(*args))  # type: ignore[operator]
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        *FIXABLE,
        "einsum_cross_finfo",
        "einsum_heads_last",
        "einsum_heads_summed",
        "weights_kept_before_dropout",
        "finfo_min_bool_mask",
        "flags_padding_causal",
        "kv_cache_offset_finite_fill",
        "palm_multi_query",
        "seq2seq_tensor_scale_private",
        "softcapping",
        "renamed_scale_raw_returned",
        "method_softmax_value_bias",
        "key_permuted_in_place_cached",
        "mask_helper_in_place",
        "padding_assert_in_branch",
        "left_scale_reads_scores",
        "einsum_temperature_tokens_first",
        "dtype_kept_tokens_first",
        "exists_finfo_padding",
        "exists_helper_any",
        "guarded_dropout_custom_module",
        "rel_pos_under_flag",
        "relative_content_position",
        "nonlocal_tuple_operands_branch",
        "causal_flag_offset_diagonal",
        "causal_ones_like_mask_reused",
    ],
)
def test_the_rule_reports_each_shape_on_its_softmax(name: str) -> None:
    """Shapes whose weights are returned stay silent by the rule's design; the rest are
    reported where the codemod looks."""
    from torchdoctor.agent.checks.engine import analyse_files

    source = (SHAPES / f"{name}.py").read_text()
    found = analyse_files([(f"{name}.py", source)], workers=1).all_findings()
    lines = {f.line for f in found if f.rule == "manual-attention"}
    assert lines == {_target(source).line}


def test_the_fix_stage_records_why_a_shape_is_not_fixed(tmp_path: Path) -> None:
    from torchdoctor.agent.fixes.pipeline import propose_and_verify
    from torchdoctor.agent.models import Evidence, Finding, Severity

    source = (SHAPES / "softcapping.py").read_text()
    (tmp_path / "attend.py").write_text(source)
    line = _target(source).line
    finding = Finding(
        id="f1",
        rule="manual-attention",
        checkpoint=6,
        phase=4,
        severity=Severity.LOW,
        title="Hand-written attention",
        file="attend.py",
        line=line,
        end_line=line,
        evidence=[Evidence(source="torchdoctor-static", message="attention by hand")],
    )
    [result] = propose_and_verify(tmp_path, [finding], None)
    assert result.fix is None
    assert "no automatic fix" in result.evidence[-1].message
    assert "softcapping" in result.evidence[-1].message


def test_the_softmax_module_stays_when_something_else_uses_it() -> None:
    source = (SHAPES / "vit_softmax_module.py").read_text() + (
        "\n    def attention_map(self, dots):\n        return self.attend(dots)\n"
    )
    fixed = _codemod().transform(source, _target(source))
    assert fixed is not None and "scaled_dot_product_attention" in fixed
    assert "self.attend = nn.Softmax(dim=-1)" in fixed
    assert "self.attend = nn.Softmax" not in (SHAPES / "vit_softmax_module.after.py").read_text()


def test_a_bias_computed_from_the_scores_is_not_taken_for_a_mask() -> None:
    """`sim - sim.mean(-1, keepdim=True)` reads the scores the fused call never builds: it
    must be refused, not become an attn_mask naming a deleted variable."""
    source = (SHAPES / "perceiver_rowmax.py").read_text()
    centred = source.replace("sim.amax(dim=-1, keepdim=True).detach()", "sim.mean(-1, True)")
    assert centred != source
    assert _codemod().transform(centred, _target(centred)) is None
    assert "changed between the product and the softmax" in _codemod().explain(
        centred, _target(centred)
    )


def test_weighted_values_in_another_axis_order_are_permuted_back() -> None:
    """`einsum("bhij,bhjf->bifh", w, v)` is the fused call's (b, h, i, f) output permuted,
    not only the tokens-before-heads swap the fixture pins."""
    torch = pytest.importorskip("torch")
    source = (SHAPES / "einsum_tokens_before_heads.py").read_text()
    reordered = source.replace('"bhij, bhjf->bihf"', '"bhij, bhjf->bifh"')
    assert reordered != source
    fixed = _codemod().transform(reordered, _target(reordered))
    assert fixed is not None and ".permute(0, 2, 3, 1)" in fixed
    outputs = []
    for text in (reordered, fixed):
        namespace: dict[str, object] = {"__name__": "shape_reordered"}
        exec(compile(text, "reordered.py", "exec"), namespace)  # our own fixture, edited
        torch.manual_seed(1)
        module = namespace["HeadsSelfAttention"](feats=16, head=4).eval()  # type: ignore[operator]
        torch.manual_seed(2)
        outputs.append(module(torch.randn(2, 5, 16)))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_scores_whose_output_puts_the_keys_first_are_not_attention() -> None:
    """Near miss of einsum_channels_first: `"bct,bcs->bst"` contracts the channels of
    channels-first q and k too, but the softmax over its last axis normalises over the
    queries, which the fused kernel never does: not reported, not rewritten."""
    from torchdoctor.agent.checks.engine import analyse_files

    source = (SHAPES / "einsum_channels_first.py").read_text()
    keys_first = source.replace('"bct,bcs->bts"', '"bct,bcs->bst"').replace(
        '"bts,bcs->bct"', '"bst,bct->bcs"'
    )
    assert keys_first != source
    found = analyse_files([("keys_first.py", keys_first)], workers=1).all_findings()
    assert not [f for f in found if f.rule == "manual-attention"]
    assert _codemod().transform(keys_first, _target(keys_first)) is None


def test_a_softmax_module_over_another_dim_is_not_rewritten() -> None:
    """Near miss of inline_softmax_module: `nn.Softmax(dim=1)(w)` on the 4-D scores normalises
    over the heads, not the keys, which the fused kernel never does."""
    source = (SHAPES / "inline_softmax_module.py").read_text()
    over_heads = source.replace("nn.Softmax(dim=-1)(w)", "nn.Softmax(dim=1)(w)")
    assert over_heads != source
    assert _codemod().transform(source, _target(source)) is not None
    assert _codemod().transform(over_heads, _target(over_heads)) is None


def test_decoding_with_a_cache_keeps_the_offset_mask() -> None:
    """mask_argument_cache_offset prefilled with 4 tokens, then fed one more: the decoded
    token attends to all 5 keys in both versions (is_causal would have let it see only the
    first)."""
    torch = pytest.importorskip("torch")
    outputs = []
    for name in ("mask_argument_cache_offset.py", "mask_argument_cache_offset.after.py"):
        namespace: dict[str, object] = {"__name__": "shape_cache"}
        exec(compile((SHAPES / name).read_text(), name, "exec"), namespace)  # our own fixture
        torch.manual_seed(1)
        decoder = namespace["Decoder"](dim=16, heads=2).eval()  # type: ignore[operator]
        torch.manual_seed(2)
        prompt, token = torch.randn(2, 4, 16), torch.randn(2, 1, 16)
        decoder(prompt, use_cache=True)
        outputs.append(decoder(token, use_cache=True))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


def test_an_assert_that_also_checks_other_values_stays() -> None:
    """Near miss of ddpm_attn_block_shape_assert: the assert between the product and the
    softmax checks the input's values as well as the scores' shape, so it is no pure shape
    check the fix may drop with the scores."""
    source = (SHAPES / "ddpm_attn_block_shape_assert.py").read_text()
    mixed = source.replace(
        "assert list(w.shape) == [B, H * W, H * W]",
        "assert list(w.shape) == [B, H * W, H * W] and torch.isfinite(x).all()",
    )
    assert mixed != source
    assert _codemod().transform(mixed, _target(mixed)) is None
    assert "is used besides the softmax" in (_codemod().explain(mixed, _target(mixed)) or "")


def _sdpa_kernels(call: object, *args: object) -> set[str]:
    """The attention kernels a call ran (`aten::_scaled_dot_product_attention_math` is the
    unfused path; the fused ones are named for flash or efficient attention)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        call(*args)  # type: ignore[operator]
    return {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}


@pytest.mark.parametrize(
    ("name", "what", "init", "shape"),
    [
        ("vae_attn_block", "AttnBlock", {"in_channels": 8}, (2, 8, 16, 16)),
        ("ddpm_attn_block_shape_assert", "AttnBlock", {"in_ch": 8}, (2, 8, 16, 16)),
        ("einsum_channels_first", "ChannelsFirstQKV", {"n_heads": 2}, (2, 24, 64)),
    ],
)
def test_three_d_attention_reaches_a_fused_kernel(
    name: str, what: str, init: dict[str, object], shape: tuple[int, ...]
) -> None:
    """Heads folded into the batch or channels-first tensors: the fused call gets them as
    (batch, 1, tokens, dim) with the dim contiguous, which the fused kernels require; as they
    were, SDPA would run its unfused math path (checked on this build's CPU kernels)."""
    torch = pytest.importorskip("torch")
    plain = torch.randn(2, 1, 64, 8)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if any("math" in k for k in _sdpa_kernels(sdpa, plain, plain, plain)):
        pytest.skip("this torch build has no fused CPU attention kernel")
    namespace: dict[str, object] = {"__name__": f"shape_{name}"}
    exec(compile((SHAPES / f"{name}.after.py").read_text(), name, "exec"), namespace)  # ours
    module = namespace[what](**init).eval()  # type: ignore[operator]
    kernels = _sdpa_kernels(module, torch.randn(*shape))
    assert kernels and not any("math" in k for k in kernels)


def test_three_d_attention_with_a_mask_stays_three_d() -> None:
    """Near miss: bmm_softmax_dim2 carries a (batch, tokens, keys) mask, which a lift to 4-D
    would have to reshape too; the fused call keeps the 3-D operands there."""
    source = (SHAPES / "bmm_softmax_dim2.py").read_text()
    fixed = _codemod().transform(source, _target(source))
    assert fixed is not None and "attn_mask=" in fixed and "unsqueeze(1)" not in fixed


MAKEMORE_SHAPE = """import math
import torch
import torch.nn as nn
from torch.nn import functional as F


class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.n_head = n_head
        self.register_buffer(
            "bias",
            torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size),
        )

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)

        # causal self-attention
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:,:,:T,:T] == 0, float('-inf'))
        att = F.softmax(att, dim=-1)  # target
        y = att @ v
        return y.transpose(1, 2).contiguous().view(B, T, C)
"""


def test_the_fused_call_keeps_the_blank_line_that_set_the_block_apart() -> None:
    # makemore's attention: the diff dropped the blank line between `v = ...` and the scores
    fixed = _codemod().transform(MAKEMORE_SHAPE, _target(MAKEMORE_SHAPE))
    assert fixed is not None
    assert (
        ".transpose(1, 2)\n\n        # causal self-attention\n"
        "        y = F.scaled_dot_product_attention(" in fixed
    )
    # with a statement the fix keeps between them, the blank line does not move down to the call
    between = MAKEMORE_SHAPE.replace(
        "        y = att @ v\n", "        n = T\n        y = att @ v\n"
    )
    kept = _codemod().transform(between, _target(between))
    assert kept is not None
    assert "        n = T\n        # causal self-attention\n        y = F.scaled_dot" in kept


def test_a_transpose_of_tokens_and_heads_is_no_key_transpose() -> None:
    """`k.transpose(1, 2)` flips the key of 3-D tensors only: on q and k viewed to (batch,
    tokens, heads, dim) the rule stays silent and the codemod says why it cannot fuse."""
    from torchdoctor.agent.checks.engine import analyse_files

    source = (SHAPES / "folded_heads_4d_transpose.py").read_text()
    found = analyse_files([("m.py", source)], workers=1).all_findings()
    assert not [f for f in found if f.rule == "manual-attention"]
    folded = (SHAPES / "folded_heads_reshape_method.py").read_text()
    found = analyse_files([("m.py", folded)], workers=1).all_findings()
    assert {f.line for f in found if f.rule == "manual-attention"} == {_target(folded).line}


@pytest.mark.parametrize(
    "fill",
    ["-float('Inf')", 'float("-INF")', "-float('infinity')", "-np.Inf", "np.NINF", "-math.inf"],
)
def test_negative_infinity_is_read_in_any_spelling(fill: str) -> None:
    source = (SHAPES / "bmm_inf_capitalised.py").read_text()
    spelled = source.replace("-float('Inf')", fill)
    if "np." in fill:
        spelled = spelled.replace("import math\n", "import math\n\nimport numpy as np\n")
    fixed = _codemod().transform(spelled, _target(spelled))
    assert fixed is not None and "attn_mask=None if mask is None else ~(mask)" in fixed


def test_a_large_finite_fill_in_capitals_is_still_refused() -> None:
    source = (SHAPES / "bmm_inf_capitalised.py").read_text().replace("-float('Inf')", "-1E9")
    assert _codemod().transform(source, _target(source)) is None
    assert "fully masked row uniform" in (_codemod().explain(source, _target(source)) or "")


def test_a_per_head_temperature_folded_into_the_query_gives_the_same_values_and_gradient() -> None:
    """learned_head_temperature with a different temperature per head (the fixture starts
    them all at 1): the output and the temperature's gradient agree before and after the fix."""
    torch = pytest.importorskip("torch")
    results = []
    for name in ("learned_head_temperature.py", "learned_head_temperature.after.py"):
        namespace: dict[str, object] = {"__name__": "shape_temperature"}
        exec(compile((SHAPES / name).read_text(), name, "exec"), namespace)  # our own fixture
        torch.manual_seed(1)
        module = namespace["Attention"](dim=8, num_heads=2)  # type: ignore[operator]
        with torch.no_grad():
            module.temperature.copy_(torch.tensor([0.5, 3.0]).view(2, 1, 1))
        torch.manual_seed(2)
        out = module(torch.randn(2, 8, 3, 4))
        out.square().sum().backward()
        results.append((out.detach(), module.temperature.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [True, False])
def test_a_causal_flag_becomes_is_causal_with_either_value(causal: bool) -> None:
    """causal_flag_ones_like run both ways: `is_causal=causal_mask` masks exactly when the
    hand-written `if causal_mask:` did."""
    torch = pytest.importorskip("torch")
    outputs = []
    for name in ("causal_flag_ones_like.py", "causal_flag_ones_like.after.py"):
        namespace: dict[str, object] = {"__name__": "shape_causal_flag"}
        exec(compile((SHAPES / name).read_text(), name, "exec"), namespace)  # our own fixture
        torch.manual_seed(1)
        module = namespace["SelfAttention"](n_heads=2, d_embed=16).eval()  # type: ignore[operator]
        torch.manual_seed(2)
        outputs.append(module(torch.randn(2, 6, 16), causal_mask=causal))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
