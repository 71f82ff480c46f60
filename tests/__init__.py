"""The test suite; helpers are imported as `tests.<module>` (one style, from the project root)."""
