"""Up-front validation of a dataset: problems found before training, reported with file names.

Every reader and the cache builder collect `Issue`s instead of raising one by one, so a user sees the
whole list at once; `resolve_issues` then stops (on_bad="error") or drops the items and writes a report.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
from collections.abc import Iterable, Sequence

log = logging.getLogger(__name__)

# Kinds of problems; the report groups by these.
KINDS = (
    "empty_folder",      # a folder with no images at all
    "missing_mask",      # an image with no mask file
    "extra_mask",        # a mask file with no image
    "unreadable",        # a file that does not decode (corrupt, truncated, not an image)
    "size_mismatch",     # image and mask (or two masks of one image) differ in size
    "missing_id",        # a split file names an id that has no image
    "duplicate_id",      # two images share one id (e.g. a.png and a.jpg)
)


class DataError(ValueError):
    """Bad input found during validation; `issues` lists every problem with its file."""

    def __init__(self, message: str, issues: Sequence["Issue"] = ()):
        super().__init__(message)
        self.issues = list(issues)


@dataclasses.dataclass(frozen=True)
class Issue:
    """One problem with one item or file.

    Attributes:
      kind: one of `KINDS`.
      item_id: the example id it concerns ("" for folder-level problems).
      path: the offending file or folder.
      detail: a human-readable explanation.
    """

    kind: str
    item_id: str
    path: str
    detail: str

    def __str__(self) -> str:
        who = f"[{self.item_id}] " if self.item_id else ""
        return f"{self.kind}: {who}{self.path}: {self.detail}"


def format_issues(issues: Sequence[Issue], limit: int = 50) -> str:
    """Multi-line listing of `issues` (at most `limit` lines plus a count of the rest)."""
    lines = [f"  - {i}" for i in issues[:limit]]
    if len(issues) > limit:
        lines.append(f"  ... and {len(issues) - limit} more")
    return "\n".join(lines)


def write_report(path: pathlib.Path | str, issues: Sequence[Issue], *, dataset: str, split: str,
                 kept: int, dropped_ids: Iterable[str]) -> pathlib.Path:
    """Writes a JSON report of skipped items.

    Args:
      path: where to write (its folder is created); never inside the user's data folder.
      issues: the problems found.
      dataset, split: names recorded in the report.
      kept: number of items kept after skipping.
      dropped_ids: ids of the items that were skipped.

    Returns:
      The path written.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "dataset": dataset,
        "split": split,
        "kept": kept,
        "dropped_ids": sorted(set(dropped_ids)),
        "issues": [dataclasses.asdict(i) for i in issues],
    }
    path.write_text(json.dumps(doc, indent=2))
    return path


def resolve_issues(issues: Sequence[Issue], *, on_bad: str, dataset: str, split: str,
                   item_ids: Sequence[str], report_path: pathlib.Path | str | None) -> set[str]:
    """Applies the bad-input policy.

    Args:
      issues: every problem found for this dataset/split.
      on_bad: "error" raises `DataError` listing all issues; "skip" drops affected items and writes a report.
      dataset, split: names used in messages.
      item_ids: ids of the candidate items (used to count what is kept).
      report_path: report file for on_bad="skip" (required then).

    Returns:
      The set of item ids to drop (empty when there are no issues).

    Raises:
      DataError: on_bad="error" and there are issues, or nothing is left after skipping.
    """
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    if not issues:
        return set()
    bad_ids = {i.item_id for i in issues if i.item_id}
    if on_bad == "error":
        raise DataError(
            f"{dataset}/{split}: {len(issues)} problem(s) found before training "
            f"(pass on_bad='skip' to drop the affected items and write a report):\n"
            + format_issues(issues), issues)
    kept = [i for i in item_ids if i not in bad_ids]
    if report_path is None:
        raise ValueError("on_bad='skip' needs a report_path")
    written = write_report(report_path, issues, dataset=dataset, split=split, kept=len(kept),
                           dropped_ids=bad_ids)
    log.warning("%s/%s: skipped %d item(s) with problems (%d issue(s)); report: %s\n%s", dataset, split,
                len(bad_ids), len(issues), written, format_issues(issues, limit=10))
    if not kept:
        raise DataError(f"{dataset}/{split}: no usable items left after skipping; see {written}", issues)
    return bad_ids
