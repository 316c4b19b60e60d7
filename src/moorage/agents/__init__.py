"""Agents that ship with moorage (run inside a container or as a process)."""
