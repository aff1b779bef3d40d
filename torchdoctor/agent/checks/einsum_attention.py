"""What an einsum equation computes, for attention written with einsum: the scores
(`"b h i d, b h j d -> b h i j"`) and the weighted values (`"b h i j, b h j d -> b h i d"`).

Shared by the manual-attention rule (which reports it) and its codemod (which fuses it), so
both read an equation the same way. torch.einsum names axes by letters (spaces ignored,
`...` one axis group, written `*` here); einops.einsum by space-separated words.
"""

from __future__ import annotations

Axes = tuple[str, ...]


def parse(equation: str, words: bool = False) -> tuple[list[Axes], Axes] | None:
    """`"bhid,bhjd->bhij"` -> ([(b, h, i, d), (b, h, j, d)], (b, h, i, j)); None when the
    equation has no explicit output."""
    inputs, arrow, output = equation.partition("->")
    if not arrow:
        return None
    terms = [_axes(term, words) for term in inputs.split(",")]
    return terms, _axes(output, words)


def _axes(term: str, words: bool) -> Axes:
    if words:
        return tuple("*" if word == "..." else word for word in term.split())
    term = term.replace(" ", "").replace("...", "*")
    return tuple(term)


def _same_batch(*terms: Axes) -> bool:
    batch = terms[0][:-2]
    return all(term[:-2] == batch for term in terms)


def scores_rank(terms: list[Axes], output: Axes) -> int | None:
    """The rank of `q @ k^T` written as einsum (both operands (..., tokens, dim), contracted
    over dim, output (..., query tokens, key tokens)); None when it is not that."""
    if len(terms) != 2 or min(len(terms[0]), len(terms[1]), len(output)) < 2:
        return None
    query, key = terms
    i, j, d = query[-2], key[-2], query[-1]
    if (
        len(query) == len(key) == len(output)
        and _same_batch(query, key, output)
        and key[-1] == d
        and d not in output
        and output[-2:] == (i, j)
        and len({i, j, d}) == 3
    ):
        return len(output)
    return None


def channels_first_scores_rank(terms: list[Axes], output: Axes) -> int | None:
    """The rank of `q^T @ k` written as einsum with q and k laid out channels first, (...,
    dim, tokens), as diffusion UNets keep them (`"bct,bcs->bts"`): the scores (..., query
    tokens, key tokens); None when it is not that."""
    if len(terms) != 2 or min(len(terms[0]), len(terms[1]), len(output)) < 2:
        return None
    query, key = terms
    d, i, j = query[-2], query[-1], key[-1]
    if (
        len(query) == len(key) == len(output)
        and _same_batch(query, key, output)
        and key[-2] == d
        and d not in output
        and output[-2:] == (i, j)
        and len({i, j, d}) == 3
    ):
        return len(output)
    return None


def contracts_dim(terms: list[Axes], output: Axes) -> bool:
    """Two operands contracted over the last axis of both: a dot product of q and k in some
    layout, whether or not it is the one the fused kernel takes."""
    return len(terms) == 2 and terms[0][-1:] == terms[1][-1:] != () and terms[0][-1] not in output


def contracts_keys(terms: list[Axes], output: Axes) -> bool:
    """Two operands, the first's last axis (the keys) summed away against the second: the
    weighted values in some layout."""
    return (
        len(terms) == 2
        and terms[0][-1:] != ()
        and terms[0][-1] in terms[1]
        and terms[0][-1] not in output
    )


def values_rank(terms: list[Axes], output: Axes) -> int | None:
    """The rank of `weights @ v` written as einsum ((..., i, j) x (..., j, d) -> (..., i, d))."""
    if len(terms) != 2 or min(len(terms[0]), len(terms[1]), len(output)) < 2:
        return None
    weights, value = terms
    i, j, d = weights[-2], weights[-1], value[-1]
    if (
        len(weights) == len(value) == len(output)
        and _same_batch(weights, value, output)
        and value[-2] == j
        and j not in output
        and output[-2:] == (i, d)
        and len({i, j, d}) == 3
    ):
        return len(output)
    return None


def values_order(terms: list[Axes], output: Axes) -> tuple[tuple[int, ...], bool] | None:
    """The weighted values with their output axes in another order (`"bhij,bhjd->bihd"`, the
    heads after the tokens; `"bts,bcs->bct"`, channels first) -> (the permutation of
    (..., i, d) the output is, whether the values are laid out (..., d, j)); None when the
    equation is not the weighted values, sums more axes away, or has `...`."""
    if len(terms) != 2 or min(len(terms[0]), len(terms[1])) < 2 or "*" in output:
        return None
    weights, value = terms
    i, j = weights[-2], weights[-1]
    if value[-2] == j:
        d, channels_first = value[-1], False
    elif value[-1] == j:
        d, channels_first = value[-2], True
    else:
        return None
    standard = (*weights[:-1], d)
    if (
        len(weights) == len(value)
        and weights[:-2] == value[:-2]
        and len({i, j, d}) == 3
        and len(set(standard)) == len(standard)
        and sorted(output) == sorted(standard)
    ):
        return tuple(standard.index(axis) for axis in output), channels_first
    return None
