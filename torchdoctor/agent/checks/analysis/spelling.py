"""Near misses between identifiers: the slips that leave a setting or an override unused."""

from __future__ import annotations


def near_miss(written: str, meant: str) -> bool:
    """`num_samples` / `num_sample`, `lr_` / `lr`, `dropuot` / `dropout`, `entrop` /
    `entropy`: a plural, a trailing underscore, or one edit apart in a name long enough for
    that to be a slip."""
    if written == meant:
        return False
    if written.rstrip("s_") == meant.rstrip("s_"):
        return True
    return min(len(written), len(meant)) >= 6 and _one_edit(written, meant)


def _one_edit(a: str, b: str) -> bool:
    if abs(len(a) - len(b)) > 1:
        return False
    if len(a) == len(b):
        diffs = [i for i in range(len(a)) if a[i] != b[i]]
        swapped = len(diffs) == 2 and a[diffs[0]] == b[diffs[1]] and a[diffs[1]] == b[diffs[0]]
        return len(diffs) == 1 or (swapped and diffs[1] == diffs[0] + 1)
    short, long = (a, b) if len(a) < len(b) else (b, a)
    return any(long[:i] + long[i + 1 :] == short for i in range(len(long)))
