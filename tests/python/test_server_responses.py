"""POST /v1/responses (OpenAI's Responses API, text only, no stored state)
driven by the official openai client: responses.create, streamed and not,
greedy text equal to the same conversation through /v1/chat/completions,
instructions as the system turn, max_output_tokens (status "incomplete"),
the stream's events in order with their sequence numbers, text.format
json_schema / json_object (structured output, and openai's responses.parse
with a pydantic model), and each refused
field named (tools other than functions among them). A real server on
stories260K with Phi-3.5's chat template; tool calls on /v1/responses are
tested in test_server_tools.py (tinycode with the call families' templates)."""
import http.client
import json
import signal
import socket
import subprocess
import time

import pytest

from conftest import ANVIL, SHARED

openai = pytest.importorskip("openai")

MODEL = SHARED / "models" / "stories260K"
TEMPLATE = SHARED / "chat_templates" / "microsoft-Phi-3.5-mini-instruct.jinja"
KEY = "sk-test-key"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server():
    port = free_port()
    proc = subprocess.Popen(
        [ANVIL, "serve", "--model", MODEL, "--port", str(port), "--threads", "1", "--chat-template", TEMPLATE,
         "--api-key", KEY, "--shutdown-timeout", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, proc.stderr.read()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/health")
            if c.getresponse().status == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline
        time.sleep(0.1)
    yield port
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key=KEY, max_retries=0)


def chat_text(client, messages, n):
    r = client.chat.completions.create(model="stories260K", messages=messages, max_tokens=n, temperature=0)
    return r.choices[0].message.content, r.choices[0].finish_reason, r.usage


def test_create(client):
    r = client.responses.create(model="stories260K", input="Tell me a story.", max_output_tokens=20,
                                temperature=0, metadata={"k": "v"})
    text, finish, usage = chat_text(client, [{"role": "user", "content": "Tell me a story."}], 20)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "stories260K"
    assert r.output_text == text and text
    item = r.output[0]
    assert item.type == "message" and item.role == "assistant" and item.id.startswith("msg_")
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    # 20 tokens ran out: OpenAI's "incomplete" with its reason
    assert finish == "length" and r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.input_tokens == usage.prompt_tokens and r.usage.output_tokens == 20
    assert r.usage.total_tokens == usage.prompt_tokens + 20
    assert r.max_output_tokens == 20 and r.metadata == {"k": "v"} and r.store is False
    assert r.created_at > 1.7e9


def test_messages_and_instructions(client):
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "input_text", "text": "A story"},
                                         {"type": "input_text", "text": "please"}]}]
    r = client.responses.create(model="stories260K", input=msgs, instructions="Be brief.", max_output_tokens=12,
                                temperature=0)
    want, _, _ = chat_text(client, [{"role": "system", "content": "Be brief."}, msgs[0], msgs[1],
                                    {"role": "user", "content": "A story\nplease"}], 12)
    assert r.output_text == want and r.instructions == "Be brief."
    # without instructions the system turn is gone: another prompt
    r2 = client.responses.create(model="stories260K", input=msgs, max_output_tokens=12, temperature=0)
    assert r2.usage.input_tokens < r.usage.input_tokens


def test_stream(client):
    events = list(client.responses.create(model="stories260K", input="Tell me a story.", max_output_tokens=16,
                                          temperature=0, stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done",
                          "response.output_item.done", "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    text, _, _ = chat_text(client, [{"role": "user", "content": "Tell me a story."}], 16)
    assert len(deltas) > 3 and "".join(deltas) == text
    assert events[-4].text == text
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == 16 and final.status == "incomplete"
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id
    # one that ends by itself (a stop string, vLLM's extension): response.completed, status completed
    events = list(client.responses.create(model="stories260K", input="Hi", max_output_tokens=200, stream=True,
                                          temperature=0, extra_body={"stop": ["."]}))
    assert events[-1].type == "response.completed" and events[-1].response.status == "completed"
    assert events[-1].response.incomplete_details is None
    # the SDK's stream helper, which rebuilds the response from the events
    with client.responses.stream(model="stories260K", input="Hi", max_output_tokens=200, temperature=0,
                                 extra_body={"stop": ["."]}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == "".join(deltas) == events[-1].response.output_text


SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                         "age": {"type": "integer", "minimum": 0, "maximum": 30},
                                         "tags": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}},
          "required": ["name", "age", "tags"], "additionalProperties": False}


