"""scripts/learning_check.py writes only its own block of docs/RESULTS.md: the hand-written design notes
around it survive a re-run byte for byte."""

from script_module import load_script

lc = load_script("learning_check")

NOTES = "## Reading (by hand)\n\nold reading.\n\n# Another section\n\ntext\n"


def test_first_write_replaces_the_old_unfenced_table_and_keeps_the_notes():
    old = "# Learning benchmark\n\nCommand: old\n\n| old table |\n\n" + NOTES
    out = lc.splice_results(old, "# Learning benchmark\n\n| new table |\n")
    assert out.startswith(lc.BEGIN + "\n# Learning benchmark\n\n| new table |\n" + lc.END + "\n")
    assert "old table" not in out and "Command: old" not in out
    assert out.endswith("\n" + NOTES)


def test_a_rewrite_changes_only_the_fenced_block_and_is_idempotent():
    once = lc.splice_results("# Learning benchmark\n\n| t1 |\n\n" + NOTES, "# Learning benchmark\n\n| t1 |\n")
    twice = lc.splice_results(once, "# Learning benchmark\n\n| t2 |\n")
    assert twice == once.replace("| t1 |", "| t2 |")
    assert lc.splice_results(twice, "# Learning benchmark\n\n| t2 |\n") == twice
    assert twice.count(lc.BEGIN) == 1 and twice.count(lc.END) == 1


def test_text_before_the_block_is_kept_and_a_missing_file_gets_the_block_alone():
    fenced = lc.splice_results("", "# Learning benchmark\n\n| t |\n")
    assert fenced == f"{lc.BEGIN}\n# Learning benchmark\n\n| t |\n{lc.END}\n"
    moved = "intro\n\n" + fenced + "\n" + NOTES
    assert lc.splice_results(moved, "# Learning benchmark\n\n| u |\n") == moved.replace("| t |", "| u |")
