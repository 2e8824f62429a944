import socket
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import pytest

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools import ngc
from tao_finetune.tools.base import NeedsUser, NoArgs, ToolError

SNAPSHOT = resources.files("tao_finetune.references").joinpath("snapshots/ngc-pytorch-support-matrix.html").read_text()

RELEASE_NOTES_TABLE = """<html><body><h2>NVIDIA PyTorch Container Versions</h2>
<table><tr><th>Container Version</th><th>Ubuntu</th><th>CUDA Toolkit</th><th>PyTorch</th><th>TensorRT</th></tr>
<tr><td>26.02</td><td>24.04</td><td>NVIDIA CUDA 13.2.0</td><td>2.12.0a0+abc</td><td>10.16</td></tr>
<tr><td>25.11</td><td>24.04</td><td>NVIDIA CUDA 13.0.2</td><td>2.10.0rc1</td><td>10.14</td></tr>
<tr><td>25.10</td><td>24.04</td><td>NVIDIA CUDA 13.0.2</td><td>2.9.0b2</td><td>10.13</td></tr>
<tr><td>25.01</td><td>24.04</td><td>NVIDIA CUDA 12.8.0</td><td>2.6.0a0</td><td>10.8</td></tr>
</table></body></html>"""


@contextmanager
def serve(pages: dict[str, tuple[int, str]]):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            status, body = pages.get(self.path, (404, "not found"))
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def dead_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/support-matrix.html"


def make_ctx(tmp_path, **cfg):
    base = dict(model_id="acme/vit-tiny", output_dir=str(tmp_path / "out"), gpu_count=1,
                gpu_name="NVIDIA H100 80GB HBM3", driver_major=580, vram_gb_per_gpu=85.5)
    config = RunConfig(**{**base, **cfg})
    creds = Credentials({})
    ctx = RunContext(config=config, session=SessionLog(tmp_path / "session.jsonl", creds), creds=creds)
    ctx.state.record("audit", {"passed": True, "items": [], "host": {"cuda": "13.0", "driver_major": 580}})
    return ctx


def test_parse_snapshot_column_layout():
    images = ngc.parse_support_matrix(SNAPSHOT)
    versions = [i.version for i in images]
    assert versions[:3] == ["25.12", "25.11", "25.10"]
    assert versions[-1] == "24.09" and len(versions) == 14
    by = {i.version: i for i in images}
    assert by["25.12"].cuda == "13.1.0" and by["25.12"].min_driver == 590
    assert by["25.11"].tag == "nvcr.io/nvidia/pytorch:25.11-py3"
    assert by["25.01"].pytorch == "2.6.0a0+ecf3bae40a"


def test_choice_respects_driver_and_cuda_ceilings():
    images = ngc.parse_support_matrix(SNAPSHOT)
    assert ngc.choose_image(images, 580, (13, 0)).version == "25.11"  # 25.12 needs CUDA 13.1 / driver 590
    assert ngc.choose_image(images, 590, (13, 1)).version == "25.12"
    assert ngc.choose_image(images, 570, (12, 8)).version == "25.03"
    assert ngc.choose_image(images, 575, (13, 0)).version == "25.06"  # driver is the binding limit
    assert ngc.choose_image(images, 535, (12, 2)) is None


def test_row_layout_and_prerelease_suffixes_are_not_rejected():
    images = ngc.parse_support_matrix(RELEASE_NOTES_TABLE)
    by = {i.version: i for i in images}
    assert by["26.02"].min_driver > 590  # CUDA newer than the known table: assumed to need a newer driver
    assert by["25.11"].min_driver == 580  # no driver column: derived from CUDA 13.0
    chosen = ngc.choose_image(images, 580, (13, 0))
    assert chosen.version == "25.11" and chosen.pytorch == "2.10.0rc1"


def test_curated_table_is_consistent_with_the_snapshot():
    curated = {i.version: i for i in ngc.load_curated()}
    for img in ngc.parse_support_matrix(SNAPSHOT):
        assert curated[img.version].cuda == img.cuda
        assert curated[img.version].min_driver == img.min_driver


def test_select_image_live_from_local_server(tmp_path):
    with serve({"/support-matrix/index.html": (200, SNAPSHOT)}) as base:
        ctx = make_ctx(tmp_path)
        url = f"{base}/support-matrix/index.html"
        out = ngc.select_image(ctx, ngc.SelectImageArgs(url=url))
    assert out["ngc_image"] == "nvcr.io/nvidia/pytorch:25.11-py3"
    assert out["rank"] == "live" and out["source"] == url
    assert ctx.config.ngc_image == "nvcr.io/nvidia/pytorch:25.11-py3"
    assert url in ctx.config.research_sources
    assert ctx.state.live_attempts["ngc_image"][0]["url"] == url
    saved = ctx.run_dir / "meta" / "sources" / "ngc-support-matrix.html"
    assert saved.read_text() == SNAPSHOT
    assert "ngc_image: nvcr.io/nvidia/pytorch:25.11-py3" in (ctx.run_dir / "config.yaml").read_text()


