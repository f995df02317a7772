"""A stand-in adapter directory with a given layout file, for the layout tests."""

from grpo_ao.oracle_layout import write_layout


def adapter_dir(tmp_path, layout, name="ad"):
    """tmp_path/name holding an empty adapter_config.json and `layout` as grpo_ao_oracle.json; its path."""
    directory = tmp_path / name
    directory.mkdir()
    (directory / "adapter_config.json").write_text("{}")
    write_layout(layout, directory)
    return str(directory)
