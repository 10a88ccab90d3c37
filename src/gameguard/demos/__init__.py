"""Runnable demos of gameguard, one module per capability (each exposes ``run(seed, out)``)."""
