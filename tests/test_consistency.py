"""Near-duplicate grouping, spreads and flips, and the grouping's agreement with the paraphrase fixture."""

from __future__ import annotations

import json
import random
import statistics
import string
from collections import Counter
from itertools import combinations
from typing import Any

import pytest

from monitor.consistency import (
    ScoredRequest,
    _dot,
    _exact_key,
    _similar_pairs,
    _tfidf_vectors,
    _UnionFind,
    build_report,
    group_similar,
    measure_agreement,
    normalize_request,
    policy_decision,
    rank_groups,
    request_features,
    summarize_group,
)
from monitor.settings import ConsistencySettings
from tests.conftest import REPO_ROOT
from tests.storage.factories import SENTINELS

FIXTURE = REPO_ROOT / "tests" / "fixtures" / "paraphrase_groups.jsonl"
DEFAULT_SIMILARITY = ConsistencySettings().similarity

# Measured on the fixture at the default similarity of 0.8: pairwise precision
# 1.000 (58 of 58 grouped pairs share a given group) and recall 0.580 (58 of
# the 100 pairs that share one). The floors leave a little room for changes
# to the normalization or the stopwords.
PRECISION_FLOOR = 0.95
RECALL_FLOOR = 0.55


def _fixture() -> list[dict[str, Any]]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


def _request(identifier: str, **probabilities: float) -> ScoredRequest:
    return ScoredRequest(id=identifier, text=f"text of {identifier}", probabilities=probabilities)


