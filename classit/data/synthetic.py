"""The embedded default: a small, seeded, English-like corpus with learnable structure.

A tiny grammar with subject-verb agreement (across attractor nouns and relative clauses)
and a small world of named characters with fixed facts. It is written in the BabyLM layout
(`<source>.train` files, Switchboard as `A:`/`B:` turns, a little noise for the cleaner to
remove), so it goes through exactly the code path a real BabyLM corpus does.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

NOUNS = [("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("fox", "foxes"), ("child", "children"),
         ("teacher", "teachers"), ("farmer", "farmers"), ("girl", "girls"), ("boy", "boys"),
         ("mouse", "mice"), ("horse", "horses"), ("baby", "babies"), ("friend", "friends")]
INTRANSITIVE = [("runs", "run"), ("sleeps", "sleep"), ("sings", "sing"), ("jumps", "jump"),
                ("laughs", "laugh"), ("plays", "play"), ("swims", "swim"), ("waits", "wait")]
GERUNDS = {"run": "running", "sleep": "sleeping", "sing": "singing", "jump": "jumping", "laugh": "laughing",
           "play": "playing", "swim": "swimming", "wait": "waiting"}
TRANSITIVE = [("sees", "see"), ("likes", "like"), ("chases", "chase"), ("helps", "help"),
              ("finds", "find"), ("follows", "follow"), ("watches", "watch")]
ADJECTIVES = ["big", "small", "happy", "little", "old", "funny", "quiet", "brave"]
PREPOSITIONS = ["near", "behind", "with", "beside"]
PLACES = ["the park", "the forest", "the river", "the house", "the garden", "the farm", "the school",
          "the beach"]
FOODS = ["apples", "bread", "fish", "carrots", "cheese", "berries", "soup", "rice"]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange"]
NAMES = ["mia", "leo", "ava", "sam", "zoe", "max", "ella", "ben", "lily", "tom", "nora", "jack"]
ANIMALS = ["dog", "cat", "bird", "fox", "horse", "mouse"]


@dataclass(frozen=True)
class Character:
    """A named character whose facts never change, so questions about it have one answer."""

    name: str
    home: str
    food: str
    colour: str
    pet: str


def make_world(seed: int) -> list[Character]:
    rng = random.Random(seed)
    return [Character(n, rng.choice(PLACES), rng.choice(FOODS), rng.choice(COLOURS), rng.choice(ANIMALS))
            for n in NAMES]


def fact_sentences(c: Character) -> list[str]:
    return [f"{c.name} lives near {c.home} .", f"{c.name} likes to eat {c.food} .",
            f"the favourite colour of {c.name} is {c.colour} .", f"{c.name} has a {c.pet} ."]


class Grammar:
    def __init__(self, rng: random.Random):
        self.rng = rng

    def noun_phrase(self, plural: bool, adjective_p: float = 0.3) -> str:
        noun = self.rng.choice(NOUNS)[plural]
        adj = f"{self.rng.choice(ADJECTIVES)} " if self.rng.random() < adjective_p else ""
        return f"the {adj}{noun}"

    def verb(self, plural: bool, transitive: bool) -> str:
        return self.rng.choice(TRANSITIVE if transitive else INTRANSITIVE)[plural]

    def sentence(self) -> str:
        """A declarative sentence whose verb agrees with its head noun, past an attractor."""
        plural = self.rng.random() < 0.5
        subject = self.noun_phrase(plural)
        kind = self.rng.random()
        if kind < 0.3:  # attractor: a prepositional phrase with a noun of the other number
            subject += f" {self.rng.choice(PREPOSITIONS)} {self.noun_phrase(not plural, 0.0)}"
        elif kind < 0.5:  # object relative clause with its own agreement
            inner_plural = self.rng.random() < 0.5
            subject += f" that {self.noun_phrase(inner_plural, 0.0)} {self.verb(inner_plural, True)}"
        if self.rng.random() < 0.5:
            return f"{subject} {self.verb(plural, True)} {self.noun_phrase(self.rng.random() < 0.5)} ."
        place = f" in {self.rng.choice(PLACES)}" if self.rng.random() < 0.4 else ""
        return f"{subject} {self.verb(plural, False)}{place} ."

    def child_directed(self) -> str:
        plural = self.rng.random() < 0.5
        options = [
            f"look at {self.noun_phrase(plural)} !",
            f"do you see {self.noun_phrase(plural)} ?",
            f"{'do' if plural else 'does'} {self.noun_phrase(plural)} {self.verb(True, False)} ?",
            f"where {'are' if plural else 'is'} {self.noun_phrase(plural)} ?",
            self.sentence(),
        ]
        return self.rng.choice(options)


def generate_corpus(folder: str | Path, sentences: int, seed: int = 0) -> dict[str, int]:
    """Write `childes.train`, `simple_wiki.train` (titled articles) and `switchboard.train`; return lines per file."""
    rng = random.Random(seed)
    grammar = Grammar(rng)
    world = make_world(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n_child, n_wiki = int(sentences * 0.4), int(sentences * 0.35)
    n_switch = sentences - n_child - n_wiki

    childes = [grammar.child_directed() for _ in range(n_child)]
    wiki = [rng.choice(fact_sentences(rng.choice(world))) if rng.random() < 0.3 else grammar.sentence()
            for _ in range(n_wiki)]
    switchboard, speaker = [], "A"
    for _ in range(n_switch):
        if rng.random() < 0.8:  # otherwise the same speaker goes on, which cleaning merges
            speaker = "B" if speaker == "A" else "A"
        line = grammar.sentence() if rng.random() < 0.7 else rng.choice(["yeah .", "uh huh .", "right ."])
        switchboard.append(f"{speaker}: {line}")
    # A little of the noise real transcripts have, for the cleaner to remove.
    for lines in (childes, wiki):
        for i in rng.sample(range(len(lines)), k=len(lines) // 50):
            lines[i] = rng.choice(["* ", "# ", "~ "]) + lines[i]
    files = {"childes": childes, "simple_wiki": titled_articles(wiki, world, seed), "switchboard": switchboard}
    for source, lines in files.items():
        (folder / f"{source}.train").write_text("\n".join(lines) + "\n")
    return {source: len(lines) for source, lines in files.items()}


def titled_articles(lines: list[str], world: list[Character], seed: int) -> list[str]:
    """The wiki lines as articles the way BabyLM's simple_wiki.train marks them, a `= = = Title = = =`
    line before each: runs of 6-14 lines, titled by the first character they name. Cleaning drops the
    title lines (one word once the = signs go), so the pretraining corpus is the same lines."""
    rng = random.Random(seed + 3)  # its own stream: the lines stay those of the seed
    names = {c.name for c in world}
    out, start = [], 0
    while start < len(lines):
        chunk = lines[start:start + rng.randint(6, 14)]
        title = next((w for line in chunk for w in line.split() if w in names), f"article {start}")
        out += [f"= = = {title} = = ="] + chunk
        start += len(chunk)
    return out


def conversation_pairs(n: int, seed: int = 0) -> list[dict]:
    """Conversational prompt/reply records: questions answered with agreeing verbs."""
    rng = random.Random(seed + 1)
    grammar = Grammar(rng)
    records = []
    for _ in range(n):
        plural = rng.random() < 0.5
        np_ = grammar.noun_phrase(plural)
        verb = rng.choice(INTRANSITIVE)
        if rng.random() < 0.5:
            prompt = f"{'do' if plural else 'does'} {np_} {verb[1]} ?"
            if rng.random() < 0.6:
                reply = f"yes , {np_} {verb[plural]} ."
            else:
                reply = f"no , {np_} {'do' if plural else 'does'} not {verb[1]} ."
        else:
            prompt = f"what {'are' if plural else 'is'} {np_} doing ?"
            reply = f"{np_} {'are' if plural else 'is'} {GERUNDS[verb[1]]} ."
        records.append({"prompt": prompt, "reply": reply, "source": "synthetic-conversation"})
    return records


def _food_answer(c: Character) -> str:
    return f"{c.name} likes to eat {c.food} . {c.food} {'are' if c.food.endswith('s') else 'is'} good ."


# Questions about a character and their answers (one of them a single sentence).
QA_TEMPLATES = [
    (lambda c: f"where does {c.name} live ?", lambda c: f"{c.name} lives near {c.home} . it is a nice place ."),
    (lambda c: f"what does {c.name} like to eat ?", _food_answer),
    (lambda c: f"what is the favourite colour of {c.name} ?",
     lambda c: f"the favourite colour of {c.name} is {c.colour} ."),
    (lambda c: f"what pet does {c.name} have ?", lambda c: f"{c.name} has a {c.pet} . the {c.pet} is a good friend ."),
]


def qa_pairs(n: int, seed: int = 0) -> list[dict]:
    """Lecture-style Q&A about the world's characters, whose facts the pretraining corpus states."""
    rng = random.Random(seed + 2)
    world = make_world(seed)
    records = []
    for _ in range(n):
        character = rng.choice(world)
        question, answer = rng.choice(QA_TEMPLATES)
        records.append({"prompt": question(character), "reply": answer(character), "source": "synthetic-qa"})
    return records


