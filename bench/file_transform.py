"""file_transform benchmark: 1 GB and >= 3 GB mixed-type CSVs to Parquet, against plain polars.

    .venv/bin/python -m bench.file_transform            # 1 GB and 3.2 GB (generated once into .bench-cache/)
    .venv/bin/python -m bench.file_transform --gb 0.3   # a smaller file while iterating

Same transform everywhere (filter + derived columns + cast): ``bench_transform`` below. Variants, each
in its own subprocess so peak RSS is that variant's whole process tree (psutil, every 20 ms):

1. plain polars: ``pl.scan_csv(path, schema=typed).pipe(bench_transform).sink_parquet(...)``;
2. file_transform (the flow, real Prefect server, schema given, ``max_concurrency`` 2, 64 MiB chunks);
3. DuckDB ``COPY (SELECT ...) TO ... (FORMAT parquet)`` if duckdb is installed (it is not in the lock:
   skipped with a note).

All variants get the same ``POLARS_MAX_THREADS`` (default: the CPU count). Outputs go to a temp dir
that is deleted after each variant; the input stays cached (``.bench-cache/`` is gitignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from bench.common import ROOT, PeakRss, prefect_server, print_table, wait_server_idle

CACHE = ROOT / ".bench-cache"
SCHEMA = {
    "id": "int64", "user_id": "int64", "amount": "float64", "qty": "int64", "category": "str",
    "comment": "str", "day": "date", "ts": "datetime", "flag": "bool",
}
_BATCH_ROWS = 1_000_000


def bench_transform(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Filter + derived columns + cast (the benchmark's transform; "bench.file_transform:bench_transform")."""
    return lf.filter(pl.col("amount") > 10.0).with_columns(
        (pl.col("amount") * pl.col("qty")).alias("total"),
        pl.col("comment").str.len_chars().alias("comment_len"),
        pl.col("day").dt.year().alias("year"),
        pl.col("qty").cast(pl.Int32),
        pl.col("category").str.to_uppercase().alias("category"),
    )


