"""Finance and Operations OData (`/data/…`): entity queries, cross-company, create, update, `$batch`.

F&O pages server-side (≤ 10,000 rows per page) and answers errors with an `innererror` whose
message carries the Infolog text; both are handled by the shared OData layer.

Example:
    fo = FinOpsClient(http, "https://contoso.operations.dynamics.com")
    fo.query("CustomersV3", select=["CustomerAccount"], company="USMF")
    fo.update("CustomersV3", {"dataAreaId": "usmf", "CustomerAccount": "US-001"}, {"SalesMemo": "x"})
    >>> company_filter("USMF", "CustomerGroupId eq '10'")
    "dataAreaId eq 'usmf' and (CustomerGroupId eq '10')"
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx

from .errors import ClientError, NotFoundError, ThrottledError
from .http import HttpConfig, RetryBudget
from .odata import Key, ODataService, key_segment, literal
from .odata_batch import Batch, ChangeSet, Part, PartResponse
from .once import send_once

Row = dict[str, Any]


def _per_item(items: Sequence[Part | ChangeSet], responses: Sequence[PartResponse]
              ) -> list[list[PartResponse]]:
    """The responses of each item: one for a part, one per part for a change set that went
    through, one for a change set that failed (its failing part's).

    >>> ok, no = PartResponse(204, {}, b""), PartResponse(429, {}, b"")
    >>> cs = ChangeSet.__new__(ChangeSet); cs.parts = [Part("PATCH", "a"), Part("PATCH", "b")]
    >>> [[r.status for r in rs] for rs in _per_item([Part("GET", "x"), cs, cs], [ok, ok, ok, no])]
    [[204], [204, 204], [429]]
    """
    out: list[list[PartResponse]] = []
    at = 0
    for item in items:
        if at >= len(responses):
            break
        size = len(item.parts) if isinstance(item, ChangeSet) and responses[at].status < 400 else 1
        out.append(list(responses[at:at + size]))
        at += size
    if len(out) != len(items) or at != len(responses):
        raise ValueError(f"answered {len(responses)} part responses for {len(items)} requests")
    return out


def _retry_after(part: PartResponse, default_s: float) -> float:
    value = part.headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else default_s


def company_filter(company: str, filter: str | None = None) -> str:
    """`$filter` for one company (F&O keeps `dataAreaId` in lower case), and'ed with `filter`.

    >>> company_filter("DAT")
    "dataAreaId eq 'dat'"
    """
    own = f"dataAreaId eq {literal(company.lower())}"
    return f"{own} and ({filter})" if filter else own


class FinOpsClient(ODataService):
    """An F&O environment's OData service; `http` carries the auth for the F&O audience.

    >>> FinOpsClient(httpx.Client(), "https://contoso.operations.dynamics.com").root
    'https://contoso.operations.dynamics.com/data'
    """

    name = "F&O"
    auth_fix = ("register the app's client id in F&O (System administration > Setup > Microsoft Entra ID "
                "applications) with a user that has the needed roles")

    def __init__(self, http: httpx.Client, url: str, *, retry: HttpConfig | None = None,
                 budget: RetryBudget | None = None) -> None:
        super().__init__(http, f"{url.rstrip('/')}/data")
        self.environment_url = url.rstrip("/")
        self.retry = retry or HttpConfig()  # limits of the requests made once (`dwlib.clients.once`)
        self.budget = budget or RetryBudget(self.retry.retry_budget_s)  # the run's, shared with `http`

    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        top: int | None = None,
        cross_company: bool = False,
        company: str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Row]:
        """Rows of an entity, across pages. `company` limits to one legal entity (implies
        cross-company); `cross_company` reads all the caller may see, else the default company.
        `page_size` asks for smaller pages (`Prefer: odata.maxpagesize`); F&O pages by itself (at
        most 10,000 rows) and whether it honours the preference is unverified, so the client
        follows `@odata.nextLink` whatever the page size."""
        if page_size is not None and page_size < 1:
            raise ValueError(f"page_size must be 1 or more, not {page_size}")
        if company:
            filter, cross_company = company_filter(company, filter), True
        params = {k: v for k, v in {
            "$select": ",".join(select) if select else None, "$filter": filter, "$orderby": orderby,
            "$top": str(top) if top is not None else None,
            "cross-company": "true" if cross_company else None,
        }.items() if v is not None}
        prefer = {"Prefer": f"odata.maxpagesize={page_size}"} if page_size else None
        for page in self.pages(entity_set, params, prefer):
            yield from page

    def get(self, entity_set: str, key: Key, *, select: Sequence[str] | None = None) -> Row:
        """One row by its full key (with `dataAreaId` for company-specific entities)."""
        params: dict[str, str] = {"cross-company": "true"}
        if select:
            params["$select"] = ",".join(select)
        return self._row(self.send("GET", f"{entity_set}{key_segment(key)}", params=params))

    def _row(self, response: httpx.Response) -> Row:
        """The row an answer carries; `ResponseError` naming the endpoint when it is not one."""
        row = self.decode(response)
        if not isinstance(row, dict):
            raise self.unreadable(response, f"a row must be a JSON object, not {type(row).__name__}")
        return row

    def create(self, entity_set: str, row: Mapping[str, Any], *, key: Key | None = None) -> Row:
        """Create a row (201, the created row). Never repeated blindly: with the row's `key`, a
        create that failed on the way (429/503/504, a lost connection) is settled by reading the key
        — the row there is returned, else the create is sent again (`dwlib.clients.once`)."""
        def post() -> Row:
            return self._row(self.send("POST", entity_set, json=row, safe=False))

        if key is None:
            return post()

        def landed() -> Row | None:
            try:
                return self.get(entity_set, key)
            except NotFoundError:
                return None

        def gave_up(attempts: int, failure: ClientError, why: str) -> ClientError:
            return ClientError(f"F&O did not create {entity_set}{key_segment(key)} in {attempts} attempts "
                               f"({why}): {failure}",
                               fix="F&O is busy or unreachable: run the step again later, or raise "
                                   "options.http.retry_attempts / retry_total_s / retry_budget_s")

        return send_once(post, landed, config=self.retry, budget=self.budget, gave_up=gave_up)

    def update(self, entity_set: str, key: Key, changes: Mapping[str, Any]) -> None:
        """Update the row with this key (PATCH; repeating it is harmless)."""
        self.send("PATCH", f"{entity_set}{key_segment(key)}", json=changes, params={"cross-company": "true"},
                  safe=True)

    def delete(self, entity_set: str, key: Key, *, params: Mapping[str, str] | None = None) -> None:
        """Delete the row with this key (any company: the key carries `dataAreaId`)."""
        super().delete(entity_set, key, params={"cross-company": "true", **(params or {})})

    def action(self, path: str, body: Mapping[str, Any], *, safe: bool) -> Any:
        """POST an OData action and return its `value` (unwrapping nested `{"value": …}`); an
        answer without a `value` is a `ResponseError` naming the action."""
        response = self.send("POST", path, json=body, safe=safe)
        value = self.decode(response)
        if not isinstance(value, dict) or "value" not in value:
            raise self.unreadable(response, "an action's answer must be a JSON object with a 'value', not "
                                            f"{json.dumps(value)[:120]}")
        while isinstance(value, dict) and "value" in value:
            value = value["value"]
        return value

    def batch(self) -> Batch:
        """A `$batch` builder for this environment (see `dwlib.clients.odata_batch`)."""
        return Batch(self)

    def execute(self, batch: Batch) -> list[PartResponse]:
        """Send `batch` (continuing after a failed part) and send again only the parts F&O
        throttled inside it: F&O answers the batch 200 and a part 429 with its own Retry-After
        (api-surface §3.4). A throttled part did not run (a throttled change set ran none of its
        parts), so each is sent once more, in a new batch of the throttled ones, after the longest
        Retry-After among them, within the run's retry budget and `retry_attempts`.

        Returns the responses in the batch's order; other failed parts are returned as they are
        (check `status`). Raises `ThrottledError` when throttling outlasts the attempts or the budget
        (the budget is not charged for a wait it cannot cover).

        batch = fo.batch(); batch.get("LegalEntities"); ...; responses = fo.execute(batch)
        """
        items = batch.items()
        answers: dict[int, list[PartResponse]] = {}
        todo = list(range(len(items)))
        for attempt in range(self.retry.retry_attempts + 1):
            responses = batch.subset([items[i] for i in todo]).execute(continue_on_error=True)
            throttled: list[tuple[int, PartResponse]] = []
            try:
                per_item = _per_item([items[i] for i in todo], responses)
            except ValueError as exc:
                raise ClientError(f"F&O $batch at {self.url('$batch')} {exc}") from None
            for i, got in zip(todo, per_item, strict=True):
                if len(got) == 1 and got[0].status == 429:
                    throttled.append((i, got[0]))
                else:
                    answers[i] = got
            if not throttled:
                break
            wait = max(_retry_after(r, self.retry.backoff_s * 2**attempt) for _, r in throttled)
            if attempt == self.retry.retry_attempts or not self.budget.take(wait):
                raise self._throttled(throttled[0][1], len(throttled), attempt + 1, wait)
            todo = [i for i, _ in throttled]
        return [r for i in range(len(items)) for r in answers[i]]

    def _throttled(self, part: PartResponse, count: int, attempts: int, wait: float) -> ThrottledError:
        seen = self.error(httpx.Response(part.status, headers=dict(part.headers), content=part.body,
                                         request=httpx.Request("POST", self.url("$batch"))))
        fix = (f"F&O still throttled {count} part(s) of the batch after {attempts} attempt(s) (next wait "
               f"{wait:g} s, {self.budget.remaining_s:g} s left of options.http.retry_budget_s): run again "
               "later, or raise the integration's priority (System administration > Setup > Throttling "
               "priority mapping)")
        return ThrottledError(part.status, getattr(seen, "code", ""), getattr(seen, "message", str(seen)),
                              method="POST", url=self.url("$batch"), fix=fix, retry_after_s=wait)
