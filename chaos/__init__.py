"""Fault-injection suite (`make chaos`): real processes, real kills, real server stops."""
