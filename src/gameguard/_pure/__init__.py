"""Pure-Python kernels: the readable reference for, and fallback of, ``gameguard._fast``."""
