"""Prompts from local data files (JSONL or Parquet) with answers checked by `math-verify`.

Layouts understood out of the box (`prompt_field=auto`, `answer_field=auto`):
- plain:       {"prompt": "What is 2+3?", "answer": "5"}
- verl / DAPO: {"prompt": [{"role": "user", "content": "..."}],
                "reward_model": {"ground_truth": "5"}}
- GSM8K:       {"question": "...", "answer": "... reasoning ... #### 5"}
Any other layout names its fields: `prompt_field=problem answer_field=extra.solution`
(dots reach into nested objects). Chat-message prompts go through the tokenizer's chat
template; plain-text prompts too when `chat_template=true` and the tokenizer has one. A record
may add `"steps"`, the reference response's lines (`["7 + 3 = 10", "10 + 9 = 19", "The total
is 19."]`): partial credit is then the share of them the response writes, line for line,
before its first wrong line (else it is the answer's 0/1).

Files are read with the `datasets` library; every record is checked before training, and a
bad one stops with its line (JSONL) or row (Parquet) number.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from pruneopd.tasks.base import Problem, leading_share

PROMPT_FIELDS = ("prompt", "question", "problem")
ANSWER_FIELDS = ("reward_model.ground_truth", "answer", "solution", "ground_truth")


class DataError(ValueError):
    """A data file that cannot be used; the message names file, line/row and field."""


def _get(record: dict, path: str):
    """record["a"]["b"] for path "a.b"; KeyError if any part is missing."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or value.get(part) is None:  # None: absent in this row
            raise KeyError(path)
        value = value[part]
    return value


def _has(record: dict, path: str) -> bool:
    try:
        _get(record, path)
        return True
    except KeyError:
        return False


def read_records(path: str | Path) -> tuple[list[dict], list[str]]:
    """Every record of a JSONL or Parquet file and where it is ("line 7", "row 7")."""
    import datasets

    datasets.disable_progress_bars()
    p = Path(path)
    if not p.is_file():
        raise DataError(f"data file {p} does not exist")
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".json"):
        lines = _check_jsonl(p)
        from datasets import Dataset

        try:
            records = (
                Dataset.from_json(str(p), keep_in_memory=True).to_list() if p.stat().st_size else []
            )
        except Exception as e:  # mixed types across lines, etc.
            raise DataError(
                f"{p}: cannot be read as JSONL ({type(e).__name__}: {_short(e)})"
            ) from None
    elif suffix == ".parquet":
        from datasets import Dataset

        try:
            records = Dataset.from_parquet(str(p), keep_in_memory=True).to_list()
            lines = [f"row {n}" for n in range(1, len(records) + 1)]
        except Exception as e:
            raise DataError(
                f"{p}: not a readable Parquet file ({type(e).__name__}: {_short(e)})"
            ) from None
    else:
        raise DataError(f"data file {p}: unknown format {suffix!r} (use .jsonl or .parquet)")
    if not records:
        raise DataError(f"data file {p} holds no records")
    if len(lines) != len(records):
        raise DataError(f"{p}: {len(lines)} JSON lines but {len(records)} records were read")
    return records, lines


def _short(e: Exception) -> str:
    return " ".join(str(e).split())[:200]


def _check_jsonl(p: Path) -> list[str]:
    """One JSON object per non-empty line; errors name the line. Returns "line N" of each."""
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{p} line {line}: not UTF-8 text") from None
    where = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where.append(f"line {n}")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p} line {n}: malformed JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p} line {n}: expected a JSON object, got {type(obj).__name__}")
    return where


def _pick(records: list[dict], wanted: str, candidates: tuple, what: str, p: Path) -> str:
    if wanted != "auto":
        return wanted
    for c in candidates:
        if _has(records[0], c):
            return c
    raise DataError(
        f"{p}: no {what} field found (looked for {', '.join(candidates)}; the first record has "
        f"{', '.join(map(str, records[0]))}); name it with {what}_field=..."
    )


def _answer_text(value, field: str) -> str:
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    text = str(value).strip()
    if field == "answer" and "####" in text:  # GSM8K: the reasoning, then '#### <answer>'
        text = text.rsplit("####", 1)[1].strip()
    return text


def _teacher_of(record: dict, route: tuple[str, tuple[str, ...]], where: str) -> str:
    """The teacher a record names in its routing field (teacher_field)."""
    field, names = route
    if not _has(record, field):
        raise DataError(f"{where}: no field '{field}' naming the record's teacher (teacher_field)")
    name = str(_get(record, field))
    if name not in names:
        raise DataError(
            f"{where}: field '{field}' = {name!r} names no teacher (teachers: {', '.join(names)})"
        )
    return name


