import json

import numpy as np
import torch

from gradients.checkpoint import StageCache, model_fingerprint, stage_key, tokens_fingerprint
from gradients.tokenize import TokenizedSample
from tests.tiny_models import tiny_model


def test_cache_saves_and_reloads(tmp_path):
    cache = StageCache(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return np.arange(6.0).reshape(2, 3)

    first = cache.get_or_compute("x", "key-1", compute)
    second = cache.get_or_compute("x", "key-1", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first, second)
    cache.get_or_compute("x", "key-2", compute)
    assert len(calls) == 2
    assert json.loads((tmp_path / "x.json").read_text())["key"] == "key-2"


def test_disabled_cache_always_computes(tmp_path):
    cache = StageCache(None)
    calls = []
    for _ in range(2):
        cache.get_or_compute("x", "k", lambda: calls.append(1) or np.zeros(1))
    assert len(calls) == 2


def test_unreadable_key_recomputes(tmp_path):
    cache = StageCache(tmp_path)
    cache.get_or_compute("x", "k", lambda: np.zeros(2))
    (tmp_path / "x.json").write_text("not json")
    result = cache.get_or_compute("x", "k", lambda: np.ones(2))
    np.testing.assert_array_equal(result, np.ones(2))


def test_fingerprints_change_with_inputs():
    model = tiny_model("llama", layers=2)
    before = model_fingerprint(model)
    assert model_fingerprint(model) == before
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0
    assert model_fingerprint(model) != before

    sample = TokenizedSample("a", "t", [1, 2, 3], [-100, 2, 3])
    other = TokenizedSample("a", "t", [1, 2, 4], [-100, 2, 4])
    assert tokens_fingerprint([sample]) != tokens_fingerprint([other])
    assert stage_key(a=1, b=[1, 2]) == stage_key(b=[1, 2], a=1)
    assert stage_key(a=1) != stage_key(a=2)