PROBE_TASKS = ("blimp", "ewok")  # the tasks `write_probe_data` makes data for


def unprobed_tasks(tasks: list[str], data_flag: str) -> str | None:
    """What is wrong with scoring `tasks` on the probe sets alone (those they do not cover), or None."""
    others = [task for task in tasks if task not in PROBE_TASKS]
    if not others:
        return None
    return (f"{', '.join(others)} need{'s' if len(others) == 1 else ''} {data_flag} (without it the probe sets "
            f"generated from the synthetic grammar are scored: {', '.join(PROBE_TASKS)})")


def _write_lines(path: Path, lines: list[str]) -> None:
    """Whole or not at all (written, then renamed): a sweep's actors may be reading the probes that
    `classit evaluate` writes again into the same folder."""
    from classit.artefacts import commit_file

    commit_file(lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"), path)


def cached_probe_data(cache_dir: str | Path) -> Path:
    """The probe sets in a cache folder (`<cache_dir>/probes`), written there: where a sweep without
    `evaluation.data_dir` and `classit evaluate` without `--data-dir` both read them."""
    return write_probe_data(Path(cache_dir) / "probes")


def write_probe_data(folder: str | Path, seed: int = 0, per_paradigm: int = 200) -> Path:
    """Zero-shot probes of what the synthetic corpus teaches, in the official evaluation layouts.

    `blimp/`: subject-verb agreement minimal pairs (plain, across an attractor, across a relative
    clause); `ewok/`: true vs false facts about the world's characters (what the Q&A data asks).
    """
    import json

    rng = random.Random(seed + 3)
    grammar = Grammar(rng)
    folder = Path(folder)

    def pair(kind: str) -> tuple[str, str]:
        plural = rng.random() < 0.5
        subject = grammar.noun_phrase(plural)
        if kind == "attractor":
            subject += f" {rng.choice(PREPOSITIONS)} {grammar.noun_phrase(not plural, 0.0)}"
        elif kind == "relative":
            inner = rng.random() < 0.5
            subject += f" that {grammar.noun_phrase(inner, 0.0)} {grammar.verb(inner, True)}"
        verb = rng.choice(INTRANSITIVE)
        return f"{subject} {verb[plural]} .", f"{subject} {verb[not plural]} ."

    (folder / "blimp").mkdir(parents=True, exist_ok=True)
    for kind in ("simple", "attractor", "relative"):
        uid = f"agreement_{kind}"
        rows = [{"sentence_good": good, "sentence_bad": bad, "field": "morphology",
                 "linguistics_term": "subject_verb_agreement", "UID": uid, "pairID": str(i)}
                for i, (good, bad) in enumerate(pair(kind) for _ in range(per_paradigm))]
        _write_lines(folder / "blimp" / f"{uid}.jsonl", [json.dumps(r) for r in rows])

    world = make_world(seed)
    wrong = {"home": PLACES, "food": FOODS, "colour": COLOURS, "pet": ANIMALS}
    rows = []
    for _ in range(per_paradigm):
        c = rng.choice(world)
        attribute = rng.choice(list(wrong))
        false = rng.choice([v for v in wrong[attribute] if v != getattr(c, attribute)])
        which = list(wrong).index(attribute)
        true_fact, false_fact = (fact_sentences(Character(**{**c.__dict__, attribute: value}))[which]
                                 for value in (getattr(c, attribute), false))
        rows.append({"Context1": f"this is {c.name} .", "Context2": f"this is {c.name} .", "Target1": true_fact,
                     "Target2": false_fact, "Domain": "world-facts", "ContextType": "name",
                     "ContextDiff": "none", "TargetDiff": attribute})
    (folder / "ewok").mkdir(parents=True, exist_ok=True)
    _write_lines(folder / "ewok" / "world-facts.jsonl", [json.dumps(r) for r in rows])
    return folder
