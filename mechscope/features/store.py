"""FeatureStore: feature dashboards in one embedded DuckDB file, with a versioned schema.

Tables (schema version 1), every row keyed by the feature set's name (`set_id`):

    meta            key, value                      ("schema_version" -> "1")
    feature_sets    set_id, model, site, kind, n_features, n_tokens, dataset, built_at
    features        set_id, feature, label, n_active, density, max_act, mean_act
    examples        set_id, feature, kind ('top' | 'quantile'), rank, doc, pos, activation,
                    tokens (VARCHAR[]), acts (FLOAT[])     -- a context window, acts per token
    histograms      set_id, feature, bin, lo, hi, count     -- symmetric-log bins of the values
    logit_effects   set_id, feature, sign (+1 / -1), rank, token_id, token, effect
    coactivation    set_id, feature, rank, other, score
    explanations    set_id, feature, rank, explanation, corr, precision, recall, loss_recovered, spec

Writing a feature set replaces all of its rows in one transaction, so re-running a build
updates rows and never duplicates them. Rows go in through newline-delimited JSON read by
DuckDB itself (no pandas or Arrow needed). `export_parquet(dir)` writes one file per table.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# table -> (columns with their DuckDB types, primary key)
TABLES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[str, ...]]] = {
    "feature_sets": ((("set_id", "VARCHAR"), ("model", "VARCHAR"), ("site", "VARCHAR"), ("kind", "VARCHAR"),
                      ("n_features", "INTEGER"), ("n_tokens", "BIGINT"), ("dataset", "VARCHAR"),
                      ("built_at", "VARCHAR")), ("set_id",)),
    "features": ((("set_id", "VARCHAR"), ("feature", "INTEGER"), ("label", "VARCHAR"), ("n_active", "BIGINT"),
                  ("density", "DOUBLE"), ("max_act", "DOUBLE"), ("mean_act", "DOUBLE")), ("set_id", "feature")),
    "examples": ((("set_id", "VARCHAR"), ("feature", "INTEGER"), ("kind", "VARCHAR"), ("rank", "INTEGER"),
                  ("doc", "INTEGER"), ("pos", "INTEGER"), ("activation", "DOUBLE"), ("tokens", "VARCHAR[]"),
                  ("acts", "FLOAT[]")), ("set_id", "feature", "kind", "rank")),
    "histograms": ((("set_id", "VARCHAR"), ("feature", "INTEGER"), ("bin", "INTEGER"), ("lo", "DOUBLE"),
                    ("hi", "DOUBLE"), ("count", "BIGINT")), ("set_id", "feature", "bin")),
    "logit_effects": ((("set_id", "VARCHAR"), ("feature", "INTEGER"), ("sign", "INTEGER"), ("rank", "INTEGER"),
                       ("token_id", "INTEGER"), ("token", "VARCHAR"), ("effect", "DOUBLE")),
                      ("set_id", "feature", "sign", "rank")),
    "coactivation": ((("set_id", "VARCHAR"), ("feature", "INTEGER"), ("rank", "INTEGER"), ("other", "INTEGER"),
                      ("score", "DOUBLE")), ("set_id", "feature", "rank")),
    "explanations": ((("set_id", "VARCHAR"), ("feature", "INTEGER"), ("rank", "INTEGER"),
                      ("explanation", "VARCHAR"), ("corr", "DOUBLE"), ("precision", "DOUBLE"),
                      ("recall", "DOUBLE"), ("loss_recovered", "DOUBLE"), ("spec", "VARCHAR")),
                     ("set_id", "feature", "rank")),
}


class StoreError(RuntimeError):
    """A feature store that cannot be used: another schema version, or an unknown table.

    Example::

        from mechscope.features import FeatureStore, StoreError
        try:
            FeatureStore("missing.duckdb", read_only=True)
        except StoreError as err:
            print(err)
    """

    pass


class FeatureStore:
    """An open DuckDB feature store at `path` (created with the current schema if missing).

    Example::

        from mechscope.features import FeatureStore
        with FeatureStore("out/features.duckdb", read_only=True) as store:
            store.sets()
            store.page("mlp.post.1", 7)          # one feature's dashboard data
    """

    def __init__(self, path: str | os.PathLike, read_only: bool = False):
        import duckdb

        self.path = Path(path)
        if read_only and not self.path.is_file():
            raise StoreError(f"{self.path} does not exist; build dashboards into it first")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.con = duckdb.connect(str(self.path), read_only=read_only)
        except duckdb.Error as e:
            raise StoreError(f"{self.path} is not a readable DuckDB feature store: {e}") from e
        if not read_only:
            self._create()
        self._check_version()

    def _create(self) -> None:
        self.con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        self.con.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", [str(SCHEMA_VERSION)])
        for name, (cols, key) in TABLES.items():
            body = ", ".join(f"{c} {t}" for c, t in cols)
            self.con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({body}, PRIMARY KEY ({', '.join(key)}))")

    def _check_version(self) -> None:
        try:
            got = self.con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except Exception as e:  # noqa: BLE001 - any failure here means "not our file"
            raise StoreError(f"{self.path} has no mechscope schema: {e}") from e
        if got is None or int(got[0]) != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has feature-store schema {got and got[0]}, this mechscope reads "
                             f"{SCHEMA_VERSION}; rebuild it")

    def close(self) -> None:
        """Close the database connection (`with FeatureStore(...)` does it on leaving)."""
        self.con.close()

    def __enter__(self) -> "FeatureStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writing -----------------------------------------------------------------------------
    def replace_set(self, set_row: dict[str, Any], rows: dict[str, Iterable[dict[str, Any]]]) -> None:
        """Replace everything stored for feature set `set_row["set_id"]` in one transaction."""
        set_id = set_row["set_id"]
        unknown = set(rows) - set(TABLES)
        if unknown:
            raise StoreError(f"unknown tables {sorted(unknown)}; tables: {sorted(TABLES)}")
        with tempfile.TemporaryDirectory() as tmp:
            files = {name: self._ndjson(Path(tmp) / f"{name}.json", name, table_rows)
                     for name, table_rows in rows.items()}
            self.con.execute("BEGIN TRANSACTION")
            try:
                for name in TABLES:
                    self.con.execute(f"DELETE FROM {name} WHERE set_id = ?", [set_id])
                self._insert("feature_sets", [set_row])
                for name, (path, n) in files.items():
                    if n:
                        cols = self._columns(name)
                        self.con.execute(f"INSERT INTO {name} SELECT {', '.join(cols)} FROM read_json(?, "
                                         f"format='newline_delimited', columns={self._json_columns(name)})",
                                         [str(path)])
                self.con.execute("COMMIT")
            except Exception:
                self.con.execute("ROLLBACK")
                raise

    def replace_explanations(self, set_id: str, rows: Sequence[dict[str, Any]]) -> None:
        """Replace the stored explanations of the features named in `rows`."""
        feats = sorted({int(r["feature"]) for r in rows})
        self.con.execute("BEGIN TRANSACTION")
        try:
            for f in feats:
                self.con.execute("DELETE FROM explanations WHERE set_id = ? AND feature = ?", [set_id, f])
            self._insert("explanations", [{**r, "set_id": set_id} for r in rows])
            self.con.execute("COMMIT")
        except Exception:
            self.con.execute("ROLLBACK")
            raise

    def _insert(self, name: str, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        cols = self._columns(name)
        self.con.executemany(f"INSERT INTO {name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                             [[r.get(c) for c in cols] for r in rows])

    @staticmethod
    def _columns(name: str) -> list[str]:
        return [c for c, _ in TABLES[name][0]]

    @staticmethod
    def _json_columns(name: str) -> str:
        return "{" + ", ".join(f"'{c}': '{t}'" for c, t in TABLES[name][0]) + "}"

    def _ndjson(self, path: Path, name: str, rows: Iterable[dict[str, Any]]) -> tuple[Path, int]:
        cols = self._columns(name)
        n = 0
        with open(path, "w") as f:
            for r in rows:
                f.write(json.dumps({c: r.get(c) for c in cols}) + "\n")
                n += 1
        return path, n

    # --- reading -----------------------------------------------------------------------------
    def sets(self) -> list[dict[str, Any]]:
        """Every stored feature set, one row each (set id, model, site, kind, number of features and
        tokens, dataset, build time)."""
        return self._dicts("SELECT * FROM feature_sets ORDER BY set_id")

    def features(self, set_id: str) -> list[dict[str, Any]]:
        """One row per feature of set `set_id` (activity statistics and label), by feature index."""
        return self._dicts("SELECT * FROM features WHERE set_id = ? ORDER BY feature", [set_id])

    def page(self, set_id: str, feature: int) -> dict[str, Any]:
        """Everything stored about one feature: its row, examples, histogram, logit effects,
        co-activating features and explanations."""
        row = self._dicts("SELECT * FROM features WHERE set_id = ? AND feature = ?", [set_id, feature])
        if not row:
            raise KeyError(f"no feature {feature} in set {set_id!r}")
        q = [set_id, feature]
        return {
            **row[0],
            "top": self._dicts("SELECT * FROM examples WHERE set_id = ? AND feature = ? AND kind = 'top' "
                               "ORDER BY rank", q),
            "quantiles": self._dicts("SELECT * FROM examples WHERE set_id = ? AND feature = ? AND kind = 'quantile' "
                                     "ORDER BY rank", q),
            "histogram": self._dicts("SELECT bin, lo, hi, count FROM histograms WHERE set_id = ? AND feature = ? "
                                     "ORDER BY bin", q),
            "logits": self._dicts("SELECT sign, rank, token_id, token, effect FROM logit_effects WHERE set_id = ? "
                                  "AND feature = ? ORDER BY sign DESC, rank", q),
            "coactivation": self._dicts("SELECT rank, other, score FROM coactivation WHERE set_id = ? AND "
                                        "feature = ? ORDER BY rank", q),
            "explanations": self._dicts("SELECT * FROM explanations WHERE set_id = ? AND feature = ? ORDER BY rank",
                                        q),
        }

    def count(self, table: str, set_id: str | None = None) -> int:
        """The number of rows of `table`, of one set when `set_id` is given; an unknown table raises StoreError."""
        if table not in TABLES:
            raise StoreError(f"unknown table {table!r}")
        if set_id is None:
            return int(self.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return int(self.con.execute(f"SELECT count(*) FROM {table} WHERE set_id = ?", [set_id]).fetchone()[0])

    def export_parquet(self, out_dir: str | os.PathLike) -> list[Path]:
        """Write every table to `out_dir/<table>.parquet` and return the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for name in ("meta", *TABLES):
            p = out / f"{name}.parquet"
            self.con.execute(f"COPY {name} TO '{p.as_posix()}' (FORMAT parquet)")
            paths.append(p)
        return paths

    def _dicts(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        cur = self.con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
