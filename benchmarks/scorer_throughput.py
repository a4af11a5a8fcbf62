#!/usr/bin/env python3
"""Scorer throughput: prompts and tokens per second for several batch budgets and dtypes.

Prints one line per configuration and the speed-up over batch size 1. Prompts
are generated here (no dataset needed): chat requests of 5 to 120 words. The
model is the pulled default unless --model points at another directory.

    .venv/bin/python benchmarks/scorer_throughput.py [--prompts 256] [--dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import platform
import random
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from monitor.exchange import ChatMessage
from monitor.model_store import default_model_dir, resolve_adapter
from monitor.scoring.loading import load_model
from monitor.scoring.scorer import Scorer
from monitor.settings import ScoringSettings, load_settings

WORDS = "bread oven river history lock door garden kettle process violin engine poem winter ticket".split()


def prompts(count: int, seed: int = 1) -> list[list[ChatMessage]]:
    rng = random.Random(seed)
    return [
        [ChatMessage("user", " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 120))) + "?")]
        for _ in range(count)
    ]


def measure(scorer: Scorer, conversations: list[list[ChatMessage]]) -> tuple[float, int]:
    encoded = [scorer.encode(c) for c in conversations]
    tokens = sum(len(e.ids) for e in encoded)
    scorer.score_encoded(encoded[:4])  # warm-up
    started = time.perf_counter()
    scorer.score_encoded(encoded)
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="model directory (default: the pulled default)")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--budgets", default="1x4096,16x8192,64x8192,64x16384", help="rows x tokens per forward pass")
    args = parser.parse_args()

    settings = load_settings()
    path = args.model or default_model_dir(Path(settings.model.cache_dir))
    # The bundled sentinel adapter goes with the default model, as in the daemon; --model loads a model as it is.
    adapter = None if args.model else resolve_adapter(settings.model)
    conversations = prompts(args.prompts)
    print(f"# {datetime.now(timezone.utc):%Y-%m-%d} {platform.processor() or platform.machine()} "
          f"cpus={torch.get_num_threads()} torch={torch.__version__} cuda={torch.cuda.is_available()} model={path.name} "
          f"adapter={adapter.name if adapter else None}")
    for dtype in args.dtypes.split(","):
        loaded = load_model(path, device=settings.model.device, dtype=dtype, adapter=adapter)
        baseline = None
        for budget in args.budgets.split(","):
            rows, tokens_per_pass = (int(part) for part in budget.split("x"))
            scoring = ScoringSettings(
                sentinels=settings.scoring.sentinels,
                max_prompt_tokens=min(settings.scoring.max_prompt_tokens, tokens_per_pass),
                batch_max_rows=rows,
                batch_max_tokens=tokens_per_pass,
            )
            elapsed, tokens = measure(Scorer(loaded, settings.scoring.sentinels, scoring), conversations)
            rate = len(conversations) / elapsed
            baseline = baseline or rate
            print(
                f"dtype={dtype:<9} rows<={rows:<3} tokens<={tokens_per_pass:<6} prompts={len(conversations)} "
                f"prompt_tokens={tokens} seconds={elapsed:.2f} prompts_per_s={rate:.1f} "
                f"tokens_per_s={tokens / elapsed:.0f} speedup_vs_first={rate / baseline:.2f}"
            )


if __name__ == "__main__":
    main()
