"""Which candidate layer to compare with which reference layer.

1. By module name (same name, same output shape), in any order: passes may reorder execution.
2. The rest by position: an order-preserving match of output shapes (a longest common subsequence),
   only between layers that sit between the same name-matched layers, so a renamed layer is compared
   with its counterpart and never with a far-away layer of the same shape.
3. Fusion: a candidate layer that absorbed reference layers after it (conv + BN + ReLU folded into one
   conv) is compared with the one of them it reproduces best on the first batch, not with the bare conv.
"""

from __future__ import annotations

import torch

from convopt.testing import sqnr_db

Key = tuple[str, tuple[int, ...]]  # (layer name, output shape without the batch dimension)
PASS_THROUGH = {"Identity", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout"}


def align(reference: list[Key], candidate: list[Key]) -> list[tuple[int, int, str]]:
    """(i, j, how) pairs, how = "name" or "position", sorted by reference position i."""
    by_name = {name: i for i, (name, _) in enumerate(reference)}
    pairs = []
    for j, (name, shape) in enumerate(candidate):
        i = by_name.get(name)
        if i is not None and reference[i][1] == shape:
            pairs.append((i, j, "name"))
    ref_left = [i for i in range(len(reference)) if i not in {p[0] for p in pairs}]
    cand_left = [j for j in range(len(candidate)) if j not in {p[1] for p in pairs}]
    # Region of a layer: the set of name matches before it, as a bit mask; positions pair within a region.
    ref_region = {i: sum(1 << k for k, (a, _, _) in enumerate(pairs) if a < i) for i in ref_left}
    cand_region = {j: sum(1 << k for k, (_, b, _) in enumerate(pairs) if b < j) for j in cand_left}

    def fits(i: int, j: int) -> bool:
        return reference[i][1] == candidate[j][1] and ref_region[i] == cand_region[j]

    n, m = len(ref_left), len(cand_left)
    best = [[0] * (m + 1) for _ in range(n + 1)]
    for a in range(n - 1, -1, -1):
        for b in range(m - 1, -1, -1):
            take = best[a + 1][b + 1] + 1 if fits(ref_left[a], cand_left[b]) else -1
            best[a][b] = max(take, best[a + 1][b], best[a][b + 1])
    a = b = 0
    while a < n and b < m:
        if fits(ref_left[a], cand_left[b]) and best[a][b] == best[a + 1][b + 1] + 1:
            pairs.append((ref_left[a], cand_left[b], "position"))
            a, b = a + 1, b + 1
        elif best[a + 1][b] >= best[a][b + 1]:
            a += 1
        else:
            b += 1
    return sorted(pairs)


def absorb_fused(pairs: list[tuple[int, int, str]], reference: list[torch.Tensor], candidate: list[torch.Tensor],
                 candidate_kinds: list[str]) -> list[tuple[int, int, str]]:  # fmt: skip
    """Re-pair each candidate layer j (matched to reference layer i) with the reference layer it reproduces
    best on the first batch, among i and the later same-shape reference layers that have no counterpart of
    their own (unmatched, or matched only to a pass-through like Identity) and come before the reference
    layer of the next candidate layer. A fusion may reorder: conv2 + downsample + add + ReLU can be one call
    named after the downsample conv, whose reference layers are not adjacent."""
    claimed = {i for i, j, _ in pairs if candidate_kinds[j] not in PASS_THROUGH}
    result = []
    for i, j, how in pairs:
        if candidate_kinds[j] in PASS_THROUGH:
            result.append((i, j, how))
            continue
        later = [a for a, b, _ in pairs if b > j and a > i and candidate_kinds[b] not in PASS_THROUGH]
        end = min(later, default=len(reference))
        run = [i] + [k for k in range(i + 1, end) if k not in claimed and reference[k].shape == reference[i].shape]
        if len(run) == 1:
            result.append((i, j, how))
            continue
        scores = [sqnr_db(reference[r].double(), candidate[j].double()) for r in run]
        chosen = run[max(range(len(run)), key=lambda index: (scores[index], -index))]
        result.append((chosen, j, "fused") if chosen != i else (i, j, how))
    return sorted(result)


__all__ = ["PASS_THROUGH", "absorb_fused", "align"]
