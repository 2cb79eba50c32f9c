"""The articles a teacher writes questions about: a BabyLM simple_wiki.train file (titled by its
`= = = Title = = =` lines), a `datasets` dataset (an article a row), or the synthetic corpus's."""

from __future__ import annotations

import re
from pathlib import Path

from classit.config import ConfigError, GenerateConfig
from classit.data.corpus import file_lines

TITLE = re.compile(r"^\s*=(?:\s*=)*\s*(?P<title>[^=].*?)\s*=(?:\s*=)*\s*$")


def wiki_articles(path: Path) -> list[dict]:
    """Articles of a simple_wiki.train-style file: a title line starts each; a file without title
    lines has one article per block of lines between blank lines."""
    lines = list(file_lines(path))
    titled = any(TITLE.match(line) for line in lines)
    articles, title, body = [], "", []

    def flush():
        if body:
            articles.append({"title": title, "text": " ".join(body)})
        body.clear()

    for line in lines:
        match = TITLE.match(line) if titled else None
        if match or (not titled and not line.strip()):
            flush()
            title = match.group("title") if match else ""
        elif line.strip():
            body.append(line.strip())
    flush()
    return articles


def dataset_articles(gcfg: GenerateConfig, where: str) -> list[dict]:
    from classit.data.corpus import hf_split

    ds = hf_split(gcfg.hf_dataset, gcfg.hf_split, f"{where}.hf_dataset")
    for column in (gcfg.text_column, gcfg.title_column):
        if column is not None and column not in ds.column_names:
            raise ConfigError(f"{where}: dataset {gcfg.hf_dataset} has no column {column!r} ({ds.column_names})")
    titles = ds[gcfg.title_column] if gcfg.title_column else [""] * len(ds)
    return [{"title": str(t), "text": str(x).strip()} for t, x in zip(titles, ds[gcfg.text_column]) if str(x).strip()]


def load_articles(gcfg: GenerateConfig, cache_dir: Path, where: str = "generate") -> list[dict]:
    """The articles, each with a stable `article_id` (its place in the source), cut to
    `max_article_words`; one line naming the file or field if there are none."""
    if gcfg.synthetic is not None:
        from classit.data.corpus import synthetic_corpus

        folder = synthetic_corpus(gcfg.synthetic, cache_dir)
        source, articles = f"{folder}/simple_wiki.train", wiki_articles(folder / "simple_wiki.train")
    elif gcfg.articles is not None:
        source, articles = str(gcfg.articles), wiki_articles(gcfg.articles)
    else:
        source, articles = gcfg.hf_dataset, dataset_articles(gcfg, where)
    if not articles:
        raise ConfigError(f"{source}: no articles ({where}: an article needs at least one line of text)")
    articles = articles[:gcfg.max_articles]
    for index, article in enumerate(articles):
        words = article["text"].split()
        article["text"] = " ".join(words[:gcfg.max_article_words])
        article["article_id"] = f"article-{index:07d}"
    return articles
