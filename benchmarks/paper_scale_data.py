"""Write a corpus and instruction sets of the CLASS-IT study's sizes, for dry runs and scale rehearsals.

    python benchmarks/paper_scale_data.py OUT
    python sweeps/curriculum_sweep.py --config sweeps/configs/class_it_paper.yaml --dry-run \
        --set corpus.path=OUT/train_100M \
        --set instruct.datasets.switch.switchboard=OUT/train_100M/switchboard.train \
        --set instruct.datasets.wiki.path=OUT/wiki_qa.jsonl --set run.cache_dir=OUT/cache

Sizes (`../shared/PAPER.md`): the BabyLM 2025 Strict corpus, 100M words in six sources; Switchboard
dialogues that cut into 38,802 prompt->reply pairs of about 1.3M words; 97,697 teacher-style Q&A
pairs of about 18M words. The text is the embedded grammar's (drawn from a pool of sentences, so
writing 100M words takes seconds): the word counts are the study's, the language is not.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from classit.data.synthetic import Grammar  # noqa: E402

# Words per source of the BabyLM 2025 Strict corpus (its README's 100M-word table, rounded).
SOURCE_WORDS = {"childes": 29_000_000, "bnc_spoken": 8_000_000, "gutenberg": 26_000_000,
                "open_subtitles": 20_000_000, "simple_wiki": 15_000_000}
SWITCH_PAIRS, SWITCH_WORDS = 38_802, 1_300_000
QA_PAIRS, QA_WORDS = 97_697, 18_000_000


def sentences_of(rng: random.Random, words: int, pool: list[str]) -> list[str]:
    """Lines drawn from the pool until they hold `words` words."""
    lines, total = [], 0
    while total < words:
        line = rng.choice(pool)
        lines.append(line)
        total += len(line.split())
    return lines


def joined(rng: random.Random, pool: list[str], words: int) -> str:
    parts, total = [], 0
    while total < words:
        parts.append(rng.choice(pool))
        total += len(parts[-1].split())
    return " ".join(parts)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    grammar = Grammar(rng)
    pool = [grammar.sentence() for _ in range(200_000)]
    corpus = args.out / "train_100M"
    corpus.mkdir(parents=True, exist_ok=True)
    for source, words in SOURCE_WORDS.items():
        (corpus / f"{source}.train").write_text("\n".join(sentences_of(rng, words, pool)) + "\n")
    # One turn per line, speakers alternating: every pair of consecutive turns is one pair.
    turn_words = SWITCH_WORDS // SWITCH_PAIRS // 2
    turns = [f"{'AB'[i % 2]}: {joined(rng, pool, turn_words)}" for i in range(SWITCH_PAIRS + 1)]
    (corpus / "switchboard.train").write_text("\n".join(turns) + "\n")
    reply_words = QA_WORDS // QA_PAIRS - 8
    with (args.out / "wiki_qa.jsonl").open("w") as out:
        for i in range(QA_PAIRS):
            out.write(json.dumps({"prompt": f"what can you tell me about topic {i} ?",
                                  "reply": joined(rng, pool, reply_words), "source": "simple_wiki_qa"}) + "\n")
    print(f"wrote {corpus} ({len(SOURCE_WORDS) + 1} sources) and {args.out / 'wiki_qa.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
