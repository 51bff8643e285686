"""`pruneopd inspect`: one training step's sampled responses, token by token, as one HTML page.

The page is self-contained (inline CSS and JS, no server, no network): each logged response of
the step is a row of tokens coloured by top-K overlap or, with a toggle, by reliability weight;
drift events are underlined in red, the position where the weight first reaches 0 and the
sampling cap (with the stop reason) are marked, and hovering a token shows the teacher's top
candidates with their probabilities. Input is what `pruneopd train` writes into its run
directory: `samples.jsonl` (`log_samples` rows per step), `metrics.jsonl` and `config.yaml`.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import yaml

PER_TOKEN = ("overlap", "weight", "events")  # lists as long as "tokens" in every row
TOP = ("teacher_top", "teacher_top_p")  # optional, as long as "tokens" when present


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character of each byte -> the byte."""
    bs = [*range(33, 127), *range(161, 173), *range(174, 256)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


_BYTES = _byte_decoder()


def display_token(tok: str) -> str:
    """A byte-level BPE token as text: "Ġ" -> " ", "Ċ" -> "↵", "ĉ" -> "⇥", other control bytes
    and bytes of an unfinished UTF-8 character as "\\xNN"; special tokens ("</s>") as they are."""
    if not tok or any(c not in _BYTES for c in tok):
        return tok
    raw = bytes(_BYTES[c] for c in tok)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = "".join(chr(b) if b < 128 else f"\\x{b:02x}" for b in raw)
    text = text.replace("\n", "↵").replace("\t", "⇥")
    return "".join(c if ord(c) >= 32 and c != "\x7f" else f"\\x{ord(c):02x}" for c in text)


def _ranges(steps: list[int]) -> str:
    """[1, 2, 3, 7] -> "steps 1-3, 7"."""
    runs: list[list[int]] = []
    for s in sorted(set(steps)):
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)
    return ("step " if len(runs) == 1 and runs[0][0] == runs[0][1] else "steps ") + text


def _check_row(row, path: Path, n: int) -> dict:
    def bad(why: str):
        return ValueError(f"{path}, line {n}: not a valid sample row ({why})")

    tokens = row.get("tokens")
    if not isinstance(tokens, list):
        raise bad("no 'tokens' list")
    for key in PER_TOKEN + TOP:
        if key not in row and key in TOP:
            row[key] = [[] for _ in tokens]
        if not isinstance(row.get(key), list) or len(row[key]) != len(tokens):
            got = len(row[key]) if isinstance(row.get(key), list) else "no"
            raise bad(f"{got} '{key}' values for {len(tokens)} tokens")
    if not all(isinstance(x, str) for x in tokens):
        raise bad("a token is not a string")
    for key in PER_TOKEN:
        if not all(x is None or type(x) in (int, float) for x in row[key]):
            raise bad(f"a '{key}' value is not a number")
        row[key] = [x if x is not None and math.isfinite(x) else None for x in row[key]]
    row["teacher_top"] = [
        [str(x) for x in c] if isinstance(c, list) else [] for c in row["teacher_top"]
    ]
    row["teacher_top_p"] = [
        [x if isinstance(x, (int, float)) and math.isfinite(x) else None for x in c]
        if isinstance(c, list)
        else []
        for c in row["teacher_top_p"]
    ]
    return row


def _scan(run_dir, step: int | None):
    """(step, rows, metrics_row, config, logged steps); see `load_step`."""
    run = Path(run_dir)
    if not run.is_dir():
        raise ValueError(
            f"run directory {run} does not exist"
            if not run.exists()
            else f"{run} is not a run directory (not a directory)"
        )
    path = run / "samples.jsonl"
    if not path.is_file():
        raise ValueError(
            f"{run} has no samples.jsonl: the run was trained with log_samples=0, "
            "or it is not a pruneopd run directory"
        )
    steps: list[int] = []
    latest = 0  # the largest step so far (what step=None shows)
    keep: list[tuple[int, dict]] = []  # rows of the asked step (or of the latest step so far)
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg})") from None
            if not isinstance(row, dict) or type(row.get("step")) is not int:
                raise ValueError(f"{path}, line {n}: not a valid sample row (no integer 'step')")
            s = row["step"]
            if step is None and (not steps or s > latest):
                keep, latest = [], s
            steps.append(s)
            if s == (latest if step is None else step):
                keep.append((n, row))
    if not steps:
        raise ValueError(f"{path} holds no samples yet (the run has not finished a step)")
    if step is None:
        step = max(steps)
    if not keep:
        raise ValueError(f"step {step} is not logged in {path} (it holds {_ranges(steps)})")
    rows = [_check_row(r, path, n) for n, r in keep]
    metrics: dict = {}
    if (run / "metrics.jsonl").is_file():
        for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                m = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run: the header just shows less
            if (
                isinstance(m, dict)
                and m.get("step") == step
                and not any(k.startswith("eval/") for k in m)
            ):
                metrics = m
    try:
        config = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    return step, rows, metrics, config if isinstance(config, dict) else {}, sorted(set(steps))


