"""Step 3: fetch live docs, read curated references, record the recipe with its source and rank."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urljoin, urlsplit

import httpx
import yaml
from bs4 import BeautifulSoup
from pydantic import BaseModel, Field, ValidationError
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from tao_finetune.agent import authority, policy
from tao_finetune.agent.config import RANKS, Hyperparameters, RunConfig, atomic_write_text
from tao_finetune.agent.context import RunContext
from tao_finetune.agent import references
from tao_finetune.agent.gates import OPTIONAL_SLOTS, RECIPE_SLOTS
from tao_finetune.agent.state import RunState
from tao_finetune.tools.base import ToolError, tool
from tao_finetune.tools.probe import endpoint
from tao_finetune.tools.task import lora_unavailable

REFERENCES = "tao_finetune.references"
# training_method is the user's choice (core rule: never substitute it); research may only suggest it.
HP_NAMES = tuple(n for n in Hyperparameters.model_fields if n != "training_method")
SLOT_NAMES = (*RECIPE_SLOTS, *OPTIONAL_SLOTS, *HP_NAMES)
Slot = Literal[SLOT_NAMES]  # type: ignore[valid-type]
AttemptSlot = Literal[("*", *SLOT_NAMES)]  # type: ignore[valid-type]
HP_ALIASES = {
    "lr": "learning_rate",
    "batch_size": "per_device_train_batch_size",
    "train_batch_size": "per_device_train_batch_size",
    "eval_batch_size": "per_device_eval_batch_size",
    "scheduler": "lr_scheduler_type",
    "epochs": "n_epochs",
    "num_train_epochs": "n_epochs",
}
TEXT_TYPES = ("text/html", "application/xhtml+xml", "text/markdown", "text/x-markdown", "text/plain")
# Raw files some servers (the Hub's /resolve/, object stores) send as application/octet-stream.
TEXT_SUFFIXES = (".md", ".txt", ".py", ".rst", ".yaml", ".yml", ".json", ".ipynb", ".cfg", ".toml")
EXCERPT_CHARS = 6000
USER_AGENT = "tao-finetune/0.1 (+live recipe research)"

# Task -> transformers task-guide page and example script.
# Pages: https://huggingface.co/docs/transformers/tasks/<page>; scripts under
# https://github.com/huggingface/transformers/tree/main/examples/pytorch (checked with find_files).
TASK_DOCS = {
    "image-classification": "image_classification",
    "object-detection": "object_detection",
    "semantic-segmentation": "semantic_segmentation",
    "image-text-to-text": "image_text_to_text",
    "text-classification": "sequence_classification",
}
TASK_SCRIPTS = {
    "image-classification": "examples/pytorch/image-classification/run_image_classification.py",
    "object-detection": "examples/pytorch/object-detection/run_object_detection.py",
    "semantic-segmentation": "examples/pytorch/semantic-segmentation/run_semantic_segmentation.py",
    "text-classification": "examples/pytorch/text-classification/run_classification.py",
}
TRL_VLM_SCRIPT = "https://raw.githubusercontent.com/huggingface/trl/main/examples/scripts/sft_vlm.py"


class FetchError(Exception):
    """A fetch that failed; `transient` says whether retrying may help."""

    def __init__(self, reason: str, transient: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.transient = transient


@dataclass
class Page:
    """A fetched page: final URL, content type, body text and whether the size cap cut it."""

    url: str
    final_url: str
    status: int
    content_type: str
    body: str
    truncated: bool


def _transient(err: BaseException) -> bool:
    return isinstance(err, FetchError) and err.transient


MIRRORS_ENV = "TAO_DOCS_MIRRORS"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme, 0)
    return f"{parts.scheme}://{host}:{port}"


def mirror_map(raw: str | None = None) -> dict[str, str]:
    """`TAO_DOCS_MIRRORS`: 'https://huggingface.co=http://127.0.0.1:8080 https://github.com=...' (comma or space separated).

    Pages of a named origin are fetched from its mirror (air-gapped users, tests); the Hub endpoint the user configured
    (HF_ENDPOINT) is a mirror of itself. Mirrors are the only non-https, non-public addresses fetch_docs ever contacts.
    """
    raw = os.environ.get(MIRRORS_ENV, "") if raw is None else raw
    out: dict[str, str] = {}
    for item in re.split(r"[,\s]+", raw.strip()):
        if "=" in item:
            src, dst = item.split("=", 1)
            out[_origin(src)] = dst.rstrip("/")
    hub = endpoint().rstrip("/")
    out.setdefault(_origin(hub), hub)
    return out


def _public(host: str) -> str | None:
    """None when every address of host is public; else why not (unresolvable, loopback, private, link-local, ...)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError) as err:
        return f"cannot resolve {host!r} ({err.__class__.__name__})"
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if not addr.is_global or addr.is_multicast:
            kind = ("loopback" if addr.is_loopback else "link-local" if addr.is_link_local else
                    "private" if addr.is_private else "reserved/non-public")
            return f"{host!r} resolves to a {kind} address ({addr})"
    return None


