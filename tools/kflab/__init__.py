"""Harness for the kernelfence lab VM and the molecule VM scenarios."""
