"""report.json is standard JSON: non-finite numbers become null."""

import json

from convopt.io import strict_json


def test_report_json_is_strict_json():
    text = strict_json({"sqnr_db": float("inf"), "rows": [float("nan"), 1.5], "ok": (1, "a")})
    assert json.loads(text) == {"sqnr_db": None, "rows": [None, 1.5], "ok": [1, "a"]}
    assert "Infinity" not in text and "NaN" not in text
