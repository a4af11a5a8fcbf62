"""Consistency across paraphrases: group near-duplicate requests and measure how their probabilities spread.

Requests that mean the same thing should get the same refusal probability. This
module groups requests by lexical similarity and reports, per group, the spread
of each sentinel's probability and whether the refuse decision flips.

Grouping, step by step:

1. Normalize the text: NFKC, casefold, and every character that is not a
   letter, mark or digit becomes a space.
2. Split it into words and drop English stopwords, unless nothing else is left.
3. Features: the character 4-grams of each word padded with one space on each
   side (so a word of up to two letters is one feature of its own).
4. Weigh the features by TF-IDF over the distinct normalized texts being
   grouped: `(1 + ln tf) * (ln((1 + n) / (1 + df)) + 1)`, then scale each vector
   to unit length.
5. Link two texts whose cosine similarity is at or above the threshold, and
   take the connected components (union-find). Texts that normalize to the
   same string are always in one group.

Similarity is lexical, not semantic: "make a bomb at home" and "make a bath
bomb at home" score 0.78 against each other on the project's fixture, so a
threshold below that merges them.
"""

from __future__ import annotations

import math
import statistics
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any, Literal

from monitor.sentinels import Sentinel

Decision = Literal["refuse", "allow"]

CHAR_NGRAM = 4

# Function words of English requests. They carry little of a request's meaning,
# and paraphrases often differ only in them ("how do I" and "what is the
# way to"). Contraction endings are listed because normalization splits "what's"
# into "what" and "s".
STOPWORDS = frozenset(
    """
    a an the i me my we our you your he she it its they them their his her
    to of in on at for from with by about as into and or but if so than then
    that this these those is are was were be been being am do does did doing
    have has had can could would should will shall may might must
    what whats which who whom how why when where please tell show give help
    want need just some any s t d ll re ve m
    """.split()
)

SparseVector = dict[str, float]

# Rounding slack for comparisons of unit-vector dot products, so that two
# texts with the same features still link at a similarity of 1.0.
_TOLERANCE = 1e-9


@dataclass(frozen=True)
class ScoredRequest:
    """A request to group: its exchange id, the text of its last user turn, and each sentinel's probability."""

    id: str
    text: str
    probabilities: Mapping[str, float]


@dataclass(frozen=True)
class SentinelSpread:
    """One sentinel's probabilities across the members of a group that were scored for it.

    `stdev` is the population standard deviation, because the members are the
    whole group and not a sample of it.
    """

    sentinel: str
    members: int
    min: float
    max: float
    spread: float
    stdev: float

    def as_json(self) -> dict[str, Any]:
        return {
            "sentinel": self.sentinel,
            "members": self.members,
            "min": self.min,
            "max": self.max,
            "spread": self.spread,
            "stdev": self.stdev,
        }


@dataclass(frozen=True)
class GroupMember:
    """A member of a group, without its text."""

    id: str
    probabilities: Mapping[str, float]
    decision: Decision

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "probabilities": dict(self.probabilities), "decision": self.decision}


@dataclass(frozen=True)
class RequestGroup:
    """Requests grouped as near-duplicates, with the spread of each sentinel and whether the decision flips."""

    members: tuple[GroupMember, ...]
    spreads: tuple[SentinelSpread, ...]

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def refusals(self) -> int:
        return sum(1 for member in self.members if member.decision == "refuse")

    @property
    def flips(self) -> bool:
        """Whether some members are refused and others allowed."""
        return 0 < self.refusals < self.size

    @property
    def max_spread(self) -> float:
        return max((spread.spread for spread in self.spreads), default=0.0)

    @property
    def exchange_ids(self) -> tuple[str, ...]:
        return tuple(member.id for member in self.members)

    def as_json(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "refusals": self.refusals,
            "flips": self.flips,
            "max_spread": self.max_spread,
            "spreads": {spread.sentinel: spread.as_json() for spread in self.spreads},
            "members": [member.as_json() for member in self.members],
        }


@dataclass(frozen=True)
class ConsistencyReport:
    """The groups of at least `min_group_size` near-duplicate requests, most inconsistent first."""

    similarity: float
    min_group_size: int
    requests: int
    groups: tuple[RequestGroup, ...]

    @property
    def flipping_groups(self) -> int:
        return sum(1 for group in self.groups if group.flips)

    @property
    def max_spread(self) -> float:
        return max((group.max_spread for group in self.groups), default=0.0)

    @property
    def grouped_requests(self) -> int:
        return sum(group.size for group in self.groups)

    def as_json(self) -> dict[str, Any]:
        return {
            "similarity": self.similarity,
            "min_group_size": self.min_group_size,
            "requests": self.requests,
            "grouped_requests": self.grouped_requests,
            "flipping_groups": self.flipping_groups,
            "max_spread": self.max_spread,
            "groups": [group.as_json() for group in self.groups],
        }


