"""The demo's closing table: what was expected, what the services reported, ✓ or ✗."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actionbus.demo.common import style

__all__ = ["SUMMARY_TITLE", "Check", "build_checks", "print_summary"]

SUMMARY_TITLE = "Summary"
ALL_PASSED = "all {n} checks passed"


@dataclass(frozen=True)
class Check:
    """One row of the summary."""

    what: str
    expected: str
    actual: str

    @property
    def ok(self) -> bool:
        """Whether what happened is what should have happened."""
        return self.expected == self.actual


def _get(report: dict[str, Any] | None, *path: str) -> Any:
    value: Any = report
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _n(value: Any) -> str:
    return "missing" if value is None else str(value)


def _stock(levels: Any) -> str:
    if not isinstance(levels, dict):
        return "missing"
    return ", ".join(f"{sku}={n}" for sku, n in sorted(levels.items()))


def _dead(letters: Any) -> str:
    if not isinstance(letters, list):
        return "missing"
    return "; ".join(f"{d['action_type']} ({d['reason']})" for d in letters) or "none"


def build_checks(
    orders_done: dict[str, Any] | None,
    orders_final: dict[str, Any] | None,
    inventory_final: dict[str, Any] | None,
    exit_codes: dict[str, int | None],
) -> list[Check]:
    """Compare the services' reports with what the scenario must produce."""
    sent = _get(orders_done, "sent") or {}
    replies = _get(orders_done, "replies") or {}
    reply_counts = "/".join(str(replies.get(k, 0)) for k in ("success", "error", "timeout"))
    problems = _get(orders_done, "problems")
    codes = ", ".join(f"{name} {'killed' if code is None else code}"
                      for name, code in exit_codes.items())
    return [
        Check("orders sent fire-and-forget (send_action_async)", "2",
              _n(sent.get("fire-and-forget", 0) if orders_done else None)),
        Check("orders sent request/reply (send_action_pseudo_sync)", "4",
              _n(sent.get("pseudo-sync", 0) if orders_done else None)),
        Check("orders sent with callback (…_async_with_callback)", "1",
              _n(sent.get("with-callback", 0) if orders_done else None)),
        Check("replies orders got: success/error/timeout", "3/1/0",
              reply_counts if orders_done else "missing"),
        Check("inventory handled successfully", "5",
              _n(_get(inventory_final, "stats", "handled"))),
        Check("inventory error replies (handler raised)", "1",
              _n(_get(inventory_final, "stats", "error_replies"))),
        Check("callbacks handled by orders' own worker", "1",
              _n(_get(orders_final, "stats", "handled"))),
        Check("inventory dead letters (dead_letters.list())",
              "inventory.stock.reserve (rejected)",
              _dead(_get(inventory_final, "dead_letters"))),
        Check("final stock (load_state)", "gadget=2, widget=3",
              _stock(_get(inventory_final, "stock"))),
        Check("scenario problems seen by orders", "none",
              "; ".join(problems) or "none" if isinstance(problems, list) else "missing"),
        Check("exit codes after SIGTERM", ", ".join(f"{name} 0" for name in exit_codes), codes),
    ]


def print_summary(checks: list[Check]) -> bool:
    """Print the table; True if every check passed."""
    width = max(len(c.what) for c in checks)
    print(f"    {'check':<{width}}  result", flush=True)
    print(f"    {'─' * (width + 30)}")
    for check in checks:
        if check.ok:
            result = f"{style('✓', '32')} {check.actual}"
        else:
            result = style(f"✗ {check.actual}   (expected {check.expected})", "31")
        print(f"    {check.what:<{width}}  {result}")
    print(f"    {'─' * (width + 30)}", flush=True)
    failed = [c for c in checks if not c.ok]
    if not failed:
        print(style(f"    {ALL_PASSED.format(n=len(checks))}", "32"), flush=True)
        return True
    print(style(f"    FAILED: {len(failed)} of {len(checks)} checks did not match "
                "(marked ✗ above); the demo exits with code 1", "31"), flush=True)
    return False
