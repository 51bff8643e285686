"""`pruneopd inspect`: the HTML page of one step's samples, its error messages, and (when a
headless Chromium is installed) the page rendered by a real browser with its script running.

The run directory is written by hand (no training): two steps of fabricated rows whose tokens
need escaping, with drift events and a weight that reaches 0 at known positions.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pruneopd.cli import main
from pruneopd.tools.inspect_page import display_token, load_step, render_html, write_inspect

# sample 0 of step 2: events at 2, 4, 6; the weight reaches 0 at t=6; stopped by EOS, cap 16
TOKENS = ["Ġthe", "Ġ<script>", "alert", "(1)", "</script>", "Ġ&", "Ġ&amp;", "Ġ\"q'", "Ċ", "Ġx>"]
EVENTS = [0, 0, 1, 0, 1, 0, 1, 0, 0, 0]
WEIGHT = [1.0, 1.0, 0.667, 0.667, 0.333, 0.333, 0.0, 0.0, 0.0, 0.0]
ZERO_AT = 6
PROMPT = "<|im_start|>user\nIs 2 < 3 & 4 > 1?<|im_end|>\n<|im_start|>assistant\n"


def _row(step: int, index: int, tokens, events, weight, stopped_by="cap", cap=16) -> dict:
    n = len(tokens)
    return {
        "step": step,
        "index": index,
        "cap": cap,
        "stopped_by": stopped_by,
        "tokens": tokens,
        "overlap": [0.2 if e else 0.9 for e in events],
        "weight": weight,
        "events": events,
        "teacher_top": [["Ġzebra", "<b>", "&", "Ċ", "x"]] * n,
        "teacher_top_p": [[0.42, 0.2, 0.1, 0.05, 0.01]] * n,
    }


@pytest.fixture
def run(tmp_path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    rows = [
        _row(1, 0, ["Ġa", "Ġb"], [0, 0], [1.0, 1.0]),
        {**_row(2, 0, TOKENS, EVENTS, WEIGHT, stopped_by="eos"), "prompt": PROMPT},
        _row(2, 1, ["Ġy"] * 16, [0] * 16, [1.0] * 16),
    ]
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = [
        {"step": 1, "cap": 16, "hit_ratio": 0.5, "overlap": 0.9, "drift_rate": 0.1},
        {"step": 2, "cap": 16, "hit_ratio": 0.625, "overlap": 0.875, "drift_rate": 0.125},
        {"step": 2, "eval/accuracy": 0.987, "eval/n": 4},
    ]
    (d / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (d / "config.yaml").write_text(
        "method: prune\nloss: topk_rkl\ntau: 0.7\ntopk: 16\ndrift_k: 1\nw_drop: 0.333\n"
    )
    return d


class _Spans(HTMLParser):
    """Every token span as (sample, t, classes), and the class lists of the markers."""

    def __init__(self):
        super().__init__()
        self.toks, self.marks = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        cls = (a.get("class") or "").split()
        if tag == "span" and "tok" in cls and "data-t" in a:
            self.toks.append((int(a["data-s"]), int(a["data-t"]), set(cls)))
        elif tag == "span" and "mark" in cls:
            self.marks.append(set(cls))


def _page(run) -> str:
    return write_inspect(run).read_text(encoding="utf-8")


def test_page_escapes_every_token_and_is_self_contained(run):
    page = _page(run)
    for tok in TOKENS:
        assert html.escape(display_token(tok)) in page, tok
    assert display_token("Ġ<script>") == " <script>" and display_token("Ċ") == "↵"
    # the only script elements are the page's own two (data + code); no token opens one
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<b>" not in page.split('id="data">')[1]  # teacher candidates escaped in the JSON
    assert not re.search(r"https?://", page) and "<link" not in page and " src=" not in page
    data = json.loads(re.search(r'id="data">(.*?)</script>', page, re.S).group(1))
    assert data[0]["raw"] == TOKENS and data[0]["top"][0][0] == " zebra"


def test_page_shows_the_prompt_with_its_chat_template(run):
    page = _page(run)
    assert f'<pre class="prompt">{html.escape(PROMPT)}</pre>' in page
    assert page.index(html.escape(PROMPT)) < page.index('data-s="0"')  # above its response
    assert page.count('<pre class="prompt">') == 1  # sample 1 logged no prompt


def test_page_marks_events_zero_weight_and_cap(run):
    page = _page(run)
    p = _Spans()
    p.feed(page)
    s0 = {t: cls for s, t, cls in p.toks if s == 0}
    assert sorted(s0) == list(range(len(TOKENS)))
    assert {t for t, c in s0.items() if "ev" in c} == {2, 4, 6}
    assert {t for t, c in s0.items() if "z0" in c} == {ZERO_AT}
    assert {t for t, c in s0.items() if "dead" in c} == set(range(ZERO_AT + 1, len(TOKENS)))
    assert not any("ev" in c or "z0" in c for s, _, c in p.toks if s == 1)
    zero_marks = [m for m in p.marks if "zero" in m]
    assert len(zero_marks) == 2  # one in the legend, one in sample 0
    assert page.index('class="mark zero"', page.index("sample 0")) < page.index('data-t="6"')
    assert "EOS at t=10 (cap 16)" in page and "cap 16 reached" in page  # stop reasons
    assert {"cap", "stop-eos"} <= next(m for m in p.marks if "stop-eos" in m)
    # header: run config and the step's training row (not the eval row of the same step)
    for text in ("prune", "0.700", "16", "0.625", "0.875", "0.125", "step 2", "steps 1-2"):
        assert text in page, text
    assert "0.333" in page and "0.987" not in page


def test_load_step_and_cli(run, capsys):
    step, rows, metrics, config = load_step(run)
    assert step == 2 and len(rows) == 2 and metrics["hit_ratio"] == 0.625 and config["tau"] == 0.7
    assert load_step(run, step=1)[1][0]["tokens"] == ["Ġa", "Ġb"]
    assert "step 1" in render_html(1, *load_step(run, step=1)[1:])
    main(["inspect", str(run)])
    out = Path(capsys.readouterr().out.strip())
    assert out == run / "inspect-step-2.html" and out.is_file()
    main(["inspect", str(run), "--step", "1", "--out", str(run / "one.html")])
    assert capsys.readouterr().out.strip() == str(run / "one.html")


def _error(run_dir, step=None) -> str:
    with pytest.raises(ValueError) as e:
        write_inspect(run_dir, step=step)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_errors_name_the_problem(run, tmp_path, capsys):
    assert "step 5" in (m := _error(run, step=5)) and "steps 1-2" in m
    assert "does not exist" in _error(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no samples.jsonl" in (m := _error(empty)) and "log_samples=0" in m
    lines = (run / "samples.jsonl").read_text().splitlines()
    (run / "samples.jsonl").write_text("\n".join([*lines[:2], lines[2][:40], ""]))
    assert "line 3" in (m := _error(run)) and "JSON" in m
    bad = _row(2, 0, ["Ġa", "Ġb"], [0, 0], [1.0])  # one weight for two tokens
    (run / "samples.jsonl").write_text("\n".join([lines[0], json.dumps(bad), ""]))
    assert "line 2" in (m := _error(run)) and "'weight'" in m
    (run / "samples.jsonl").write_text('{"tokens": []}\n')
    assert "line 1" in _error(run)
    with pytest.raises(SystemExit) as e:  # the CLI: one line on stderr, exit 2
        main(["inspect", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("pruneopd: error:")


def _chromium() -> str | None:
    names = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    return next((p for p in map(shutil.which, names) if p), None)


def test_page_in_headless_chromium(run, tmp_path):
    browser = _chromium()
    if browser is None:
        pytest.skip("Chromium not installed")
    url = (run / "inspect-step-2.html").as_uri()
    write_inspect(run)
    base = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--window-size=1280,900",
    ]
    png = tmp_path / "page.png"
    # the URL hash selects the weight colouring and pins the tooltip on sample 0, token 1
    subprocess.run(
        [*base, f"--screenshot={png}", url + "#by=weight&tok=0.1"],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert png.is_file() and png.stat().st_size > 0
    import matplotlib.image

    img = matplotlib.image.imread(str(png))
    assert img.shape[:2] == (900, 1280) and img[..., :3].var() > 0
    dom = subprocess.run(
        [*base, "--dump-dom", url + "#by=weight&tok=0.1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    assert 'data-js="ready"' in body and "by-w" in body  # the script ran; the toggle is wired
    tip = re.search(r'<div id="tip".*?</table>', dom, re.S).group(0)  # added by the script
    assert "display: block" in tip and "zebra" in tip and "0.420" in tip and "&lt;b&gt;" in tip
    assert "t=1" in tip and "&lt;script&gt;" in tip  # the hovered token, escaped as text
