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
    assert public.wise_overall(per, "legacy") == pytest.approx(0.2 + 0.167 + 0.0 + 0.1 + 0.05 + 0.0)
    assert public.wise_overall(per, "verified") == pytest.approx(0.2 + 0.12 * (1.0 + 0.0 + 1.0 + 0.5 + 0.0))
    with pytest.raises(ValueError, match="missing"):
        public.wise_overall({"cultural": 1.0})
    # Categories by prompt_id, as each version's scorer buckets them.
    assert [public.wise_category(i, "legacy") for i in (400, 401, 567, 568, 700, 701, 1000)] == [
        "cultural", "time", "time", "space", "space", "biology", "chemistry"]
    assert [public.wise_category(i, "verified") for i in (520, 521, 640, 641, 880, 881)] == [
        "time", "space", "space", "biology", "physics", "chemistry"]


def test_gedit_formulas_by_hand():
    s = public.gedit_sample([8, 6], [9, 7])
    assert (s["sc"], s["pq"]) == (6, 7) and s["o"] == pytest.approx(math.sqrt(42))
    summary = public.gedit_summary([("a", {"sc": 6, "pq": 7, "o": 1.0}), ("a", {"sc": 8, "pq": 9, "o": 3.0}),
                                    ("b", {"sc": 0, "pq": 1, "o": 10.0})])
    # Unweighted over groups: group a means (7, 8, 2), group b (0, 1, 10).
    assert (summary["G_SC"], summary["G_PQ"], summary["G_O"]) == pytest.approx((3.5, 4.5, 6.0))


def test_wise_and_viescore_replies_are_read_as_their_scripts_read_them():
    from arm.evaluate.judge import JudgeError

    assert public.parse_wise_reply("**Consistency**: 2\nRealism: 1\nAesthetic Quality： 0", "legacy") == {
        "consistency": 2.0, "realism": 1.0, "aesthetic_quality": 0.0}
    assert public.parse_wise_reply("2\n1\n1\n", "legacy") == {"consistency": 2.0, "realism": 1.0,
                                                                 "aesthetic_quality": 1.0}
    assert public.parse_wise_reply("<think>maybe Score: 0</think>Score: 1", "verified") == {"score": 1.0}
    for bad, version in (("Consistency: 2\nRealism: 1", "legacy"), ("Consistency: 3\nRealism: 1\nAesthetic Quality: 1", "legacy"),
                         ("I would say yes", "verified")):
        with pytest.raises(JudgeError):
            public.parse_wise_reply(bad, version)
    assert public.parse_viescore_reply('Here:\n{\n"score" : [8, 6],\n"reasoning" : "ok"\n}') == [8.0, 6.0]
    assert public.parse_viescore_reply('{"score": 7}') == [7.0]
    for bad in ("no json", '{"score": [11, 2]}', '{"reasoning": "x"}', '{"score": ["high"]}'):
        with pytest.raises(JudgeError):
            public.parse_viescore_reply(bad)


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


@pytest.mark.parametrize("version", ["legacy", "verified"])
def test_wise_judge_prompt_comes_from_the_checkouts_script(version):
    """The prompt the judge gets is the checkout's own f-string, filled from each record, sent with its
    system message, text before image, as WISE's scripts send it; scores by each version's formula."""
    setup = public.wise_setup(FIXTURES / "wise_checkout", version)
    assert setup.version == version and setup.script.name == ("gpt_eval.py" if version == "legacy" else "vllm_eval.py")
    prompts = public.read_wise_prompts(setup.prompt_files)
    assert len(prompts) == 7
    reply = "Consistency: 2\nRealism: 2\nAesthetic Quality: 2" if version == "legacy" else "Score: 1"
    with ScriptedJudge([reply] * len(prompts)) as server:
        result = public.score_wise(setup, prompts, [_image()] * len(prompts), server.judge())
    assert result["overall"] == pytest.approx(1.0) and result["scored"] == 7 and not result["judge_errors"]
    assert result["judge_model"] == "scripted-judge" and result["judge_prompt_from"].endswith(setup.script.name)
    body = server.requests[0]["body"]
    assert body["messages"][0]["role"] == "system" and "SYSTEM" in body["messages"][0]["content"][0]["text"]
    user = body["messages"][1]["content"]
    first = prompts[0]
    assert user[0]["type"] == "text" and f'PROMPT: "{first["prompt"]}"' in user[0]["text"]
    assert f'EXPLANATION: "{first["explanation"]}"' in user[0]["text"]
    assert user[1]["image_url"]["url"].startswith("data:image/png;base64,")


def test_wise_auto_takes_the_verified_protocol_and_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    assert public.wise_setup(FIXTURES / "wise_checkout").version == "verified"
    with pytest.raises(ValueError, match="not a WISE checkout"):
        public.wise_setup(tmp_path)


