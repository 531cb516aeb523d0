"""The scenarios, by the name users type."""

from __future__ import annotations

from loadtest.scenarios.call import CallScenario
from loadtest.scenarios.common import Scenario
from loadtest.scenarios.mixed import MixedScenario
from loadtest.scenarios.options import Options
from loadtest.scenarios.register import Register

SCENARIOS: dict[str, type[Scenario]] = {
    "options": Options,
    "register": Register,
    "call": CallScenario,
    "mixed": MixedScenario,
}
