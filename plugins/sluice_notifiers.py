"""Alert delivery through Airflow notifiers: SMTP (the smtp provider's) and a generic webhook.

:func:`send_alerts` announces what :class:`include.alerts.IncidentBook` says
changed (incidents opened, incidents cleared) through every configured
channel:

* e-mail when ``SLUICE_ALERT_EMAIL_TO`` is set (comma-separated addresses),
  with the smtp provider's :class:`SmtpNotifier` over the Connection
  ``SLUICE_ALERT_SMTP_CONN`` (default ``smtp_default``);
* a JSON POST with :class:`WebhookNotifier` when the Connection
  ``SLUICE_ALERT_WEBHOOK_CONN`` (default ``sluice_webhook``) exists: an
  ``http`` Connection whose host, port and schema (``http``/``https``) give
  the address and whose extra may hold ``endpoint`` (path) and ``headers``.

A channel that fails is logged and the others still send; when every
configured channel failed, :class:`AlertNotDelivered` is raised so the task
fails and the incidents are announced again by its next run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from html import escape

from airflow.sdk import BaseHook, BaseNotifier

log = logging.getLogger(__name__)

# Optional, operator-supplied endpoints outside the stack (a mail relay, a chat webhook): not
# connections every deployment has, so compose does not define them.
DEFAULT_WEBHOOK_CONNECTION = "sluice_webhook"
DEFAULT_SMTP_CONNECTION = "smtp_default"


class AlertNotDelivered(RuntimeError):
    """No configured alert channel took the alert."""


class WebhookNotifier(BaseNotifier):
    """POST a JSON body to the address of an ``http`` Connection.

    ``body`` is sent as is (templated like any notifier field). The receiver
    must answer 2xx within ``timeout`` seconds; otherwise
    :class:`WebhookRefused` names the address and the status.
    """

    template_fields = ("body",)

    def __init__(self, *, body: dict, conn_id: str = DEFAULT_WEBHOOK_CONNECTION, timeout: float = 10.0) -> None:
        super().__init__()
        self.body = body
        self.conn_id = conn_id
        self.timeout = timeout

    def url(self) -> str:
        conn = BaseHook.get_connection(self.conn_id)
        if not conn.host:
            raise ValueError(f"Connection {self.conn_id!r} has no host: set it to the webhook's host name")
        scheme = conn.schema or "http"
        port = f":{conn.port}" if conn.port else ""
        endpoint = str(conn.extra_dejson.get("endpoint", "")).lstrip("/")
        return f"{scheme}://{conn.host}{port}/{endpoint}"

    def notify(self, context) -> None:
        import requests

        conn = BaseHook.get_connection(self.conn_id)
        url = self.url()
        headers = {"Content-Type": "application/json", **dict(conn.extra_dejson.get("headers") or {})}
        resp = requests.post(url, json=self.body, headers=headers, timeout=self.timeout)
        if not resp.ok:
            raise WebhookRefused(f"webhook {url} (Connection {self.conn_id!r}) answered {resp.status_code}: "
                                 f"{resp.text[:300]}")


class WebhookRefused(RuntimeError):
    pass


def _connection_exists(conn_id: str) -> bool:
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        return False
    return True


def notifiers(subject: str, text: str, body: dict) -> list[tuple[str, BaseNotifier]]:
    """The configured channels as ``(name, notifier)`` for one alert."""
    out: list[tuple[str, BaseNotifier]] = []
    to = [a.strip() for a in os.environ.get("SLUICE_ALERT_EMAIL_TO", "").split(",") if a.strip()]
    if to:
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        out.append(("smtp", SmtpNotifier(
            to=to, from_email=os.environ.get("SLUICE_ALERT_EMAIL_FROM", "sluice@localhost"), subject=subject,
            html_content=f"<pre>{escape(text)}</pre>", smtp_conn_id=os.environ.get("SLUICE_ALERT_SMTP_CONN", DEFAULT_SMTP_CONNECTION),
        )))
    webhook = os.environ.get("SLUICE_ALERT_WEBHOOK_CONN", DEFAULT_WEBHOOK_CONNECTION)
    if _connection_exists(webhook):
        out.append(("webhook", WebhookNotifier(body=body, conn_id=webhook)))
    return out


def send_alerts(changes, context: dict | None = None) -> list[str]:
    """Announce ``changes`` (:class:`include.alerts.Changes`) on every channel; returns the channels that took it."""
    from include.alerts import message, payload

    if not changes:
        return []
    subject, text = message(changes)
    channels = notifiers(subject, text, payload(changes))
    if not channels:
        log.warning("no alert channel configured (SLUICE_ALERT_EMAIL_TO, Connection %s): %s", DEFAULT_WEBHOOK_CONNECTION, subject)
        return []
    sent: list[str] = []
    errors: list[str] = []
    for name, notifier in channels:
        try:
            notifier(dict(context or {}))
            sent.append(name)
        except Exception as exc:  # one broken channel must not silence the others
            log.error("alert channel %s failed: %s", name, exc)
            errors.append(f"{name}: {exc}")
    if not sent:
        raise AlertNotDelivered(f"no alert channel took {subject!r}: {'; '.join(errors)}")
    log.info("alert sent via %s: %s", ", ".join(sent), subject)
    return sent


def announce(book, problems: Sequence, scopes: Sequence[str], context: dict | None = None) -> dict:
    """Observe a check's problems in ``book``, alert the changes, then keep the book (see module doc)."""
    changes = book.observe(list(problems), list(scopes))
    sent = send_alerts(changes, context)
    book.commit()
    return {"opened": [i.key for i in changes.opened], "cleared": [i.key for i in changes.cleared], "sent": sent}
