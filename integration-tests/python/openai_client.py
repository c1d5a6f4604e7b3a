"""Drives a running Ferrite server with the official `openai` client and asserts on values.

Usage: python openai_client.py BASE_URL MODEL [--structured]
Exits non-zero with the failed assertion on any mismatch. `--structured` also checks
response_format json_schema and a forced tool call (needs the structured-output processor).
"""

import json
import sys

import openai


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    base, model = sys.argv[1], sys.argv[2]
    structured = "--structured" in sys.argv
    c = openai.OpenAI(base_url=base + "/v1", api_key="unused")
    msgs = [{"role": "user", "content": "Name three colours."}]

    # n greedy choices are identical; usage adds up.
    r = c.chat.completions.create(model=model, messages=msgs, n=3, temperature=0, max_tokens=8)
    check(len(r.choices) == 3, f"3 choices, got {len(r.choices)}")
    texts = [ch.message.content for ch in r.choices]
    check(len(set(texts)) == 1, f"greedy choices differ: {texts}")
    check(all(ch.finish_reason in ("stop", "length") for ch in r.choices), "finish_reason")
    u = r.usage
    check(u.total_tokens == u.prompt_tokens + u.completion_tokens, f"usage {u}")
    check(u.prompt_tokens > 0, "prompt tokens")

    # Logprobs: top_logprobs sorted, the chosen token among them (greedy: the first).
    r = c.chat.completions.create(
        model=model, messages=msgs, temperature=0, max_tokens=6, logprobs=True, top_logprobs=4
    )
    content = r.choices[0].logprobs.content
    check(len(content) == r.usage.completion_tokens, "one logprob entry per token")
    for e in content:
        tops = [t.logprob for t in e.top_logprobs]
        check(len(tops) == 4, f"4 top logprobs, got {len(tops)}")
        check(tops == sorted(tops, reverse=True), f"top logprobs not sorted: {tops}")
        check(abs(tops[0] - e.logprob) < 1e-4, f"greedy token not the best: {e}")
        check(e.token in [t.token for t in e.top_logprobs], "chosen token among the top")

    # Streaming with usage: the text equals the non-streamed text; usage counts the tokens.
    full = c.chat.completions.create(model=model, messages=msgs, temperature=0, max_tokens=10)
    stream = c.chat.completions.create(
        model=model,
        messages=msgs,
        temperature=0,
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
            finish = ch.finish_reason or finish
    check(text == full.choices[0].message.content, f"stream {text!r} != {full.choices[0].message.content!r}")
    check(usage is not None and usage.completion_tokens == full.usage.completion_tokens, f"usage {usage}")
    check(finish == full.choices[0].finish_reason, f"finish {finish}")

    # Completions: logprobs shape, stop strings excluded and included.
    r = c.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    n = r.usage.completion_tokens
    check(len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n, "logprobs lengths")
    check(lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0, f"offsets {lp.text_offset}")
    whole = r.choices[0].text
    stop = whole.strip().split(" ")[1] if len(whole.strip().split(" ")) > 1 else None
    if stop:
        cut = c.completions.create(model=model, prompt="The capital of France is", max_tokens=12, temperature=0, stop=[stop])
        check(cut.choices[0].text == whole[: whole.find(stop)], f"stop excluded: {cut.choices[0].text!r}")
        check(cut.choices[0].finish_reason == "stop", "stop finish")
        inc = c.completions.create(
            model=model, prompt="The capital of France is", max_tokens=12, temperature=0,
            stop=[stop], extra_body={"include_stop_str_in_output": True},
        )
        check(inc.choices[0].text == whole[: whole.find(stop) + len(stop)], f"stop included: {inc.choices[0].text!r}")

    # Errors come back as OpenAI errors naming the field.
    try:
        c.chat.completions.create(model=model, messages=msgs, extra_body={"frobnicate": 1})
        check(False, "unknown field accepted")
    except openai.BadRequestError as e:
        check(e.body.get("param") == "frobnicate", f"param {e.body}")

    if structured:
        # Bounded values: a 135M model may otherwise write one until max_tokens.
        schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                                   "age": {"type": "integer", "minimum": 0, "maximum": 150}},
                  "required": ["name", "age"], "additionalProperties": False}
        r = c.chat.completions.create(
            model=model, temperature=0, max_tokens=100,
            messages=[{"role": "user", "content": "Give a person as JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}},
        )
        v = json.loads(r.choices[0].message.content)
        check(set(v) == {"name", "age"} and isinstance(v["age"], int), f"schema output {v}")
        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string", "maxLength": 40}}, "required": ["city"]}}}]
        r = c.chat.completions.create(
            model=model, temperature=0, max_tokens=100, tools=tools,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
        calls = r.choices[0].message.tool_calls
        check(calls and calls[0].function.name == "get_weather", f"tool calls {calls}")
        check("city" in json.loads(calls[0].function.arguments), "arguments")
        check(r.choices[0].finish_reason == "tool_calls", r.choices[0].finish_reason)
        # The same forced call streamed: the client's own chunk types put the fragments
        # together (id and name first, then the arguments piece by piece).
        stream = c.chat.completions.create(
            model=model, temperature=0, max_tokens=100, tools=tools, stream=True,
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
        name, args, pieces, finish = None, "", 0, None
        for chunk in stream:
            ch = chunk.choices[0]
            for tc in ch.delta.tool_calls or []:
                check(tc.index == 0, f"tool call index {tc.index}")
                if tc.function.name:
                    check(name is None and tc.id and tc.id.startswith("call_"), f"header {tc}")
                    name = tc.function.name
                if tc.function.arguments:
                    args += tc.function.arguments
                    pieces += 1
            finish = ch.finish_reason or finish
        check(name == "get_weather", f"streamed name {name}")
        check(json.loads(args) == json.loads(calls[0].function.arguments), f"streamed args {args!r}")
        check(pieces > 1, f"arguments in {pieces} piece(s)")
        check(finish == "tool_calls", f"streamed finish {finish}")

    print("openai client: all checks passed")


if __name__ == "__main__":
    main()
