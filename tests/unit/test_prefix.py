"""Packing prefix groups into tasks (the placement itself, on Spark, is checked in
tests/integration/test_prefix.py)."""

from __future__ import annotations

import pytest

from spark_vllm.driver.prefix import PrefixPlan, _key_of

pytestmark = pytest.mark.unit


def by_group(plan: PrefixPlan) -> dict[int, list[tuple[int, int, int]]]:
    found: dict[int, list[tuple[int, int, int]]] = {}
    for piece in plan.pieces:
        found.setdefault(piece.key, []).append((piece.first, piece.rows, piece.task))
    return found


def test_groups_that_fit_stay_whole_and_the_tasks_come_out_even():
    sizes = [(key, 16) for key in range(64)]  # the RAG bench: 64 documents x 16 questions
    plan = PrefixPlan.make(sizes, tasks=4)
    groups = by_group(plan)
    assert all(len(pieces) == 1 for pieces in groups.values())  # none split
    assert plan.loads == [256, 256, 256, 256]
    assert (plan.groups, plan.split) == (64, 0)
    assert plan.line() == (
        "spark-vllm prefix groups: 64 groups (0 split) in 4 tasks; the largest task has "
        "256 rows, 1.00 x the mean"
    )


def test_a_group_larger_than_a_tasks_share_is_cut_into_shares_and_small_ones_are_not():
    sizes = [(1, 100), (2, 5), (3, 7), (4, 8)]  # 120 rows, 30 per task
    plan = PrefixPlan.make(sizes, tasks=4)
    groups = by_group(plan)
    assert sorted((first, rows) for first, rows, _ in groups[1]) == [
        (0, 30), (30, 30), (60, 30), (90, 10),
    ]  # fmt: skip
    assert len({task for _, _, task in groups[1]}) == 4  # spread over the tasks
    for key in (2, 3, 4):
        assert len(groups[key]) == 1  # small groups stay whole
    assert sum(plan.loads) == 120
    assert max(plan.loads) <= 30 + 8  # a share plus at most the largest small piece
    assert plan.split == 1
    # every row of every group has exactly one piece
    for key, n in sizes:
        covered = sorted(r for first, rows, _ in groups[key] for r in range(first, first + rows))
        assert covered == list(range(n))


def test_the_same_sizes_give_the_same_plan_and_more_tasks_than_rows_is_fine():
    sizes = [(7, 3), (-2, 9), (5, 1), (11, 3)]
    # group_by_prefix sorts what Spark collects, in whatever order it came
    assert PrefixPlan.make(sorted(sizes), 3) == PrefixPlan.make(sorted(sizes[::-1]), 3)
    # more tasks than rows: a task's share is one row, and the group is dealt out
    plan = PrefixPlan.make([(1, 2)], tasks=5)
    assert sorted(plan.loads) == [0, 0, 0, 1, 1]


def test_keys_are_signed_64_bit_and_stable():
    key = _key_of(b"You are a helpful assistant.")
    assert key == _key_of(b"You are a helpful assistant.")
    assert -(2**63) <= key < 2**63
    assert key != _key_of(b"You are a helpful assistant!")