def test_text_format_json_schema(client):
    """text.format json_schema (Responses' form of response_format): sampled at
    temperature 1 from a random-ish model, every output parses and validates;
    the response repeats the format; streamed equals not."""
    jsonschema = pytest.importorskip("jsonschema")
    fmt = {"type": "json_schema", "name": "pet", "schema": SCHEMA, "strict": True}
    for seed in range(4):
        r = client.responses.create(model="stories260K", input="A pet", temperature=1.0, extra_body={"seed": seed},
                                    max_output_tokens=120, text={"format": fmt})
        assert r.status == "completed", r
        jsonschema.validate(json.loads(r.output_text), SCHEMA)
        assert r.text.format.type == "json_schema" and r.text.format.name == "pet"
    with client.responses.stream(model="stories260K", input="A pet", temperature=1.0, extra_body={"seed": 1},
                                 max_output_tokens=120, text={"format": fmt}) as stream:
        streamed = stream.get_final_response().output_text
    alone = client.responses.create(model="stories260K", input="A pet", temperature=1.0, extra_body={"seed": 1},
                                    max_output_tokens=120, text={"format": fmt}).output_text
    assert streamed == alone
    # json_object bounds nothing: a random model's string may outrun the
    # tokens (status "incomplete"), but what it wrote is an object's start
    r = client.responses.create(model="stories260K", input="x", max_output_tokens=200,
                                text={"format": {"type": "json_object"}})
    if r.status == "completed":
        assert isinstance(json.loads(r.output_text), dict)
    else:
        assert r.status == "incomplete" and r.output_text.startswith("{"), r


def test_responses_parse_pydantic(client):
    """openai's responses.parse with a pydantic model: text_format becomes a
    strict json_schema, and the parsed output is an instance of the model."""
    pydantic = pytest.importorskip("pydantic")

    class Pet(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=12)
        age: int = pydantic.Field(ge=0, le=30)

    r = client.responses.parse(model="stories260K", input="A pet", temperature=1.0, extra_body={"seed": 5},
                               max_output_tokens=80, text_format=Pet)
    assert isinstance(r.output_parsed, Pet), r.output_text


def test_refusals(client):
    cases = [
        (dict(input="x", previous_response_id="resp_1"), "previous_response_id"),
        (dict(input="x", tools=[{"type": "web_search"}]), "tools[0].type"),
        (dict(input="x", tools=[{"type": "function", "name": "f"}, {"type": "file_search", "vector_store_ids": []}]),
         "tools[1].type"),
        (dict(input="x", tools=[{"type": "function", "name": "f"}], tool_choice={"type": "web_search_preview"}),
         "tool_choice"),
        (dict(input="x", max_output_tokens=100000), "max_output_tokens"),
        (dict(input="x", max_output_tokens=0), "max_output_tokens"),
        (dict(input=[]), "input"),
        (dict(input=[{"role": "user", "content": [{"type": "input_image", "image_url": "http://x/y.png"}]}]),
         "input[0].content[0]"),
        (dict(input=[{"type": "reasoning", "id": "rs_1", "summary": []}]), "input[0]"),
        (dict(input=[{"type": "function_call_output", "call_id": "c", "output": 5}]), "input[0].output"),
        (dict(input=[{"role": "wizard", "content": "x"}]), "input"),
        (dict(input="x", text={"format": {"type": "yaml"}}), "text.format"),
        (dict(input="x", text={"format": {"type": "json_schema", "name": "x"}}), "text.format.schema"),
        (dict(input="x", temperature=3), "temperature"),
    ]
    for kw, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            client.responses.create(model="stories260K", **kw)
        err = e.value.body
        assert e.value.status_code == 400 and err["param"].startswith(param), (kw, err)
        assert param.split("[")[0] in err["message"], (kw, err)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="x")
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="stories260K", extra_body={"input": None})
    assert e.value.body["param"] == "input"
