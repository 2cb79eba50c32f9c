"""What a teacher is asked and what it may answer: the prompt, the JSON schema its decoding is
held to, and the checks every question/answer pair passes before it becomes an instruction record."""

from __future__ import annotations

import hashlib
import json
import re

from classit.config import GenerateConfig
from classit.data.instruct import record_words

# Why a pair (or a whole output) was turned down; the counts are reported, never dropped silently.
REJECTIONS = ("unparsable", "empty", "short_answer", "duplicate_question")
SENTENCE = re.compile(r"[^.!?]*\w[^.!?]*[.!?]+")  # a run of text with a word in it, ended by . ! or ?


def pairs_schema(n: int) -> dict:
    """Exactly `n` objects of a question and an answer: the teacher cannot write anything else."""
    pair = {"type": "object", "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
            "required": ["question", "answer"], "additionalProperties": False}
    return {"type": "object", "properties": {"pairs": {"type": "array", "items": pair, "minItems": n, "maxItems": n}},
            "required": ["pairs"], "additionalProperties": False}


def fill_template(gcfg: GenerateConfig, article: dict) -> str:
    return gcfg.template.format(title=article["title"], article=article["text"], n=gcfg.pairs_per_article)


def template_hash(gcfg: GenerateConfig) -> str:
    return hashlib.sha256(gcfg.template.encode()).hexdigest()[:16]


def parse_pairs(text: str, n: int) -> list[dict] | None:
    """The pairs of one output, or None if it is not an object of the schema (e.g. cut off by max_new_tokens)."""
    import jsonschema

    try:
        data = json.loads(text)
        jsonschema.validate(data, pairs_schema(n))
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return None
    return data["pairs"]


def count_sentences(text: str) -> int:
    return len(SENTENCE.findall(text))


def normalised(question: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", question.lower()).split())


def check_pair(pair: dict, gcfg: GenerateConfig, asked: set[str]) -> str | None:
    """Why a pair is turned down (one of REJECTIONS), or None to keep it. `asked`: the article's
    questions kept so far, normalised; a question already asked is a duplicate."""
    question, answer = pair["question"].strip(), pair["answer"].strip()
    if not question or not answer:
        return "empty"
    if count_sentences(answer) < gcfg.min_answer_sentences or len(answer.split()) < gcfg.min_answer_words:
        return "short_answer"
    if normalised(question) in asked:
        return "duplicate_question"
    return None


def provenance(gcfg: GenerateConfig, teacher_hash: str) -> dict:
    """What made every record of a set, stored with each one."""
    return {"teacher": gcfg.teacher, "teacher_hash": teacher_hash, "template_hash": template_hash(gcfg),
            "sampling": json.dumps(gcfg.sampling.model_dump(mode="json"), sort_keys=True), "seed": gcfg.seed}


def make_record(article: dict, index: int, pair: dict, attempt: int, source: str, made_by: dict) -> dict:
    """An instruction record (prompt, reply, source, text) with its id and provenance."""
    question, answer = pair["question"].strip(), pair["answer"].strip()
    record = {"id": f"{article['article_id']}-q{index}", "prompt": question, "reply": answer, "source": source,
              "text": f"{question}\n{answer}", "article_id": article["article_id"],
              "article_title": article["title"], "attempt": attempt, **made_by}
    record["words"] = record_words(record)
    return record
