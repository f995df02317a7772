"""Persistent reply cache: one SQLite file, safe to share between processes and restarts.

One table, one namespace per kind of call ("judge" scores, "expand" rewrites), so kinds never mix even when
their keys would collide. A judge key = sha256(model, template hash, with_correctness, context, question,
answer). Only successful replies are stored, so a failure is retried on the next step instead of being
remembered. We deliberately do not expire entries: the key changes when the model or prompt does.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem, JudgeResult, Reply

JUDGE_NAMESPACE = "judge"
"""Namespace of the judge's scores; value = [informativeness, correct]."""

_SCHEMA = """CREATE TABLE IF NOT EXISTS replies (
    namespace TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, raw TEXT NOT NULL, created REAL NOT NULL,
    PRIMARY KEY (namespace, key)
)"""


def hash_key(*parts: object) -> str:
    """sha256 hex of the JSON of `parts` (strings, numbers, booleans)."""
    return hashlib.sha256(json.dumps(list(parts), ensure_ascii=False).encode()).hexdigest()


def cache_key(cfg: JudgeConfig, item: JudgeItem) -> str:
    """Judge key: everything that decides the judgement (the reference is not shown to an API judge)."""
    return hash_key(cfg.model, cfg.template_hash, cfg.with_correctness, item.context, item.question, item.answer)


class JudgeCache:
    """Key-value store of successful `Reply`s per namespace in SQLite (WAL mode, busy timeout).

    Each operation opens its own short connection, so the cache works from any thread or process.
    `get_many`/`put` are the typed view of the judge's namespace.
    """

    def __init__(self, path: str | Path, timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, across processes
            conn.execute(_SCHEMA)

    def __repr__(self) -> str:
        return f"JudgeCache({str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=self.timeout_s)

    def get_replies(self, namespace: str, keys: list[str]) -> dict[str, Reply]:
        """Cached replies for those keys that have one, marked `cached=True`, `attempts=0`."""
        found: dict[str, Reply] = {}
        conn = self._connect()
        try:
            for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, value, raw FROM replies WHERE namespace = ? AND key IN ({marks})",
                    [namespace, *chunk],
                ).fetchall()
                for key, value, raw in rows:
                    found[key] = Reply(json.loads(value), raw, cached=True, latency_s=0.0, attempts=0)
        finally:
            conn.close()
        return found

    def put_reply(self, namespace: str, key: str, reply: Reply) -> None:
        """Store a successful reply (failures are never cached)."""
        assert reply.ok, "only successful replies are cached"
        conn = self._connect()
        try:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?, ?)",
                    (namespace, key, json.dumps(reply.value, ensure_ascii=False), reply.raw, time.time()),
                )
        finally:
            conn.close()

    def get_many(self, keys: list[str]) -> dict[str, JudgeResult]:
        """Cached judgements for those keys that have one, marked `cached=True`, `attempts=0`."""
        return {k: JudgeResult.from_reply(r) for k, r in self.get_replies(JUDGE_NAMESPACE, keys).items()}

    def put(self, key: str, result: JudgeResult) -> None:
        """Store a successful judgement (failures are never cached)."""
        assert result.ok, "only successful judgements are cached"
        self.put_reply(JUDGE_NAMESPACE, key, result.as_reply())
