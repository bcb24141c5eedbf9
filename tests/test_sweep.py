"""Sweeps: a grid over spec keys becomes child finetune runs, compared in one table, the best one promoted."""

from __future__ import annotations

import pytest

from peftpipe.sweep import SweepError, best_child, expand_grid


def test_a_grid_expands_first_key_slowest_and_bad_grids_name_the_key() -> None:
    points = expand_grid({"train.learning_rate": [1e-4, 3e-4], "peft.lora.r": [8, 16]})
    assert points == [{"train.learning_rate": 1e-4, "peft.lora.r": 8}, {"train.learning_rate": 1e-4, "peft.lora.r": 16},
                      {"train.learning_rate": 3e-4, "peft.lora.r": 8}, {"train.learning_rate": 3e-4, "peft.lora.r": 16}]
    with pytest.raises(SweepError, match="train.learning_rte: not a spec key"):
        expand_grid({"train.learning_rte": [1e-4]})
    with pytest.raises(SweepError, match="train.max_steps: give a non-empty list"):
        expand_grid({"train.max_steps": 100})
    results = [{"run_id": "a", "metrics": {"f1": 0.2, "loss": 2.0}}, {"run_id": "b", "metrics": {"f1": 0.5, "loss": 2.5}}]
    assert best_child(results, "f1")["run_id"] == "b" and best_child(results, "loss")["run_id"] == "a"


# The sweep end to end (deployment sweep/grid, two children, comparison table seen in chromium, promotion):
# tests/test_ui_sweep_browser.py.
