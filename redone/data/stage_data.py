"""``StageData``: what a stage's data path (``redone/data/<stage>.py``) hands its training Stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from redone.data.packing import TokenStore


@dataclass
class StageData:
    """Mixture components with their lineage, the drawer the loop pulls training units from, and the
    held-out items per component.

    ``components[i]`` describes component i (name, source path, digest, counts, tokens,
    planned_share, cache_hit): it is written into ``final/redone.json`` and the data report.
    ``drawer`` hands out training units in mixture order and is resumable: ``state_dict()`` /
    ``load_state_dict()``, and ``draw_counts(n)`` (per component, the tokens of its next ``n`` rows, or
    the pairs among the next ``n`` DPO draws; ``redone data prepare`` uses it to measure realised shares).
    """

    components: list[dict]
    drawer: Any  # DocumentPacker | ItemPacker | PairDrawer
    held_out: dict[str, TokenStore] = field(default_factory=dict)
    stores: list[TokenStore] = field(default_factory=list)  # the training stores, one per component
    report: dict = field(default_factory=dict)  # stage-specific extras (cpt: curation)

    @property
    def names(self) -> list[str]:
        return [c["name"] for c in self.components]
