"""The saga definitions an orchestrator or a recovery knows, by name.

A log holds a saga's definition by name and its parameters; to resume the saga, whoever
reads the log looks the name up here. A name it does not know, a definition changed since
the saga began, or parameters the definition now refuses: the saga is left alone with a
problem saying so, never run by guesswork.
"""

from __future__ import annotations

from collections.abc import Iterable

from twopc.saga.definition import InvalidSagaDefinition, SagaDefinition
from twopc.saga.state import SagaState, shape_problem, with_problem


class SagaRegistry:
    """Saga definitions by name. ``unnamed`` names the definition of logs whose BEGIN names
    none (written before sagas were definitions)."""

    def __init__(
        self, definitions: Iterable[SagaDefinition] = (), *, unnamed: str | None = None
    ) -> None:
        self._definitions: dict[str, SagaDefinition] = {}
        for definition in definitions:
            self._add(definition)
        if unnamed is not None and unnamed not in self._definitions:
            raise InvalidSagaDefinition(f"unnamed logs' definition {unnamed!r} is not given")
        self.unnamed = unnamed

    def _add(self, definition: SagaDefinition) -> None:
        known = self._definitions.get(definition.name)
        if known is not None and known is not definition:
            raise InvalidSagaDefinition(f"two saga definitions are named {definition.name!r}")
        self._definitions[definition.name] = definition

    @property
    def names(self) -> list[str]:
        return sorted(self._definitions)

    def get(self, name: str | None) -> SagaDefinition | None:
        """The definition named ``name`` (None: the unnamed logs' one), if known."""
        return self._definitions.get(name if name is not None else self.unnamed or "")

    def including(self, definition: SagaDefinition) -> SagaRegistry:
        """This registry with ``definition`` too; :class:`InvalidSagaDefinition` if another
        definition has its name."""
        wider = SagaRegistry(self._definitions.values(), unnamed=self.unnamed)
        wider._add(definition)
        return wider


def resolve(state: SagaState, registry: SagaRegistry) -> tuple[SagaState, SagaDefinition | None]:
    """The definition ``state``'s saga follows, or ``state`` with a problem saying why there
    is none it can follow (nothing for a log without BEGIN: that is a problem already)."""
    if not state.began or state.problems:
        return state, None
    definition = registry.get(state.definition)
    if definition is None:
        known = ", ".join(registry.names) or "none"
        return with_problem(state, _unknown(state, known)), None
    problem = shape_problem(state, definition) or _refused_params(state, definition)
    return (with_problem(state, problem), None) if problem else (state, definition)


def _unknown(state: SagaState, known: str) -> str:
    return (
        f"saga definition {state.definition!r} is not registered here (known: {known}): "
        "resume it where that definition is registered"
    )


def _refused_params(state: SagaState, definition: SagaDefinition) -> str | None:
    if definition.check is None:
        return None
    try:
        definition.check(state.params)
    except (KeyError, TypeError, ValueError) as err:
        return f"parameters {dict(state.params)} refused by saga {definition.name!r}: {err}"
    return None
