"""Tool calls through anvil serve (docs/server.md, "Tool calls") on tinycode
with the real chat templates of the three call families (Qwen2.5's
<tool_call>, Llama 3.1's JSON, Mistral Nemo's [TOOL_CALLS]): tool_choice
"required" and a named function at temperature 1 over many seeds, every
call's arguments validating against its tool's schema with jsonschema,
streamed and not; the openai client's round trip (a call, the tool's
answer back through the template, a reply); langchain-openai's bind_tools
with the default choice and with_structured_output by function calling and
by json_schema; tool_choice none and auto; refusals; calls streamed
argument by argument (the pieces add up to the unstreamed call, with the
openai client and langchain's stream); /v1/responses with function tools
(function_call items, their streamed events, the round trip with a
function_call_output). The model is small
and untrained for tools, so its free output is rarely a call: the parsers
of free output are tested in tests/server/test_server_tools.c."""
import json
import os

import pytest

import test_server_openai as tso
from conftest import SHARED

openai = pytest.importorskip("openai")
jsonschema = pytest.importorskip("jsonschema")
pydantic = pytest.importorskip("pydantic")

MODEL = SHARED / "models" / "tinycode"
# a sanitizer build runs smaller (ANVIL_TEST_SANITIZED, as the C tests):
# one family's template, fewer seeds (its masks and steps are ~10x slower)
SAN = os.environ.get("ANVIL_TEST_SANITIZED") == "1"


# a client's wait for one response: a guard against a hang, not a bound on
# speed (a fresh server's first 531-token prefill of tinycode took 96 s
# under ASan on the loaded 2-core VM, past the 60 s this was)
TIMEOUT = 300


def seeds(n):
    return range(2 if SAN and n >= 10 else 1 if SAN else n)

TEMPLATES = {
    "hermes": SHARED / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja",
    "llama3_json": SHARED / "chat_templates" / "meta-llama-Llama-3.1-8B-Instruct.jinja",
    "mistral": SHARED / "chat_templates" / "mistralai-Mistral-Nemo-Instruct-2407.jinja",
}

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit"], "additionalProperties": False}}}
BOOK = {"type": "function", "function": {
    "name": "book_table", "description": "Books a table",
    "parameters": {"type": "object", "properties": {
        "guests": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 1, "maxItems": 3},
        "when": {"type": "object", "properties": {"hour": {"type": "integer", "minimum": 12, "maximum": 23},
                                                  "outside": {"type": "boolean"}},
                 "required": ["hour", "outside"], "additionalProperties": False}},
        "required": ["guests", "when"], "additionalProperties": False}}}
