"""The shared OData layer: paths, keys, $filter → SQL, query options, keyset paging, $apply."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest

from dwlib.sandbox.odata import (
    ODataError,
    Segment,
    parse_key,
    split_path,
)
from dwlib.sandbox.odata_sql import (
    count_rows,
    fetch_page,
    filter_sql,
    parse_query,
)
from dwlib.sandbox.schema import ENTITIES
from dwlib.sandbox.store import Store, quote

ACCOUNTS = ENTITIES["accounts"]
CUSTOMERS = ENTITIES["CustomersV3"]
COMPANY = "7a1b0000-0000-4000-8000-0000000000aa"


@pytest.fixture
def store(tmp_path: Path) -> Store:
    st = Store(tmp_path / "s.sqlite")
    yield st
    st.close()


def _names(store: Store, where: str, params: list[object]) -> set[str]:
    rows = store.query(f"SELECT name FROM {quote(ACCOUNTS.table)} WHERE {where}", params)
    return {r[0] for r in rows}


# --- paths and keys ---------------------------------------------------------------------------


def test_split_path_keeps_quoted_slashes_and_parentheses() -> None:
    assert split_path("accounts(accountnumber='a/b(c)')/name") == [
        Segment("accounts", "accountnumber='a/b(c)'"), Segment("name")]
    assert split_path("WhoAmI()") == [Segment("WhoAmI", "")]
    assert split_path("") == []


def test_split_path_rejects_unbalanced_quotes() -> None:
    with pytest.raises(ODataError) as err:
        split_path("accounts(accountnumber='A1)")
    assert err.value.status == 400


def test_parse_key_forms() -> None:
    guid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    assert parse_key(ACCOUNTS, guid) == {"accountid": guid.lower()}
    assert parse_key(ACCOUNTS, "accountnumber='O''Brien'") == {"accountnumber": "O'Brien"}
    assert parse_key(ACCOUNTS, f"accountnumber='A1',_msdyn_company_value={COMPANY.upper()}") == {
        "accountnumber": "A1", "_msdyn_company_value": COMPANY}
    assert parse_key(CUSTOMERS, "dataAreaId='usmf',CustomerAccount='US-001'") == {
        "dataAreaId": "usmf", "CustomerAccount": "US-001"}
    assert parse_key(ENTITIES["LegalEntities"], "'USMF'") == {"LegalEntityId": "USMF"}


def test_parse_key_refuses_what_is_not_a_key() -> None:
    with pytest.raises(ODataError) as err:
        parse_key(ACCOUNTS, "name='Contoso'")
    assert "not a key of 'accounts'" in err.value.message and "(accountnumber)" in err.value.message
    with pytest.raises(ODataError) as err:
        parse_key(CUSTOMERS, "'US-001'")
    assert "dataAreaId" in err.value.message  # F&O: all key fields must be supplied
    with pytest.raises(ODataError) as err:
        parse_key(ACCOUNTS, "accountnumber=12")
    assert "Edm.String" in err.value.message


# --- $filter ------------------------------------------------------------------------------------


def test_unknown_property_has_dataverse_message() -> None:
    with pytest.raises(ODataError) as err:
        filter_sql(ACCOUNTS, "x eq 1")
    assert err.value.status == 400
    assert err.value.message == ("Could not find a property named 'x' on type "
                                 "'Microsoft.Dynamics.CRM.account'.")


@pytest.mark.parametrize("flt", ["name eq", "name eq 'a' and", "nope/cdm_name eq 'x'",
                                 "msdyn_company/nope eq 1"])
def test_bad_filters_are_400(flt: str) -> None:
    with pytest.raises(ODataError) as err:
        filter_sql(ACCOUNTS, flt)
    assert err.value.status == 400


def test_filter_semantics_against_store(store: Store) -> None:
    rows = [
        {"name": "Contoso", "createdon": "2024-01-01T10:00:00Z", "_msdyn_company_value": COMPANY},
        {"name": "50% off", "createdon": "2023-12-31T23:30:00Z"},
        {"name": "O'Brien", "createdon": "2024-06-01T00:00:00Z"},
        {"name": "a_b", "createdon": "2024-02-01T00:00:00Z"},
        {"name": "axb", "createdon": "2024-02-01T00:00:00Z"},
    ]
    store.insert_rows(ACCOUNTS, rows)
    cases = {
        "name eq 'contoso'": {"Contoso"},  # case-insensitive, like SQL Server
        "contains(name,'%')": {"50% off"},
        "contains(name,'_')": {"a_b"},
        "name eq 'O''Brien'": {"O'Brien"},
        "startswith(name,'a')": {"a_b", "axb"},
        # 01:00+02:00 is 23:00Z the day before: only the 23:30Z row and later ones qualify
        "createdon ge 2024-01-01T01:00:00+02:00 and createdon lt 2024-02-01T00:00:00Z":
            {"50% off", "Contoso"},
        f"_msdyn_company_value eq {COMPANY.upper()}": {"Contoso"},
        "_msdyn_company_value eq null and not (name eq 'axb')": {"50% off", "O'Brien", "a_b"},
        "name in ('Contoso','axb')": {"Contoso", "axb"},
    }
    for flt, expected in cases.items():
        assert _names(store, *filter_sql(ACCOUNTS, flt)) == expected, flt


def test_booleans_compare_as_integers(store: Store) -> None:
    contacts = ENTITIES["contacts"]
    store.insert_rows(contacts, [{"lastname": "a", "msdyn_sellable": True},
                                 {"lastname": "b", "msdyn_sellable": False}])
    sql, params = filter_sql(contacts, "msdyn_sellable eq true")
    rows = store.query(f"SELECT lastname FROM {quote(contacts.table)} WHERE {sql}", params)
    assert [r[0] for r in rows] == ["a"]


def test_finops_wildcard_and_refused_in(store: Store) -> None:
    store.insert_rows(CUSTOMERS, [
        {"dataAreaId": "usmf", "CustomerAccount": "US-001", "OrganizationName": "Retail Co"},
        {"dataAreaId": "usmf", "CustomerAccount": "US-002", "OrganizationName": "Bank"},
    ])
    sql, params = filter_sql(CUSTOMERS, "OrganizationName eq '*retail*'")
    rows = store.query(f"SELECT CustomerAccount FROM {quote(CUSTOMERS.table)} WHERE {sql}", params)
    assert [r[0] for r in rows] == ["US-001"]
    with pytest.raises(ODataError) as err:
        filter_sql(CUSTOMERS, "CustomerAccount in ('US-001','US-002')")
    assert "'in' operator" in err.value.message


# --- query options ------------------------------------------------------------------------------


def test_query_options_are_validated() -> None:
    with pytest.raises(ODataError) as err:
        parse_query(ACCOUNTS, {"$skip": "10"})
    assert "$skip is not supported" in err.value.message
    assert parse_query(CUSTOMERS, {"$skip": "10"}, allow_skip=True).skip == 10
    for args in ({"$expand": "x"}, {"$top": "-1"}, {"$count": "yes"}, {"$orderby": "name up"},
                 {"$select": "name,nope"}, {"$orderby": "nope"}):
        with pytest.raises(ODataError) as err:
            parse_query(ACCOUNTS, args)
        assert err.value.status == 400, args


def test_orderby_ends_with_the_primary_key() -> None:
    assert parse_query(CUSTOMERS, {"$orderby": "CustomerGroupId desc"}).order == [
        ("CustomerGroupId", True), ("dataAreaId", False), ("CustomerAccount", False)]


# --- keyset paging ------------------------------------------------------------------------------


def _walk(store: Store, args: dict[str, str], size: int, between: int = 0) -> list[str]:
    """Every accountid of the query, page by page; `between` rows are inserted after each page."""
    q = parse_query(ACCOUNTS, args)
    seen: list[str] = []
    while True:
        page = fetch_page(store.conn, q, ["accountid"], size, None)
        seen += [item.split('"')[3] for item in page.items]
        if page.next_token is None:
            return seen
        assert len(page.items) == size
        if between:
            store.insert_rows(ACCOUNTS, [{"name": random.choice("ABC"), "customertypecode": None}
                                         for _ in range(between)])
        q.skiptoken = page.next_token


@pytest.mark.parametrize("orderby", [None, "name", "customertypecode desc,name", "creditlimit desc",
                                     "customertypecode,creditlimit desc"])
def test_keyset_paging_never_loses_or_repeats_rows(store: Store, orderby: str | None) -> None:
    rnd = random.Random(7)
    rows = [{"name": rnd.choice(["A", "B", None]), "customertypecode": rnd.choice([1, 3, None]),
             "creditlimit": rnd.choice([None, 10.0, 20.5])} for _ in range(1200)]
    original = {r["accountid"] for r in store.insert_rows(ACCOUNTS, rows)}
    args = {"$orderby": orderby} if orderby else {}
    seen = _walk(store, args, 97, between=5)
    assert len(seen) == len(set(seen))  # no duplicates
    assert original <= set(seen)  # nothing lost (rows inserted meanwhile may or may not appear)


def test_paging_respects_top_and_tokens_are_checked(store: Store) -> None:
    store.insert_rows(ACCOUNTS, [{"name": str(i)} for i in range(50)])
    assert len(_walk(store, {"$top": "23"}, 10)) == 23
    q = parse_query(ACCOUNTS, {})
    token = fetch_page(store.conn, q, ["accountid"], 10, None).next_token
    assert token is not None
    for bad, args in ((token[:-3] + "xyz", {}), (token, {"$orderby": "name"})):
        q = parse_query(ACCOUNTS, args)
        q.skiptoken = bad
        with pytest.raises(ODataError) as err:
            fetch_page(store.conn, q, ["accountid"], 10, None)
        assert "$skiptoken" in err.value.message


def test_count_ignores_paging(store: Store) -> None:
    store.insert_rows(ACCOUNTS, [{"name": "x" if i % 2 else "y"} for i in range(30)])
    q = parse_query(ACCOUNTS, {"$filter": "name eq 'x'", "$count": "true"})
    page = fetch_page(store.conn, q, ["name"], 4, None)
    assert page.count == 15 == count_rows(store.conn, q)
    assert len(page.items) == 4


# --- $apply -------------------------------------------------------------------------------------


def test_apply_groupby_counts(store: Store) -> None:
    rnd = random.Random(1)
    rows = [{"name": rnd.choice("AB"), "customertypecode": rnd.choice([1, 3]), "creditlimit": 1.5}
            for _ in range(200)]
    store.insert_rows(ACCOUNTS, rows)
    expected = {k: len(list(g)) for k, g in itertools.groupby(
        sorted((r["name"], r["customertypecode"]) for r in rows))}
    q = parse_query(ACCOUNTS, {"$apply": "groupby((name,customertypecode),aggregate($count as n))"})
    got = {(d["name"], d["customertypecode"]): d["n"]
           for d in map(json.loads, fetch_page(store.conn, q, [], 10, None).items)}
    assert got == expected
    q = parse_query(ACCOUNTS, {"$apply": "filter(name eq 'A')/groupby((name),aggregate($count as n,"
                                         "creditlimit with sum as total))"})
    (only,) = [json.loads(i) for i in fetch_page(store.conn, q, [], 10, None).items]
    n_a = sum(1 for r in rows if r["name"] == "A")
    assert only == {"name": "A", "n": n_a, "total": 1.5 * n_a}


@pytest.mark.parametrize("apply", ["groupby(name)", "groupby((nope))", "topcount(2,name)",
                                   "groupby((name),aggregate(name with median as m))"])
def test_bad_apply_is_400(apply: str) -> None:
    with pytest.raises(ODataError) as err:
        parse_query(ACCOUNTS, {"$apply": apply})
    assert err.value.status == 400
