"""The fast layer: CPU engineering for the teaching modules, tested against them (DESIGN.md)."""