def generate(path: Path, gb: float) -> Path:
    """Write a mixed-type CSV of about ``gb`` GB with polars, in batches (seconds, bounded memory)."""
    if path.exists() and path.stat().st_size >= gb * 1e9 * 0.98:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    cats = [f"cat_{i:02d}" for i in range(20)]
    start = 0
    with tmp.open("wb") as fh:
        while fh.tell() < gb * 1e9:
            n = _BATCH_ROWS
            idx = pl.int_range(start, start + n, eager=True, dtype=pl.Int64)
            h = idx.hash(seed=7)
            df = pl.DataFrame({"id": idx}).with_columns(
                user_id=(h % 1_000_000).cast(pl.Int64),
                amount=((h // 7 % 100_000).cast(pl.Float64) / 100.0),
                qty=(h // 13 % 100 + 1).cast(pl.Int64),
                category=pl.Series(cats).gather((h // 17 % 20).cast(pl.UInt32)),
                comment=pl.when(h % 20 == 0)
                .then(pl.format("note {}, with comma", idx))
                .otherwise(pl.format("plain comment {}", h % 100_000)),
                day=(pl.lit(19_700) + (h // 19 % 1_500).cast(pl.Int32)).cast(pl.Date),
                ts=(pl.lit(1_700_000_000_000_000) + (h // 23 % 10**14).cast(pl.Int64)).cast(pl.Datetime("us")),
                flag=(h % 3 == 0),
            )
            df.write_csv(fh, include_header=start == 0, datetime_format="%Y-%m-%dT%H:%M:%S")
            start += n
    tmp.replace(path)
    return path


def _polars_schema() -> dict:
    names = {"int64": pl.Int64, "float64": pl.Float64, "str": pl.String, "date": pl.Date,
             "datetime": pl.Datetime("us"), "bool": pl.Boolean}
    return {c: names[t] for c, t in SCHEMA.items()}


def run_variant(variant: str, src: str, out: str) -> dict:
    """Body of one variant, run inside its own subprocess; returns facts to print.

    Timed after the imports (Prefect's import is seconds of fixed cost, not throughput); the process's
    wall time including interpreter start and imports is reported by ``measure`` as ``wall_s``.
    """
    if variant == "file_transform":
        from flows.file_transform import file_transform
    started = time.perf_counter()
    if variant == "polars":
        lf = pl.scan_csv(src, schema=_polars_schema())
        bench_transform(lf).sink_parquet(Path(out) / "out.parquet", compression="zstd", mkdir=True)
        rows = pl.scan_parquet(Path(out) / "out.parquet").select(pl.len()).collect().item()
        return {"seconds": time.perf_counter() - started, "rows_out": rows}
    if variant == "file_transform":
        summary = file_transform(src, out, transform="bench.file_transform:bench_transform", schema=SCHEMA,
                                 max_concurrency=int(os.environ.get("BENCH_CONCURRENCY", "2")),
                                 run_key=f"bench-{os.getpid()}")
        return {"seconds": time.perf_counter() - started, "rows_out": summary.extra["rows_out"],
                "ok": summary.ok, "chunks": summary.chunks_total, "fast": summary.extra.get("chunks_fast_path"),
                "message": summary.message}
    if variant == "duckdb":
        import duckdb  # type: ignore[import-not-found]

        duckdb.sql(
            f"COPY (SELECT * REPLACE (CAST(qty AS INTEGER) AS qty, upper(category) AS category), "
            f"amount * qty AS total, length(comment) AS comment_len, year(day) AS year "
            f"FROM read_csv('{src}', header=true) WHERE amount > 10.0) "
            f"TO '{Path(out) / 'out.parquet'}' (FORMAT parquet, COMPRESSION zstd)"
        )
        return {"seconds": time.perf_counter() - started, "rows_out": None}
    raise SystemExit(f"unknown variant {variant}")


def measure(variant: str, src: Path, threads: int) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"bench-ft-{variant}-", dir=CACHE))
    env = {**os.environ, "POLARS_MAX_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.file_transform", "--variant", variant, "--src", str(src), "--out", str(out)],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        started = time.perf_counter()
        with PeakRss(proc.pid) as rss:
            stdout, stderr = proc.communicate()
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise SystemExit(f"{variant} failed:\n{stderr[-3000:]}")
        line = next(x for x in reversed(stdout.splitlines()) if x.startswith("RESULT "))
        facts = json.loads(line.removeprefix("RESULT "))
        facts["peak_rss_mb"] = rss.mb
        facts["wall_s"] = wall
        return facts
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gb", default="1,3.2", help="input sizes in GB, comma-separated (each cached)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="POLARS_MAX_THREADS")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--variant")
    parser.add_argument("--src")
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(run_variant(args.variant, args.src, args.out)))
        return

    for gb in (float(x) for x in args.gb.split(",")):
        compare(CACHE / f"mixed-{gb:g}gb.csv", gb, args.threads, args.repeat)


def compare(src: Path, gb: float, threads: int, repeat: int) -> None:
    """Every variant on one input size; inside-the-run and end-to-end (process start included) ratios."""
    t0 = time.perf_counter()
    generate(src, gb)
    size = src.stat().st_size
    print(f"input {src.name} {size / 1e9:.2f} GB (ready in {time.perf_counter() - t0:.1f}s), "
          f"POLARS_MAX_THREADS={threads}")
    try:
        import duckdb  # type: ignore[import-not-found]  # noqa: F401

        variants = ["polars", "file_transform", "duckdb"]
    except ImportError:
        variants = ["polars", "file_transform"]
        print("note: duckdb is not installed (not in uv.lock): the DuckDB COPY baseline is skipped")
    rows = []
    with prefect_server():
        results: dict[str, list[dict]] = {v: [] for v in variants}
        for _ in range(repeat):
            for v in variants:
                wait_server_idle()
                results[v].append(measure(v, src, threads))
        base = min(r["seconds"] for r in results["polars"])
        base_wall = min(r["wall_s"] for r in results["polars"])
        for v in variants:
            best = min(results[v], key=lambda r: r["seconds"])
            rows.append({
                "variant": v, "seconds": f"{best['seconds']:.1f}", "wall s": f"{best['wall_s']:.1f}",
                "MB/s": f"{size / 1e6 / best['seconds']:.0f}",
                "inside the run vs polars": f"{base / best['seconds']:.2f}x",
                "end to end vs polars": f"{base_wall / best['wall_s']:.2f}x", "peak RSS MB": f"{best['peak_rss_mb']:.0f}",
                "rows out": best.get("rows_out"), "notes": f"{best.get('chunks', '')} chunks, "
                f"{best.get('fast', '')} fast" if v == "file_transform" else "",
            })
            print(f"{v}: runs {[round(r['seconds'], 1) for r in results[v]]} s, "
                  f"peak RSS {[round(r['peak_rss_mb']) for r in results[v]]} MB")
            if v == "file_transform" and not best.get("ok", True):
                print(f"file_transform run was not ok: {best.get('message')}")
    print_table(f"file_transform vs plain polars, {size / 1e9:.2f} GB CSV -> Parquet (target >= 0.9x inside the run)",
                rows)


if __name__ == "__main__":
    main()
