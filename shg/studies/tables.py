"""The result files of a comparison (a study's leaderboard, the AE comparison): a markdown table
in a document, the same results as JSON beside it, each written complete or not at all.
Figures go through shg.visualize.save_figure."""

from __future__ import annotations

from pathlib import Path

from shards import atomic


def markdown_table(header: list[str], rows: list[list], right=()) -> list[str]:
    """The lines of a markdown table; the columns whose indexes are in `right` (numbers) are
    aligned right."""
    return (["| " + " | ".join(header) + " |",
             "|" + "".join("---:|" if i in right else "---|" for i in range(len(header)))]
            + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows])


def write_tables(out_dir: str | Path, name: str, data, lines: list[str]) -> None:
    """OUT_DIR/NAME.json (`data`) and OUT_DIR/NAME.md (`lines`, one a line)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(out_dir / f"{name}.json", data, indent=1)
    atomic.write_text(out_dir / f"{name}.md", "\n".join(lines))