PING = {"type": "function", "function": {"name": "ping", "description": "No arguments"}}
TOOLS = [WEATHER, BOOK, PING]
SCHEMAS = {t["function"]["name"]: t["function"].get("parameters", {"type": "object"}) for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Oslo, and book a table for two at seven."}]


def start(template, *extra):
    saved = tso.MODEL, tso.TEMPLATE
    tso.MODEL, tso.TEMPLATE = MODEL, template
    try:
        return tso.Server(*extra)
    finally:
        tso.MODEL, tso.TEMPLATE = saved


@pytest.fixture(scope="module")
def qwen():
    s = start(TEMPLATES["hermes"])
    yield s
    assert s.stop() == 0


@pytest.fixture(scope="module", params=["hermes"] if SAN else sorted(TEMPLATES))
def family(request, qwen):
    # hermes is the langchain tests' server (the same template and flags):
    # one start of tinycode fewer
    s = qwen if request.param == "hermes" else start(TEMPLATES[request.param])
    c = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
    yield request.param, s, c
    if s is not qwen:
        assert s.stop() == 0


def check_calls(calls, allowed):
    assert calls, "no tool calls"
    for tc in calls:
        assert tc.type == "function"
        assert tc.id and isinstance(tc.id, str)
        assert tc.function.name in allowed, tc.function.name
        args = json.loads(tc.function.arguments)
        jsonschema.validate(args, SCHEMAS[tc.function.name])


def test_required_over_seeds(family):
    name, _, client = family
    seen = set()
    for seed in seeds(10):
        # one call: Mistral's array may take more, which a random model
        # goes on adding past max_tokens
        r = client.chat.completions.create(model="tinycode", messages=ASK, tools=TOOLS, tool_choice="required",
                                           temperature=1.0, seed=seed, max_tokens=160, parallel_tool_calls=False)
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", (seed, c.message)
        assert c.message.content is None
        check_calls(c.message.tool_calls, SCHEMAS)
        ids = [tc.id for tc in c.message.tool_calls]
        assert len(set(ids)) == len(ids)
        if name == "mistral":  # Mistral's templates take back only 9 letters and digits
            assert all(len(i) == 9 and i.isalnum() for i in ids)
        else:
            assert all(i.startswith("call_") for i in ids)
        seen.update(tc.function.name for tc in c.message.tool_calls)
    assert len(seen) >= 2, seen  # the sampler picks among the tools


def test_named_function_streamed_and_not(family):
    _, _, client = family
    choice = {"type": "function", "function": {"name": "book_table"}}
    for seed in seeds(4):
        r = client.chat.completions.create(model="tinycode", messages=ASK, tools=TOOLS, tool_choice=choice,
                                           temperature=1.0, seed=seed, max_tokens=160)
        check_calls(r.choices[0].message.tool_calls, {"book_table"})
        # the same request streamed: the call arrives as deltas, the end says tool_calls
        stream = client.chat.completions.create(model="tinycode", messages=ASK, tools=TOOLS, tool_choice=choice,
                                                temperature=1.0, seed=seed, max_tokens=160, stream=True)
        calls, finish, content = {}, None, ""
        for chunk in stream:
            d = chunk.choices[0].delta
            content += d.content or ""
            for tc in d.tool_calls or []:
                e = calls.setdefault(tc.index, {"id": tc.id, "name": "", "arguments": ""})
                e["name"] += tc.function.name or ""
                e["arguments"] += tc.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert finish == "tool_calls" and content == ""
        assert list(calls) == [0] and calls[0]["name"] == "book_table" and calls[0]["id"]
        jsonschema.validate(json.loads(calls[0]["arguments"]), SCHEMAS["book_table"])
        # greedy-free but seeded: the stream is the same sample as the body
        assert json.loads(calls[0]["arguments"]) == json.loads(r.choices[0].message.tool_calls[0].function.arguments)


def stream_calls(client, **kw):
    """A chat stream's tool calls as the openai client's users assemble them
    (by index: id, name, the arguments' pieces joined), the pieces per call,
    the content and the finish reason."""
    calls, pieces, content, finish = {}, {}, "", None
    for chunk in client.chat.completions.create(stream=True, **kw):
        d = chunk.choices[0].delta
        content += d.content or ""
        for tc in d.tool_calls or []:
            if tc.id:  # a call begins: its id, type and name, "arguments": ""
                assert tc.index not in calls and tc.type == "function" and tc.function.name
                assert tc.function.arguments == ""
                calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": ""}
                pieces[tc.index] = 0
            else:  # then only the next piece of its arguments
                assert tc.function.name is None and tc.function.arguments
            calls[tc.index]["arguments"] += tc.function.arguments or ""
            pieces[tc.index] += 1 if tc.function.arguments else 0
        finish = chunk.choices[0].finish_reason or finish
    return [calls[i] for i in sorted(calls)], pieces, content, finish


def test_streamed_argument_by_argument(family):
    """stream=True with tools at temperature 0: each call starts with its
    name, its arguments come in pieces as generated, and the pieces put
    together equal the unstreamed call's arguments string (compact JSON),
    the names and the count equal, the finish reason tool_calls."""
    name, _, client = family
    for kw in (dict(tool_choice="required", parallel_tool_calls=False),
               dict(tool_choice={"type": "function", "function": {"name": "book_table"}}),
               dict(tool_choice="required")):
        kw = dict(model="tinycode", messages=ASK, tools=TOOLS, temperature=0, max_tokens=200, **kw)
        r = client.chat.completions.create(**kw).choices[0]
        calls, pieces, content, finish = stream_calls(client, **kw)
        if r.message.tool_calls is None:  # Mistral's array cut by max_tokens: text, as unstreamed
            assert finish == r.finish_reason == "length"
            continue
        assert r.finish_reason == finish == "tool_calls" and content == "" and r.message.content is None
        want = [(tc.function.name, tc.function.arguments) for tc in r.message.tool_calls]
        assert [(c["name"], c["arguments"]) for c in calls] == want
        for i, c in enumerate(calls):
            check_calls(r.message.tool_calls, SCHEMAS)
            json.loads(c["arguments"])
            if c["arguments"] != "{}":
                assert pieces[i] > 1, (name, c, pieces)  # argument by argument, not whole at the end
    # the default choice: what a random model writes is text, streamed the same
    kw = dict(model="tinycode", messages=ASK, tools=TOOLS, temperature=0, max_tokens=16)
    r = client.chat.completions.create(**kw).choices[0]
    calls, _, content, finish = stream_calls(client, **kw)
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (tc.function.name, tc.function.arguments) for tc in r.message.tool_calls or []]
    assert (r.message.content or "") == content and finish == r.finish_reason