def load_step(run_dir, step: int | None = None) -> tuple[int, list[dict], dict, dict]:
    """Read one step of a run directory.

    Args:
        run_dir: a directory written by `pruneopd train`.
        step: the training step; None = the last step in samples.jsonl.

    Returns:
        (step, rows, metrics_row, config): the step's samples.jsonl rows in file order, its
        training row of metrics.jsonl ({} if missing; evaluation rows are skipped) and the
        run's config.yaml as a dict ({} if missing).

    Raises:
        ValueError (one line) when the run directory or samples.jsonl is missing, the step is
        not logged (the message lists the logged steps) or a line is malformed (named by number).
    """
    return _scan(run_dir, step)[:4]


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _colour(v: float | None) -> str:
    """0 -> red, 0.5 -> yellow, 1 -> green (light, so the text stays readable); None -> grey."""
    if v is None:
        return "#ddd"
    return f"hsl({120 * min(max(float(v), 0.0), 1.0):.0f},70%,78%)"


def _sample_html(s: int, r: dict) -> tuple[str, dict]:
    toks, w, ev = r["tokens"], r["weight"], r["events"]
    zero = next((t for t, x in enumerate(w) if x is not None and x <= 1e-8), None)
    cap, why = html.escape(str(r.get("cap", "?"))), str(r.get("stopped_by", "?"))
    parts = []
    for t, tok in enumerate(toks):
        if t == zero:
            parts.append(f'<span class="mark zero" title="weight reaches 0 at t={t}">w=0 ▸</span>')
        cls = (
            "tok"
            + (" ev" if ev[t] else "")
            + (" z0" if t == zero else "")
            + (" dead" if zero is not None and t > zero else "")
        )
        style = f"--o:{_colour(r['overlap'][t])};--w:{_colour(w[t])}"
        text = display_token(tok)
        parts.append(
            f'<span class="{cls}" style="{style}" data-s="{s}" data-t="{t}">{html.escape(text)}</span>'
        )
        if "↵" in text:  # a newline: the marker, then a line break
            parts.append("<br>")
    end = {
        "cap": f"▌cap {cap} reached",
        "eos": f"■ EOS at t={len(toks)} (cap {cap})",
        "pruned": f"✂ pruned at t={len(toks)} (cap {cap})",
    }.get(why, f"▌stopped by {html.escape(why)} (cap {cap})")
    parts.append(f'<span class="mark cap stop-{html.escape(why)}">{end}</span>')
    zero_txt = (
        f"weight 0 from t={zero}"
        if zero is not None
        else f"min weight {min((x for x in w if x is not None), default=1):.3f}"
    )
    head = (
        f"sample {html.escape(str(r.get('index', s)))} · {len(toks)} tokens · cap {cap} · "
        f"stopped by <b>{html.escape(why)}</b> · {sum(1 for e in ev if e)} drift events · {zero_txt}"
    )
    data = {
        "raw": toks,
        "tok": [display_token(x) for x in toks],
        "o": r["overlap"],
        "w": w,
        "e": ev,
        "top": [[display_token(x) for x in c] for c in r["teacher_top"]],
        "p": r["teacher_top_p"],
    }
    prompt = r.get("prompt")  # runs before the prompt was logged have none
    shown = f'<pre class="prompt">{html.escape(prompt)}</pre>' if prompt is not None else ""
    return (
        f'<section class="sample"><h2>{head}</h2>{shown}'
        f'<div class="toks">{"".join(parts)}</div></section>',
        data,
    )


