"""Runs many ``replicad`` command lines in one process, each as the console
script would run it: ``main(argv)`` with the real standard output and error
redirected to files, an exception escaping ``main`` printed as the
interpreter would (a traceback, exit 1), and standard output flushed at the
end with its strict UTF-8 encoding.  One Python start for a whole table of
command lines instead of one per line.

    python cli_driver.py CASES.json RESULTS.json

CASES.json: ``[{"argv": [...], "stdin": "<latin-1 text>"}, ...]`` (argv may
hold lone surrogates, as ``os.fsdecode`` makes of bytes that are not UTF-8;
JSON carries them).  RESULTS.json: ``[{"argv", "rc", "stdout", "stderr"}]``.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tempfile
import traceback
from typing import Any


def run_one(argv: list[str], stdin: bytes, scratch: str) -> dict[str, Any]:
    from replicad.cli.main import main

    out_path, err_path = os.path.join(scratch, "out"), os.path.join(scratch, "err")
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out_fd = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err_fd = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(out_fd, 1)
    os.dup2(err_fd, 2)
    os.close(out_fd)
    os.close(err_fd)
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin))
    try:
        try:
            rc = main(argv)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
        try:
            sys.stdout.flush()
        except BaseException:
            # What the interpreter does with output it cannot encode at exit.
            traceback.print_exc()
            rc = 120
        sys.stderr.flush()
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
    with open(out_path, "rb") as fh:
        stdout = fh.read()
    with open(err_path, "rb") as fh:
        stderr = fh.read()
    return {
        "argv": argv,
        "rc": rc,
        "stdout": stdout.decode("utf-8", "backslashreplace"),
        "stderr": stderr.decode("utf-8", "backslashreplace"),
    }


def main() -> None:
    cases_path, results_path = sys.argv[1], sys.argv[2]
    with open(cases_path, encoding="utf-8") as fh:
        cases = json.load(fh)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        for case in cases:
            stdin = case.get("stdin", "").encode("latin-1")
            results.append(run_one(case["argv"], stdin, scratch))
    with open(results_path, "w", encoding="utf-8") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
