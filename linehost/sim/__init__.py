"""Simulated provisioning firmware on pseudo-terminals: the same device for tests, demo and sim."""

from linehost.sim.firmware import DeviceIdentity, IdentityPool, SimulatedDevice, check_delivery
from linehost.sim.harness import DeviceRecord, SimulatedJig, SimulatedLine, plan_personalities
from linehost.sim.personalities import Personality, get_personality, personality_names, register

__all__ = [
    "DeviceIdentity",
    "DeviceRecord",
    "IdentityPool",
    "Personality",
    "SimulatedDevice",
    "SimulatedJig",
    "SimulatedLine",
    "check_delivery",
    "get_personality",
    "personality_names",
    "plan_personalities",
    "register",
]
