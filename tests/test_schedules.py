"""benchmarks/schedules.py without training: selection on dev (CALR's decay as a second knob), reuse, bad input."""

from __future__ import annotations

import json

import pytest


def _row(sched, lr, dev, test, decay=None, seed=0):
    return {"set": "trec", "seed": seed, "model": "dan", "schedule": sched, "lr": lr, "calr_decay": decay,
            "dev_accuracy": dev, "test_accuracy": test, "wall_s": 1.0}


def test_calr_decay_is_chosen_on_dev_with_the_rate_and_said_so(bench_module):
    mod = bench_module("schedules")
    rows = [_row("calr", 0.1, 0.80, 0.85, 0.5), _row("calr", 0.1, 0.82, 0.86, 0.3), _row("calr", 0.03, 0.81, 0.90, 0.3),
            _row("constant", 0.03, 0.81, 0.87)]
    sel = mod.select(rows)["trec"]
    # dev picks (0.1, 0.3) although (0.03, 0.3) has the better test accuracy: test is never looked at
    assert (sel["calr"]["lr"], sel["calr"]["decay"]) == (0.1, 0.3) and sel["calr"]["test_mean"] == 0.86
    assert sel["calr"]["decays_tried"] == [0.3, 0.5] and set(sel["calr"]["test_mean_by_lr"]) == {"0.1/0.5", "0.1/0.3", "0.03/0.3"}
    assert sel["_target_calr_at_least_best_other"] == {"met": False, "calr": 0.86, "best_other": 0.87}
    md = mod.markdown({"settings": {"epochs": 15, "adam_eps": 0.01, "lrs": [0.03, 0.1], "seeds": 1, "jobs": 1,
                                    "calr_decay": "0.3,0.5"}, "wall_s": 60, "selected": mod.select(rows)})
    assert "| trec | calr | 0.1, decay 0.3 |" in md and "one knob more than the other schedules get" in md
    # one decay: the table stays as before
    one = mod.select([_row("calr", 0.1, 0.80, 0.85, 0.5)])["trec"]["calr"]
    assert one["decays_tried"] == [0.5] and list(one["test_mean_by_lr"]) == ["0.1"]


def test_reuse_keeps_former_runs_and_refuses_other_settings(tmp_path, bench_module):
    mod = bench_module("schedules")
    old = {"settings": {"model": "dan", "epochs": 15, "adam_eps": 0.01, "calr_decay": 0.5},
           "rows": [{k: v for k, v in _row("calr", 0.1, 0.8, 0.85).items() if k != "calr_decay"},
                    {k: v for k, v in _row("constant", 0.1, 0.8, 0.85).items() if k != "calr_decay"}]}
    f = tmp_path / "old.json"
    f.write_text(json.dumps(old))

    class A:
        model, epochs, adam_eps = "dan", 15, 0.01

    rows = mod.reused_rows(str(f), A)
    assert [r["calr_decay"] for r in rows] == [0.5, None]  # CALR runs of an old file carry its one decay
    A.epochs = 10
    with pytest.raises(SystemExit, match="its epochs is 15, this run's 10"):
        mod.reused_rows(str(f), A)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="not a schedules.py result"):
        mod.reused_rows(str(tmp_path / "bad.json"), A)


@pytest.mark.parametrize("decay", ["1.5", "0", "x"])
def test_bad_calr_decay_is_one_line_and_writes_nothing(tmp_path, decay, bench_module):
    out = tmp_path / "s.json"
    with pytest.raises(SystemExit, match="decay"):
        bench_module("schedules").main(["--calr-decay", decay, "--out", str(out)])
    assert not out.exists()


def test_paired_comparison_uses_each_schedules_chosen_setting_seed_by_seed(bench_module):
    mod = bench_module("schedules")
    rows = []
    for seed, (c, o) in enumerate([(0.85, 0.86), (0.87, 0.86), (0.80, 0.83)]):
        rows += [_row("calr", 0.1, 0.9, c, 0.7, seed), _row("onecycle", 0.03, 0.9, o, None, seed),
                 _row("calr", 0.3, 0.1, 0.99, 0.7, seed)]  # never chosen (bad dev): must not enter the pairs
    rows.append(_row("onecycle", 0.03, 0.9, 0.50, None, seed=7))  # a seed CALR lacks: not paired
    pr = mod.select(rows)["trec"]["_paired_calr_vs_best_other"]
    assert pr["rival"] == "onecycle" and pr["seeds"] == 3 and pr["calr_wins"] == 1 and pr["ties"] == 0
    assert pr["mean_diff"] == pytest.approx((-0.01 + 0.01 - 0.03) / 3)
    assert pr["se"] == pytest.approx(0.02 / 3 ** 0.5)  # the sample std of (-0.01, 0.01, -0.03) is 0.02
    md = mod.markdown({"settings": {"epochs": 15, "adam_eps": 0.01, "lrs": [0.1], "seeds": 3, "jobs": 1, "calr_decay": 0.7},
                       "wall_s": 60, "selected": mod.select(rows)})
    assert "- trec, paired by seed: CALR minus onecycle -1.00 points (standard error 1.15) over 3 seeds" in md


def test_grid_only_keeps_just_the_asked_former_runs(tmp_path, bench_module, monkeypatch):
    mod = bench_module("schedules")
    rows = [_row("calr", 0.1, 0.8, 0.85, 0.7), _row("calr", 0.1, 0.8, 0.85, 0.9), _row("constant", 0.1, 0.8, 0.85),
            _row("onecycle", 0.1, 0.8, 0.85), _row("onecycle", 0.1, 0.8, 0.85, seed=5)]
    f = tmp_path / "old.json"
    f.write_text(json.dumps({"settings": {"model": "dan", "epochs": 15, "adam_eps": 0.01}, "rows": rows}))
    monkeypatch.setattr(mod, "job", lambda spec: pytest.fail(f"nothing should train, asked {spec}"))
    out = tmp_path / "new.json"
    args = ["--sets", "trec", "--seeds", "1", "--schedules", "calr,onecycle", "--lrs", "0.1", "--calr-decay", "0.7",
            "--reuse", str(f), "--out", str(out), "--jobs", "1"]
    assert mod.main([*args, "--grid-only"]) == 0
    kept = json.loads(out.read_text())["rows"]
    assert sorted((r["schedule"], r["calr_decay"], r["seed"]) for r in kept) == [("calr", 0.7, 0), ("onecycle", None, 0)]
    assert mod.main(args) == 0  # without it every former run stays in the comparison
    assert len(json.loads(out.read_text())["rows"]) == 5
