"""moto's server as `moto_server` runs it, with two changes: Route53's change answer, and
CreateTargetGroup made idempotent as on AWS (below).

AWS answers ChangeResourceRecordSets with a ChangeInfo whose status is PENDING until the change
reaches every Route53 server (up to about a minute). Terraform's AWS provider then sleeps a
random 10 to 30 s before its first GetChange poll, whatever the status says. moto applies the
change at once and answers INSYNC, so on the ring that sleep waits for nothing: it was 10 to 30 s
of every sprint 2 that creates Dixie's alias record, half of T2.4.

Here the answer leaves ChangeInfo out (the provider waits only when it is there), so terraform
goes on as soon as moto has applied the change. Nothing else differs: the record is in moto's
zone as before, GetChange still answers INSYNC, and runbook itself never changes a record (T2.8
reads the alias with ListResourceRecordSets). docs/ring.md lists this beside the other ways the
ring is not AWS.

A test that needs terraform to be still applying when it kills runbook (a resume that meets the
orphan's state lock) writes milliseconds to $RUNBOOK_RING_DIR/route53-delay-ms: the change is
applied at once, its answer comes that much later, as the provider's sleep did. ring/reset.sh
removes the file.
"""

import os
import sys
import time
from pathlib import Path

from moto.server import main

RING_DIR = Path(os.environ.get("RUNBOOK_RING_DIR") or Path(__file__).resolve().parents[1] / ".ring")


def _delay() -> float:
    """Seconds to hold a change's answer: $RUNBOOK_RING_DIR/route53-delay-ms, absent means none."""
    try:
        return max(0.0, float((RING_DIR / "route53-delay-ms").read_text().strip()) / 1000.0)
    except (OSError, ValueError):
        return 0.0


def _answer_without_change_info() -> None:
    try:
        from moto.core.responses import ActionResult
        from moto.route53.responses import Route53
    except ImportError as e:  # another moto: its own answer, and terraform's sleep with it
        print(f"ring/moto_server.py: WARNING: Route53 answered as moto does ({e})", file=sys.stderr)
        return
    original = Route53.change_resource_record_sets

    def change_resource_record_sets(self: Route53) -> ActionResult:
        answer = original(self)
        time.sleep(_delay())
        result = getattr(answer, "result", None)
        if not isinstance(result, dict):
            return answer
        return ActionResult({k: v for k, v in result.items() if k != "ChangeInfo"})

    Route53.change_resource_record_sets = change_resource_record_sets  # type: ignore[method-assign]


def _target_groups_created_once() -> None:
    """CreateTargetGroup as AWS documents it: idempotent. A call that names an existing target
    group with the same settings (protocol, port, VPC, target type) answers that group; moto
    refuses it as DuplicateTargetGroupName. An SDK retries a create whose answer was lost (a
    reset connection, a 5xx after the work was done), and on AWS that retry succeeds; on moto it
    failed T2.4 once in the fault test (terraform's retry of CreateTargetGroup, answered
    DuplicateTargetGroupName within the same second). Other settings with the same name are
    still refused, as AWS refuses them."""
    try:
        from moto.elbv2.models import ELBv2Backend
    except ImportError as e:
        print(f"ring/moto_server.py: WARNING: CreateTargetGroup as moto does it ({e})", file=sys.stderr)
        return
    original = ELBv2Backend.create_target_group

    def create_target_group(self: ELBv2Backend, name: str, **kwargs: object) -> object:
        for group in list(getattr(self, "target_groups", {}).values()):
            same = (
                getattr(group, "name", None) == name
                and str(getattr(group, "protocol", None)) == str(kwargs.get("protocol"))
                and str(getattr(group, "port", None)) == str(kwargs.get("port"))
                and getattr(group, "vpc_id", None) == kwargs.get("vpc_id")
                and getattr(group, "target_type", None) == (kwargs.get("target_type") or "instance")
            )
            if same:
                return group
        return original(self, name, **kwargs)

    ELBv2Backend.create_target_group = create_target_group  # type: ignore[method-assign]


if __name__ == "__main__":
    _answer_without_change_info()
    _target_groups_created_once()
    sys.exit(main())
