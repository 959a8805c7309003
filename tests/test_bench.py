import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from annotlib.data.synthetic import generate_synthetic
from annotlib.train import run as run_module
from annotlib.train.loop import native_bf16

SCRIPTS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_script("train_throughput")


def test_train_throughput_reports_every_number(bench, tmp_path, monkeypatch, capsys):
    root = generate_synthetic(tmp_path / "synthetic", num_images=40, image_size=32, seed=3)

    def broken_compile(model, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)  # the A/B arm must fail gracefully
    out = tmp_path / "result.json"
    report = bench.main(["--dataset", "synthetic", "--data-root", str(root), "--device", "cpu",
                         "--backbone", "resnet10t", "--image-size", "32", "--batch-size", "4",
                         "--steps", "2", "--warmup", "1", "--eval-batch-size", "8", "--ab",
                         "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))

    for name in ("S", "T", "R", "inference"):
        m = report["measurements"][name]
        assert m["img_per_s"] > 0 and m["seconds"] > 0 and m["peak_mem_mib"] > 0, name
        assert m["images"] == 8, name  # steps x batch; inference: whole eval batches of those
    assert 0 <= report["measurements"]["T"]["data_share"] <= 1
    assert report["measurements"]["T"]["input_layout"] == "channels_last"  # the CPU default
    assert set(report["ratios"]) == {"T/S", "T/R", "inference/T"}
    assert all(v > 0 for v in report["ratios"].values())
    assert report["goals"] == {"T/S": 0.8, "T/R": 1.5}
    assert report["gflops_per_image"] > 0 and report["mfu"] is None
    env = report["environment"]
    assert env["device"] == "cpu" and env["threads"] >= 1 and env["torch"] == torch.__version__
    assert env["device_name"] and env["load_start"] >= 0 and env["load_end"] >= 0

    bf16 = {"bf16"} if native_bf16(torch.device("cpu")) else set()  # A/B only where it is fast
    assert set(report["ab"]) == {"channels_last", "compile"} | bf16
    for arm in ("on", "off"):
        assert all(report["ab"]["channels_last"][arm][k]["img_per_s"] > 0 for k in ("S", "T"))
    assert "no compiler here" in report["ab"]["compile"]["on"]["error"]
    assert report["ab"]["compile"]["off"]["T"] == report["measurements"]["T"]

    printed = capsys.readouterr().out
    assert "MFU: n/a" in printed and "T/S" in printed and "compile=True failed" in printed


def test_depthwise_convolution_backward_costs_two_forwards(bench):
    conv = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    forward = 2 * 2 * 8 * 16 * 16 * 9  # 2 FLOPs per multiply-add, one 3x3 filter per channel
    fixed = {torch.ops.aten.convolution_backward: bench.conv_backward_flops}
    with FlopCounterMode(display=False, custom_mapping=fixed) as counter:
        conv(x).sum().backward()
    assert counter.get_total_flops() == 3 * forward


def test_precision_ab_trains_three_arms_and_reports_differences_from_fp32(tmp_path, monkeypatch, capsys):
    precision_ab = load_script("precision_ab")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)  # any CPU runs every arm
    root = generate_synthetic(tmp_path / "synthetic", num_images=60, image_size=32, seed=4)
    settings = ["dataset=synthetic", f"data_root={root}", "backbone=resnet10t", "image_size=32",
                "epochs=2", "batch_size=16", "device=cpu", "progress=false"]
    out = tmp_path / "result.json"
    report = precision_ab.main(["--out", str(tmp_path / "runs"), "--set", *settings, "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))

    names = ["bf16-channels_last", "fp32-channels_last", "fp32-nchw"]  # the CPU default is channels_last
    assert list(report["runs"]) == names and set(report["differences_from_fp32"]) == {names[0], names[2]}
    for name in names:
        run = tmp_path / "runs" / name
        config, metrics = (json.loads((run / f).read_text()) for f in ("config.json", "metrics.json"))
        assert config["bf16"] is name.startswith("bf16")
        assert config["channels_last"] is (False if name == "fp32-nchw" else None)
        assert report["runs"][name]["mAP"] == pytest.approx(100 * metrics["test"]["mAP"])
        assert report["runs"][name]["CF1 tuned"] == pytest.approx(100 * metrics["test"]["CF1@tuned"])
        assert report["runs"][name]["N+@0.5"] == metrics["test"]["N+@0.5"]
    fp32 = report["runs"]["fp32-channels_last"]
    for name, diff in report["differences_from_fp32"].items():
        assert diff["OF1@0.5"] == pytest.approx(report["runs"][name]["OF1@0.5"] - fp32["OF1@0.5"])
    assert "fp32-nchw - fp32" in capsys.readouterr().out

    monkeypatch.setattr(run_module, "fit", lambda *args, **kwargs: pytest.fail("trained again"))
    again = precision_ab.main(["--out", str(tmp_path / "runs"), "--set", *settings, "--json", str(out)])
    assert again["runs"] == report["runs"]  # finished runs are read back, not trained again


def test_precision_ab_refuses_a_device_without_bf16(tmp_path, monkeypatch):
    precision_ab = load_script("precision_ab")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    with pytest.raises(SystemExit, match="no bf16 arithmetic"):
        precision_ab.main(["--out", str(tmp_path), "--set", "device=cpu"])


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_step_and_its_numbers(tmp_path):
    run = subprocess.run(["bash", str(SCRIPTS / "gpu_check.sh"), "--device", "cpu", "--out", str(tmp_path)],
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True,
                         check=False)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check-cpu.json").read_text())
    assert set(report) == {"device", "dry_run", "sizes", "seconds", "steps", "throughput", "compile", "streaming"}
    assert report["device"] == "cpu" and report["dry_run"] is True and "--image-size 32" in report["sizes"]
    bf16 = {"bf16"} if native_bf16(torch.device("cpu")) else set()
    for name, options in (("throughput", {"channels_last"} | bf16), ("compile", {"compile"})):
        step, numbers = report["steps"][name], report[name]
        assert step["exit_code"] == 0 and not step["timed_out"] and 0 <= step["seconds"] <= report["seconds"]
        assert numbers == json.loads((tmp_path / f"gpu_check-{name}-cpu.json").read_text())
        assert "written to" in Path(step["output"]).read_text()
        assert {"config", "measurements", "ratios", "goals", "gflops_per_image", "mfu", "ab", "environment"} \
            <= set(numbers)
        assert numbers["config"]["backbone"] == "resnet10t" and numbers["config"]["image_size"] == 32
        assert set(numbers["measurements"]) == {"S", "T", "R", "inference"}
        assert set(numbers["ab"]) == options
        for option, arms in numbers["ab"].items():  # every arm measured, compile's too (eagerly)
            assert all(arms[arm][key]["img_per_s"] > 0 for arm in ("on", "off") for key in ("S", "T")), option
    streaming = report["steps"]["streaming"]
    if (SCRIPTS / "streaming.py").exists():  # its memory part, on 64 images
        assert streaming["exit_code"] == 0 and not streaming["timed_out"], report["streaming"]
        assert report["streaming"]["printed"] == Path(streaming["output"]).read_text().splitlines() != []
    else:
        assert streaming == {"skipped": "benchmarks/streaming.py is not present"} and report["streaming"] is None
