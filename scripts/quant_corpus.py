#!/usr/bin/env python3
"""Writes the accuracy corpus of docs/quantization.md ("Accuracy"): Python
standard library source, for `anvil perplexity`.

    scripts/quant_corpus.py OUT [--root /usr/lib/python3.11] [--calib]

OUT is the concatenation of a fixed, sorted list of standard-library modules
(the .py files of each module or package, package files sorted by path, test
folders left out), each file after a separator line naming it; a header
comment at the top names the Python version and the folder. OUT.json (beside
it) lists every file with its size and SHA-256, and the SHA-256 of OUT, so a
run can say exactly which text it scored.

The same Python installation gives the same bytes: nothing depends on the
time, the locale or the order the file system lists a folder in. tinycode
(../shared/models/tinycode) was trained on site-packages, not on this text.
With --calib it writes the calibration text of `anvil build --calib` (AWQ)
instead: the same kind of source from another fixed list of modules
(CALIB_MODULES), none of them in the evaluation corpus, so that the scheme
is never calibrated on the text it is measured on.

Standard library only (no third-party import).
"""
import argparse
import glob
import hashlib
import json
import os
import re
import subprocess
import sys

# Modules present from Python 3.8 through 3.13 (none of those 3.12 and 3.13
# removed), a mix of plain code, docstring-heavy code and data-like code.
# A package stands for its .py files, test folders excluded. A module
# missing from an installation is skipped and named in the header.
MODULES = [
    "argparse.py",
    "ast.py",
    "collections",
    "concurrent",
    "configparser.py",
    "contextlib.py",
    "csv.py",
    "dataclasses.py",
    "datetime.py",
    "difflib.py",
    "enum.py",
    "fractions.py",
    "functools.py",
    "json",
    "pathlib.py",
    "shlex.py",
    "shutil.py",
    "statistics.py",
    "string.py",
    "textwrap.py",
]

# The calibration text's modules (--calib): disjoint from MODULES (checked
# below), present from Python 3.8 through 3.13.
CALIB_MODULES = [
    "base64.py",
    "bisect.py",
    "calendar.py",
    "copy.py",
    "gettext.py",
    "heapq.py",
    "inspect.py",
    "logging",
    "operator.py",
    "pprint.py",
    "queue.py",
    "random.py",
    "sched.py",
    "selectors.py",
    "tokenize.py",
    "typing.py",
    "uuid.py",
    "zipfile.py",
]
assert not set(CALIB_MODULES) & set(MODULES)

SEPARATOR = "\n# ==== anvil corpus file: {} ====\n"
TEST_DIRS = {"test", "tests", "idle_test"}


def default_root():
    """The newest /usr/lib/python3.X that holds a standard library."""
    found = []
    for d in glob.glob("/usr/lib/python3.*"):
        m = re.fullmatch(r"/usr/lib/python3\.(\d+)", d)
        if m and os.path.isfile(os.path.join(d, "os.py")):
            found.append((int(m.group(1)), d))
    if not found:
        sys.exit("quant_corpus.py: no /usr/lib/python3.X with a standard library; give --root")
    return max(found)[1]


def python_version(root):
    """The full version of the interpreter that owns root, else its folder's X.Y."""
    short = os.path.basename(root.rstrip("/"))[len("python"):]
    if os.path.realpath(os.path.dirname(os.__file__)) == os.path.realpath(root):
        return sys.version.split()[0]
    exe = os.path.join("/usr/bin", "python" + short)
    if os.access(exe, os.X_OK):
        try:
            out = subprocess.run([exe, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                                 text=True, timeout=30, check=True)
            return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return short


def module_files(root, name):
    path = os.path.join(root, name)
    if os.path.isfile(path):
        return [name]
    if not os.path.isdir(path):
        return None
    files = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if d not in TEST_DIRS and d != "__pycache__"]
        for f in filenames:
            if f.endswith(".py"):
                files.append(os.path.relpath(os.path.join(dirpath, f), root))
    return sorted(files)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="the corpus file to write (OUT.json is written beside it)")
    ap.add_argument("--root", help="the standard library folder (default: the newest /usr/lib/python3.X)")
    ap.add_argument("--calib", action="store_true",
                    help="write the calibration text (CALIB_MODULES, none of the corpus's) instead")
    args = ap.parse_args()
    modules = CALIB_MODULES if args.calib else MODULES
    what = "calibration text" if args.calib else "quantization corpus"
    root = os.path.abspath(args.root or default_root())
    if not os.path.isfile(os.path.join(root, "os.py")):
        sys.exit(f"quant_corpus.py: {root} is not a Python standard library folder (it has no os.py)")
    version = python_version(root)

    files, missing = [], []
    for m in modules:
        got = module_files(root, m)
        if got is None:
            missing.append(m)
        else:
            files.extend(got)

    header = (f"# anvil {what} (scripts/quant_corpus.py): Python {version} standard library,\n"
              f"# {len(files)} files of {len(modules) - len(missing)} modules from {root}"
              + (f"; missing here: {', '.join(missing)}" if missing else "") + "\n")
    body = [header]
    listing = []
    for rel in files:
        with open(os.path.join(root, rel), "rb") as f:
            data = f.read()
        # the files are UTF-8 (PEP 3120); a stray byte would fail the tokenizer
        text = data.decode("utf-8", errors="replace").replace("\r\n", "\n")
        body.append(SEPARATOR.format(rel))
        body.append(text)
        listing.append({"path": rel, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    out_bytes = "".join(body).encode("utf-8")
    with open(args.out, "wb") as f:
        f.write(out_bytes)
    meta = {
        "python_version": version,
        "root": root,
        "modules": modules,
        "missing": missing,
        "files": listing,
        "bytes": len(out_bytes),
        "sha256": hashlib.sha256(out_bytes).hexdigest(),
    }
    with open(args.out + ".json", "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{args.out}: {len(out_bytes)} bytes, {len(files)} files, Python {version} ({root}), "
          f"sha256 {meta['sha256'][:16]}")


if __name__ == "__main__":
    main()
