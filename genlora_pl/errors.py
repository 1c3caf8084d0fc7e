"""How a user-fixable error reaches the terminal: one sentence, no traceback.

Shared by the entry point (exceptions raised by our code) and the CLI's argument parser (messages
that jsonargparse builds, often several lines deep), so both say the same thing the same way.
"""

from __future__ import annotations

import re
import textwrap

# What a user can fix: a bad value, a missing or damaged file, a missing package, an existing output
# folder, a full disk (OSError), a diverged run (FloatingPointError).
USER_ERRORS = (ValueError, TypeError, OSError, ModuleNotFoundError, KeyError, FloatingPointError)
# Lightning's own "your Trainer settings cannot work here" (no GPU for accelerator=gpu, ...), matched by
# name so that this module stays importable without Lightning.
USER_ERROR_NAMES = {"MisconfigurationException"}
#: The registered tasks' class paths by name, filled by ``AdapterTask`` subclasses as they are defined
#: (kept here, the bottom layer, so messages can name them without importing the tasks).
TASK_PATHS: dict[str, str] = {}


def first_line(err: BaseException) -> str:
    """The first line of an error's message (library errors often append pages of advice)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def missing_checkpoint(path: object) -> FileNotFoundError:
    """The one sentence for a ``ckpt_path`` with nothing there, whoever notices first (the CLI before
    Lightning restores it, ``export`` before torch loads, the safe reader)."""
    return FileNotFoundError(
        f"ckpt_path={str(path)!r} does not exist; give a .ckpt file or a distributed checkpoint folder written by fit."
    )


def is_user_error(err: BaseException) -> bool:
    return isinstance(err, USER_ERRORS) or type(err).__name__ in USER_ERROR_NAMES


def _expected(message: str) -> str:
    """The valid values jsonargparse lists in ``Expected a ...`` lines: Literal members and types."""
    values: list[str] = []
    for line in message.split("Given value type")[0].splitlines():
        literal = re.search(r"Expected a typing\.Literal\[(.*)\]", line)
        if literal:
            values += [v.strip() for v in literal.group(1).split(",")]
        values += re.findall(r"Expected a <class '([\w.]+)'>", line)
    if not values:
        values = re.findall(r"<class '([\w.]+)'>", message.split("Given value type")[0])
    values = list(dict.fromkeys(v.replace("NoneType", "null") for v in values))
    return f"one of {', '.join(values)}" if len(values) > 1 else (values[0] if values else "another value")


def _bullet(raw: list[str], i: int) -> str:
    """A ``- reason`` line of a jsonargparse message with the lines indented below it."""
    indent = len(raw[i]) - len(raw[i].lstrip())
    parts = [raw[i].strip()[2:]]
    for line in raw[i + 1 :]:
        if len(line) - len(line.lstrip()) <= indent:
            break
        parts.append(line.strip())
    return " ".join(" ".join(parts).split())


def _task_problem(message: str) -> str | None:
    """The task and the data are class_path sections (``model.class_path`` chooses the task), so
    jsonargparse wraps whatever is wrong inside one in a report about the union of its classes: say
    the inner problem, with its full key (``model.optimizer.init_args.lr``), name the setting nobody
    takes, or the class that cannot be imported."""
    head = re.search(r"^( *)- Problem with given class_path '([^']+)':\n", message, re.M)
    section = re.match(r'Parser key "([^"]+)"', message)
    if head is None or section is None:
        return None
    body = message[head.end() :]
    outer = re.search(rf"^{head.group(1)}- ", body, re.M)  # the union's next member, at the head's indent
    body = textwrap.dedent(body[: outer.start()] if outer else body).strip()
    unknown = re.search(r"Option '([^']+)' is not accepted", body)
    if unknown:
        nested = re.search(r"NestedArg\(key='([^']+)', val='(.*)'\)", message)
        given = f"--{section.group(1)}.{nested.group(1)} {nested.group(2)}" if nested else section.group(1)
        owner = re.search(r"Got value: Namespace\(class_path='([^']+)'", body)
        name = owner.group(1) if owner else head.group(2)
        return f"unrecognized arguments: {given} ({name} takes no setting {unknown.group(1)!r})"
    if not body.startswith("Parser key"):  # the class itself cannot be imported
        base = re.search(r"Subtypes: \[<class '([^']+)'>", message)
        kind = f"a subclass of {base.group(1)}" if base else "an importable class"
        if section.group(1) == "model":
            kind += f": {' or '.join(sorted(TASK_PATHS.values()))}"
        detail = " ".join(body.split())
        return f"{section.group(1)}.class_path={head.group(2)!r} cannot be imported ({detail}); give {kind}."
    return f"{section.group(1)}.{one_line(ValueError(body))}"


def one_line(err: BaseException) -> str:
    """The sentence that says what is wrong, dug out of jsonargparse's wrapping when needed."""
    root = err
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    if isinstance(root, USER_ERRORS) and root is not err:
        err = root
    if isinstance(err, UnicodeDecodeError):
        return f"a file read as text is not UTF-8 text ({err.reason} at byte {err.start}); --config takes a YAML file."
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    raw = [line for line in message.splitlines() if line.strip()]
    lines = [line.strip() for line in raw]
    task = _task_problem(message)
    if task is not None:
        return task
    keys = re.findall(r'Parser key "([^"]+)"', message)
    given_value = re.search(r"Given value: (.*?)(?:\. Got value:|$)", message, re.M)
    if len(keys) >= 2 and given_value and "init_args=" in message:  # inside a class_path section: optimizer lr
        key = f"{keys[0]}.init_args.{keys[-1]}"
        return f"{key}={given_value.group(1).strip()!r} is not valid; expected {_expected(message)}."
    reasons = [
        _bullet(raw, i) for i, line in enumerate(lines) if line.startswith("- ") and not line.startswith("- Expected a")
    ]
    if reasons:
        nested = re.search(r'Parser key "([^"]+)":\s*Expected a <class \'(\w+)\'>\. Got value: (.*)', reasons[0])
        if nested:
            return f"{nested.group(1)}={nested.group(3).strip()!r} is not valid; expected {nested.group(2)}."
        return reasons[0]
    key = re.match(r'Parser key "([^"]+)"', lines[0]) if lines else None
    given = next((m.group(1).strip() for m in map(re.compile(r".*(?:Given|Got) value: (.*)").match, lines) if m), None)
    if key and given is not None:
        return f"{key.group(1)}={given!r} is not valid; expected {_expected(message)}."
    if lines and lines[0].startswith("Problems parsing config"):
        detail = " ".join(" ".join(lines).removeprefix("Problems parsing config:").split())
        detail = detail.replace(' in "<unicode string>",', " at")
        return f"a --config file is not valid YAML: {detail}."
    missing = re.match(r'Parser key "config": File does not exist: (.*)', lines[0]) if lines else None
    if missing:
        return f"the config file {missing.group(1)} does not exist."
    return " ".join((lines or [type(err).__name__])[0].split())
