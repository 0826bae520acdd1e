"""Input adapters: every Windows event source mapped to RawEvent dicts."""
