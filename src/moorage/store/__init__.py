"""Where queue state is kept: SQLite, the embedded default."""

from moorage.store.sqlite import Database, prepare_data_dir

__all__ = ["Database", "prepare_data_dir"]
