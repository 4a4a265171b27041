"""The one training engine every stage plugs into (DESIGN.md §4)."""
