"""The speed scripts: bench_speed.py's measurements and table, device_check.py's reduced CPU run."""
import importlib.util
import json
import math

import pytest
import torch

from tests.conftest import REPO


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_steady_steps_per_second_leaves_out_each_phases_warmup(tmp_path):
    bench = load_script("bench_speed")
    rows = [{"phase": "ae", "step": 5, "seconds_per_step": 10.0}, {"phase": "ae", "step": 10, "seconds_per_step": 0.5},
            {"phase": "ae", "step": 12, "seconds_per_step": 0.5}, {"phase": "gan", "step": 5, "seconds_per_step": 9.0},
            {"phase": "gan", "step": 10, "seconds_per_step": 1.0}]
    stats = tmp_path / "train_stats.jsonl"
    stats.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # steady part: ae steps 6-12 at 0.5 s, gan steps 6-10 at 1 s -> 12 steps in 8.5 s
    assert bench.steady_steps_per_second(stats, 5) == pytest.approx(12 / 8.5)
    stats.write_text(json.dumps({"phase": "train", "step": 3, "seconds_per_step": 0.25}) + "\n")
    assert bench.steady_steps_per_second(stats, 5) == pytest.approx(4.0)  # one row: all of it counts


def test_summary_compares_profiles_by_per_round_ratios():
    bench = load_script("bench_speed")
    cells = [{"model": "m", "profile": p, "round": r, "n_params": 7, "steps_per_s": s, "samples_per_s": 1.0,
              "peak_mb": 2.0, "prevalence_r": 0.5}
             for r, (d, f) in enumerate([(10.0, 20.0), (5.0, 15.0), (4.0, 4.0)]) for p, s in (("default", d), ("fast", f))]
    (row,) = bench.summarise(cells, ["m"])
    assert row["ratios"] == [2.0, 3.0, 1.0] and row["fast_over_default"] == 2.0
    assert row["default_steps_per_s"] == 5.0 and row["fast_steps_per_s"] == 15.0
    assert "| m | 7 | 5.00 | 15.00 | 2.00 (2.00, 3.00, 1.00) |" in bench.table([row])


def test_bench_speed_tiny_run_interleaves_the_profiles(tmp_path, capsys):
    bench = load_script("bench_speed")
    out = tmp_path / "speed.json"
    result = bench.main(["--rows", "64", "--cols", "20", "--models", "vae", "--steps", "4", "--warmup", "2",
                         "--rounds", "2", "--samples", "32", "--threads", "1", "--device", "cpu", "--out", str(out)])
    assert [(c["round"], c["profile"]) for c in result["cells"]] == [(0, "default"), (0, "fast"), (1, "fast"),
                                                                      (1, "default")]
    assert result["data"] == [64, 20] and json.loads(out.read_text())["summary"][0]["model"] == "vae"
    d, f = (next(c for c in result["cells"] if c["profile"] == p and c["round"] == 0) for p in ("default", "fast"))
    assert d["prevalence_r"] == f["prevalence_r"]  # on a CPU the fast profile trains the same model
    assert "| vae | " in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench.main(["--models", "independent"])  # not a torch generator


@pytest.mark.skipif(torch.cuda.is_available(), reason="the full check is GPU work (minutes)")
def test_device_check_quick_on_cpu(tmp_path, capsys):
    out = tmp_path / "check.json"
    assert load_script("device_check").main(["--quick", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "no GPU found" in text and "not assessed (--quick)" in text and "-> AGREE" in text
    for figure in ("steps/s", "32 Heun steps", "projected paper schedule", "dense distance path"):
        assert figure in text, figure
    result = json.loads(out.read_text())
    assert result["quick"] and result["neighbors"]["agree"]
    assert set(result["training"]["profiles"]) == {"default", "fast"}
    assert all(p["steps_per_s"] > 0 for p in result["training"]["profiles"].values())


def test_corgan_diagnosis_runs_and_reads_out_both_ways(monkeypatch, capsys):
    diag = load_script("diag_corgan")
    monkeypatch.setattr("sys.argv", ["diag_corgan.py", "--pretrain-steps", "2", "--gan-steps", "1", "--n-patients",
                                     "200", "--n-codes", "40", "--warmup-d-updates", "2"])
    diag.main()
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("pretrain 2 steps: BCE/record") and out[1].startswith("gan 1: critic loss")
    real = torch.tensor([0.1, 0.2, 0.4]).numpy()
    assert math.isnan(diag.prevalence_r(real, torch.zeros(4, 3).numpy()))  # an all-zero sample has no r
    assert diag.prevalence_r(real, torch.tensor([[0.1, 0.2, 0.4]]).numpy()) == pytest.approx(1.0)


def test_bench_official_pairs_each_round_and_checks_its_arguments(capsys):
    bench = load_script("bench_official")
    cells = [{"net": "cinc", "round": r, "loop": loop, "steps_per_s": s}
             for r, row in enumerate([(12.0, 8.0, 10.0), (9.0, 6.0, 6.0), (14.0, 7.0, 7.0)])
             for loop, s in zip(("ours", "official", "official-noddp"), row)]
    official, noddp = bench.summarise(cells)
    assert official["ratios"] == [1.5, 1.5, 2.0] and official["ratio_median"] == 1.5
    assert noddp["ratios"] == [1.2, 1.5, 2.0] and noddp["ours_steps_per_s"] == 12.0
    cinc = bench.net_params("cinc")  # the official CinC config: configs/cinc/train_edm.yaml
    assert (cinc["time_dim"], cinc["unit_dims"], cinc["batch_size"], cinc["sigma_data"]) == (128, [512, 768, 1024, 768, 512], 256, 0.03)
    assert bench.net_params("mimic")["unit_dims"] == [1024, 384, 384, 384, 1024]
    with pytest.raises(SystemExit):
        bench.main(["--nets", "cinc,gan"])
    assert "unknown net 'gan'; valid choices: mimic, cinc, tabddpm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--nets", "tabddpm"])
    assert "--tabddpm-repo must name a checkout of the official code for nets tabddpm" in capsys.readouterr().err