@pytest.mark.parametrize("case", ["404", "down", "no-table"])
def test_select_image_falls_back_to_curated(tmp_path, monkeypatch, case):
    pages = {"/empty.html": (200, "<html><body><p>moved</p></body></html>")}
    with serve(pages) as base:
        url = {"404": f"{base}/missing.html", "down": dead_url(), "no-table": f"{base}/empty.html"}[case]
        monkeypatch.setenv(ngc.URL_ENV, url)
        ctx = make_ctx(tmp_path)
        out = ngc.select_image(ctx, ngc.SelectImageArgs())
    assert out["rank"] == "reference" and out["source"] == "references/ngc_images.yaml"
    assert out["ngc_image"] == "nvcr.io/nvidia/pytorch:25.11-py3"
    attempt = ctx.state.live_attempts["ngc_image"][0]
    assert attempt["url"] == url
    expected = {"404": "HTTP 404", "down": "fetch failed", "no-table": "no PyTorch container table"}[case]
    assert expected in attempt["outcome"]
    assert any(url in n and "fell back" in n for n in ctx.config.notes)
    assert url not in ctx.config.research_sources


def test_user_image_overrides_and_is_recorded_as_user_input(tmp_path):
    ctx = make_ctx(tmp_path, image="registry.local/pytorch:custom", gpu_count=0, gpu_name="cpu", driver_major=0, vram_gb_per_gpu=0.0)
    out = ngc.select_image(ctx, ngc.SelectImageArgs(url=dead_url()))
    assert out["ngc_image"] == "registry.local/pytorch:custom"
    assert ctx.config.ngc_image == "registry.local/pytorch:custom"
    assert "ngc_image" in ctx.config.user_set
    assert ctx.state.records["image"]["rank"] == "user"
    assert "ngc_image" not in ctx.state.live_attempts


def test_no_gpu_without_image_asks(tmp_path):
    ctx = make_ctx(tmp_path, gpu_count=0, gpu_name="cpu", driver_major=0, vram_gb_per_gpu=0.0, allow_cpu=True)
    with pytest.raises(NeedsUser) as exc:
        ngc.select_image(ctx, ngc.SelectImageArgs(url=dead_url()))
    assert "--image" in exc.value.how_to_answer


def test_old_driver_gets_no_image(tmp_path):
    with serve({"/m.html": (200, SNAPSHOT)}) as base:
        ctx = make_ctx(tmp_path, driver_major=535)
        with pytest.raises(ToolError, match="supports driver 535"):
            ngc.select_image(ctx, ngc.SelectImageArgs(url=f"{base}/m.html"))
    assert ctx.config.ngc_image is None


def test_local_platform_needs_no_image(tmp_path):
    ctx = make_ctx(tmp_path, platform="local")
    out = ngc.select_image(ctx, ngc.SelectImageArgs(url=dead_url()))
    assert out["ngc_image"] is None and "skipped" in out


def test_model_fit(tmp_path):
    ctx = make_ctx(tmp_path, model_facts={"param_count": 7_000_000_000})
    out = ngc.check_model_fit(ctx, NoArgs())
    assert out == {"bf16_gb": 14.0, "limit_gb": 51.3, "fits": True, "training_method": "full"}

    big = make_ctx(tmp_path, model_facts={"param_count": 30_000_000_000})
    with pytest.raises(NeedsUser) as exc:
        ngc.check_model_fit(big, NoArgs())
    assert "LoRA" in exc.value.question and "60.0 GB" in exc.value.question
    assert big.state.records["model_fit"]["fits"] is False

    lora = make_ctx(tmp_path, model_facts={"param_count": 30_000_000_000},
                    hyperparameters={"training_method": "lora"})
    assert ngc.check_model_fit(lora, NoArgs())["fits"] is False


def test_model_fit_skips_cpu_and_needs_params(tmp_path):
    cpu = make_ctx(tmp_path, gpu_count=0, gpu_name="cpu", driver_major=0, vram_gb_per_gpu=0.0, model_facts={"param_count": 10})
    assert "skipped" in ngc.check_model_fit(cpu, NoArgs())
    assert any("model-fit check skipped" in n for n in cpu.config.notes)
    with pytest.raises(ToolError, match="param_count"):
        ngc.check_model_fit(make_ctx(tmp_path), NoArgs())


def test_hardware_compat_rules_follow_the_chosen_image(tmp_path):
    old = """<table><tr><th>Container Version</th><th>24.09</th><th>24.05</th></tr>
    <tr><td>CUDA</td><td>NVIDIA CUDA 12.6.1</td><td>NVIDIA CUDA 12.4.1</td></tr>
    <tr><td>PyTorch</td><td>2.5.0a0</td><td>2.4.0a0</td></tr></table>"""
    with serve({"/old.html": (200, old)}) as base:
        ctx = make_ctx(tmp_path, driver_major=560, model_facts={"gqa": True}, applicable_workarounds=["some-probe-rule"])
        ctx.state.records["audit"]["host"]["cuda"] = "12.6"
        out = ngc.select_image(ctx, ngc.SelectImageArgs(url=f"{base}/old.html"))
    assert out["ngc_image"] == "nvcr.io/nvidia/pytorch:24.09-py3"
    assert "sdpa-gqa-old-ngc" in out["compat"]
    assert ctx.config.applicable_workarounds[0] == "some-probe-rule"
    assert "sdpa-gqa-old-ngc" in ctx.config.applicable_workarounds
