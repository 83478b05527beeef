"""A fuzzer that attacks a live ``trio-ysync serve`` process; ``tests/fuzz.py`` runs it.

Attackers send mutated real messages, structure-aware garbage, known killers and broken frames
while honest providers keep editing and checking each other; see :func:`fuzz`.
"""

from .run import FuzzConfig, Summary, fuzz, probe, replay_saved

__all__ = ["FuzzConfig", "Summary", "fuzz", "probe", "replay_saved"]
