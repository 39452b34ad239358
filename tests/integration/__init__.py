"""Integration tests: real raftnode processes on 127.0.0.1, real databases."""
