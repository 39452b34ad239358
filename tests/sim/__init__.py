"""Deterministic simulation of Raft clusters under faults."""
