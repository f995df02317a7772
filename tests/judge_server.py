"""A fake OpenAI-compatible chat server on 127.0.0.1 for judge tests (stdlib only, one thread per request).

Behaviour per request: the next mode in `plan` if any, else a seeded random failure if configured, else
`default`. Prompts containing "ALWAYS500" always get a 500. A normal reply scores N for an answer
containing "ANS<N>" (else 50), so tests know the right score. A normal reply to an answer-expansion prompt
(one asking for a final `Answer: <rewritten answer>` line) is `Answer: ` + `rewrite` filled with the answer.
"length_empty" / "length_cut" imitate a reasoning model that hit max_tokens: finish_reason "length" with no
content, or with a rationale cut off before the score line. Every request body is kept in `requests`.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

EXPAND_MARKER = "Answer: <rewritten answer>"
"""The expander's output-format line; a prompt containing it is answered with a rewrite, not a score."""
_ANSWER = re.compile(r"<answer>\n(.*?)\n</answer>", re.DOTALL)

MODES = ("normal", "429", "500", "400", "hang", "garbage", "unparseable", "slash100", "score150", "length_empty",
         "length_cut")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the default 5 overflows with 8+ concurrent connects: 1 s SYN retry stalls


class FakeJudgeServer:
    """Start with `with FakeJudgeServer() as server:`; point the judge at `server.url`."""

    def __init__(self) -> None:
        self.default = "normal"
        self.plan: list[str] = []
        self.retry_after = "0"
        self.hang_s = 1.0
        self.delay_s = 0.0
        self.rewrite = "The text is mainly about {answer}, as far as the activations show."
        self.calls = 0
        self.inflight = 0
        self.max_inflight = 0
        self.statuses: Counter[int] = Counter()
        self.auth_headers: list[str] = []
        self.prompts: list[str] = []
        self.requests: list[dict] = []
        self.request_times: list[float] = []
        self._random: tuple[random.Random, float, float] | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd = _Server(("127.0.0.1", 0), _make_handler(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_port}/v1"

    def random_failures(self, p429: float, p500: float, seed: int) -> None:
        """Each request: 429 with probability p429, else 500 with probability p500 (seeded draws)."""
        self._random = (random.Random(seed), p429, p500)

    def __enter__(self) -> FakeJudgeServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._httpd.shutdown()
        self._httpd.server_close()

    def _next_mode(self, prompt: str) -> str:
        with self._lock:
            self.calls += 1
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.request_times.append(time.monotonic())
            self.prompts.append(prompt)
            if "ALWAYS500" in prompt:
                return "500"
            if self.plan:
                return self.plan.pop(0)
            if self._random is not None:
                rng, p429, p500 = self._random
                u = rng.random()
                if u < p429:
                    return "429"
                if u < p429 + p500:
                    return "500"
            return self.default

    def _reply(self, mode: str, prompt: str) -> tuple[int, bytes, dict[str, str]]:
        if mode in ("429", "500", "400"):
            body = json.dumps({"error": {"message": f"fake {mode}", "code": int(mode)}}).encode()
            return int(mode), body, {"Retry-After": self.retry_after} if mode == "429" else {}
        if mode == "garbage":
            return 200, b"<html>502 bad gateway, not JSON", {}
        if mode in ("length_empty", "length_cut"):
            text = "" if mode == "length_empty" else "The answer names the cat, and the text"
            return 200, _completion(prompt, text, finish_reason="length"), {}
        if mode == "normal" and EXPAND_MARKER in prompt:
            answer = _ANSWER.findall(prompt)[-1].strip().rstrip(".")
            return 200, _completion(prompt, "Same claim, fuller.\nAnswer: " + self.rewrite.format(answer=answer)), {}
        match = re.search(r"ANS(\d+)", prompt)
        score = int(match.group(1)) if match else 50
        text = {
            "normal": f"The answer matches the text; 3 of its 4 claims hold.\nScore: {score}",
            "unparseable": "Pretty good answer overall, I would say 7/10.",
            "slash100": "Correct but terse, 2 sentences.\nScore: 45/100",
            "score150": "Great!\nScore: 150",
        }[mode]
        if "Correct: yes|no" in prompt and mode == "normal":
            text += f"\nCorrect: {'yes' if score >= 50 else 'no'}"
        return 200, _completion(prompt, text), {}


def _completion(prompt: str, text: str, finish_reason: str = "stop") -> bytes:
    usage = {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split()),
             "total_tokens": len(prompt.split()) + len(text.split())}
    body = {"id": "fake", "object": "chat.completion", "created": 0, "model": "fake-judge", "usage": usage,
            "choices": [{"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": text}}]}
    return json.dumps(body).encode()


def _make_handler(server: FakeJudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = request["messages"][0]["content"]
            with server._lock:
                server.auth_headers.append(self.headers.get("Authorization", ""))
                server.requests.append(request)
            mode = server._next_mode(prompt)
            try:
                if mode == "hang":
                    server._stop.wait(server.hang_s)
                time.sleep(server.delay_s)
                status, body, headers = server._reply("normal" if mode == "hang" else mode, prompt)
                with server._lock:
                    server.statuses[status] += 1
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (timeout) and closed the connection
            finally:
                with server._lock:
                    server.inflight -= 1

    return Handler
