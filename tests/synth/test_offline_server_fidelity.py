"""The offline Gemini double errs as Gemini does: unknown model 404 NOT_FOUND, a malformed
body 400 INVALID_ARGUMENT (the SDK raises ClientError; loom's client does not retry it),
and structured answers hold only the properties of the requested response schema."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from google.genai import errors, types
from loom.synth.client import LLMConfig, LLMError, generate_pair_json, make_client
from loom.synth.offline_server import server_stats


def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - local server
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("body, needle", [
    (b"{}", "contents is not specified"),
    (b'{"contents": 5}', "Invalid value at 'contents'"),
    (b'{"contents": [{"role": "user"}]}', "parts must not be empty"),
    (b'{"contents": [{"parts": [7]}]}', "Invalid value at 'contents[0].parts'"),
])
def test_malformed_bodies_are_400_invalid_argument(offline_llm, body, needle):
    url = offline_llm()
    code, payload = _post(f"{url}/v1beta/models/gemini-2.5-flash:generateContent", body)
    assert code == 400
    err = errors.ClientError(code, payload)  # the SDK's own reading of the answer
    assert (err.code, err.status) == (400, "INVALID_ARGUMENT")
    assert needle in err.message


def test_unknown_model_is_404_through_the_sdk_and_not_retried(offline_llm):
    url = offline_llm()
    client = make_client(LLMConfig(), url)
    with pytest.raises(errors.ClientError) as info:
        client.models.generate_content(model="gemini-no-such-model", contents="hello")
    assert (info.value.code, info.value.status) == (404, "NOT_FOUND")
    assert "models/gemini-no-such-model is not found" in info.value.message
    before = server_stats(url)["requests"]
    cfg = LLMConfig(model="gemini-no-such-model", retry_initial_delay_s=0.01)
    with pytest.raises(LLMError, match="HTTP 404 NOT_FOUND"):
        generate_pair_json(client, cfg, "QUERY_KIND: caption", [types.Part.from_text(text="x")])
    assert server_stats(url)["requests"] - before == 1  # a 4xx is final: one request


def test_structured_answer_has_only_schema_properties(offline_llm):
    url = offline_llm()
    schema = {"type": "object", "properties": {"task": {"type": "string"},
                                               "queries": {"type": "array",
                                                           "items": {"type": "string"}}},
              "required": ["task", "queries"]}
    body = {"contents": [{"role": "user", "parts": [
        {"text": "QUERY_KIND: caption"}, {"text": "a small red circle in the top left"}]}],
        "generationConfig": {"responseMimeType": "application/json",
                             "responseJsonSchema": schema}}
    code, payload = _post(f"{url}/v1beta/models/gemini-2.5-flash:generateContent",
                          json.dumps(body).encode())
    assert code == 200
    answer = json.loads(payload["candidates"][0]["content"]["parts"][0]["text"])
    assert set(answer) == {"task", "queries"}
