"""Persistent judge cache: one SQLite file, safe to share between processes and restarts.

Key = sha256(model, template hash, with_correctness, context, question, answer). Only successful
judgements are stored, so a failure is retried on the next step instead of being remembered.
We deliberately do not expire entries: the key changes when the model or prompt does.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from grpo_ao.judge.config import JudgeConfig
from grpo_ao.judge.items import JudgeItem, JudgeResult

_SCHEMA = """CREATE TABLE IF NOT EXISTS judgements (
    key TEXT PRIMARY KEY, informativeness REAL NOT NULL, correct REAL, raw TEXT NOT NULL, created REAL NOT NULL
)"""


def cache_key(cfg: JudgeConfig, item: JudgeItem) -> str:
    """sha256 hex of everything that decides the judgement (the reference is not shown to an API judge)."""
    parts = [cfg.model, cfg.template_hash, cfg.with_correctness, item.context, item.question, item.answer]
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode()).hexdigest()


class JudgeCache:
    """Key-value store of successful `JudgeResult`s in SQLite (WAL mode, busy timeout).

    Each operation opens its own short connection, so the cache works from any thread or process.
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

    def get_many(self, keys: list[str]) -> dict[str, JudgeResult]:
        """Cached results for those keys that have one, marked `cached=True`, `attempts=0`."""
        found: dict[str, JudgeResult] = {}
        conn = self._connect()
        try:
            for start in range(0, len(keys), 500):  # stay under SQLite's bound-parameter limit
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(
                    f"SELECT key, informativeness, correct, raw FROM judgements WHERE key IN ({marks})", chunk
                ).fetchall()
                for key, info, correct, raw in rows:
                    found[key] = JudgeResult(info, correct, raw, cached=True, latency_s=0.0, attempts=0)
        finally:
            conn.close()
        return found

    def put(self, key: str, result: JudgeResult) -> None:
        """Store a successful result (failures are never cached)."""
        assert result.ok, "only successful judgements are cached"
        conn = self._connect()
        try:
            with conn:
                conn.execute(
                    "INSERT OR REPLACE INTO judgements VALUES (?, ?, ?, ?, ?)",
                    (key, result.informativeness, result.correct, result.raw, time.time()),
                )
        finally:
            conn.close()
