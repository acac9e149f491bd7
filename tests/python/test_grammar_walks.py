"""Structured output always parses and validates (issue 18).

500 generated JSON schemas (nesting, enums, required fields, arrays with
bounds, string patterns and formats, integer ranges, anyOf, $ref) are
compiled against tinycode's vocabulary, and a random walk through each (a
token drawn uniformly from the mask at every step: sampling at temperature 1
over flat logits) must end with a stop token and validate with the
jsonschema package. Regular expressions and GBNF grammars likewise, checked
with Python's re; choices must come out as one of the choices.

The walks come from tests/gram_walk (built beside the anvil command).
"""
import json
import os
import pathlib
import random
import re
import subprocess

import jsonschema

SHARED = pathlib.Path(os.environ.get("ANVIL_SHARED_DIR", "/work/shared"))
ANVIL = pathlib.Path(os.environ.get("ANVIL_BIN", "build/anvil"))
TOOL = ANVIL.parent / "tests" / "gram_walk"
SANITIZED = os.environ.get("ANVIL_TEST_SANITIZED") == "1"
VOCAB = SHARED / "models" / "tinycode"

PATTERNS = [
    "^[A-Z]{2}-[0-9]{3}$",
    "[a-f0-9]{4,8}",
    "^(foo|bar|baz)_[0-9]{1,2}$",
    "^\\w{1,5}@x\\.org$",
    "^[\\u00e0-\\u00ff]{1,3}$",
    '^a"b{0,2}\\\\$',
    "^\\d{3}(\\.\\d{1,2})?$",
    "^[^a-z\\n]{2,4}$",
]
FORMATS = ["date", "uuid", "date-time", "time", "ipv4", "email"]


def gen_schema(rng, depth, defs, kind=None):
    """A random schema; every string and array is bounded so each walk ends."""
    kinds = ["string", "integer", "number", "boolean", "null", "enum", "const", "pattern", "format", "anyOf"]
    if depth < 3:
        kinds += ["object", "object", "array", "array", "ref"]
    k = kind or rng.choice(kinds)
    if k == "string":
        s = {"type": "string", "maxLength": rng.randint(0, 8)}
        if rng.random() < 0.5:
            s["minLength"] = rng.randint(0, s["maxLength"])
        return s
    if k == "integer":
        s = {"type": "integer"}
        if rng.random() < 0.6:
            lo = rng.randint(-1000, 1000)
            s["minimum"] = lo
            if rng.random() < 0.7:
                s["maximum"] = lo + rng.randint(0, 5000)
        if rng.random() < 0.2:
            s = {"type": "integer", "exclusiveMinimum": rng.randint(-50, 50), "exclusiveMaximum": 99}
        return s
    if k == "number":
        return {"type": "number", "minimum": 0} if rng.random() < 0.3 else {"type": "number"}
    if k in ("boolean", "null"):
        return {"type": k}
    if k == "enum":
        pool = ["red", "green", 'say "hi"', "back\\slash", "caf\u00e9", 1, 2.5, None, True, {"k": [1, 2]}, [], "\n"]
        return {"enum": rng.sample(pool, rng.randint(1, 5))}
    if k == "const":
        return {"const": rng.choice(["x", 42, None, {"a": "b"}, ["\u00e9", 0]])}
    if k == "pattern":
        return {"type": "string", "pattern": rng.choice(PATTERNS)}
    if k == "format":
        return {"type": "string", "format": rng.choice(FORMATS)}
    if k == "anyOf":
        # disjoint alternatives, so that oneOf holds too
        # oneOf only over disjoint alternatives: the engine does not check "exactly one"
        if rng.random() < 0.5:
            alts = rng.choice([[{"type": "string", "maxLength": 4}, {"type": "integer"}],
                               [{"type": "boolean"}, {"type": "null"}, {"enum": ["a", "b"]}]])
            return {rng.choice(["anyOf", "oneOf"]): alts}
        return {"anyOf": [gen_schema(rng, 3, defs), {"type": "null"}]}
    if k == "object":
        n = rng.randint(1, 4)
        props = {}
        for i in range(n):
            props[rng.choice(["id", "name", "tags", "a b", "x\"y", "\u00fcber", "v", ""]) + str(i)] = gen_schema(rng, depth + 1, defs)
        s = {"type": "object", "properties": props,
             "required": [p for p in props if rng.random() < 0.6]}
        r = rng.random()
        if r < 0.4:
            s["additionalProperties"] = False
        elif r < 0.6 and all(k.isascii() and '"' not in k for k in props):
            # extra members of a schema, under names other than the listed ones
            s["additionalProperties"] = rng.choice([{"type": "integer"}, {"type": "string", "maxLength": 3},
                                                    {"enum": [True, None]}])
        if rng.random() < 0.3:
            s["title"] = "T"
            s["description"] = "annotation"
        return s
    if k == "array":
        lo = rng.randint(0, 2)
        s = {"type": "array", "items": gen_schema(rng, depth + 1, defs), "minItems": lo, "maxItems": lo + rng.randint(0, 3)}
        if rng.random() < 0.25:
            s["prefixItems"] = [gen_schema(rng, depth + 1, defs)]
        return s
    # ref
    name = "d%d" % len(defs)
    defs[name] = None  # taken before the body, which may add its own
    defs[name] = gen_schema(rng, depth + 1, defs)
    return {"$ref": "#/$defs/" + name}