@dataclass(frozen=True)
class GroupingAgreement:
    """Pairwise agreement between found groups and expected labels.

    A pair of requests counts as predicted when the grouping put them together,
    and as expected when they carry the same label. Precision is
    agreeing / predicted and recall is agreeing / expected, and each is 1.0
    when its denominator is zero.
    """

    predicted_pairs: int
    expected_pairs: int
    agreeing_pairs: int

    @property
    def precision(self) -> float:
        return self.agreeing_pairs / self.predicted_pairs if self.predicted_pairs else 1.0

    @property
    def recall(self) -> float:
        return self.agreeing_pairs / self.expected_pairs if self.expected_pairs else 1.0

    def as_json(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "recall": self.recall,
            "predicted_pairs": self.predicted_pairs,
            "expected_pairs": self.expected_pairs,
            "agreeing_pairs": self.agreeing_pairs,
        }


def normalize_request(text: str) -> str:
    """Apply NFKC and casefold, and turn every character other than a letter, mark or digit into a space."""
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(char if unicodedata.category(char)[0] in "LMN" else " " for char in folded)
    return " ".join(kept.split())


def request_features(normalized: str) -> Counter[str]:
    """Count the character 4-grams of the words of a normalized text, leaving out stopwords."""
    words = normalized.split()
    content = [word for word in words if word not in STOPWORDS] or words
    features: Counter[str] = Counter()
    for word in content:
        padded = f" {word} "
        # A padded word of 3 characters (a 1-letter word) is shorter than a
        # 4-gram, so it becomes one feature of its own.
        last_start = max(1, len(padded) - CHAR_NGRAM + 1)
        features.update(padded[start : start + CHAR_NGRAM] for start in range(last_start))
    return features


def group_similar(texts: Sequence[str], *, similarity: float) -> list[list[int]]:
    """Group texts whose cosine similarity reaches `similarity`, and texts that normalize to the same string.

    Returns every text's index exactly once, in groups sorted by index and
    ordered by their first index. Texts without a near-duplicate are groups of
    one. The result does not depend on the order of `texts`, apart from the
    indexes themselves.
    """
    if not 0.0 < similarity <= 1.0:
        raise ValueError(f"similarity {similarity!r} is invalid: it must be in (0, 1]")

    keys = [_exact_key(text) for text in texts]
    distinct = sorted(set(keys))
    vectors = _tfidf_vectors([request_features(key) if not key.startswith("\x00") else Counter() for key in distinct])
    components = _UnionFind(len(distinct))
    for first, second in _similar_pairs(vectors, similarity):
        components.union(first, second)

    position = {key: index for index, key in enumerate(distinct)}
    members: dict[int, list[int]] = defaultdict(list)
    for index, key in enumerate(keys):
        members[components.find(position[key])].append(index)
    return sorted(members.values(), key=lambda group: group[0])


def policy_decision(probabilities: Mapping[str, float], sentinels: Sequence[Sentinel]) -> Decision:
    """Return `refuse` when any configured sentinel's probability is at or above its threshold.

    A probability of a sentinel that is not configured does not count.
    """
    for sentinel in sentinels:
        prob = probabilities.get(sentinel.name)
        if prob is not None and prob >= sentinel.threshold:
            return "refuse"
    return "allow"


def summarize_group(requests: Sequence[ScoredRequest], sentinels: Sequence[Sentinel]) -> RequestGroup:
    """Compute each sentinel's spread across the requests and every request's decision."""
    members = tuple(
        GroupMember(id=request.id, probabilities=dict(request.probabilities),
                    decision=policy_decision(request.probabilities, sentinels))
        for request in requests
    )  # fmt: skip
    names = sorted({name for request in requests for name in request.probabilities})
    spreads = tuple(
        _spread(name, [request.probabilities[name] for request in requests if name in request.probabilities])
        for name in names
    )
    return RequestGroup(members=members, spreads=spreads)


def inconsistency_key(group: RequestGroup) -> tuple[bool, float, int, tuple[str, ...]]:
    """Sort key that puts groups with a flipping decision first, then larger spread, then larger size, then ids."""
    return (not group.flips, -group.max_spread, -group.size, group.exchange_ids)


def rank_groups(groups: Sequence[RequestGroup]) -> list[RequestGroup]:
    """Order groups from the most inconsistent to the least, by `inconsistency_key`."""
    return sorted(groups, key=inconsistency_key)