def test_judge_failures_are_retried_then_reported_never_scored_zero():
    setup = public.wise_setup(FIXTURES / "wise_checkout", "legacy")
    prompts = public.read_wise_prompts(setup.prompt_files)[:3]
    good = "Consistency: 1\nRealism: 1\nAesthetic Quality: 1"
    script = [("status", 500), good,                                   # prompt 1: a 500, then fine
              "no scores", "still none", "Consistency: 9",             # prompt 2: three bad replies -> error
              ("sleep", 1.5), good]                                    # prompt 3: a timeout, then fine
    with ScriptedJudge(script) as server:
        result = public.score_wise(setup, prompts, [_image()] * 3, server.judge(timeout_s=0.5))
    assert result["scored"] == 2 and len(result["judge_errors"]) == 1
    assert "JudgeError" in result["judge_errors"][0]["error"]
    assert all(v == pytest.approx(public.wiscore(1, 1, 1)) for v in result["per_category"].values())


@pytest.fixture()
def gedit_dataset(tmp_path):
    """GEdit-Bench's released layout at tiny size: a Hugging Face dataset folder (split train) with its
    fields, built with the `datasets` library from the fixture's records."""
    import datasets
    from PIL import Image

    rows = [json.loads(line) for line in (FIXTURES / "gedit" / "records.jsonl").read_text().splitlines()]
    columns = {name: [r[name] for r in rows] for name in ("key", "task_type", "instruction", "instruction_language",
                                                           "Intersection_exist")}
    images = [Image.open(FIXTURES / "gedit" / r["source"]).convert("RGB") for r in rows]
    data = datasets.Dataset.from_dict({**columns, "input_image": images, "input_image_raw": images})
    data = data.cast_column("input_image", datasets.Image()).cast_column("input_image_raw", datasets.Image())
    datasets.DatasetDict({"train": data}).save_to_disk(str(tmp_path / "GEdit-Bench"))
    return tmp_path / "GEdit-Bench"


def test_gedit_reads_the_released_dataset_and_the_checkouts_viescore_prompts(gedit_dataset, tmp_path):
    records = public.read_gedit_dataset(gedit_dataset)
    assert [r["key"] for r in records] == ["a1", "a2", "a3"] and records[0]["intersection_exist"] is True
    prompts = public.gedit_prompts(FIXTURES / "step1x_checkout")
    assert prompts.sc.startswith("CONTEXT") and "RULE" in prompts.sc and prompts.sc.rstrip().endswith("<instruction>")
    assert prompts.pq.startswith("CONTEXT") and "PQ:" in prompts.pq
    sources = [np.asarray(r["source"].convert("RGB")) for r in records]
    script = ['{"score": [8, 6], "reasoning": "r"}', '{"score": [9, 7], "reasoning": "r"}',
              'Sure: {"score" : [10, 10]}', '{"score": [4, 5]}']
    with ScriptedJudge(script) as server:
        result = public.score_gedit(prompts, records, sources, [_image()] * 3, server.judge())
    assert result["scored"] == 2 and len(server.requests) == 4      # the Chinese record is left out
    assert result["per_group"]["subject-add"]["o"] == pytest.approx(math.sqrt(6 * 7))
    assert result["per_group"]["color_alter"]["o"] == pytest.approx(math.sqrt(10 * 4))
    assert result["G_O"] == pytest.approx((math.sqrt(42) + math.sqrt(40)) / 2)
    assert result["intersection"]["G_O"] == pytest.approx(math.sqrt(42))
    assert result["judge_prompts_from"].endswith("vie_prompts.py")
    sc_request = server.requests[0]["body"]["messages"][0]["content"]
    assert sc_request[0]["type"] == "text" and "Editing instruction: add a red circle" in sc_request[0]["text"]
    assert [part["type"] for part in sc_request[1:]] == ["image_url", "image_url"]     # source, then edit
    assert len(server.requests[1]["body"]["messages"][0]["content"]) == 2               # PQ: the edit alone
    public.write_gedit_layout(tmp_path / "out", records, sources, [_image()] * 3)
    assert (tmp_path / "out" / "fullset" / "subject-add" / "en" / "a1.png").is_file()
    assert (tmp_path / "out" / "fullset" / "color_alter" / "cn" / "a3_SRCIMG.png").is_file()


def test_a_missing_judge_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("ARM_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("ARM_JUDGE_MODEL", raising=False)
    with pytest.raises(ValueError, match="no judge configured"):
        Judge(JudgeConfig())


@pytest.mark.slow
def test_arm_bench_wise_takes_its_judge_from_the_config_and_records_it(pretrained_stages, tmp_path):
    """`arm bench wise <checkout>` end to end with a trained model: images in WISE's layout, the judge
    named by `evaluate.judge_base_url` and `evaluate.judge_model`, and that model in wise.json."""
    from arm.cli import main

    prompts = 7
    with ScriptedJudge(["Score: 1"] * prompts) as server:
        host, port = server.server.server_address
        main(["bench", "wise", str(FIXTURES / "wise_checkout"), "--model", str(pretrained_stages / "pretrain"),
              "--tokenizer", str(pretrained_stages / "tokenizer"), "--out", str(tmp_path), "--guidance", "1",
              f"evaluate.judge_base_url=http://{host}:{port}/v1", "evaluate.judge_model=judge-from-config"])
    result = json.loads((tmp_path / "wise.json").read_text())
    assert result["judge_model"] == "judge-from-config" and result["version"] == "verified"
    assert result["overall"] == pytest.approx(1.0) and result["scored"] == prompts
    assert sorted(p.name for p in (tmp_path / "images").iterdir())[:2] == ["1.png", "2.png"]