def test_responses_tools(family):
    """/v1/responses with function tools (the Responses form, flat): a call
    forced with tool_choice required comes back as a function_call item;
    streamed, its events (output_item.added, function_call_arguments.delta /
    .done, output_item.done) add up to the same call at temperature 0; the
    round trip with the call and a function_call_output goes through the
    template as chat's tool messages; a hosted tool type is 400."""
    name, _, client = family
    tools = [{"type": "function", "name": t["function"]["name"], "description": t["function"]["description"],
              "parameters": t["function"].get("parameters", {"type": "object", "properties": {}, "additionalProperties": False}),
              "strict": True}
             for t in TOOLS]
    kw = dict(model="tinycode", input=ASK[0]["content"], tools=tools, tool_choice="required", temperature=0,
              max_output_tokens=200, parallel_tool_calls=False)
    r = client.responses.create(**kw)
    assert r.status == "completed", r
    calls = [o for o in r.output if o.type == "function_call"]
    assert len(calls) == 1 and calls[0].status == "completed" and calls[0].id.startswith("fc_")
    fc = calls[0]
    jsonschema.validate(json.loads(fc.arguments), SCHEMAS[fc.name])
    if name == "mistral":
        assert len(fc.call_id) == 9 and fc.call_id.isalnum()
    else:
        assert fc.call_id.startswith("call_")
    assert r.tool_choice == "required" and [t.name for t in r.tools] == [t["name"] for t in tools]
    assert r.parallel_tool_calls is False
    # streamed: the same call, its arguments in pieces
    events = list(client.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert types[-3:] == ["response.function_call_arguments.done", "response.output_item.done",
                          "response.completed"]
    added = events[2].item
    assert added.type == "function_call" and added.name == fc.name and added.arguments == ""
    deltas = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert all(e.item_id == added.id for e in events if e.type.startswith("response.function_call_arguments"))
    assert "".join(deltas) == fc.arguments == events[-3].arguments == events[-2].item.arguments
    if fc.arguments != "{}":
        assert len(deltas) > 1
    final = events[-1].response
    assert [(o.type, o.name, o.arguments) for o in final.output] == [("function_call", fc.name, fc.arguments)]
    # the SDK's stream helper rebuilds the same
    with client.responses.stream(**kw) as stream:
        got = stream.get_final_response()
    assert [(o.name, o.arguments) for o in got.output if o.type == "function_call"] == [(fc.name, fc.arguments)]
    # the round trip: the call and its output back, then a reply (the prompt grew by them)
    follow = [{"role": "user", "content": ASK[0]["content"]}] + [o.model_dump(exclude_none=True) for o in r.output] + [
        {"type": "function_call_output", "call_id": fc.call_id, "output": json.dumps({"ok": True, "temp": 21})}]
    r2 = client.responses.create(model="tinycode", input=follow, tools=tools, temperature=0, max_output_tokens=8)
    assert r2.status in ("completed", "incomplete") and r2.output
    assert r2.usage.input_tokens > r.usage.input_tokens
    # tool_choice none: text
    r3 = client.responses.create(model="tinycode", input=follow, tools=tools, tool_choice="none", temperature=0,
                                 max_output_tokens=8)
    assert [o.type for o in r3.output] == ["message"]
    # a named function (the Responses form of tool_choice)
    r4 = client.responses.create(model="tinycode", input=ASK[0]["content"], tools=tools, temperature=0,
                                 max_output_tokens=200, tool_choice={"type": "function", "name": "book_table"})
    assert [o.name for o in r4.output if o.type == "function_call"] == ["book_table"]
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tinycode", input="x", tools=[{"type": "web_search_preview"}])
    assert e.value.body["param"] == "tools[0].type"


def test_round_trip(family):
    """A call, the tool's answer back through the template, then a reply."""
    _, server, client = family
    msgs = list(ASK)
    r = client.chat.completions.create(model="tinycode", messages=msgs, tools=TOOLS, tool_choice="required",
                                       temperature=1.0, seed=7, max_tokens=160, parallel_tool_calls=False)
    m = r.choices[0].message
    check_calls(m.tool_calls, SCHEMAS)
    msgs.append(m.model_dump(exclude_none=True))
    for tc in m.tool_calls:
        msgs.append({"role": "tool", "tool_call_id": tc.id, "content": json.dumps({"ok": True, "temp": 21})})
    r2 = client.chat.completions.create(model="tinycode", messages=msgs, tools=TOOLS, temperature=1.0, seed=1,
                                        max_tokens=8)
    c2 = r2.choices[0]
    assert c2.finish_reason in ("stop", "length", "tool_calls")
    assert isinstance(c2.message.content, str) or c2.message.tool_calls
    # the tool's answer and the call were in the prompt the model saw
    assert r2.usage.prompt_tokens > r.usage.prompt_tokens
    # tool_choice none: the tools are shown, the output is text
    r3 = client.chat.completions.create(model="tinycode", messages=msgs, tools=TOOLS, tool_choice="none",
                                        temperature=1.0, seed=2, max_tokens=8)
    assert r3.choices[0].message.tool_calls is None
    assert isinstance(r3.choices[0].message.content, str)


def test_auto_is_free_text_or_calls(family):
    """The default choice: free generation, parsed; a random model writes
    text, which comes back as content, the same streamed."""
    _, _, client = family
    for seed in seeds(3):
        kw = dict(model="tinycode", messages=ASK, tools=TOOLS, temperature=1.0, seed=seed, max_tokens=12)
        c = client.chat.completions.create(**kw).choices[0]
        if c.message.tool_calls:
            check_calls(c.message.tool_calls, SCHEMAS)
            continue
        assert isinstance(c.message.content, str) and c.finish_reason in ("stop", "length")
        chunks = list(client.chat.completions.create(stream=True, **kw))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == c.message.content
        assert chunks[-1].choices[0].finish_reason == c.finish_reason


def test_parallel_off_and_n(family):
    name, _, client = family
    r = client.chat.completions.create(model="tinycode", messages=ASK, tools=TOOLS, tool_choice="required",
                                       temperature=1.0, seed=3, max_tokens=160, n=3, parallel_tool_calls=False)
    assert len(r.choices) == 3
    for c in r.choices:
        check_calls(c.message.tool_calls, SCHEMAS)
        assert len(c.message.tool_calls) == 1


def test_refusals(family):
    _, server, _ = family
    base = {"model": "tinycode", "messages": ASK, "tools": TOOLS, "max_tokens": 4}
    cases = [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": {"type": "function"}}, "tool_choice"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice"),
        ({"tool_choice": "required", "tools": [{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"a": {"not": {}}}}}}]}, "tools"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": "x"}}]}, "tools"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": "auto"}, "function_call"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"tools": None, "tool_choice": "required"}, "tool_choice"),
    ]
    for extra, param in cases:
        status, text, _ = server.request("POST", "/v1/chat/completions", {**base, **extra})
        assert status == 400, (extra, text)
        err = json.loads(text)["error"]
        assert err["param"] == param, (extra, err)
        assert err["message"]