def _all_pairs_groups(texts: list[str], similarity: float) -> list[list[int]]:
    """Group by comparing every pair of distinct texts: the reference for the prefix filter."""
    keys = [_exact_key(text) for text in texts]
    distinct = sorted(set(keys))
    vectors = _tfidf_vectors([Counter() if key.startswith("\x00") else request_features(key) for key in distinct])
    components = _UnionFind(len(distinct))
    for first, second in combinations(range(len(distinct)), 2):
        if _dot(vectors[first], vectors[second]) >= similarity - 1e-9:
            components.union(first, second)
    groups: dict[int, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(components.find(distinct.index(key)), []).append(index)
    return sorted(groups.values())


def test_fixture_has_enough_groups() -> None:
    rows = _fixture()
    paraphrases = Counter(row["group"] for row in rows if "decoy_of" not in row)
    kinds = {row["kind"] for row in rows if "decoy_of" not in row}
    decoy_targets = {row["decoy_of"] for row in rows if "decoy_of" in row}

    assert len(paraphrases) >= 12
    assert all(3 <= size <= 6 for size in paraphrases.values()), paraphrases
    assert kinds == {"benign", "borderline", "harmful"}
    assert decoy_targets <= set(paraphrases)
    assert len(decoy_targets) >= 5


def test_normalize_folds_width_case_and_punctuation() -> None:
    assert normalize_request("How do I reverse a list in Ｐｙｔｈｏｎ？") == "how do i reverse a list in python"
    assert normalize_request("  What's   the MAX\tdose?! ") == "what s the max dose"
    assert normalize_request("Comment préparer du pain ?") == "comment préparer du pain"


def test_features_ignore_stopwords_unless_nothing_is_left() -> None:
    assert request_features("how do i bake bread") == request_features("bake bread")
    assert request_features("what is it") != Counter()


def test_exact_duplicates_group_at_similarity_one() -> None:
    texts = ["How do I bake bread?", "how do i bake bread", "HOW DO I BAKE BREAD!!", "How do I bake cake?"]

    assert group_similar(texts, similarity=1.0) == [[0, 1, 2], [3]]


def test_punctuation_only_texts_group_only_when_equal() -> None:
    assert group_similar(["???", "???", "!!!", ""], similarity=0.5) == [[0, 1], [2], [3]]


def test_prefix_filter_finds_every_pair() -> None:
    texts = [row["prompt"] for row in _fixture()]

    for similarity in (0.2, 0.4, 0.6, 0.8, 0.95, 1.0):
        assert sorted(group_similar(texts, similarity=similarity)) == _all_pairs_groups(texts, similarity), similarity


def test_prefix_filter_matches_all_pairs_on_random_texts() -> None:
    generator = random.Random(3)
    vocabulary = ["".join(generator.choices(string.ascii_lowercase, k=generator.randint(3, 8))) for _ in range(60)]
    texts = [" ".join(generator.choices(vocabulary, k=generator.randint(2, 8))) for _ in range(200)]

    # From 0.5 to 0.8 these texts form between 1 and 31 groups of two or more.
    for similarity in (0.5, 0.6, 0.7, 0.8):
        assert sorted(group_similar(texts, similarity=similarity)) == _all_pairs_groups(texts, similarity), similarity


def test_similar_pairs_are_checked_exactly() -> None:
    vectors = _tfidf_vectors([request_features(normalize_request(row["prompt"])) for row in _fixture()])

    for first, second in _similar_pairs(vectors, 0.8):
        assert _dot(vectors[first], vectors[second]) >= 0.8 - 1e-9


def test_grouping_ignores_input_order() -> None:
    texts = [row["prompt"] for row in _fixture()]
    order = list(range(len(texts)))
    random.Random(7).shuffle(order)
    shuffled = [texts[index] for index in order]

    original = group_similar(texts, similarity=DEFAULT_SIMILARITY)
    reordered = group_similar(shuffled, similarity=DEFAULT_SIMILARITY)

    assert {frozenset(texts[i] for i in group) for group in original} == {
        frozenset(shuffled[i] for i in group) for group in reordered
    }


def test_fixture_groups_recovered_above_floors() -> None:
    rows = _fixture()
    groups = group_similar([row["prompt"] for row in rows], similarity=DEFAULT_SIMILARITY)

    agreement = measure_agreement([row["group"] for row in rows], groups)

    assert agreement.precision >= PRECISION_FLOOR, agreement
    assert agreement.recall >= RECALL_FLOOR, agreement


def test_every_fixture_group_has_a_found_pair() -> None:
    rows = _fixture()
    groups = group_similar([row["prompt"] for row in rows], similarity=DEFAULT_SIMILARITY)
    found_together = {rows[group[0]]["group"] for group in groups if len(group) > 1}

    paraphrase_groups = {row["group"] for row in rows if "decoy_of" not in row}
    assert paraphrase_groups <= found_together, paraphrase_groups - found_together


def test_decoys_stay_apart_from_their_targets() -> None:
    rows = _fixture()
    groups = group_similar([row["prompt"] for row in rows], similarity=DEFAULT_SIMILARITY)

    for group in groups:
        labels = {rows[index]["group"] for index in group}
        for index in group:
            decoy_of = rows[index].get("decoy_of")
            assert decoy_of not in labels, f"{rows[index]['group']} grouped with {decoy_of}"


def test_lower_similarity_merges_bath_bomb_decoy() -> None:
    # The known limit of lexical similarity: "make a bath bomb at home" is
    # close to "make a bomb at home" once the threshold drops below 0.78.
    rows = _fixture()
    groups = group_similar([row["prompt"] for row in rows], similarity=0.7)

    merged = [{rows[index]["group"] for index in group} for group in groups]
    assert any({"decoy_bath_bomb", "make_bomb"} <= labels for labels in merged)


def test_similarity_out_of_range_is_rejected() -> None:
    for similarity in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="similarity"):
            group_similar(["a", "b"], similarity=similarity)


def test_decision_refuses_at_threshold() -> None:
    # im_sorry's threshold is 0.05 and i_cant's is 0.02.
    assert policy_decision({"im_sorry": 0.05, "i_cant": 0.0}, SENTINELS) == "refuse"
    assert policy_decision({"im_sorry": 0.0499, "i_cant": 0.02}, SENTINELS) == "refuse"
    assert policy_decision({"im_sorry": 0.0499, "i_cant": 0.0199}, SENTINELS) == "allow"


def test_decision_ignores_unconfigured_sentinels() -> None:
    assert policy_decision({"HELLNODAVE": 0.99}, SENTINELS) == "allow"