CSS = """body{font:14px/1.4 system-ui,sans-serif;margin:1.2em;color:#222;background:#fff}
h1{font-size:1.3em;margin:0 0 .3em}h2{font-size:.95em;font-weight:normal;margin:1.2em 0 .3em;color:#444}
table.meta{border-collapse:collapse;margin:.4em 0}table.meta td{padding:1px 10px 1px 0}
table.meta td:nth-child(odd){color:#666}.legend{display:flex;gap:1.4em;align-items:center;flex-wrap:wrap;margin:.6em 0}
.bar{display:inline-block;width:160px;height:12px;vertical-align:middle;border:1px solid #aaa;
background:linear-gradient(90deg,hsl(0,70%,78%),hsl(60,70%,78%),hsl(120,70%,78%))}
.prompt{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;margin:0 0 .3em;
padding:.4em .5em;background:#f4f4f4;border-left:3px solid #bbb;color:#444}
.toks{font:13px/2.1 ui-monospace,Menlo,Consolas,monospace;border:1px solid #ddd;padding:.5em;border-radius:4px}
.tok{white-space:pre;background:var(--o);padding:1px 0;margin-right:1px;border-radius:2px;position:relative;cursor:default}
body.by-w .tok{background:var(--w)}.tok:hover,.tok.pin{outline:2px solid #333}
.ev{box-shadow:inset 0 -3px 0 #d00}.ev::after{content:"";position:absolute;left:0;top:-3px;
border:3px solid transparent;border-top-color:#d00}.z0{border-left:3px solid #000}.dead{opacity:.55}
.mark{font:bold 11px system-ui,sans-serif;padding:1px 4px;margin:0 3px;border-radius:3px;color:#fff;white-space:nowrap}
.zero{background:#000}.cap{background:#555}.stop-pruned{background:#a0522d}.stop-eos{background:#2a6}
#tip{position:absolute;display:none;background:#fff;border:1px solid #888;border-radius:4px;padding:6px 8px;
box-shadow:0 2px 8px rgba(0,0,0,.25);font:12px system-ui,sans-serif;z-index:9;min-width:180px}
#tip table{border-collapse:collapse}#tip td{padding:0 4px;font-family:ui-monospace,monospace;white-space:pre}
#tip .pb{display:inline-block;height:8px;background:#58c}#tip .me{font-weight:bold;color:#06c}"""

JS = """(function(){
var D=JSON.parse(document.getElementById('data').textContent),tip=document.createElement('div'),pin=null;
tip.id='tip';tip.setAttribute('role','tooltip');document.body.appendChild(tip);
function el(tag,text,cls){var e=document.createElement(tag);if(text!=null)e.textContent=text;if(cls)e.className=cls;return e;}
function f3(x){return x==null?'–':x.toFixed(3);}
function show(t){var r=D[+t.dataset.s],i=+t.dataset.t;tip.textContent='';
 tip.appendChild(el('div','t='+i+'  \u201c'+r.tok[i]+'\u201d'+(r.tok[i]!==r.raw[i]?'  (token '+r.raw[i]+')':'')));
 tip.appendChild(el('div','overlap '+f3(r.o[i])+' · weight '+f3(r.w[i])+(r.e[i]?' · drift event':'')));
 var tb=el('table');tip.appendChild(el('div','teacher top candidates:'));
 if(!r.top[i].length)tip.appendChild(el('div','(none logged)'));
 r.top[i].forEach(function(c,k){var tr=el('tr',null,c===r.tok[i]?'me':''),b=el('span',null,'pb');
  b.style.width=Math.max(1,Math.round(60*(r.p[i][k]||0)))+'px';tr.appendChild(el('td','\u201c'+c+'\u201d'));
  var td=el('td');td.appendChild(b);tr.appendChild(td);tr.appendChild(el('td',f3(r.p[i][k])));tb.appendChild(tr);});
 tip.appendChild(tb);tip.style.display='block';var b=t.getBoundingClientRect();
 tip.style.left=Math.max(0,Math.min(b.left+scrollX,scrollX+document.documentElement.clientWidth-tip.offsetWidth-8))+'px';
 tip.style.top=(b.bottom+scrollY+6)+'px';}
function tokOf(e){return e.target.closest?e.target.closest('.tok'):null;}
document.addEventListener('mouseover',function(e){var t=tokOf(e);if(t&&!pin)show(t);});
document.addEventListener('mouseout',function(e){if(tokOf(e)&&!pin)tip.style.display='none';});
document.addEventListener('click',function(e){var t=tokOf(e);if(pin)pin.classList.remove('pin');
 pin=(t&&t!==pin)?t:null;if(pin){pin.classList.add('pin');show(pin);}else tip.style.display='none';});
function mode(m){document.body.classList.toggle('by-w',m==='weight');document.getElementById('by-'+m).checked=true;}
document.querySelectorAll('input[name=by]').forEach(function(x){x.addEventListener('change',function(){mode(x.value);});});
var h=location.hash;if(h.indexOf('by=weight')>=0)mode('weight');
var m=/tok=(\\d+)\\.(\\d+)/.exec(h),t=m&&document.querySelector('.tok[data-s="'+m[1]+'"][data-t="'+m[2]+'"]');
if(t){pin=t;t.classList.add('pin');show(t);}
document.body.setAttribute('data-js','ready');})();"""


