"""The shipped evaluate metric modules load by path with the hub unreachable, and score right."""

from __future__ import annotations

import pytest

from peftcheck import metrics

PREDICTIONS = ["the cat sat on the mat", "a quiet harbour at dawn"]
REFERENCES = ["the cat sat on the mat", "a quiet harbour at dawn"]
WRONG = ["2 times 3 is 6", "4 plus 5 is 9"]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub: a metric that tried to download would fail here."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.mark.parametrize("name", metrics.METRICS)
def test_every_metric_ships_inside_the_package_and_loads_offline(name: str) -> None:
    path = metrics.metric_path(name)
    assert path.is_file() and path.parent.parent == metrics.metric_path("rouge").parent.parent
    module = metrics.load(name)
    assert type(module).__module__.endswith(name)


@pytest.mark.parametrize("score", ["rouge1", "rouge2", "rougeL", "bleu", "exact_match"])
def test_reference_scores_are_perfect_on_identical_text_and_low_on_wrong_text(score: str) -> None:
    assert metrics.score(score, PREDICTIONS, REFERENCES) == pytest.approx(1.0)
    assert metrics.score(score, PREDICTIONS, WRONG) < 0.2


def test_sacrebleu_uses_its_0_to_100_scale_and_signature() -> None:
    result = metrics.load("sacrebleu").compute(predictions=PREDICTIONS, references=REFERENCES)
    assert result["score"] == pytest.approx(100.0)
    assert "tok:13a" in result["signature"]
    bleu = metrics.score("bleu", PREDICTIONS, ["the cat sat on a mat", "a quiet harbour at dawn"])
    assert 0.2 < bleu < 1.0


def test_rouge_partial_overlap() -> None:
    result = metrics.load("rouge").compute(predictions=["the cat sat"], references=["the cat sat on the mat"])
    # 3 of 6 reference unigrams, all 3 predicted unigrams: P=1, R=0.5, F=2/3
    assert result["rouge1"] == pytest.approx(2 / 3)
    assert metrics.score("rouge", ["the cat sat"], ["the cat sat on the mat"]) == pytest.approx(result["rougeL"])


def test_exact_match_normalisation_is_opt_in() -> None:
    module = metrics.load("exact_match")
    predictions, references = ["“Hello,  World!”"], ["hello world"]
    assert module.compute(predictions=predictions, references=references)["exact_match"] == 0.0
    loose = module.compute(predictions=predictions, references=references, ignore_case=True, ignore_punctuation=True)
    assert loose["exact_match"] == 1.0


def test_distinct_n_measures_repetition() -> None:
    module = metrics.load("distinct_n")
    assert module.compute(predictions=["a b c d"]) == {"distinct_1": 1.0, "distinct_2": 1.0}
    repeated = module.compute(predictions=["the the the the"])
    assert repeated["distinct_1"] == pytest.approx(1 / 4) and repeated["distinct_2"] == pytest.approx(1 / 3)
    assert module.compute(predictions=[""])["distinct_1"] == 0.0
    assert metrics.score("distinct_2", ["x y", "x y"]) == pytest.approx(0.5)


def test_unknown_names_and_missing_references_are_errors() -> None:
    with pytest.raises(ValueError, match="known: rouge, bleu"):
        metrics.metric_path("meteor")
    with pytest.raises(ValueError, match="unknown"):
        metrics.score("meteor", PREDICTIONS, REFERENCES)
    with pytest.raises(ValueError, match="one reference per prediction"):
        metrics.score("rougeL", PREDICTIONS, None)
