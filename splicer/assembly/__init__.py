"""Assemble blocks and transforms into an SFTN."""
