"""Simulated provisioning firmware on pseudo-terminals: the same device for tests, demo and sim."""

from linehost.sim.checks import CheckResult, check_delivery
from linehost.sim.devices import DeviceFactory, DeviceRecord
from linehost.sim.firmware import SimulatedDevice
from linehost.sim.harness import LineThread, SimulatedLine, load_paa, plan_personalities
from linehost.sim.identity import DeviceIdentity, IdentityPool
from linehost.sim.jig import DEFAULT_SWAP_SECONDS, SimulatedJig
from linehost.sim.personalities import Personality, get_personality, personality_names, register

__all__ = [
    "DEFAULT_SWAP_SECONDS",
    "CheckResult",
    "DeviceFactory",
    "DeviceIdentity",
    "DeviceRecord",
    "IdentityPool",
    "LineThread",
    "Personality",
    "SimulatedDevice",
    "SimulatedJig",
    "SimulatedLine",
    "check_delivery",
    "get_personality",
    "load_paa",
    "personality_names",
    "plan_personalities",
    "register",
]