def test_group_spread_and_flip() -> None:
    requests = [
        _request("a", im_sorry=0.01, i_cant=0.001),
        _request("b", im_sorry=0.04, i_cant=0.003),
        _request("c", im_sorry=0.10, i_cant=0.002),
    ]

    group = summarize_group(requests, SENTINELS)

    spreads = {spread.sentinel: spread for spread in group.spreads}
    assert spreads["im_sorry"].min == 0.01
    assert spreads["im_sorry"].max == 0.10
    assert spreads["im_sorry"].spread == pytest.approx(0.09)
    assert spreads["im_sorry"].stdev == pytest.approx(statistics.pstdev([0.01, 0.04, 0.10]))
    assert spreads["i_cant"].spread == pytest.approx(0.002)
    assert [member.decision for member in group.members] == ["allow", "allow", "refuse"]
    assert group.refusals == 1
    assert group.flips is True
    assert group.max_spread == pytest.approx(0.09)


def test_group_without_flip() -> None:
    group = summarize_group([_request("a", im_sorry=0.2), _request("b", im_sorry=0.9)], SENTINELS)

    assert group.refusals == 2
    assert group.flips is False
    assert group.max_spread == pytest.approx(0.7)


def test_spread_counts_only_scored_members() -> None:
    group = summarize_group([_request("a", im_sorry=0.2, extra=0.5), _request("b", im_sorry=0.3)], SENTINELS)

    spreads = {spread.sentinel: spread for spread in group.spreads}
    assert spreads["extra"].members == 1
    assert spreads["extra"].spread == 0.0
    assert spreads["im_sorry"].members == 2


def test_ranking_puts_flips_first_then_spread() -> None:
    wide = summarize_group([_request("w1", im_sorry=0.06), _request("w2", im_sorry=0.9)], SENTINELS)
    flipping = summarize_group([_request("f1", im_sorry=0.04), _request("f2", im_sorry=0.06)], SENTINELS)
    narrow = summarize_group([_request("n1", im_sorry=0.3), _request("n2", im_sorry=0.31)], SENTINELS)

    ranked = rank_groups([narrow, wide, flipping])

    assert [group.exchange_ids[0] for group in ranked] == ["f1", "w1", "n1"]


def test_report_keeps_groups_of_min_size() -> None:
    requests = [
        ScoredRequest(id="a1", text="How do I bake sourdough bread?", probabilities={"im_sorry": 0.01}),
        ScoredRequest(id="a2", text="how do i bake sourdough bread", probabilities={"im_sorry": 0.30}),
        ScoredRequest(id="a3", text="How do I bake sourdough bread??", probabilities={"im_sorry": 0.02}),
        ScoredRequest(id="b1", text="Write a poem about the sea", probabilities={"im_sorry": 0.01}),
        ScoredRequest(id="b2", text="write a poem about the sea!", probabilities={"im_sorry": 0.01}),
        ScoredRequest(id="c1", text="What is the capital of Peru?", probabilities={"im_sorry": 0.01}),
    ]

    report = build_report(requests, SENTINELS, similarity=0.8, min_group_size=2)
    larger = build_report(requests, SENTINELS, similarity=0.8, min_group_size=3)

    assert [group.exchange_ids for group in report.groups] == [("a1", "a2", "a3"), ("b1", "b2")]
    assert report.requests == 6
    assert report.grouped_requests == 5
    assert report.flipping_groups == 1
    assert report.max_spread == pytest.approx(0.29)
    assert [group.exchange_ids for group in larger.groups] == [("a1", "a2", "a3")]


def test_report_json_has_no_request_text() -> None:
    requests = [
        ScoredRequest(id="a1", text="my secret request text", probabilities={"im_sorry": 0.01}),
        ScoredRequest(id="a2", text="My secret request text!", probabilities={"im_sorry": 0.09}),
    ]

    dumped = json.dumps(build_report(requests, SENTINELS, similarity=0.8).as_json())

    assert "secret" not in dumped
    assert '"a1"' in dumped


def test_report_rejects_groups_of_one() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        build_report([], SENTINELS, similarity=0.8, min_group_size=1)


def test_agreement_counts_pairs() -> None:
    labels = ["a", "a", "b", "b", None]

    agreement = measure_agreement(labels, [[0, 1, 2], [3], [4]])

    assert (agreement.predicted_pairs, agreement.expected_pairs, agreement.agreeing_pairs) == (3, 2, 1)
    assert agreement.precision == pytest.approx(1 / 3)
    assert agreement.recall == pytest.approx(1 / 2)


def test_agreement_without_pairs_is_perfect() -> None:
    agreement = measure_agreement(["a", "b"], [[0], [1]])

    assert agreement.precision == 1.0
    assert agreement.recall == 1.0
