"""nginx in front of a role's service (the registry, the bundle mirror): its site and
certificates checked and applied together, by one restart when any of them changed."""

from collections.abc import Sequence

from pyinfra.api.operation import OperationMeta
from pyinfra.operations import server, systemd


def restart_on_change(changed: Sequence[OperationMeta], what: str) -> None:
    """Check nginx's configuration and restart it when one of `changed` did (decided as the
    operations run, not while the role is prepared); keep it running either way."""

    def any_changed() -> bool:
        return any(op.did_change() for op in changed)

    server.shell(name="Check the nginx configuration", commands=["nginx -t -q"], _if=any_changed)
    systemd.service(
        name=f"Restart nginx after its {what} changed",
        service="nginx",
        running=True,
        enabled=True,
        restarted=True,
        _if=any_changed,
    )
    systemd.service(name="Run nginx", service="nginx", running=True, enabled=True)