def route(url: str, mirrors: dict[str, str]) -> str:
    """The address to request for a logical URL: its mirror, or the URL itself when it is https to a public host."""
    parts = urlsplit(url)
    base = mirrors.get(_origin(url))
    if base is not None:
        rest = parts.path + (f"?{parts.query}" if parts.query else "")
        return base + (rest if rest.startswith("/") else "/" + rest)
    if parts.scheme != "https":
        raise FetchError(f"refused: only https URLs are fetched (got {parts.scheme or 'no scheme'!r})")
    why = _public(parts.hostname or "")
    if why:
        raise FetchError(f"refused: {why}")
    return url


def unroute(actual: str, mirrors: dict[str, str]) -> str:
    """The logical URL of an address that may be a mirror's (so redirects are re-checked against the original origin)."""
    for origin, base in mirrors.items():
        if actual == base or actual.startswith(base + "/") or actual.startswith(base + "?"):
            scheme, hostport = origin.split("://", 1)
            host, port = hostport.rsplit(":", 1)
            default = {"https": "443", "http": "80"}.get(scheme)
            return f"{scheme}://{host}{'' if port == default else ':' + port}{actual[len(base):]}"
    return actual


@dataclass
class Fetcher:
    """HTTP GET with timeouts, a size cap, redirects, and retries on transient errors only."""

    timeout_s: float = 20.0
    attempts: int = 3
    wait_s: float = 0.5
    max_bytes: int = 4_000_000
    max_redirects: int = 5
    mirrors: dict[str, str] | None = None  # None = mirror_map() from the environment at each fetch

    def get(self, url: str) -> Page:
        """Fetch `url`; raises FetchError with a one-line reason."""
        retrying = Retrying(
            stop=stop_after_attempt(self.attempts),
            wait=wait_exponential(multiplier=self.wait_s, max=max(self.wait_s * 8, 0.0)),
            retry=retry_if_exception(_transient),
            reraise=True,
        )
        for attempt in retrying:
            with attempt:
                return self._once(url)
        raise AssertionError("unreachable")

    def _once(self, url: str) -> Page:
        mirrors = self.mirrors if self.mirrors is not None else mirror_map()
        logical = url
        try:
            with httpx.Client(
                follow_redirects=False,
                timeout=self.timeout_s,
                headers={"User-Agent": USER_AGENT, "Accept": "text/html,text/markdown,text/plain;q=0.9,*/*;q=0.1"},
            ) as client:
                for _ in range(self.max_redirects + 1):
                    actual = route(logical, mirrors)  # every hop is checked: https, public address, or a named mirror
                    with client.stream("GET", actual) as r:
                        location = r.headers.get("location")
                        if r.status_code in (301, 302, 303, 307, 308) and location:
                            logical = unroute(urljoin(actual, location), mirrors)
                            continue
                        return self._read(url, logical, r)
                raise httpx.TooManyRedirects("redirect loop")
        except httpx.TooManyRedirects:
            raise FetchError(f"more than {self.max_redirects} redirects") from None
        except httpx.TimeoutException as err:
            raise FetchError(f"timeout after {self.timeout_s:g}s ({type(err).__name__})", True) from None
        except httpx.ConnectError as err:
            raise FetchError(f"connect error: {str(err).splitlines()[0] if str(err) else type(err).__name__}", True) from None
        except (httpx.RemoteProtocolError, httpx.ReadError) as err:
            raise FetchError(f"connection broken ({type(err).__name__})", True) from None
        except httpx.UnsupportedProtocol:
            raise FetchError("unsupported URL scheme") from None

    def _read(self, url: str, final: str, r: httpx.Response) -> Page:
        """Check status, type and size of a final (non-redirect) response and read its text."""
        if r.status_code >= 400:
            raise FetchError(f"HTTP {r.status_code} {r.reason_phrase}".strip(), r.status_code == 429 or r.status_code >= 500)
        ctype = r.headers.get("content-type", "").split(";")[0].strip().lower()
        suffix = "." + urlsplit(str(r.url)).path.rsplit(".", 1)[-1].lower() if "." in urlsplit(str(r.url)).path else ""
        if ctype not in TEXT_TYPES and suffix in TEXT_SUFFIXES:
            ctype = "text/markdown" if suffix == ".md" else "text/plain"
        if ctype not in TEXT_TYPES:
            raise FetchError(f"not HTML or text (content-type {ctype or 'missing'!r})")
        data, truncated = bytearray(), False
        for chunk in r.iter_bytes():
            data += chunk
            if len(data) > self.max_bytes:
                truncated = True
                del data[self.max_bytes :]
                break
        if b"\x00" in data:
            raise FetchError("not HTML or text (binary content)")
        body = bytes(data).decode(r.encoding or "utf-8", errors="replace")
        return Page(url, final, r.status_code, ctype, body, truncated)


