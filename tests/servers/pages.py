"""A local web server on 127.0.0.1 that serves saved documentation pages for the live-research tests.

The pages are small copies written in our own words of the shapes that matter: a Hub model card page
(nav, scripts, the card in <article>), its raw README, a transformers task guide with code blocks,
plus a 404, a page that never answers (timeout), a redirect, a redirect loop and a binary file.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

MODEL_ID = "acme/vit-tiny-demo"

MODEL_CARD_HTML = """<!doctype html>
<html><head><title>acme/vit-tiny-demo · Hugging Face</title>
<script>window.__hubConfig = {"analytics": true};</script>
<style>.nav{color:red}</style></head>
<body>
<header><nav><a href="/models">Models</a><a href="/datasets">Datasets</a><a href="/pricing">Pricing</a></nav></header>
<main>
<article class="model-card-content">
<h1>ViT tiny demo</h1>
<p>A small Vision Transformer pretrained on ImageNet-21k and fine-tuned on ImageNet-1k at 224x224.</p>
<h2>How to fine-tune</h2>
<p>Load the checkpoint with <code>AutoModelForImageClassification</code> and the matching <code>AutoImageProcessor</code>.
We trained with a learning rate of 3e-5, batch size 64 and a cosine schedule.</p>
<pre><code class="language-python">from transformers import AutoImageProcessor, AutoModelForImageClassification

processor = AutoImageProcessor.from_pretrained("acme/vit-tiny-demo")
model = AutoModelForImageClassification.from_pretrained(
    "acme/vit-tiny-demo", num_labels=10, ignore_mismatched_sizes=True
)
</code></pre>
<h2>Evaluation</h2>
<ul><li>Top-1 accuracy on ImageNet-1k validation: 81.2</li><li>Metric: accuracy</li></ul>
<table><tr><th>split</th><th>accuracy</th></tr><tr><td>validation</td><td>0.812</td></tr></table>
</article>
</main>
<footer><nav><a href="/terms">Terms</a></nav></footer>
<script>console.log("tracking")</script>
</body></html>
"""

README_MD = """---
license: apache-2.0
tags:
- vision
- image-classification
datasets:
- imagenet-1k
---

# ViT tiny demo

Fine-tune with `AutoModelForImageClassification`.
The learning rate we used was 3e-5.

```python
from transformers import AutoModelForImageClassification
model = AutoModelForImageClassification.from_pretrained("acme/vit-tiny-demo")
```

## Limitations

Trained at 224 px only.
"""

DOCS_HTML = """<!doctype html>
<html><head><title>Image classification</title><script src="/app.js"></script></head>
<body>
<nav class="sidebar"><ul><li><a href="/docs/quicktour">Quick tour</a></li><li><a href="/docs/tasks">Tasks</a></li></ul></nav>
<div class="main">
<h1>Image classification</h1>
<p>This guide fine-tunes a ViT checkpoint on a food dataset and uses it for inference.</p>
<h2>Preprocess</h2>
<p>Build the train transforms from the image processor's mean and std, with a random resized crop.</p>
<pre>from torchvision.transforms import Compose, Normalize, RandomResizedCrop, ToTensor

normalize = Normalize(mean=image_processor.image_mean, std=image_processor.image_std)
_transforms = Compose([RandomResizedCrop(size), ToTensor(), normalize])
</pre>
<p>Batch the examples with <code>DefaultDataCollator</code>; it does no padding.</p>
<pre>from transformers import DefaultDataCollator

data_collator = DefaultDataCollator()
</pre>
<h2>Evaluate</h2>
<p>Accuracy is computed from the argmax of the logits in <code>compute_metrics</code>.</p>
<h2>Train</h2>
<pre>training_args = TrainingArguments(
    output_dir="food_model",
    remove_unused_columns=False,
    eval_strategy="epoch",
    learning_rate=5e-5,
    per_device_train_batch_size=16,
    num_train_epochs=3,
    warmup_steps=0.1,
)
</pre>
</div>
<footer>Docs footer</footer>
</body></html>
"""


@dataclass
class Route:
    """What one path answers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


def default_routes() -> dict[str, Route]:
    """The saved pages and the failure cases."""
    return {
        f"/{MODEL_ID}": Route(body=MODEL_CARD_HTML.encode()),
        f"/{MODEL_ID}/resolve/main/README.md": Route(body=README_MD.encode(), content_type="text/markdown; charset=utf-8"),
        "/docs/transformers/tasks/image_classification": Route(body=DOCS_HTML.encode()),
        "/old/image_classification": Route(status=301, headers={"Location": "/docs/transformers/tasks/image_classification"}),
        "/loop": Route(status=302, headers={"Location": "/loop"}),
        "/slow": Route(body=b"<html><body><p>too late</p></body></html>", hang=True),
        "/weights.bin": Route(body=b"\x00\x01\x02" * 100, content_type="application/octet-stream"),
        "/flaky": Route(status=503, body=b"busy"),
        "/raw/README.md": Route(body=README_MD.encode(), content_type="application/octet-stream"),
        "/raw/blob.json": Route(body=b'{"a": 1}\x00\x01', content_type="application/octet-stream"),
    }


class PageServer:
    """A threaded HTTP server on 127.0.0.1 with a fixed route table; records every path requested."""

    def __init__(self, routes: dict[str, Route] | None = None):
        self.routes = routes if routes is not None else default_routes()
        self.requested: list[str] = []
        self.release = threading.Event()
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "PageServer":
        pages = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:
                pages.requested.append(self.path)
                route = pages.routes.get(self.path.split("?")[0])
                if route is None:
                    route = Route(status=404, body=b"<html><body><h1>404</h1></body></html>")
                if route.hang:
                    pages.release.wait(30)
                self.send_response(route.status)
                self.send_header("Content-Type", route.content_type)
                for k, v in route.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                try:
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextmanager
def serve_pages(routes: dict[str, Route] | None = None) -> Iterator[PageServer]:
    """Run a PageServer for the duration of a with-block."""
    server = PageServer(routes).start()
    try:
        yield server
    finally:
        server.stop()
