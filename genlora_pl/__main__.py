"""Entry point: ``python -m genlora_pl <subcommand> ...``.

Top-level help is answered before torch and Lightning are imported. Errors a user can fix
(a bad config value, a missing file, an unknown backbone) end as one line on stderr with exit
code 2; set ``GENLORA_PL_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import os
import re
import sys

USAGE = """\
usage: python -m genlora_pl {fit,validate,test,predict,export} [options]

Fine-tune timm and Hugging Face transformers classifiers with GenLoRA adapters.

subcommands:
  fit        train (and validate) a model: --config configs/quickstart.yaml
  validate   run one validation epoch
  test       run one test epoch
  predict    predict class probabilities
  export     write the merged backbone, a PEFT LoRA folder and the adapter from a checkpoint

Run `python -m genlora_pl SUBCOMMAND --help` for the options of each, and
`python -m genlora_pl fit --config FILE --print_config` to see a resolved config.
"""

USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, ModuleNotFoundError, KeyError)


def main(argv: list[str] | None = None) -> int:
    explicit = argv is not None
    argv = argv if explicit else sys.argv[1:]
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    try:
        if argv[0] == "export":
            from genlora_pl.checkpoint_export import cli as export_cli

            export_cli(argv[1:])
        else:
            from genlora_pl.cli import run

            run(argv if explicit else None)
    except USER_ERRORS as err:
        if os.environ.get("GENLORA_PL_DEBUG"):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


def one_line(err: BaseException) -> str:
    """The sentence that says what is wrong, dug out of jsonargparse's wrapping when needed."""
    root = err
    while root.__cause__ is not None or (root.__context__ is not None and not root.__suppress_context__):
        root = root.__cause__ or root.__context__
    if isinstance(root, USER_ERRORS) and root is not err:
        err = root
    message = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reasons = [
        line[2:] + (" " + lines[i + 1] if line.endswith(":") and i + 1 < len(lines) else "")
        for i, line in enumerate(lines)
        if line.startswith("- ") and not line.startswith("- Expected a")
    ]
    if reasons:
        return " ".join(reasons[0].split())
    key = re.match(r'Parser key "([^"]+)"', lines[0]) if lines else None
    given = next((m.group(1).strip() for m in map(re.compile(r".*(?:Given|Got) value: (.*)").match, lines) if m), None)
    if key and given is not None:
        expected = re.findall(r"<class '([\w.]+)'>", message.split("Given value type")[0])
        valid = ", ".join(dict.fromkeys(t.replace("NoneType", "null") for t in expected)) or "another value"
        return f"{key.group(1)}={given!r} is not valid; expected {valid}."
    return " ".join((lines or [type(err).__name__])[0].split())


if __name__ == "__main__":
    sys.exit(main())