FETCHER = Fetcher()

_DROP = ("script", "style", "nav", "header", "footer", "aside", "noscript", "svg", "form", "button", "iframe", "template")
_BLOCKS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "table", "blockquote", "dt", "dd")


def _squash(text: str) -> str:
    return " ".join(text.split())


def html_blocks(html: str) -> list[str]:
    """Readable blocks of an HTML page: headings as '#', paragraphs, list items, tables, fenced code."""
    soup = BeautifulSoup(html, "html.parser")
    for el in soup(_DROP):
        el.decompose()
    root = soup.select_one(".model-card-content") or soup.find("article") or soup.find("main") or soup.body or soup
    out = []
    for el in root.find_all(_BLOCKS):
        if el.find_parent(["pre", "table"]):
            continue
        if el.name not in ("pre", "table") and el.find(_BLOCKS):
            continue
        if el.name == "pre":
            code = el.get_text().strip("\n")
            if code.strip():
                out.append(f"```\n{code}\n```")
        elif el.name == "table":
            rows = [" | ".join(_squash(c.get_text(" ")) for c in tr.find_all(["th", "td"])) for tr in el.find_all("tr")]
            if rows:
                out.append("\n".join(rows))
        else:
            text = _squash(el.get_text(" "))
            if not text:
                continue
            if el.name.startswith("h"):
                text = "#" * int(el.name[1]) + " " + text
            elif el.name == "li":
                text = "- " + text
            out.append(text)
    if not out:
        out = [line for line in (_squash(s) for s in root.get_text("\n").splitlines()) if line]
    return out


def markdown_blocks(text: str) -> list[str]:
    """Blocks of a markdown/plain text page: paragraphs split on blank lines, fenced code kept whole."""
    out: list[str] = []
    cur: list[str] = []
    fence = False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            if not fence and cur:
                out.append("\n".join(cur).strip())
                cur = []
            cur.append(line)
            fence = not fence
            if not fence:
                out.append("\n".join(cur).strip())
                cur = []
            continue
        if not fence and not line.strip():
            if cur:
                out.append("\n".join(cur).strip())
                cur = []
            continue
        cur.append(line)
    if cur:
        out.append("\n".join(cur).strip())
    return [b for b in out if b]


def select_blocks(blocks: list[str], query: str | None, limit: int = EXCERPT_CHARS) -> tuple[list[str], int]:
    """Blocks that mention any '|'-separated term of `query` (with their nearest heading), capped at `limit` chars."""
    if not query:
        picked = blocks
        hits = len(blocks)
    else:
        terms = [t.strip().lower() for t in query.split("|") if t.strip()]
        idx: list[int] = []
        heading = None
        for i, b in enumerate(blocks):
            if b.startswith("#"):
                heading = i
            if any(t in b.lower() for t in terms):
                if heading is not None and heading not in idx and heading != i:
                    idx.append(heading)
                idx.append(i)
        hits = sum(1 for i in idx if any(t in blocks[i].lower() for t in terms))
        picked = [blocks[i] for i in idx]
    out, size = [], 0
    for b in picked:
        if size + len(b) > limit:
            if not out:
                out.append(b[:limit] + " …")
            break
        out.append(b)
        size += len(b) + 2
    return out, hits


