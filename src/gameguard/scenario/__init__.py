"""``python -m gameguard scenario``: a seeded MOBA backend on loopback, run guarded and
unguarded with the same seed, faults injected on a schedule, the two runs compared.

Processes (each its own interpreter, talking grpc.aio on 127.0.0.1): two gateways (players'
requests in) and the seed's domains — matchmaking, battle, social (chat), payment (assets and
the auction). Battle never stores assets: it asks payment. The load generator runs in the
parent process. ``plan.py`` names the processes and phases; ``run.py`` starts and stops
everything; ``node.py`` is one process; ``load.py`` the fingerprints; ``metrics.py`` each
guarded node's metrics endpoint and their scrapes; ``report.py`` the figures, table, HTML.
"""
