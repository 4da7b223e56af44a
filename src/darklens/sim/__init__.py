"""Simulated strong-lensing images: presets, a batched renderer, a dataset writer and a stream.

    from darklens.sim import simulate_batch, SimulatedStream, simulate_dataset, list_presets
"""

from darklens.sim.presets import PRESETS, SimConfig, get_config, list_presets
from darklens.sim.simulator import simulate_batch
from darklens.sim.stream import SimulatedStream
from darklens.sim.writer import simulate_dataset

__all__ = [
    "PRESETS", "SimConfig", "SimulatedStream", "get_config", "list_presets", "simulate_batch",
    "simulate_dataset",
]