def _json_for_script(obj) -> str:
    """JSON that cannot end the <script> element it sits in (no raw <, >, &)."""
    s = json.dumps(obj, ensure_ascii=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(
    step: int,
    rows: list[dict],
    metrics_row: dict,
    config: dict,
    run_name: str = "",
    steps: list[int] | None = None,
) -> str:
    """The page for one step (see the module docstring); `steps` lists the logged steps."""
    c, m = config, metrics_row
    meta = [
        ("method", c.get("method")),
        ("loss", c.get("loss")),
        ("tau", c.get("tau")),
        ("K (topk)", c.get("topk")),
        ("drift_k", c.get("drift_k")),
        ("w_drop", c.get("w_drop")),
        ("step", step),
        ("cap", m.get("cap")),
        ("hit ratio", m.get("hit_ratio")),
        ("overlap", m.get("overlap")),
        ("drift rate", m.get("drift_rate")),
        ("weight mean", m.get("weight_mean")),
    ]
    cells = "".join(
        f"<td>{k}</td><td><b>{_fmt(v)}</b></td>" + ("</tr><tr>" if i == 5 else "")
        for i, (k, v) in enumerate(meta)
    )
    blocks, data = (
        zip(*[_sample_html(s, r) for s, r in enumerate(rows)], strict=True) if rows else ((), ())
    )
    logged = f"{_ranges(steps)} logged" if steps else ""
    title = html.escape(f"pruneopd inspect · {run_name} · step {step}")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{CSS}</style></head>
<body><h1>{title}</h1>
<div>{html.escape(logged)}{" · other steps: <code>pruneopd inspect RUN_DIR --step N</code>" if logged else ""}</div>
<table class="meta"><tr>{cells}</tr></table>
<div class="legend"><span>colour by:
<label><input type="radio" name="by" id="by-overlap" value="overlap" checked> top-K overlap o<sub>t</sub></label>
<label><input type="radio" name="by" id="by-weight" value="weight"> reliability weight w<sub>t</sub></label></span>
<span>0 <span class="bar"></span> 1</span>
<span><span class="tok ev" style="--o:#eee;--w:#eee">&nbsp;x&nbsp;</span> drift event (o<sub>t</sub> &lt; τ)</span>
<span><span class="mark zero">w=0 ▸</span> weight first reaches 0</span>
<span><span class="mark cap">▌cap</span> end of the sample and why it stopped</span>
<span>hover a token: teacher's top candidates (click pins)</span></div>
<noscript>The colour toggle and the tooltips need JavaScript.</noscript>
{"".join(blocks) or "<p>(no samples at this step)</p>"}
<script type="application/json" id="data">{_json_for_script(list(data))}</script>
<script>{JS}</script>
</body></html>
"""


def write_inspect(run_dir, step: int | None = None, out=None) -> Path:
    """Write the page for `step` (default: the last logged step) to `out` (default:
    RUN_DIR/inspect-step-N.html) and return its path. Errors as in `load_step`."""
    step, rows, metrics, config, steps = _scan(run_dir, step)
    page = render_html(
        step, rows, metrics, config, run_name=Path(run_dir).resolve().name, steps=steps
    )
    path = Path(out) if out else Path(run_dir) / f"inspect-step-{step}.html"
    path.write_text(page, encoding="utf-8")
    return path
