"""The plain table every benchmark script prints: measure, measured, target, ok."""

from __future__ import annotations

Row = tuple[str, str, str, bool | None]  # measure, measured, target ("-": none), met or None


def print_table(rows: list[Row], footer: str) -> None:
    width = max(len(r[0]) for r in rows)
    value_width = max(len(r[1]) for r in rows)
    target_width = max(len("target"), *(len(r[2]) for r in rows))
    print(f"{'measure':<{width}}  {'measured':<{value_width}}  {'target':<{target_width}}  ok")
    for name, value, target, ok in rows:
        mark = "-" if ok is None else "yes" if ok else "NO"
        print(f"{name:<{width}}  {value:<{value_width}}  {target:<{target_width}}  {mark}")
    print(footer)
