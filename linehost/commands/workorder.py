"""`linehost workorder status|close`: progress (linehost.status_cli), closing (control_cli)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from linehost.commands import config_arg

if TYPE_CHECKING:
    from linehost.commands import Subparsers


def register(subparsers: Subparsers) -> None:
    """Add `workorder status|close`."""
    workorder = subparsers.add_parser(
        "workorder", help="work orders: progress against the quantity"
    )
    wo_sub = workorder.add_subparsers(dest="workorder_command", required=True, metavar="ACTION")
    wo_status = wo_sub.add_parser("status", help="done / failed / remaining")
    config_arg(wo_status)
    wo_status.add_argument("--id", default=None, help="another work order than [work_order]")
    wo_status.add_argument("--json", action="store_true", help="print the counts as JSON")
    wo_status.set_defaults(handler=_workorder_status)
    wo_close = wo_sub.add_parser(
        "close", help="close a work order: no more devices against it (recorded in the audit log)"
    )
    config_arg(wo_close)
    wo_close.add_argument("--id", default=None, help="another work order than [work_order]")
    wo_close.set_defaults(handler=_workorder_close)


def _workorder_status(args: argparse.Namespace) -> int:
    from linehost.status_cli import WorkOrderQuery, workorder_status

    return workorder_status(WorkOrderQuery(args.config, args.id, args.json))


def _workorder_close(args: argparse.Namespace) -> int:
    from linehost.control_cli import WorkOrderClose, close_work_order

    return close_work_order(WorkOrderClose(args.config, args.id))
