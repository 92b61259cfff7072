"""Public benchmark adapters on small files in each benchmark's format, scored by a real HTTP judge
server on loopback that returns scripted replies; every formula checked against hand-computed values."""

from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from arm.evaluate import public
from arm.evaluate.judge import Judge, JudgeConfig, JudgeError, parse_scores

FIXTURES = Path(__file__).parent / "fixtures" / "public"


class ScriptedJudge:
    """An OpenAI-compatible /v1/chat/completions on 127.0.0.1 answering from a script: each item is a reply
    text, ("status", code) or ("sleep", seconds). Records every request body."""

    def __init__(self, script):
        self.script, self.requests = list(script), []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
                item = owner.script.pop(0) if owner.script else '{"oops": 1}'
                if isinstance(item, tuple) and item[0] == "sleep":
                    time.sleep(item[1])
                    item = '{"late": true}'
                if isinstance(item, tuple) and item[0] == "status":
                    self.send_response(item[1])
                    self.end_headers()
                    return
                data = json.dumps({"choices": [{"message": {"role": "assistant", "content": item}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def judge(self, **kwargs) -> Judge:
        host, port = self.server.server_address
        return Judge(JudgeConfig(f"http://{host}:{port}/v1", "scripted-judge", api_key="k", timeout_s=kwargs.get(
            "timeout_s", 5.0), retries=kwargs.get("retries", 3), backoff_s=0.0))


def _image(value=255):
    return np.full((64, 64, 3), value, np.uint8)


def test_wise_formulas_by_hand():
    assert public.wiscore(2, 1, 0) == pytest.approx((0.7 * 2 + 0.2 * 1) / 2)  # 0.8
    per = {"cultural": 0.5, "time": 1.0, "space": 0.0, "biology": 1.0, "physics": 0.5, "chemistry": 0.0}
    assert public.wise_overall(per) == pytest.approx(0.2 + 0.167 + 0.0 + 0.1 + 0.05 + 0.0)
    with pytest.raises(ValueError, match="missing"):
        public.wise_overall({"cultural": 1.0})


def test_gedit_formulas_by_hand():
    s = public.gedit_sample(editing_success=8, over_editing=6, naturalness=9, artifacts=7)
    assert (s["sc"], s["pq"]) == (6, 7) and s["o"] == pytest.approx(math.sqrt(42))
    summary = public.gedit_summary([("a", {"sc": 6, "pq": 7, "o": 1.0}), ("a", {"sc": 8, "pq": 9, "o": 3.0}),
                                    ("b", {"sc": 0, "pq": 1, "o": 10.0})])
    # Unweighted over groups: group a means (7, 8, 2), group b (0, 1, 10).
    assert (summary["G_SC"], summary["G_PQ"], summary["G_O"]) == pytest.approx((3.5, 4.5, 6.0))


def test_reply_parsing_takes_the_json_inside_prose_and_checks_the_scale():
    assert parse_scores('Sure! ```json\n{"a": 1, "b": 2.0}\n```', ("a", "b"), (0, 2)) == {"a": 1.0, "b": 2.0}
    for bad in ("no json here", '{"a": 1}', '{"a": 3, "b": 1}', '{"a": "high", "b": 1}', '{"a": true, "b": 1}'):
        with pytest.raises(JudgeError):
            parse_scores(bad, ("a", "b"), (0, 2))


def test_geneval_layout_is_what_its_scorer_reads(tmp_path):
    records = public.read_geneval_metadata(FIXTURES / "evaluation_metadata.jsonl")
    out = public.write_geneval(records, [[_image(0), _image(128)] for _ in records], tmp_path / "geneval")
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002"]
    for index, record in enumerate(records):
        folder = out / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text()) == record
        assert sorted(p.name for p in (folder / "samples").iterdir()) == ["00000.png", "00001.png"]
    with pytest.raises(ValueError, match="evaluation_metadata.jsonl"):
        public.read_geneval_metadata(tmp_path / "missing.jsonl")


def test_wise_scored_by_a_judge_over_http():
    prompts = public.read_wise_prompts(FIXTURES / "wise")
    assert sorted(p["category"] for p in prompts) == ["biology", "chemistry", "cultural", "cultural", "physics",
                                                      "space", "time"]
    replies = ['{"consistency": 2, "realism": 2, "aesthetic_quality": 2}'] * len(prompts)
    with ScriptedJudge(replies) as server:
        judge = server.judge()
        result = public.score_wise(prompts, [_image()] * len(prompts), judge)
    assert result["overall"] == pytest.approx(1.0) and result["scored"] == len(prompts) and not result["judge_errors"]
    assert result["judge_model"] == "scripted-judge"
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer k"
    content = request["body"]["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,") and "consistency" in content[1]["text"]


def test_judge_failures_are_retried_then_reported_never_scored_zero():
    prompts = public.read_wise_prompts(FIXTURES / "wise")[:3]
    good = '{"consistency": 1, "realism": 1, "aesthetic_quality": 1}'
    script = [("status", 500), good,                       # prompt 1: a 500, then fine on the retry
              "not json", "still not json", '{"consistency": 9}',  # prompt 2: three bad replies -> error
              ("sleep", 1.5), good]                        # prompt 3: a timeout, then fine
    with ScriptedJudge(script) as server:
        result = public.score_wise(prompts, [_image()] * 3, server.judge(timeout_s=0.5))
    assert result["scored"] == 2 and len(result["judge_errors"]) == 1
    assert "JudgeError" in result["judge_errors"][0]["error"]
    assert all(v == pytest.approx(public.wiscore(1, 1, 1)) for v in result["per_category"].values())


def test_gedit_scored_by_a_judge_over_http_english_only():
    records = public.read_gedit_records(FIXTURES / "gedit" / "records.jsonl")
    assert len(records) == 3 and Path(records[0]["source_image"]).is_file()
    script = ['{"editing_success": 8, "over_editing": 6}', '{"naturalness": 9, "artifacts": 7}',
              '{"editing_success": 10, "over_editing": 10}', '{"naturalness": 4, "artifacts": 5}']
    with ScriptedJudge(script) as server:
        result = public.score_gedit(records, [_image()] * 3, [_image()] * 3, server.judge())
    assert result["scored"] == 2 and len(server.requests) == 4  # the Chinese record is left out
    assert result["per_group"]["subject_add"]["o"] == pytest.approx(math.sqrt(6 * 7))
    assert result["per_group"]["color_alter"]["o"] == pytest.approx(math.sqrt(10 * 4))
    assert result["G_O"] == pytest.approx((math.sqrt(42) + math.sqrt(40)) / 2)
    assert len(server.requests[0]["body"]["messages"][0]["content"]) == 3  # source and edited, then the text


def test_a_missing_judge_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ARM_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("ARM_JUDGE_MODEL", raising=False)
    with pytest.raises(ValueError, match="no judge configured"):
        Judge(JudgeConfig())
