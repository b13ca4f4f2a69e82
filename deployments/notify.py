"""Notifications for a deployment of the pipeline: Prefect automations on the server that send
through a notification block when one of its runs ends Failed, Crashed, TimedOut or Orphaned, learns
nothing (`glasses.run.nothing-learned`, `glasses.run.not-clearly-learned`), or promotes a new
champion (`glasses.champion.promoted`). The events come from tasks/events.py.

`glasses serve --notify TARGET` calls `configure`; after `prefect deploy`, the same:

    python -m deployments.notify TARGET [--deployment glasses-pipeline/weekly-retune] [--test]

TARGET is a URL (a custom webhook block, `glasses-pipeline-<deployment>`, is saved for it: it
POSTs JSON {"subject": ..., "body": ...}) or a notification block saved on the server, as
`<block type slug>/<block name>`, e.g. `slack-webhook/team`. Automations are found by name
(`glasses-pipeline/<deployment>: run failed`, ...) and updated, so configuring again changes
nothing but what differs. They are owned by no resource: `prefect deploy` and `serve` delete a
deployment's own automations (its `triggers`) each time they register it.
"""

from __future__ import annotations

import argparse
import re
import socket
from datetime import timedelta
from uuid import UUID

from prefect.automations import Automation, EventTrigger, Posture, SendNotification
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import AutomationCore

from glasses import notices

FLOW = "glasses-pipeline"
# Orphaned: a Cancelled state of deployments/guard.py, a run stopped because its serve died.
RUN_ENDED_BADLY = {"prefect.flow-run.Failed", "prefect.flow-run.Crashed", "prefect.flow-run.TimedOut",
                   "prefect.flow-run.Orphaned"}
LINK = "{% if flow_run %}{{ flow_run|ui_url or '' }}{% endif %}"


def automation_names(name: str) -> dict[str, str]:
    """The automations of deployment `glasses-pipeline/<name>`, by kind."""
    return {kind: f"{FLOW}/{name}: {words}" for kind, words in
            (("failed", "run failed"), ("nothing-learned", "nothing learned"), ("promoted", "champion promoted"))}


def hint(name: str) -> str:
    """What `glasses serve` says when it sets up no notifications."""
    return (f"no notifications for {FLOW}/{name}: add `--notify URL` (a webhook) or `--notify slack-webhook/BLOCK` "
            "(any saved notification block) to be told when a run fails, learns nothing or promotes a model; "
            "`--notify-test` sends one test")