def slug(url: str) -> str:
    """A file-system-safe, unique folder name for a URL."""
    parts = urlsplit(url)
    base = re.sub(r"[^a-z0-9]+", "-", f"{parts.hostname or ''}{parts.path}".lower()).strip("-")[:80]
    return f"{base or 'page'}-{hashlib.sha1(url.encode()).hexdigest()[:8]}"


def model_card_urls(model_id: str) -> tuple[str, str]:
    """The model card page and its raw README."""
    base = f"{endpoint()}/{model_id}"
    return base, f"{base}/resolve/main/README.md"


def _links(obj: Any, pattern: re.Pattern[str]) -> list[str]:
    found: list[str] = []
    if isinstance(obj, str):
        found += pattern.findall(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            found += _links(v, pattern)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            found += _links(v, pattern)
    return found


def local_model_dir(model_id: str) -> Path | None:
    """The folder when model_id names a local model rather than a Hub id."""
    p = Path(model_id).expanduser()
    return p if (p.is_absolute() or model_id.startswith(".")) and p.is_dir() else None


def research_plan(cfg: RunConfig) -> list[dict[str, Any]]:
    """The Step 3 research list in priority order (1 model card ... 6 paper), each with a label and URL."""
    plan: list[dict[str, Any]] = []
    if local_model_dir(cfg.model_id) is None:
        card, raw = model_card_urls(cfg.model_id)
        plan += [
            {"priority": 1, "what": "model card", "url": card},
            {"priority": 2, "what": "model repo README / example code", "url": raw},
        ]
    facts = cfg.model_facts.model_dump() if cfg.model_facts else {}
    for url in dict.fromkeys(_links(facts, re.compile(r"https?://github\.com/[\w.\-]+/[\w.\-]+[^\s)\]\"'>]*"))):
        plan.append({"priority": 3, "what": "author code", "url": url})
    task = cfg.task_type
    if task in TASK_DOCS:
        plan.append({"priority": 4, "what": "transformers task guide",
                     "url": f"https://huggingface.co/docs/transformers/tasks/{TASK_DOCS[task]}"})
    if task in TASK_SCRIPTS:
        plan.append({"priority": 5, "what": "transformers example script",
                     "url": f"https://raw.githubusercontent.com/huggingface/transformers/main/{TASK_SCRIPTS[task]}"})
    elif task == "image-text-to-text":
        plan.append({"priority": 5, "what": "TRL VLM fine-tuning script", "url": TRL_VLM_SCRIPT})
    arxiv = dict.fromkeys(_links(facts, re.compile(r"arxiv:(\d{4}\.\d{4,5})")))
    arxiv.update(dict.fromkeys(_links(facts, re.compile(r"arxiv\.org/(?:abs|pdf)/(\d{4}\.\d{4,5})"))))
    for aid in arxiv:
        plan.append({"priority": 6, "what": "paper", "url": f"https://arxiv.org/abs/{aid}"})
    return plan


def suggest_sources(cfg: RunConfig) -> list[str]:
    """Research URLs for the model + task in priority order (model card first, paper last)."""
    return [step["url"] for step in research_plan(cfg)]


def recipe_key(slot: str) -> str:
    """The config.recipe key of a slot: hyperparameter names live under 'hyperparameters.'."""
    return f"hyperparameters.{slot}" if slot in HP_NAMES else slot


def _save_page(ctx: RunContext, page: Page, blocks: list[str]) -> str:
    folder = ctx.run_dir / "meta" / "sources" / slug(page.url)
    ext = "html" if "html" in page.content_type else "md" if "markdown" in page.content_type else "txt"
    atomic_write_text(folder / f"raw.{ext}", ctx.creds.redact(page.body))
    atomic_write_text(folder / "text.md", ctx.creds.redact("\n\n".join(blocks)) + "\n")
    meta = {
        "url": page.url,
        "final_url": page.final_url,
        "status": page.status,
        "content_type": page.content_type,
        "truncated": page.truncated,
        "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_text(folder / "meta.json", json.dumps(meta, indent=1) + "\n")
    return str(folder.relative_to(ctx.run_dir))


def _record_attempt(ctx: RunContext, slots: list[str], url: str, outcome: str) -> None:
    for s in slots:
        authority.record_live_attempt(ctx.state, recipe_key(s), url, outcome)
    ctx.session.event("live_attempt", url=url, slots=slots, outcome=outcome)
    ctx.save()


class FetchDocsArgs(BaseModel):
    url: str | None = Field(
        None,
        description="http(s) URL to fetch; omit to fetch this model's Hub model card (page, then raw README.md)",
    )
    query: str | None = Field(
        None,
        description="keyword(s) to filter the excerpt to the paragraphs/code blocks that mention them; "
        "separate alternatives with '|', e.g. 'TrainingArguments|learning_rate'",
    )
    slots: list[AttemptSlot] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["*"],
        description="recipe slots this fetch researches ('*' = all); each attempt is logged for them",
    )


@tool(step=3)
def fetch_docs(ctx: RunContext, args: FetchDocsArgs) -> dict:
    """Fetch a live documentation page (model card, repo README, task guide, example script, paper) and return a compact excerpt; the page is saved under meta/sources/ and the attempt is logged for the named recipe slots."""
    local = local_model_dir(ctx.config.model_id)
    if not args.url and local is not None:
        reason = "local model folder: there is no Hub model card; fetch the task guide or example script by URL"
        _record_attempt(ctx, args.slots, (local / "README.md").as_uri(), f"failed: {reason}")
        raise ToolError(f"fetch failed: {reason}")
    urls = [args.url] if args.url else list(model_card_urls(ctx.config.model_id))
    errors = []
    for url in urls:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ToolError(f"fetch_docs needs an https URL, got {url!r}")
        try:
            page = FETCHER.get(url)
        except FetchError as err:
            _record_attempt(ctx, args.slots, url, f"failed: {err.reason}")
            errors.append(f"{url}: {err.reason}")
            continue
        if "html" in page.content_type:
            blocks = html_blocks(page.body)
        else:
            blocks = markdown_blocks(page.body)
        saved = _save_page(ctx, page, blocks)
        authority.record_fetch(ctx.state, page.url, page.final_url, hashlib.sha256(page.body.encode()).hexdigest())
        picked, hits = select_blocks(blocks, args.query)
        chars = sum(len(b) for b in blocks)
        outcome = f"ok: {chars} chars"
        if args.query:
            outcome += f", {hits} passages mention {args.query!r}" if hits else f", nothing mentions {args.query!r}"
        _record_attempt(ctx, args.slots, page.url, outcome)
        out = {
            "url": page.url,
            "final_url": page.final_url,
            "saved": saved,
            "chars": chars,
            "truncated": page.truncated,
            "matches": hits if args.query else None,
            "excerpt": policy.data_block(f"page {page.final_url}", ctx.creds.redact("\n\n".join(picked))),
        }
        if args.query and not hits:
            out["outline"] = [b for b in blocks if b.startswith("#")][:30]
        return out
    raise ToolError("fetch failed: " + "; ".join(errors))


reference_names = references.names
read_reference_text = references.read_text


class ReadReferenceArgs(BaseModel):
    name: str = Field(description="reference file name, e.g. 'research-priorities.md' or 'recipes' (extension optional)")


@tool(step=0)
def read_reference(ctx: RunContext, args: ReadReferenceArgs) -> dict:
    """Read a curated reference file (fallback knowledge: rules, research priorities, per-task recipe defaults, templates); unknown names list what exists."""
    try:
        text = read_reference_text(args.name)
    except KeyError as err:
        raise ToolError(err.args[0]) from None
    if args.name not in ctx.state.reference_reads:
        ctx.state.reference_reads = [*ctx.state.reference_reads, args.name]
        ctx.save()
    return {"name": args.name, "text": text}


reference_recipe = references.recipe


def _user_owned(cfg: RunConfig, key: str) -> bool:
    return key in cfg.user_set or (key.startswith("hyperparameters.") and "hyperparameters" in cfg.user_set)


def _inherit_attempts(state: RunState, key: str) -> None:
    """A logged live attempt for 'hyperparameters' covers each hyperparameter."""
    if key.startswith("hyperparameters.") and key not in state.live_attempts and "hyperparameters" in state.live_attempts:
        state.live_attempts[key] = list(state.live_attempts["hyperparameters"])


def _apply_value(cfg: RunConfig, key: str, value: Any) -> None:
    """Write a validated hyperparameter into the config; raises ToolError when invalid."""
    try:
        name = key.removeprefix("hyperparameters.")
        cfg.hyperparameters = Hyperparameters.model_validate({**cfg.hyperparameters.model_dump(), name: value})
    except ValidationError as err:
        e = err.errors()[0]
        raise ToolError(f"invalid value {value!r} for {key!r}: {e['msg']}") from None


def _check_value(key: str, value: Any) -> None:
    try:
        Hyperparameters.model_validate({key.removeprefix("hyperparameters."): value})
    except ValidationError as err:
        raise ToolError(f"invalid value {value!r} for {key!r}: {err.errors()[0]['msg']}") from None


def _set_one(ctx: RunContext, key: str, value: Any, rank: str, source: str, reason: str) -> str:
    """Apply one recipe key through the authority order; hyperparameters also land in the config."""
    cfg = ctx.config
    is_hp = key.startswith("hyperparameters.")
    if is_hp:
        if batch_intent_blocks(cfg, key.removeprefix("hyperparameters.")):
            raise authority.AuthorityError(f"{key!r} not applied: the user's per_device_train_batch_size is the effective batch")
        if _user_owned(cfg, key):
            raise authority.AuthorityError(f"{key!r} was set by the user; a {rank} source cannot overwrite it")
        _check_value(key, value)
        _inherit_attempts(ctx.state, key)
    msg = authority.set_recipe(cfg, ctx.state, key, value, rank, source, reason)  # type: ignore[arg-type]
    entry = cfg.recipe.get(key)
    if is_hp and entry is not None and entry.source == source and entry.value == value:
        _apply_value(cfg, key, value)
    return msg


def batch_intent_blocks(cfg: RunConfig, name: str) -> bool:
    """A recipe's gradient accumulation would silently multiply the batch the user chose."""
    return (name == "gradient_accumulation_steps" and _user_owned(cfg, "hyperparameters.per_device_train_batch_size")
            and not _user_owned(cfg, "hyperparameters.gradient_accumulation_steps"))


def _check_source(rank: str, source: str) -> None:
    if rank == "reference":
        try:
            read_reference_text(source)
        except KeyError as err:
            raise ToolError(f"reference source must name a file in references/: {err.args[0]}") from None


class RecordRecipeArgs(BaseModel):
    slot: Slot = Field(  # type: ignore[valid-type]
        description="recipe slot: model_class, processor_class (each naming a transformers class), train_transforms, "
        "hyperparameters (a dict of hyperparameter names -> values), one hyperparameter name, or an optional "
        "eval_transforms / collator / compute_metrics"
    )
    value: Any = Field(description="the value found (class name, short code/description, number, or dict for 'hyperparameters')")
    rank: Literal["live", "reference", "memory"] = Field(
        description="live = fetched this run (source is its URL); reference = curated file (after a logged live attempt); memory = last resort"
    )
    source: str = Field(description="URL for live; 'references/<file>[#section]' for reference; 'memory' for memory")
    reason: str = Field("", description="why this value / why live research was insufficient (required in spirit for reference and memory)")


@tool(step=3)
def record_recipe(ctx: RunContext, args: RecordRecipeArgs) -> dict:
    """Record one recipe value with its source and rank (user > live > reference > memory); a lower rank never overwrites a higher one, a reference needs a logged live attempt first, and hyperparameters are written into config.yaml unless the user set them."""
    _check_source(args.rank, args.source)
    key = recipe_key(args.slot)
    applied: dict[str, str] = {}
    skipped: dict[str, str] = {}
    try:
        if key == "hyperparameters":
            if not isinstance(args.value, dict) or not args.value:
                raise ToolError("slot 'hyperparameters' needs a non-empty dict of name -> value")
            current = ctx.config.recipe.get(key)
            if current is not None and RANKS[args.rank] > RANKS[current.rank]:
                raise ToolError(f"'hyperparameters' already set from {current.rank} ({current.source}); a {args.rank} source cannot overwrite it")
            for raw_name, v in args.value.items():
                name = HP_ALIASES.get(raw_name, raw_name)
                if name == "training_method":
                    no_lora = lora_unavailable(ctx.config) if v == "lora" else None
                    if no_lora:  # not offered at all: the model cannot take it
                        skipped[raw_name] = f"not applied and not offered: {no_lora}"
                    elif v != ctx.config.hyperparameters.training_method:
                        skipped[raw_name] = (
                            f"not applied: the source suggests {v!r} but training_method is the user's choice "
                            f"(now {ctx.config.hyperparameters.training_method!r}); ask the user before switching"
                        )
                    continue
                if name == "n_epochs":
                    skipped[raw_name] = f"hint only: n_epochs is a run input (now {ctx.config.n_epochs:g}), changed by the user"
                    continue
                if name not in HP_NAMES:
                    skipped[raw_name] = "kept as a hint only (no config field)"
                    continue
                if batch_intent_blocks(ctx.config, name):
                    skipped[raw_name] = ("not applied: the user set per_device_train_batch_size, which is the effective batch; "
                                         "accumulation is added only when the user sets it or memory requires it (OOM playbook, logged)")
                    continue
                try:
                    applied[name] = _set_one(ctx, recipe_key(name), v, args.rank, args.source, args.reason)
                except (authority.AuthorityError, ToolError) as err:
                    skipped[raw_name] = str(err)
            result = authority.set_recipe(ctx.config, ctx.state, key, args.value, args.rank, args.source, args.reason)
        else:
            result = _set_one(ctx, key, args.value, args.rank, args.source, args.reason)
    except authority.AuthorityError as err:
        raise ToolError(str(err)) from None
    ctx.save()
    ctx.session.event("recipe", slot=key, rank=args.rank, source=args.source, result=result)
    out: dict[str, Any] = {"slot": key, "result": result}
    if applied or skipped:
        out["applied"], out["skipped"] = applied, skipped
    missing = [s for s in RECIPE_SLOTS if s not in ctx.config.recipe]
    out["slots_missing"] = missing
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return value if "\n" not in value else "\n\n```\n" + value.strip("\n") + "\n```\n"
    return "`" + json.dumps(value, default=str) + "`"


def render_recipe_md(cfg: RunConfig, state: RunState, notes: str = "") -> str:
    """meta/recipe.md: each slot's value, rank, source and reason, plus research sources and notes."""
    lines = [
        f"# Recipe: {cfg.model_id} on {cfg.dataset_id or cfg.local_dataset_path or '(dataset pending)'}",
        "",
        f"Task: {cfg.task_type or 'unknown'}. Authority order: user > live > reference > memory.",
        "",
        "## Slots",
        "",
    ]
    keys = [*RECIPE_SLOTS, *sorted(k for k in cfg.recipe if k not in RECIPE_SLOTS)]
    for key in keys:
        entry = cfg.recipe.get(key)
        if entry is None:
            lines += [f"### {key}", "", "- MISSING: no source recorded yet", ""]
            continue
        src = entry.source
        kind = "URL" if src.startswith(("http://", "https://")) else "reference file" if entry.rank == "reference" else "source"
        lines += [f"### {key}", "", f"- value: {_fmt(entry.value)}", f"- rank: {entry.rank}", f"- {kind}: {src}"]
        if entry.reason:
            lines.append(f"- reason: {entry.reason}")
        lines.append("")
    if cfg.research_sources:
        lines += ["## Live sources", "", *[f"- {u}" for u in cfg.research_sources], ""]
    attempts = [(slot, a) for slot, lst in state.live_attempts.items() for a in lst]
    if attempts:
        lines += ["## Live attempts", ""]
        lines += [f"- [{slot}] {a['url']}: {a['outcome']}" for slot, a in attempts]
        lines.append("")
    fallbacks = [n for n in cfg.notes if n.startswith(("fallback", "conflict"))]
    if fallbacks:
        lines += ["## Fallbacks and conflicts", "", *[f"- {n}" for n in fallbacks], ""]
    if notes.strip():
        lines += ["## Notes", "", notes.strip(), ""]
    return "\n".join(lines)


class WriteRecipeNotesArgs(BaseModel):
    notes: str = Field("", description="free-text findings to append (caveats, code snippets worth keeping, open questions)")


@tool(step=3)
def write_recipe_notes(ctx: RunContext, args: WriteRecipeNotesArgs) -> dict:
    """Write meta/recipe.md from the recorded recipe (value, rank, source URL or reference file, reason per slot) plus your notes."""
    text = ctx.creds.redact(render_recipe_md(ctx.config, ctx.state, args.notes))
    path = ctx.run_dir / "meta" / "recipe.md"
    atomic_write_text(path, text)
    missing = [s for s in RECIPE_SLOTS if s not in ctx.config.recipe]
    return {"written": "meta/recipe.md", "slots_missing": missing}
