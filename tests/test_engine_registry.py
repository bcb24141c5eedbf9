"""Every registered engine provides what the Engine protocol asks, under the names the pipeline calls."""

from __future__ import annotations

import inspect

import pytest

from peftpipe.engines import ENGINES, Engine, engine_for
from peftpipe.spec import RunSpec


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_registered_engine_implements_the_protocol(name: str) -> None:
    engine = engine_for(name)
    assert engine.name == name
    for member, declared in vars(Engine).items():
        if callable(declared) and not member.startswith("_"):
            wanted = list(inspect.signature(declared).parameters)[1:]
            assert list(inspect.signature(getattr(engine, member)).parameters) == wanted, f"{name}.{member}"
    for attribute in ("methods", "stages", "memory_model"):
        assert getattr(engine, attribute) is not None
    assert {"finetune", "evaluate"} <= set(engine.stages)


def test_the_spec_accepts_exactly_the_registered_engines() -> None:
    assert set(RunSpec.model_fields["engine"].annotation.__args__) == set(ENGINES)
    with pytest.raises(ValueError, match="not registered"):
        engine_for("deepspeed")