def test_parser_option():
    """--tool-call-parser none: auto is never parsed; a forced call is a
    JSON array of {name, parameters} (no family syntax); an unknown name
    stops the start."""
    s = start(TEMPLATES["hermes"], "--tool-call-parser", "none")
    try:
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
        for seed in seeds(3):
            r = c.chat.completions.create(model="tinycode", messages=ASK, tools=TOOLS, tool_choice="required",
                                          temperature=1.0, seed=seed, max_tokens=200)
            assert r.choices[0].finish_reason == "tool_calls"
            check_calls(r.choices[0].message.tool_calls, SCHEMAS)
    finally:
        assert s.stop() == 0
    import subprocess
    p = subprocess.run([tso.ANVIL, "serve", "--model", MODEL, "--tool-call-parser", "pythonic", "--port", "0"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and "--tool-call-parser" in p.stderr


# ------------------------------------------------------------ langchain

class Weather(pydantic.BaseModel):
    """The weather in a city."""
    city: str = pydantic.Field(max_length=10)
    unit: str = pydantic.Field(pattern="^(celsius|fahrenheit)$")
    days: int = pydantic.Field(ge=1, le=7)


# Under the sanitizers the langchain and pydantic tests are skipped: what
# they add is the Python clients' side (their requests and parsing); the
# C paths they reach are the tests above (tool_choice required and named,
# calls streamed argument by argument) and the grammar's C tests (pattern,
# $defs: tests/grammar), all of which run there. They were a third of this
# file's time under ASan.
client_only = pytest.mark.skipif(SAN, reason="client-side checks: their C paths run in the tests above")


def chat_model(server, **kw):
    import langchain_openai as lco
    return lco.ChatOpenAI(model="tinycode", base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none",
                          max_retries=0, timeout=TIMEOUT, **kw)


@client_only
def test_langchain_bind_tools_default_choice(qwen):
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool

    @tool
    def get_weather(city: str, unit: str) -> str:
        """The weather in a city."""
        return "sunny"

    for seed in seeds(3):
        llm = chat_model(qwen, temperature=1.0, max_tokens=12, seed=seed).bind_tools([get_weather])
        msg = llm.invoke("What is the weather in Oslo?")
        assert isinstance(msg, AIMessage)
        for tc in msg.tool_calls:  # a random model rarely calls: text otherwise
            assert tc["name"] == "get_weather" and isinstance(tc["args"], dict)
        assert msg.tool_calls or isinstance(msg.content, str)
    # the same with tool_choice forced by langchain: a parsed call every time
    llm = chat_model(qwen, temperature=1.0, max_tokens=120, seed=5).bind_tools([get_weather], tool_choice="any")
    msg = llm.invoke("What is the weather in Oslo?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert set(msg.tool_calls[0]["args"]) <= {"city", "unit"}
    # streamed: langchain adds the chunks' tool_call_chunks up to the same call
    total = None
    for chunk in llm.stream("What is the weather in Oslo?"):
        total = chunk if total is None else total + chunk
    assert [(t["name"], t["args"]) for t in total.tool_calls] == [(t["name"], t["args"]) for t in msg.tool_calls]
    assert total.tool_calls[0]["id"]
    # at temperature 0 the same, and the arguments came in several chunks
    llm = chat_model(qwen, temperature=0, max_tokens=120).bind_tools([get_weather], tool_choice="any")
    msg = llm.invoke("What is the weather in Oslo?")
    total, n_args = None, 0
    for chunk in llm.stream("What is the weather in Oslo?"):
        n_args += sum(1 for t in chunk.tool_call_chunks if t.get("args"))
        total = chunk if total is None else total + chunk
    assert msg.tool_calls and [(t["name"], t["args"]) for t in total.tool_calls] == [
        (t["name"], t["args"]) for t in msg.tool_calls]
    assert n_args > 1 and not total.invalid_tool_calls


@client_only
def test_langchain_structured_output(qwen):
    for method in ("function_calling", "json_schema"):
        for seed in seeds(4):
            llm = chat_model(qwen, temperature=1.0, max_tokens=120, seed=seed)
            out = llm.with_structured_output(Weather, method=method).invoke("Weather in Oslo for 3 days?")
            assert isinstance(out, Weather), (method, seed, out)
            jsonschema.validate(out.model_dump(), Weather.model_json_schema())


@client_only
def test_openai_pydantic_function_tool(qwen):
    """openai's pydantic_function_tool (strict, with $defs) and parse():
    the call is parsed back into the model."""
    class When(pydantic.BaseModel):
        hour: int = pydantic.Field(ge=12, le=23)

    class Book(pydantic.BaseModel):
        guests: int = pydantic.Field(ge=1, le=9)
        when: When

    c = openai.OpenAI(base_url=f"http://127.0.0.1:{qwen.port}/v1", api_key="none", timeout=TIMEOUT, max_retries=0)
    tool = openai.pydantic_function_tool(Book)
    for seed in seeds(3):
        r = c.chat.completions.parse(model="tinycode", messages=ASK, tools=[tool], temperature=1.0, seed=seed,
                                     max_tokens=120, tool_choice={"type": "function", "function": {"name": "Book"}})
        tc = r.choices[0].message.tool_calls[0]
        assert isinstance(tc.function.parsed_arguments, Book)
