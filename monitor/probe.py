"""`sentinel-monitor probe`: score one prompt, show the guard's findings and the model's greedy replies.

The prompt goes through the same guard as a logged exchange, so the
probabilities shown are those the daemon would store. Both replies are
generated from that guarded prompt: one with the sentinel tokens suppressed,
as an override would be served, and one without.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from monitor.exchange import ChatMessage
from monitor.guard import InjectionFinding, InputGuard, sentinel_token_ids
from monitor.settings import Settings

if TYPE_CHECKING:
    from monitor.generation import GeneratedReply
    from monitor.scoring.scorer import Scorer

DEFAULT_MAX_NEW_TOKENS = 64


@dataclass(frozen=True)
class SentinelProbe:
    """One sentinel's probability after the prompt, against its threshold."""

    name: str
    text: str
    token_ids: tuple[int, ...]
    logprob: float
    prob: float
    threshold: float

    @property
    def at_or_above(self) -> bool:
        return self.prob >= self.threshold

    def as_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "token_ids": list(self.token_ids),
            "logprob": self.logprob,
            "prob": self.prob,
            "threshold": self.threshold,
            "at_or_above_threshold": self.at_or_above,
        }


@dataclass(frozen=True)
class ProbeReport:
    """The output of `probe`: the scores, the guard's findings and both replies."""

    model_id: str
    prompt_tokens: int
    truncated: bool
    sentinels: tuple[SentinelProbe, ...]
    findings: tuple[InjectionFinding, ...]
    suppressed: GeneratedReply
    unsuppressed: GeneratedReply

    def as_json(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "prompt_tokens": self.prompt_tokens,
            "truncated": self.truncated,
            "sentinels": {probe.name: probe.as_json() for probe in self.sentinels},
            "injection_findings": [finding.as_json() for finding in self.findings],
            "replies": {"suppressed": self.suppressed.as_json(), "unsuppressed": self.unsuppressed.as_json()},
        }


def add_probe_command(commands: Any) -> None:
    """Add the `probe` command to the CLI's subparsers."""
    from monitor.cli import positive_int

    probe = commands.add_parser(
        "probe", help="score one prompt and show the model's reply with and without sentinel suppression"
    )
    probe.add_argument("prompt", metavar="PROMPT", help="the user message to score")
    probe.add_argument("--system", metavar="TEXT", help="a system message to put before the prompt")
    probe.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=DEFAULT_MAX_NEW_TOKENS,
        metavar="N",
        help=f"maximum number of tokens to generate for each reply (default {DEFAULT_MAX_NEW_TOKENS})",
    )
    probe.add_argument("--json", action="store_true", help="print JSON")
    probe.set_defaults(handler=run_probe)


def run_probe(args: argparse.Namespace, settings: Settings) -> int:
    """Load the configured model, probe the prompt and print the report."""
    from monitor.model_store import load_scorer

    messages = [ChatMessage("user", args.prompt)]
    if args.system:
        messages.insert(0, ChatMessage("system", args.system))
    scorer = load_scorer(settings.model, settings)
    report = probe_prompt(
        scorer, messages, max_new_tokens=args.max_new_tokens, max_prompt_tokens=settings.scoring.max_prompt_tokens
    )
    print(json.dumps(report.as_json(), indent=2) if args.json else format_report(report))
    return 0


def probe_prompt(
    scorer: Scorer, messages: Sequence[ChatMessage], *, max_new_tokens: int, max_prompt_tokens: int
) -> ProbeReport:
    """Guard and score a conversation, then generate a greedy reply with and without suppression."""
    from monitor.generation import generate_reply

    loaded = scorer.loaded
    sentinels = scorer.sentinels
    guard = InputGuard(sentinels, sentinel_token_ids(loaded.tokenizer, sentinels))
    checked = guard.check(messages)
    score = scorer.score_messages([checked.messages])[0]
    replies = {
        suppress: generate_reply(
            loaded,
            checked.messages,
            sentinels=sentinels,
            suppress_sentinels=suppress,
            max_new_tokens=max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
        )
        for suppress in (True, False)
    }
    probes = tuple(
        SentinelProbe(
            name=sentinel.name,
            text=sentinel.text,
            token_ids=ids,
            logprob=score.sentinels[sentinel.name].logprob,
            prob=score.sentinels[sentinel.name].prob,
            threshold=sentinel.threshold,
        )
        for sentinel, ids in zip(sentinels, scorer.sentinel_token_ids)
    )
    return ProbeReport(
        model_id=score.identity.model_id,
        prompt_tokens=score.prompt_tokens,
        truncated=score.truncated,
        sentinels=probes,
        findings=checked.findings,
        suppressed=replies[True],
        unsuppressed=replies[False],
    )


def format_report(report: ProbeReport) -> str:
    """Render a probe report as plain text for a terminal."""
    lines = [f"model: {report.model_id}", f"prompt: {report.prompt_tokens} tokens"]
    if report.truncated:
        lines[-1] += " (truncated to scoring.max_prompt_tokens)"
    lines += ["", f"{'sentinel':<16} {'prob':>10} {'threshold':>10}"]
    for probe in report.sentinels:
        verdict = "at or above threshold" if probe.at_or_above else "below threshold"
        lines.append(f"{probe.name:<16} {probe.prob:>10.4g} {probe.threshold:>10.4g}  {verdict}")
    lines += ["", *_format_findings(report.findings), ""]
    lines += _format_reply("reply with sentinels suppressed", report.suppressed)
    lines += _format_reply("reply without suppression", report.unsuppressed)
    return "\n".join(lines).rstrip()


def _format_findings(findings: Sequence[InjectionFinding]) -> list[str]:
    if not findings:
        return ["injection findings: none"]
    lines = [f"injection findings: {len(findings)} (scored and generated with each replaced by [sentinel])"]
    for finding in findings:
        lines.append(
            f"  message {finding.message_index} ({finding.role}), characters {finding.start}-{finding.end}: "
            f"{finding.sentinel} ({', '.join(finding.disguises)})"
        )
    return lines


def _format_reply(title: str, reply: GeneratedReply) -> list[str]:
    ending = "the model ended its turn" if reply.finish_reason == "stop" else "cut at --max-new-tokens"
    first = reply.first_token_sentinel
    wanted = f"; the most likely first token was {first}" if first else ""
    lines = [f"{title} ({len(reply.token_ids)} tokens, {ending}{wanted}):"]
    lines += [f"  {line}" for line in (reply.text.splitlines() or ["(empty)"])]
    if reply.raw_text != reply.text:
        lines.append("as generated, before the sentinels were stripped:")
        lines += [f"  {line}" for line in reply.raw_text.splitlines()]
    return [*lines, ""]
