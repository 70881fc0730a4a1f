"""Test helpers for presets: a local HTTP server for big_vision fixture files
and a test-only named preset built from the fixtures' own configs."""

import http.server
import io
import json
import threading

import numpy as np
import pytest

from common import BIG_VISION_FIXTURES  # paths and to_numpy live in tests/common.py


class FileServer:
    """Serves named byte strings over HTTP on 127.0.0.1 in a thread.

    `files[path] = bytes` serves them; `truncate[path] = n` announces the
    full Content-Length but sends only n bytes then closes the connection.
    `requests` lists the paths asked for (GET)."""

    def __init__(self):
        self.files = {}
        self.truncate = {}
        self.requests = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append(self.path)
                data = server.files.get(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                cut = server.truncate.get(self.path)
                self.wfile.write(data if cut is None else data[:cut])
                self.wfile.flush()
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, path):
        return self.base + path

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def fixture_bytes(name):
    return (BIG_VISION_FIXTURES / name).read_bytes()


def stage2_meta():
    io_file = np.load(BIG_VISION_FIXTURES / "stageII_io.npz")
    return io_file, json.loads(str(io_file["meta/config_json"]))


def npz_with_wrong_shape(name, key):
    """The fixture .npz `name` with array `key` given one extra row."""
    src = np.load(BIG_VISION_FIXTURES / name)
    arrays = {k: src[k] for k in src.files}
    arrays[key] = np.concatenate([arrays[key], arrays[key][:1]], axis=0)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def fixture_spec(name, server, stage1_path="/stageI_panoptic_params.npz",
                 stage2_path="/stageII_params.npz", complete=True):
    """A test-only PresetSpec from stageII_io.npz's meta (LM config and the
    stage1_panoptic config), with URLs on the local server."""
    from uvim_keras.presets import PresetSpec

    _, meta = stage2_meta()
    return PresetSpec(
        name=name, task="panoptic", description="fixture-backed test preset",
        stage1_url=server.url(stage1_path), stage1_config=meta["stage1_panoptic"],
        stage2_url=server.url(stage2_path) if complete else None,
        lm_config=meta["model"] if complete else None,
        metrics={"PQ": 12.5}, metrics_note="made-up test number", dataset="fixture",
        temperature=0.0,
    )


# -- fixtures shared by the preset tests (import them into the test module) ----------
@pytest.fixture(scope="module")
def server():
    srv = FileServer()
    for name in ("stageI_panoptic_params.npz", "stageII_params.npz"):
        srv.files["/" + name] = fixture_bytes(name)
    yield srv
    srv.close()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    path = tmp_path / "cache"
    monkeypatch.setenv("UVIM_KERAS_CACHE", str(path))
    return path


@pytest.fixture
def registered():
    from uvim_keras.presets import register_preset, unregister_preset

    names = []

    def add(spec):
        register_preset(spec, overwrite=True)
        names.append(spec.name)
        return spec

    yield add
    for name in names:
        unregister_preset(name)
