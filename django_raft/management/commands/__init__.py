"""``manage.py raftnode`` runs a node; the others ask or change a running cluster."""
