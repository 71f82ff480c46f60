"""Small I/O helpers every stage shares: atomic writes, progress lines, file checksums."""
