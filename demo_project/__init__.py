"""A small Django project that runs django_raft for development, tests and demos."""
