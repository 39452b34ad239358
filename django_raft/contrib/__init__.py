"""Integrations of django_raft with other tools."""
