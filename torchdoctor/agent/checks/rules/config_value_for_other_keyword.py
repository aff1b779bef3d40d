"""config-value-for-other-keyword: one config field given to its own keyword and to another."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import RUN_LABEL_KEYWORDS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.models import Severity

_TOKEN = re.compile(r"[a-z0-9]+")


class ConfigValueForOtherKeyword(Rule):
    """Detects a call giving one config field (`args.x`, `config.x`, `self.args.x`) to two
    keywords, where the field is named for one of them and shares no word with the other:
    `get_polynomial_decay_schedule_with_warmup(optimizer, lr_end=args.poly_lr_end,
    power=args.poly_lr_end)`, `Normalize(mean=cfg.mean, std=cfg.mean)`.

    Why it matters: a copied keyword line whose value was not renamed: the second parameter
    silently gets the first one's setting, and the option meant for it is never read (the
    decay power becomes the final learning rate, 1e-7, and the schedule drops to its end at
    once). ThilinaRajapakse/simpletransformers fixed exactly this in all its models
    (`70a47cb`: `power=args.polynomial_decay_schedule_lr_end` ->
    `args.polynomial_decay_schedule_power`).

    Not reported: fields given to related keywords (`lr=args.lr, initial_lr=args.lr`,
    `min_lr`/`max_lr`: they share a word), plain names and tensors (`attn(query=x, key=x,
    value=x)`, self-attention), `self.` attributes, a field named for neither keyword
    (`in_channels=cfg.dim, out_channels=cfg.dim`), labels of one run (`name=opt.id,
    id=opt.id` in a logger: a run named by its id), and a record rebuilt field by field from
    another (`embedding_dim=cfg.embedding_dim, local_cols=cfg.embedding_dim` among three or
    more other verbatim copies `name=cfg.name, pooling=cfg.pooling, ...`, torchrec's shard
    configs: the extra keyword is a derived value; with fewer copies it stays reported).

    Example:
        scheduler = get_polynomial_decay_schedule_with_warmup(
            optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=t_total,
            lr_end=args.polynomial_decay_schedule_lr_end,
            power=args.polynomial_decay_schedule_lr_end,
        )

    Fix: give the second keyword its own field (`power=args.polynomial_decay_schedule_power`).
    """

    id = "config-value-for-other-keyword"
    point = 1
    severity = Severity.HIGH
    title = "One config field given to another keyword"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if len(node.keywords) < 2:
            return
        by_value: dict[str, list[ast.keyword]] = {}
        for keyword in node.keywords:
            if keyword.arg is not None and _config_field(keyword.value) is not None:
                by_value.setdefault(ast.dump(keyword.value), []).append(keyword)
        for group in by_value.values():
            if len(group) < 2:
                continue
            field = _config_field(group[0].value)
            assert field is not None
            owners = [k for k in group if _named_for(field, k.arg or "")]
            if not owners:
                continue
            owner = owners[0].arg or ""
            if _copies_a_record(node, group[0].value, owner):
                continue  # a record built field by field: the second keyword is derived
            words = set(_TOKEN.findall(field.lower()))
            for other in group:
                name = other.arg or ""
                if other in owners or words & set(_TOKEN.findall(name.lower())):
                    continue
                if {name.lower(), owner.lower()} <= RUN_LABEL_KEYWORDS:
                    continue  # `WandbLogger(name=opt.id, id=opt.id)`: a run named by its id
                shown = ast.unparse(other.value)
                ctx.report(
                    self,
                    other.value,
                    f"`{name}={shown}` gives `{name}` the field named for `{owner}` (also "
                    f"passed as `{owner}=`): a copied keyword line whose value was not "
                    f"renamed, so `{name}` never gets its own setting. Pass `{name}`'s own "
                    "field.",
                )


_RECORD_COPIES = 3


def _copies_a_record(call: ast.Call, value: ast.expr, owner: str) -> bool:
    """The field is passed verbatim under its own name (`embedding_dim=cfg.embedding_dim`)
    in a call that copies at least three more fields of the same object the same way
    (`name=cfg.name, pooling=cfg.pooling, ...`): a record rebuilt from another, where a field
    also feeding another keyword (`local_cols=cfg.embedding_dim`, a shard's width) is a
    derived value, not a copied line left unrenamed."""
    if not isinstance(value, ast.Attribute) or value.attr != owner:
        return False
    source = ast.dump(value.value)
    copies = sum(
        1
        for keyword in call.keywords
        if keyword.arg is not None
        and keyword.arg != owner
        and isinstance(keyword.value, ast.Attribute)
        and keyword.value.attr == keyword.arg
        and ast.dump(keyword.value.value) == source
    )
    return copies >= _RECORD_COPIES


def _config_field(value: ast.expr) -> str | None:
    """The field name of `args.x`, `config.x`, `self.args.x` (an attribute of an attribute,
    or of a name other than `self`); None otherwise."""
    if not isinstance(value, ast.Attribute):
        return None
    base = value.value
    if isinstance(base, ast.Name) and base.id in ("self", "cls"):
        return None
    if isinstance(base, ast.Name | ast.Attribute):
        return value.attr
    return None


def _named_for(field: str, keyword: str) -> bool:
    """`field` is `keyword`, or ends with it as a word (`polynomial_decay_schedule_lr_end`
    for `lr_end`)."""
    field, keyword = field.lower(), keyword.lower()
    return field == keyword or field.endswith("_" + keyword)
