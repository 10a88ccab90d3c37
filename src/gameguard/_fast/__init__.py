"""Compiled Cython kernels, twins of ``gameguard._pure`` (same names and signatures)."""
