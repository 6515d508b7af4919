"""Smoke run of the benchmark code path at a tiny size: the table has its rows and columns.
No timing assertions."""

import json

import torch

from synthct import bench


def tiny_settings(**overrides) -> bench.Settings:
    settings = bench.Settings(device="cpu", threads=None, repeats=1, warmup=0, train_sizes=[(32, 4)], blocks=1,
                              inference_size=32, inference_batch=2, volume_shape=(3, 32, 32), data_volumes=1,
                              quality_steps=2, quality_size=32)
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def test_tiny_benchmark_table_has_every_row(monkeypatch):
    monkeypatch.setattr(bench, "matmul_rate", lambda dtype, device, n=2048, repeats=3: 0.1)
    report = bench.run_benchmarks(tiny_settings(only=("train", "inference", "volume", "data", "quality")))
    names = [row.name for row in report.rows]
    assert names[:4] == ["train_32", "inference_32", "volume_32x32x3", "data_wait_share"]
    assert {"quality_G_gan", "quality_cycle_mr", "quality_idt_ct", "quality_D_ct"} <= set(names)
    train = report.rows[0]
    assert train.fp32 > 0 and train.auto > 0
    assert train.floor_fp32 > 0 and train.floor_auto > 0  # counted FLOPs / measured rate
    assert 0 < report.rows[3].fp32 < 100
    table = report.markdown()
    assert "| train_32 | s/it |" in table and "floor fp32" in table
    data = json.loads(json.dumps(report.to_dict()))
    assert data["auto_precision"] in ("fp32", "bf16") and len(data["rows"]) == len(names)


def test_flop_count_of_a_convolution_is_exact():
    conv = torch.nn.Conv2d(2, 3, 3, padding=1, bias=False)
    x = torch.randn(1, 2, 8, 8)
    assert bench.count_flops(lambda: conv(x)) == 2 * (2 * 9) * 3 * 8 * 8


def test_status_reports_how_far_a_target_is_missed():
    assert bench.Row("x", "s", fp32=4.0, auto=3.0, target=1.5).status() == "missed x2.00"
    assert bench.Row("x", "s", fp32=1.0, auto=3.0, target=1.5).status() == "met"


def test_memory_probe_runs_in_a_fresh_process():
    peak = bench.train_peak_memory_mib(32, 4, 1, "fp32", "cpu", steps=1)
    assert 50 < peak < 4096


def test_cli_options():
    import argparse

    from synthct.commands import bench as command

    assert command.SECTIONS == bench.SECTIONS
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    settings = bench.settings_from_args(parser.parse_args(["--quick", "--repeats", "5", "--only", "train"]))
    assert settings.train_sizes == [(128, 32)] and settings.repeats == 5 and settings.only == ("train",)


def test_bench_perf_keeps_an_existing_table_and_refuses_bad_threads_in_one_line(tmp_path, capsys):
    kept = tmp_path / "table.json"
    kept.write_text("earlier results")
    assert bench.main(["--json", str(kept), "--only", "data"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"synthct: error: {kept}: already exists; pass --overwrite to replace it"]
    assert kept.read_text() == "earlier results"
    assert bench.main(["--threads", "-1"]) == 2
    assert "--threads must be 0" in capsys.readouterr().err
