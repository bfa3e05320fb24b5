"""Vendored front-end assets are exactly the pinned npm packages' files (scripts/vendor_assets)."""

from __future__ import annotations

import importlib.util

from tests.stack import ROOT


def test_vendored_assets_match_their_manifest() -> None:
    spec = importlib.util.spec_from_file_location("vendor", ROOT / "scripts/vendor_assets.py")
    assert spec is not None and spec.loader is not None
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    assert vendor.check() == []
