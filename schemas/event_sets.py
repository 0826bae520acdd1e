"""The Windows Security Events connector's event sets, exactly as Microsoft's connector pages list them.

``EVENT_SETS[name]`` is the set of EventIDs collected from ``ALL_CHANNELS`` (None for "All" = every event of those
channels; an empty set for "None"). ``event_set_xpath`` renders a set as the AMA-style ``Channel!XPath`` queries the
Azure portal writes into a data collection rule.
"""

from __future__ import annotations

from collections.abc import Iterable

SECURITY_CHANNEL = "Security"
APPLOCKER_EXE_DLL_CHANNEL = "Microsoft-Windows-AppLocker/EXE and DLL"
APPLOCKER_MSI_SCRIPT_CHANNEL = "Microsoft-Windows-AppLocker/MSI and Script"
ALL_CHANNELS: tuple[str, ...] = (SECURITY_CHANNEL, APPLOCKER_EXE_DLL_CHANNEL, APPLOCKER_MSI_SCRIPT_CHANNEL)
_CHANNELS_FOLDED = frozenset(channel.casefold() for channel in ALL_CHANNELS)

# The AppLocker events of the Minimal and Common sets, by the channel that writes them.
APPLOCKER_IDS: dict[str, tuple[int, ...]] = {
    APPLOCKER_EXE_DLL_CHANNEL: (8001, 8002, 8003, 8004),
    APPLOCKER_MSI_SCRIPT_CHANNEL: (8005, 8006, 8007),
}

# In the order of the connector's "Event ID reference" table (the order the portal's queries use).
MINIMAL_IDS: tuple[int, ...] = (
    1102, 4624, 4625, 4657, 4663, 4688, 4700, 4702, 4719, 4720, 4722, 4723, 4724, 4727, 4728, 4732, 4735, 4737,
    4739, 4740, 4754, 4755, 4756, 4767, 4799, 4825, 4946, 4948, 4956, 5024, 5033, 8001, 8002, 8003, 8004, 8005,
    8006, 8007, 8222,
)
COMMON_IDS: tuple[int, ...] = (
    1, 299, 300, 324, 340, 403, 404, 410, 411, 412, 413, 431, 500, 501, 1100, 1102, 1107, 1108, 4608, 4610, 4611,
    4614, 4622, 4624, 4625, 4634, 4647, 4648, 4649, 4657, 4661, 4662, 4663, 4665, 4666, 4667, 4688, 4670, 4672,
    4673, 4674, 4675, 4689, 4697, 4700, 4702, 4704, 4705, 4716, 4717, 4718, 4719, 4720, 4722, 4723, 4724, 4725,
    4726, 4727, 4728, 4729, 4733, 4732, 4735, 4737, 4738, 4739, 4740, 4742, 4744, 4745, 4746, 4750, 4751, 4752,
    4754, 4755, 4756, 4757, 4760, 4761, 4762, 4764, 4767, 4768, 4771, 4774, 4778, 4779, 4781, 4793, 4797, 4798,
    4799, 4800, 4801, 4802, 4803, 4825, 4826, 4870, 4886, 4887, 4888, 4893, 4898, 4902, 4904, 4905, 4907, 4931,
    4932, 4933, 4946, 4948, 4956, 4985, 5024, 5033, 5059, 5136, 5137, 5140, 5145, 5632, 6144, 6145, 6272, 6273,
    6278, 6416, 6423, 6424, 8001, 8002, 8003, 8004, 8005, 8006, 8007, 8222, 26401, 30004,
)

EVENT_SETS: dict[str, frozenset[int] | None] = {
    "All": None,
    "Common": frozenset(COMMON_IDS),
    "Minimal": frozenset(MINIMAL_IDS),
    "None": frozenset(),
}
ORDERED_IDS: dict[str, tuple[int, ...]] = {"Common": COMMON_IDS, "Minimal": MINIMAL_IDS}

# The portal puts at most this many EventID terms in one query (a DCR allows 20 expressions per query).
MAX_TERMS_PER_QUERY = 15


def xpath_query(channel: str, event_ids: Iterable[int]) -> str:
    """``Channel!*[System[(EventID=a) or (EventID=b) ...]]``."""
    terms = " or ".join(f"(EventID={event_id})" for event_id in event_ids)
    return f"{channel}!*[System[{terms}]]"


def _chunks(ids: tuple[int, ...], size: int) -> list[tuple[int, ...]]:
    return [ids[start:start + size] for start in range(0, len(ids), size)]


def event_set_xpath(name: str) -> list[str]:
    """The AMA-style queries the Azure portal generates for event set ``name`` (All, Common, Minimal, None).

    Common queries every one of its IDs on Security (8001-8007 included) in chunks of 15, Minimal only its
    non-AppLocker IDs; both add one query per AppLocker channel. All reads the three channels whole.
    """
    if name not in EVENT_SETS:
        raise KeyError(f"unknown event set {name!r}; known: {', '.join(EVENT_SETS)}")
    if name == "None":
        return []
    if name == "All":
        return [f"{channel}!*" for channel in ALL_CHANNELS]
    ids = ORDERED_IDS[name]
    if name == "Minimal":
        applocker = {event_id for channel_ids in APPLOCKER_IDS.values() for event_id in channel_ids}
        ids = tuple(event_id for event_id in ids if event_id not in applocker)
    queries = [xpath_query(SECURITY_CHANNEL, chunk) for chunk in _chunks(ids, MAX_TERMS_PER_QUERY)]
    queries += [xpath_query(channel, channel_ids) for channel, channel_ids in APPLOCKER_IDS.items()]
    return queries


def in_event_set(name: str, channel: str, event_id: int) -> bool:
    """Whether an event of ``channel`` with ``event_id`` belongs to event set ``name``.

    Channel names compare case-insensitively, as Windows compares them (some exporters write "security").
    """
    if channel.casefold() not in _CHANNELS_FOLDED:
        return False
    ids = EVENT_SETS[name]
    return True if ids is None else event_id in ids
