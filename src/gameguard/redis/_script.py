"""The decision script (``limit.lua``: the in-process kernel's arithmetic in Lua) and its SHA."""
from __future__ import annotations

import hashlib
from importlib import resources

SCRIPT: str = resources.files(__package__ or "gameguard.redis").joinpath(
    "limit.lua").read_text("utf-8")
SHA: str = hashlib.sha1(SCRIPT.encode()).hexdigest()