def block_name(name: str) -> str:
    """The custom webhook block saved for a URL target of deployment `name`."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{FLOW}-{name}".lower()).strip("-")


def notification_block(target: str | None, name: str) -> tuple[Block, UUID]:
    """The block that sends, and its document id: for a URL, the deployment's custom webhook
    block saved (or updated) on the server; for `<type slug>/<name>`, that saved block; for None,
    the webhook block an earlier `--notify URL` saved."""
    if target and "://" in target:
        block = CustomWebhookNotificationBlock(name=f"{FLOW}/{name}", url=target,
                                               json_data={"subject": "{{subject}}", "body": "{{body}}"})
        return block, block.save(block_name(name), overwrite=True)
    reference = target or f"custom-webhook/{block_name(name)}"
    if "/" not in reference:
        raise ValueError(f"--notify {target!r} is neither a URL nor a saved block as <type slug>/<block name> "
                         "(e.g. slack-webhook/team)")
    try:
        block = Block.load(reference)
    except ValueError as error:
        raise ValueError(f"no notification block {reference!r} on the server ({error}); save one first "
                         "(see README, Notifications) or pass a URL") from None
    if "notify" not in block.get_block_capabilities():
        raise ValueError(f"block {reference!r} cannot send notifications")
    return block, block._block_document_id


def automations(name: str, deployment_id: UUID, block_id: UUID) -> dict[str, AutomationCore]:
    """The three automations of deployment `name` (id `deployment_id`), by kind, each sending
    through the block `block_id`. Each reacts to every matching event of a run of the deployment."""
    names, run = automation_names(name), "Run {{ flow_run.name }} of " + f"{FLOW}/{name}"
    of_deployment = {"prefect.resource.id": f"prefect.deployment.{deployment_id}",
                     "prefect.resource.role": "deployment"}
    specs = {  # kind: (when, events, their resource, subject, body)
        "failed": ("ends Failed, Crashed, TimedOut or Orphaned (its serve died)", RUN_ENDED_BADLY, "prefect.flow-run.*",
                   "glasses: run {{ flow_run.name }} {{ flow_run.state.name }}",
                   run + " ended {{ flow_run.state.name }}: {{ flow_run.state.message }}"),
        "nothing-learned": ("ships a model that learned nothing (or not clearly)",
                            {notices.NOTHING_LEARNED, notices.NOT_CLEARLY_LEARNED}, "glasses.model.*",
                            "glasses: run {{ flow_run.name }}: {{ event.payload.verdict }}",
                            run + ", model {{ event.payload.model }}: {{ event.payload.message }}"),
        "promoted": ("promotes its model to champion (what serves)", {notices.PROMOTED}, "glasses.model.*",
                     "glasses: {{ event.payload.challenger.run }} now serves",
                     run + ": {{ event.payload.message }} (work dir {{ event.payload.work_dir }})"),
    }
    return {kind: AutomationCore(
        name=names[kind], description=f"glasses: notifies when a run of {FLOW}/{name} {when}",
        trigger=EventTrigger(expect=events, match={"prefect.resource.id": resource}, match_related=of_deployment,
                             for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
                             within=timedelta(0)),
        actions=[SendNotification(block_document_id=block_id, subject=subject, body=body + "\n" + LINK)])
        for kind, (when, events, resource, subject, body) in specs.items()}


def configure(name: str, target: str, deployment_id: UUID | None = None) -> dict[str, UUID]:
    """Creates or updates the automations of deployment `glasses-pipeline/<name>` so that they
    notify `target`; returns their ids by kind. Idempotent: found by name, updated in place
    (any duplicates of a name are removed)."""
    _, block_id = notification_block(target, name)
    with get_client(sync_client=True) as client:
        if deployment_id is None:
            deployment_id = client.read_deployment_by_name(f"{FLOW}/{name}").id
        ids = {}
        for kind, spec in automations(name, deployment_id, block_id).items():
            found = client.read_automations_by_name(spec.name)
            if found:
                client.update_automation(found[0].id, spec)
                for extra in found[1:]:
                    client.delete_automation(extra.id)
                ids[kind] = found[0].id
            else:
                ids[kind] = client.create_automation(spec)
    return ids


def send_test(name: str, target: str | None) -> str:
    """Sends one test notification through `target` (or the block saved for deployment `name`)
    from this machine; returns what was sent. Raises when the block reports a failure."""
    block, _ = notification_block(target, name)
    subject = "glasses: test notification"
    body = (f"A test from {socket.gethostname()} for {FLOW}/{name}: its runs that fail, learn nothing or promote "
            "a new champion are notified here.")
    with block.raise_on_failure():
        block.notify(body=body, subject=subject)
    return f"{subject}: {body}"


def main(argv: list[str] | None = None) -> None:
    """`python -m deployments.notify TARGET`: the automations for a deployment made by `prefect deploy`."""
    parser = argparse.ArgumentParser(prog="python -m deployments.notify", description=__doc__.split("\n\n")[0])
    parser.add_argument("target", help="a webhook URL, or a saved notification block as <type slug>/<name>")
    parser.add_argument("--deployment", default=f"{FLOW}/weekly-retune", help="flow/deployment")
    parser.add_argument("--test", action="store_true", help="also send one test notification")
    args = parser.parse_args(argv)
    name = args.deployment.removeprefix(f"{FLOW}/")
    for kind, automation_id in configure(name, args.target).items():
        print(f"automation {automation_names(name)[kind]!r}: {automation_id}")
    if args.test:
        print("sent:", send_test(name, args.target))


if __name__ == "__main__":
    main()
