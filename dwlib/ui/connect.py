"""Connect: sign in to both environments and show who you are on each.

`ConnectPanel(rb).sign_in()` routes the runbook's device-code message (`Runbook.device_prompt`)
into the panel, showing the link and the code, then asks each environment who the caller is:
Dataverse `WhoAmI` (user, business unit, organization) and the signed-in identity of each access
token (a consultant's UPN, or the app's name), plus the legal entities finance and operations
shows. With an app registration (client secret or certificate) no code is shown.

Why the sign-in blocks the cell: msal's device flow polls until the consultant approves. The code
and link reach the browser before that (a widget update is sent over IOPub at once), which is all
the consultant needs; signing in on a thread would let the cell end early, but the next step would
wait on the same token anyway, and a failure would surface away from the cell that caused it.

Example:
    >>> parse_device_message("To sign in, use a web browser to open the page https://microsoft.com/"
    ...                      "devicelogin and enter the code ABC123XYZ to authenticate.")
    ('https://microsoft.com/devicelogin', 'ABC123XYZ')
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dwlib.errors import DwError
from dwlib.render import esc
from dwlib.secrets import scrub

from .view import Panel

if TYPE_CHECKING:
    from dwlib.runbook import Runbook

LEGAL_ENTITIES_SHOWN = 10


def parse_device_message(message: str) -> tuple[str, str]:
    """The verification link and the user code in msal's device-flow message ("" when absent)."""
    url = re.search(r"https?://[^\s\"'<>]+", message)
    code = re.search(r"\bcode\s+([A-Z0-9-]{4,})\b", message)
    return (url.group(0).rstrip(".,") if url else "", code.group(1) if code else "")


def whoami(rb: Runbook) -> list[dict[str, str]]:
    """One row per environment: its URL, who you are there, and what it says about you.

    whoami(rb)[0] → {'environment': 'Dataverse', 'url': …, 'signed in as': …, 'details': …}
    """
    assert rb.session is not None
    env = rb.params.environments
    me = rb.session.dataverse.whoami()
    dataverse = {"environment": "Dataverse", "url": env.dataverse_url,
                 "signed in as": rb.session.tokens.signed_in_as(env.dataverse_url),
                 "details": f"user {me.get('UserId')}, business unit {me.get('BusinessUnitId')}, "
                            f"organization {me.get('OrganizationId')}"}
    codes = [r["LegalEntityId"] for r in rb.session.finops.query("LegalEntities", select=["LegalEntityId"])]
    shown = ", ".join(codes[:LEGAL_ENTITIES_SHOWN]) + (" …" if len(codes) > LEGAL_ENTITIES_SHOWN else "")
    finops = {"environment": "Finance and operations", "url": env.finops_url,
              "signed in as": rb.session.tokens.signed_in_as(env.finops_url),
              "details": f"{len(codes)} legal entities: {shown}"}
    return [dataverse, finops]


class ConnectPanel(Panel):
    """The connect cell's widget: the device code and link while signing in, then who you are.

    panel = ConnectPanel(rb); panel.sign_in(); panel.rows[1]["signed in as"]
    """

    css_class = "dw-connect"

    def __init__(self, rb: Runbook) -> None:
        super().__init__()
        self.rb = rb
        self.rows: list[dict[str, str]] = []
        self.error = ""
        self.code = self.html_part("")
        self.who = self.html_part('<p class="dw-who" data-state="signing-in">Signing in…</p>')
        if self.ipywidgets is not None:
            self.widget = self.ipywidgets.VBox([self.code, self.who])
            self.widget.add_class(self.css_class)
        rb.device_prompt = self.prompt

    def prompt(self, message: str) -> None:
        """Show msal's device-code message: the link to open and the code to enter (also printed,
        for logs and for viewers without widgets)."""
        url, code = parse_device_message(message)
        link = f'<a href="{esc(url)}" target="_blank" rel="noopener">{esc(url)}</a>'
        shown = esc(message)
        if url and code:
            shown = (f'To sign in, open {link} and enter the code '
                     f'<code class="dw-user-code" style="font-size:1.3em">{esc(code)}</code>')
        self.code.value = f'<p class="dw-device-code">{shown}</p>'
        print(message, flush=True)

    def sign_in(self) -> list[dict[str, str]]:
        """Sign in (device code if the parameters say so) and show who you are on each environment;
        a failure is shown, not raised: preflight reports reachability with the fix."""
        try:
            self.rows = whoami(self.rb)
        except DwError as exc:
            self.error = scrub(str(exc))
            self.who.value = (f'<p class="dw-who" data-state="failed" style="color:#cf222e">Sign-in failed: '
                              f"{esc(self.error)}</p>")
            return []
        cells = "".join(
            "<tr>" + "".join(f"<td>{esc(r[k])}</td>" for k in ("environment", "url", "signed in as",
                                                                       "details")) + "</tr>"
            for r in self.rows)
        self.who.value = ('<div class="dw-who" data-state="signed-in"><table><thead><tr><th>environment</th>'
                          "<th>URL</th><th>signed in as</th><th>details</th></tr></thead>"
                          f"<tbody>{cells}</tbody></table></div>")
        self.code.value = self.code.value.replace("To sign in, open", "Signed in with the code from")
        return self.rows

    def text(self) -> str:
        """Who you are on each environment, as text."""
        if self.error:
            return f"Sign-in failed: {self.error}"
        return "\n".join(f"{r['environment']} ({r['url']}): signed in as {r['signed in as']}; {r['details']}"
                         for r in self.rows) or "Not signed in yet."


def connect(rb: Runbook) -> ConnectPanel:
    """The connect cell: show the panel, sign in, show who you are; returns the panel.

    connection = ui.connect(rb)
    """
    from IPython.display import display

    panel = ConnectPanel(rb)
    display(panel)
    panel.sign_in()
    if not rb.interactive:  # what was displayed said "not signed in yet": the log gets the outcome
        print(panel.text(), flush=True)
    return panel
