"""bench/learning_curve.py: pooled cross-validation figures at several training shares, and their fit."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import REPO

spec = importlib.util.spec_from_file_location("learning_curve", REPO / "bench" / "learning_curve.py")
learning_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(learning_curve)


def _rows(tmp_path, share, auc, qwk, fold_auc):
    rows = [{"variant": "preset", "seed": 42, "fold": k, "rc": 0, "auc": a, "qwk": qwk, "val_auc": a - 0.01}
            for k, a in enumerate(fold_auc)]
    rows.append({"kind": "out_of_fold", "variant": "preset", "seed": 42, "rc": 0, "referable_auc": auc,
                 "referable_auc_ci_low": auc - 0.06, "referable_auc_ci_high": auc + 0.05, "qwk": qwk,
                 "qwk_ci_low": qwk - 0.1, "qwk_ci_high": qwk + 0.1})
    rows.append({"kind": "out_of_fold", "variant": "other", "seed": 42, "rc": 0, "referable_auc": 0.1, "qwk": 0.1})
    path = tmp_path / f"rows{share}.json"
    path.write_text(json.dumps(rows))
    return f"{share}={path}"


def test_each_doubling_of_the_photos_is_fitted_and_extrapolated_to_the_target(tmp_path, capsys):
    points = [_rows(tmp_path, 0.25, 0.70, 0.40, [0.68, 0.72]), _rows(tmp_path, 1, 0.80, 0.50, [0.80, 0.80]),
              _rows(tmp_path, 0.5, 0.75, 0.45, [0.74, 0.78])]
    png, out = tmp_path / "lc.png", tmp_path / "lc.json"
    assert learning_curve.main([*points, "--train-photos", "400", "--png", str(png), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["share"] for r in result["rows"]] == [0.25, 0.5, 1.0]  # sorted, whatever the order given
    auc = result["fits"]["referable_auc"]
    assert auc["per_doubling"] == pytest.approx(0.05) and auc["share_at_target"] == pytest.approx(2.0)
    assert result["fits"]["qwk"]["share_at_target"] == pytest.approx(2 ** 2)  # 0.60 is two doublings past 0.50
    assert result["rows"][0]["referable_auc_vs_top"] == pytest.approx([-0.10, -0.12, -0.08])  # fold by fold
    assert result["rows"][0]["val_auc"] == pytest.approx(0.69)
    text = capsys.readouterr().out
    assert "| 0.25 (about 100 photos) | 0.690 | 0.700 (0.640-0.750) | -0.100 (-0.120 to -0.080) |" in text
    assert "0.85 at 2.0x the largest share (about 800 photos), extrapolated" in text
    assert auc["last_per_doubling"] == pytest.approx(0.05) and auc["share_at_target_last"] == pytest.approx(2.0)
    assert png.stat().st_size > 10_000 and png.read_bytes()[:4] == b"\x89PNG"


def test_a_flat_curve_never_reaches_the_target():
    assert learning_curve.share_reaching(0.85, 0.8, 0.0) is None
    assert learning_curve.share_reaching(0.85, 0.8, -0.01) is None


def test_bad_points_are_refused_with_the_fix(tmp_path, capsys):
    with pytest.raises(SystemExit):
        learning_curve.main(["rows.json"])
    assert "expected FRACTION=ROWS.json with a fraction in (0, 1]" in capsys.readouterr().err
    (tmp_path / "r.json").write_text(json.dumps([{"variant": "preset", "seed": 42, "fold": 0, "rc": 0}]))
    with pytest.raises(SystemExit):
        learning_curve.main([f"0.5={tmp_path / 'r.json'}"])
    assert "no out_of_fold row for preset seed 42" in capsys.readouterr().err
    point = _rows(tmp_path, 0.5, 0.7, 0.4, [0.7])
    with pytest.raises(SystemExit):
        learning_curve.main([point, point])
    assert "each training share may be given once" in capsys.readouterr().err
