"""Teacher-written Q&A without Ray: articles, the checks on every pair, decoding held to the
schema, a shard's determinism, and bad input refused in one line before Ray starts."""

import json

import pytest
from conftest import qa_spec

from classit.cli import main
from classit.config import GenerateConfig
from classit.generate.articles import load_articles, wiki_articles
from classit.generate.qa import check_pair, count_sentences, pairs_schema, parse_pairs
from classit.generate.teacher import Teacher, write_shard


def test_articles_start_at_title_lines_or_else_at_blank_lines(tmp_path):
    titled = tmp_path / "simple_wiki.train"
    titled.write_text("= = = April = = =\nApril is a month .\nIt has 30 days .\n\n= = = Bee = = =\nA bee flies .\n")
    assert wiki_articles(titled) == [{"title": "April", "text": "April is a month . It has 30 days ."},
                                     {"title": "Bee", "text": "A bee flies ."}]
    plain = tmp_path / "plain.train"
    plain.write_text("one line .\nanother line .\n\n\nthird line .\n")
    assert [a["text"] for a in wiki_articles(plain)] == ["one line . another line .", "third line ."]


def test_the_synthetic_corpus_has_titled_articles_with_stable_ids(tmp_path):
    gcfg = GenerateConfig.model_validate(qa_spec(max_articles=None, max_article_words=5))
    articles = load_articles(gcfg, tmp_path)
    assert len(articles) > 50 and all(a["title"] and len(a["text"].split()) <= 5 for a in articles)
    assert [a["article_id"] for a in articles[:2]] == ["article-0000000", "article-0000001"]


def test_every_kind_of_bad_pair_is_turned_down_for_its_reason():
    gcfg = GenerateConfig.model_validate(qa_spec(min_answer_sentences=2, min_answer_words=6))
    good = {"question": "Where does Mia live?", "answer": "Mia lives near the park. It is a nice place."}
    assert check_pair(good, gcfg, set()) is None
    assert check_pair({**good, "question": "  "}, gcfg, set()) == "empty"
    assert check_pair({**good, "answer": "Mia lives near the park, a nice place."}, gcfg, set()) == "short_answer"
    assert check_pair({**good, "answer": "Yes. No."}, gcfg, set()) == "short_answer"  # 2 sentences, 2 words
    assert check_pair(good, gcfg, {"where does mia live"}) == "duplicate_question"
    assert count_sentences("One. Two! Three? . .") == 3


def test_outputs_parse_only_with_exactly_the_schema():
    pair = {"question": "q?", "answer": "a."}
    assert parse_pairs(json.dumps({"pairs": [pair] * 3}), 3) == [pair] * 3
    for wrong in ({"pairs": [pair] * 2}, {"pairs": [{"question": "q?"}] * 3}, {"pairs": [pair] * 3, "x": 1}):
        assert parse_pairs(json.dumps(wrong), 3) is None
    assert parse_pairs('{"pairs": [{"question": "cut off', 3) is None
    assert pairs_schema(3)["properties"]["pairs"]["minItems"] == 3


def test_the_teacher_writes_only_the_schema_and_a_shard_is_the_same_whatever_ran_before(qa_teacher, tmp_path):
    gcfg = GenerateConfig.model_validate(qa_spec(teacher=str(qa_teacher)))
    articles = load_articles(gcfg, tmp_path)[:6]
    teacher = Teacher(gcfg, str(qa_teacher))
    outputs = teacher.write([teacher.prompt(a) for a in articles], seed=0)
    # Decoding is held to the schema: every output that ended is an object of 3 pairs.
    assert all(parse_pairs(text, 3) is not None for text in outputs), outputs
    first = write_shard(teacher, articles, shard=5, source="wiki", made_by={"teacher": "t"})
    teacher.write([teacher.prompt(articles[0])], seed=123)  # other work in between changes no seed
    again = write_shard(teacher, articles, shard=5, source="wiki", made_by={"teacher": "t"})
    assert first == again
    assert len(first["records"]) == 6 * 3 - first["missing"]
    assert first["records"][0]["id"] == "article-0000000-q0" and first["records"][0]["teacher"] == "t"
    asked = {}
    for record in first["records"]:
        assert check_pair({"question": record["prompt"], "answer": record["reply"]}, gcfg, set()) is None
        assert record["prompt"].lower() not in asked.setdefault(record["article_id"], set())
        asked[record["article_id"]].add(record["prompt"].lower())


def _write_config(tmp_path, **generate):
    import yaml

    spec = qa_spec(**generate)
    data = {"instruct": {"datasets": {"switch": {"synthetic": "conversation"}, "wiki": {"generate": spec}}},
            "run": {"cache_dir": str(tmp_path / "cache")}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_bad_input_is_one_line_naming_the_field_or_file_exit_2_before_ray(tmp_path, capsys, qa_teacher):
    import ray

    broken = tmp_path / "broken-teacher"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    empty = tmp_path / "empty.train"
    empty.write_text("\n\n")
    cases = {
        "instruct.datasets.wiki.generate.template": dict(template="Questions about {title}, please."),
        "instruct.datasets.wiki.generate.pairs_per_article": dict(pairs_per_article=0),
        f"instruct.datasets.wiki.generate.teacher: {broken}": dict(teacher=str(broken)),
        "instruct.datasets.wiki.generate.teacher: no-such/teacher": dict(teacher="no-such/teacher"),
        f"{empty}: no articles": dict(synthetic=None, articles=str(empty), teacher=str(qa_teacher)),
        # The demo teacher's 512 positions, all asked for the reply (was a traceback from a Ray Data actor).
        "instruct.datasets.wiki.generate.sampling.max_new_tokens: 512 leaves no room for a prompt in the teacher's "
        "512 positions": dict(teacher=str(qa_teacher), sampling={"max_new_tokens": 512}),
    }
    for expected, fields in cases.items():
        code = main(["generate-qa", "--config", str(_write_config(tmp_path, **fields))])
        err = capsys.readouterr().err.strip()
        assert code == 2 and "\n" not in err and expected in err, (expected, err)
    assert not ray.is_initialized()


def test_a_config_without_any_generated_dataset_is_refused(tmp_path, capsys):
    path = tmp_path / "plain.yaml"
    path.write_text("model: {preset: tiny}\n")
    assert main(["generate-qa", "--config", str(path)]) == 2
    assert "no instruction dataset with a generate section" in capsys.readouterr().err
    with pytest.raises(ValueError, match="teacher: the synthetic teacher"):
        GenerateConfig.model_validate({"articles": str(path), "teacher": "synthetic"})


def test_a_dry_run_before_the_set_is_generated_says_which_command_makes_it(tmp_path, capsys, qa_teacher):
    """A dry run starts no Ray, so it generates nothing: it names the set's field and what makes it."""
    import ray

    path = _write_config(tmp_path)
    # The demo teacher of this spec is trained already, in the session's cache.
    sweep = ["--set", "sweep.space.curriculum.choice=[wiki]", "--set", f"run.cache_dir={qa_teacher.parent}"]
    assert main(["sweep", "--config", str(path), *sweep, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("classit: error: instruct.datasets.wiki.generate: the set is not "
                                              "generated yet") and "`classit generate-qa` with this config" in err
    assert not ray.is_initialized()