def gen_top(rng):
    defs = {}
    r = rng.random()
    body = gen_schema(rng, 0, defs, "object" if r < 0.6 else "array" if r < 0.75 else None)
    if defs:
        if "$ref" in body:
            body = {"anyOf": [body]}
        body["$defs"] = defs
    return body


def run_tool(requests):
    assert TOOL.exists(), f"{TOOL} is missing: build the gram_walk target"
    text = "".join(json.dumps(r) + "\n" for r in requests)
    proc = subprocess.run([str(TOOL), str(VOCAB)], input=text, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(requests)
    return [json.loads(line) for line in lines]


def test_500_schemas_validate():
    rng = random.Random(1234)
    n = 120 if SANITIZED else 500
    schemas = [gen_top(rng) for _ in range(n)]
    reqs = [{"kind": "json_schema", "text": json.dumps(s), "walks": 1, "seed": i, "max_tokens": 4000,
             "max_whitespace": [16, 0, -1, 2][i % 4]} for i, s in enumerate(schemas)]
    results = run_tool(reqs)
    open_ended = ended_open = 0
    for s, r in zip(schemas, results):
        assert r["ok"], (s, r.get("error"))
        # extra members (additionalProperties as a schema) have no bound on their
        # number or their names' length: such a walk may run out of tokens
        unbounded = '"additionalProperties": {' in json.dumps(s)
        for out, ended in zip(r["outputs"], r["ended"]):
            assert out is not None, ("output is not UTF-8", s)
            if unbounded:
                open_ended += 1
                ended_open += ended
                if not ended:
                    continue
            assert ended, ("walk did not end", s, out)
            value = json.loads(out)
            jsonschema.Draft202012Validator(s).validate(value)
            jsonschema.Draft202012Validator(s, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER).validate(value)
    assert open_ended > 0 and ended_open >= 0.8 * open_ended, (ended_open, open_ended)


def test_json_object_and_bounded_whitespace():
    reqs = [{"kind": "json_object", "walks": 8, "seed": i, "max_tokens": 400, "max_whitespace": ws}
            for i, ws in enumerate([0, 3, -1])]
    for req, r in zip(reqs, run_tool(reqs)):
        assert r["ok"]
        for out, ended in zip(r["outputs"], r["ended"]):
            # a walk may run out of tokens inside a long string; the ones that ended are whole objects
            if not ended:
                continue
            assert isinstance(json.loads(out), dict)
            ws = req["max_whitespace"]
            runs = re.findall(r'[ \t\n\r]+', re.sub(r'"(\\.|[^"\\])*"', '""', out))
            if ws == 0:
                assert runs == []
            elif ws == -1:
                assert all(run == " " for run in runs)
            else:
                assert all(len(run) <= ws for run in runs)


REGEXES = [
    r"\d{3}-\d{4}",
    r"(cat|dog|bird)s?",
    r"[A-Z][a-z]{0,6}( [A-Z][a-z]{0,6}){0,2}",
    r"0x[0-9a-fA-F]{1,8}",
    r"(\+|-)?\d{1,4}(\.\d{1,3})?",
    r"[\u0400-\u04ff]{1,4}",
    r"https?://[a-z]{1,8}\.(com|org)(/[a-z0-9]{1,5}){0,2}",
    r"(a|ab|abc){1,4}c",
    r".{1,5}",
    r"[^0-9]{2}",
]

GRAMMARS = [
    ('root ::= "[" item (", " item){0,3} "]"\nitem ::= [0-9]{1,3} | "\\"" [a-z]{1,4} "\\""',
     r'\[([0-9]{1,3}|"[a-z]{1,4}")(, ([0-9]{1,3}|"[a-z]{1,4}")){0,3}\]'),
    ('root ::= greeting " " name "!"?\ngreeting ::= "hi" | "hello" | "hey"\nname ::= [A-Z] [a-z]{1,5}',
     r"(hi|hello|hey) [A-Z][a-z]{1,5}!?"),
    ('root ::= line{1,3}\nline ::= key "=" value "\\n"\nkey ::= [a-z_]{1,6}\nvalue ::= ("true" | "false" | [0-9]{1,4})',
     r"([a-z_]{1,6}=(true|false|[0-9]{1,4})\n){1,3}"),
]


def test_regex_and_grammar_outputs_match():
    reqs = [{"kind": "regex", "text": r, "walks": 6, "seed": i, "max_tokens": 300} for i, r in enumerate(REGEXES)]
    reqs += [{"kind": "ebnf", "text": g, "walks": 6, "seed": i, "max_tokens": 300} for i, (g, _) in enumerate(GRAMMARS)]
    checks = REGEXES + [rx for _, rx in GRAMMARS]
    for req, rx, r in zip(reqs, checks, run_tool(reqs)):
        assert r["ok"], (req, r.get("error"))
        for out, ended in zip(r["outputs"], r["ended"]):
            assert ended, (rx, out)
            assert re.fullmatch(rx, out, flags=re.S if rx == ".{1,5}" else 0) or (rx == ".{1,5}" and re.fullmatch(r"[^\n]{1,5}", out)), (rx, out)


def test_choice():
    choices = ["yes", "no", "maybe", "n/a", "\u00e9t\u00e9", "no way"]
    (r,) = run_tool([{"kind": "choice", "choices": choices, "walks": 20, "seed": 3, "max_tokens": 50}])
    assert r["ok"]
    for out, ended in zip(r["outputs"], r["ended"]):
        assert ended and out in choices


def test_refusals_have_messages():
    bad = [
        ({"kind": "json_schema", "text": json.dumps({"type": "object", "patternProperties": {"a": {}}})}, "patternProperties"),
        ({"kind": "json_schema", "text": json.dumps({"enum": list(range(20000))})}, "max_enum"),
        ({"kind": "regex", "text": "(a)\\1"}, "backreferences"),
        ({"kind": "regex", "text": "a{1,100000}"}, "max_repeat"),
        ({"kind": "ebnf", "text": "root ::= root \"x\" | \"y\""}, "left recursion"),
    ]
    for (req, want), r in zip(bad, run_tool([dict(b, walks=1, seed=0, max_tokens=1) for b, _ in bad])):
        assert not r["ok"] and want in r["error"], (req, r)
