"""openai and python-dotenv are needed only by the API judge and .env files: without them grpo-ao imports and the
offline judges run (the lent GPU machine has neither); what needs them says what to install."""

import os
import subprocess
import sys

import pytest

from grpo_ao import envfile
from grpo_ao.errors import GrpoAoError
from grpo_ao.optional import MissingModule

SHIM = "import sys\nsys.modules['openai'] = None\nsys.modules['dotenv'] = None\n"


def test_a_missing_module_says_what_to_install_and_answers_dunder_probes():
    openai = MissingModule("openai", "judge.kind=openai")
    with pytest.raises(GrpoAoError, match="pip install openai"):
        openai.AsyncOpenAI  # noqa: B018
    assert not hasattr(openai, "__wrapped__")


def test_without_python_dotenv_no_env_file_reads_empty_and_an_existing_one_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "dotenv", None)  # import dotenv -> ImportError
    assert envfile.env_file_values(tmp_path / ".env") == {}
    (tmp_path / ".env").write_text("KEY=1\n")
    with pytest.raises(GrpoAoError, match="python-dotenv"):
        envfile.env_file_values(tmp_path / ".env")


def test_grpo_ao_imports_and_judges_offline_without_openai_and_dotenv(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SHIM)
    code = ("import grpo_ao.recipes.grpo, grpo_ao.recipes.bench, grpo_ao.cli\n"
            "from grpo_ao.judge import JudgeConfig, JudgeItem, build_judge, score_sync\n"
            "print(score_sync(build_judge(JudgeConfig(kind='reference')), [JudgeItem('t', 'q?', 'Yes.', 'Yes')])[0]"
            ".informativeness)\n"
            "from grpo_ao.errors import GrpoAoError\n"
            "import os; os.environ['K'] = 'x'\n"
            "try:\n    build_judge(JudgeConfig(kind='openai', api_key_env='K'))\n"
            "except GrpoAoError as e:\n    print('refused:', e)\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines() == ["0.45", "refused: judge.kind=openai needs the `openai` package, which is not "
                                       "installed: pip install openai"]