class DataTask:
    """A data file seen through the same interface as the built-in tasks."""

    styles: tuple[str, ...] = ()  # no reference traces
    default_difficulty = 0

    def __init__(
        self,
        path,
        tok,
        prompt_field="auto",
        answer_field="auto",
        chat_template=True,
        eval_path=None,
        eval_holdout=0,
        route=None,
    ):
        self.path = Path(path)
        self.name = f"data:{self.path.name}"
        # route: (field, teacher names): each record's field names its teacher (several teachers)
        fields = (prompt_field, answer_field, chat_template, route)
        self.train = self._problems(*read_records(self.path), self.path, tok, *fields)
        # what evaluations score, as their records name it: the eval file, or the held-out tail
        self.eval_name = self.name
        if eval_path:
            self.test = self._problems(*read_records(eval_path), Path(eval_path), tok, *fields)
            self.eval_name = f"data:{Path(eval_path).name}"
        elif eval_holdout:
            if len(self.train) <= eval_holdout:
                raise DataError(
                    f"data file {self.path} has {len(self.train)} records: too few to hold out "
                    f"eval_problems={eval_holdout} for evaluation (pass eval_data=FILE)"
                )
            self.train, self.test = self.train[:-eval_holdout], self.train[-eval_holdout:]
            self.eval_name = f"{self.name} (its last {eval_holdout} records)"
        else:
            self.test = []

    def _problems(self, records, lines, p, tok, prompt_field, answer_field, chat_template, route):
        pf = _pick(records, prompt_field, PROMPT_FIELDS, "prompt", p)
        af = _pick(records, answer_field, ANSWER_FIELDS, "answer", p)
        has_template = getattr(tok, "chat_template", None) is not None
        out = []
        for at, r in zip(lines, records, strict=True):
            for f in (pf, af):
                if not _has(r, f):
                    raise DataError(f"{p} {at}: no field '{f}'")
            raw, answer = _get(r, pf), _answer_text(_get(r, af), af)
            if isinstance(raw, str):
                messages = [{"role": "user", "content": raw}]
                use_template = chat_template and has_template
            elif (
                isinstance(raw, list)
                and raw
                and all(isinstance(m, dict) and "role" in m and "content" in m for m in raw)
            ):
                messages, use_template = raw, True
            else:
                raise DataError(
                    f"{p} {at}: field '{pf}' must be text or a list of chat "
                    f"messages with role and content, got {type(raw).__name__}"
                )
            if not answer:
                raise DataError(f"{p} {at}: field '{af}' is empty")
            if use_template:
                if not has_template:
                    raise DataError(
                        f"{p} {at}: chat-message prompt, but the tokenizer has no chat template"
                    )
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:
                text = raw
            if not text.strip():
                raise DataError(f"{p} {at}: field '{pf}' is empty")
            extra = {"templated": use_template}
            if route is not None:
                extra["teacher"] = _teacher_of(r, route, f"{p} {at}")
            steps = r.get("steps")
            if steps is not None and not (
                isinstance(steps, list)
                and steps
                and all(isinstance(x, str) and x.strip() for x in steps)
            ):
                raise DataError(
                    f"{p} {at}: field 'steps' must be a non-empty list of non-empty strings "
                    f"(the reference response's lines), got {json.dumps(steps)[:60]}"
                )
            if steps is not None:  # only then: a file without steps keeps its evaluation cache key
                extra["step_lines"] = True
            ref = tuple(x.strip() for x in steps) if steps else (answer,)
            out.append(Problem(self.name, text, answer, ref, extra))
        return out

    def problems(self, split: str, n: int, seed: int = 0, difficulty=None) -> list[Problem]:
        """`n` training prompts (epochs reshuffled by seed) or the first `n` test prompts."""
        if split == "test":
            return self.test[:n]
        out, epoch = [], 0
        while len(out) < n:
            order = list(self.train)
            random.Random(f"{seed}/{epoch}").shuffle(order)
            out.extend(order)
            epoch += 1
        return out[:n]

    def check(self, problem: Problem, text: str) -> bool:
        """math-verify: the response's final answer equals the reference (numbers,
        fractions, LaTeX, \\boxed{...})."""
        from math_verify import parse, verify

        gold_text = (
            problem.answer
            if "$" in problem.answer or "\\boxed" in problem.answer
            else f"${problem.answer}$"
        )
        gold, pred = parse(gold_text), parse(text)
        try:
            return bool(gold) and bool(pred) and bool(verify(gold, pred))
        except Exception:  # unparsable expressions count as wrong, never crash a run
            return False

    def partial_credit(self, problem: Problem, text: str) -> float:
        """With the record's `steps`: the share of the reference lines the response writes
        in order (blank lines skipped) before its first line that differs. Without: the
        answer's 0 or 1.

        Example: steps ("7 + 3 = 10", "10 + 9 = 19", "The total is 19."), response
        "7 + 3 = 10\n10 + 9 = 18\nThe total is 18." -> 1/3."""
        if not problem.data.get("step_lines"):
            return float(self.check(problem, text))
        return leading_share(problem.steps, [x.strip() for x in text.splitlines() if x.strip()])