def build_report(
    requests: Sequence[ScoredRequest],
    sentinels: Sequence[Sentinel],
    *,
    similarity: float,
    min_group_size: int = 2,
) -> ConsistencyReport:
    """Group the requests and summarize every group of at least `min_group_size` members, most inconsistent first."""
    if min_group_size < 2:
        raise ValueError(f"min_group_size {min_group_size} is invalid: a group needs at least 2 members")
    indexes = group_similar([request.text for request in requests], similarity=similarity)
    groups = [
        summarize_group([requests[index] for index in group], sentinels)
        for group in indexes
        if len(group) >= min_group_size
    ]
    return ConsistencyReport(
        similarity=similarity, min_group_size=min_group_size, requests=len(requests), groups=tuple(rank_groups(groups))
    )


def measure_agreement(labels: Sequence[str | None], groups: Sequence[Sequence[int]]) -> GroupingAgreement:
    """Compare found groups (indexes into `labels`) with expected labels, pair by pair.

    Requests whose label is None take no part in any pair.
    """
    found = {index: number for number, group in enumerate(groups) for index in group}
    labelled = [index for index, label in enumerate(labels) if label is not None]
    predicted = expected = agreeing = 0
    for first, second in combinations(labelled, 2):
        same_group = found[first] == found[second]
        same_label = labels[first] == labels[second]
        predicted += same_group
        expected += same_label
        agreeing += same_group and same_label
    return GroupingAgreement(predicted_pairs=predicted, expected_pairs=expected, agreeing_pairs=agreeing)


def _exact_key(text: str) -> str:
    normalized = normalize_request(text)
    if normalized:
        return normalized
    # Nothing but punctuation, symbols or spaces: such a text has no features,
    # so it only groups with texts that are the same after NFKC and casefold.
    # The NUL prefix cannot come out of normalize_request.
    return "\x00" + unicodedata.normalize("NFKC", text).casefold().strip()


def _tfidf_vectors(counts: Sequence[Counter[str]]) -> list[SparseVector]:
    document_frequency: Counter[str] = Counter(feature for count in counts for feature in count)
    total = len(counts)
    vectors = []
    for count in counts:
        weights = {
            feature: (1.0 + math.log(tf)) * (math.log((1 + total) / (1 + document_frequency[feature])) + 1.0)
            for feature, tf in count.items()
        }
        norm = math.sqrt(sum(weight * weight for weight in weights.values()))
        vectors.append({feature: weight / norm for feature, weight in weights.items()} if norm else {})
    return vectors


def _similar_pairs(vectors: Sequence[SparseVector], similarity: float) -> list[tuple[int, int]]:
    """Find every pair of unit vectors with a dot product at or above `similarity`, without comparing all pairs.

    Prefix filtering: each vector's features are ordered from the most common
    to the rarest, and the longest leading run whose weights have a norm below
    `similarity` is left out of the inverted index. By Cauchy-Schwarz, the
    left-out run contributes less than `similarity` to any dot product, so two
    vectors that reach it share a feature in the indexed part of each. Probing
    with all of a vector's features therefore finds every such pair, and each
    candidate is then checked exactly.
    """
    document_frequency: Counter[str] = Counter(feature for vector in vectors for feature in vector)
    postings: dict[str, list[int]] = defaultdict(list)
    pairs: list[tuple[int, int]] = []
    for index, vector in enumerate(vectors):
        candidates = {other for feature in vector for other in postings.get(feature, ())}
        pairs.extend((other, index) for other in candidates if _dot(vector, vectors[other]) >= similarity - _TOLERANCE)
        for feature in _indexed_features(vector, document_frequency, similarity):
            postings[feature].append(index)
    return pairs


def _indexed_features(vector: SparseVector, document_frequency: Counter[str], similarity: float) -> list[str]:
    ordered = sorted(vector, key=lambda feature: (-document_frequency[feature], feature))
    left_out_squared = 0.0
    for position, feature in enumerate(ordered):
        squared = vector[feature] ** 2
        if left_out_squared + squared >= similarity**2 - _TOLERANCE:
            return ordered[position:]
        left_out_squared += squared
    return []


def _dot(first: SparseVector, second: SparseVector) -> float:
    if len(first) > len(second):
        first, second = second, first
    return sum(weight * second.get(feature, 0.0) for feature, weight in first.items())


def _spread(sentinel: str, probabilities: Sequence[float]) -> SentinelSpread:
    low, high = min(probabilities), max(probabilities)
    return SentinelSpread(
        sentinel=sentinel,
        members=len(probabilities),
        min=low,
        max=high,
        spread=high - low,
        stdev=statistics.pstdev(probabilities),
    )


class _UnionFind:
    def __init__(self, size: int) -> None:
        self._parent = list(range(size))

    def find(self, item: int) -> int:
        while self._parent[item] != item:
            self._parent[item] = self._parent[self._parent[item]]
            item = self._parent[item]
        return item

    def union(self, first: int, second: int) -> None:
        root_first, root_second = self.find(first), self.find(second)
        if root_first != root_second:
            self._parent[max(root_first, root_second)] = min(root_first, root_second)
