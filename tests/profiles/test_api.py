import pytest

from profiles.models import Profile, ProfileAuditLog
from tests.profiles.factories import ProfileFactory, fresh
from tests.refusals import assert_error

pytestmark = pytest.mark.django_db

BASE = "/api/t/acme"


def create(client, **body):
    return client.post(f"{BASE}/profiles", {"first_name": "Ann", "sex": "female", **body}, format="json")


# --- CRUD --------------------------------------------------------------------


def test_create_read_update_delete_restore(api_client, tenant, member):
    dad = ProfileFactory(tenant=tenant)
    response = create(api_client, last_name="Lee", birth_date="1990-04-05", father=dad.pk)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["version"] == 1 and body["deleted_at"] is None and body["father"] == dad.pk
    pk = body["id"]
    assert api_client.get(f"{BASE}/profiles/{pk}").json()["first_name"] == "Ann"

    response = api_client.patch(f"{BASE}/profiles/{pk}", {"version": 1, "first_name": "Anne"}, format="json")
    assert response.status_code == 200 and response.json()["version"] == 2
    assert_error(
        api_client.patch(f"{BASE}/profiles/{pk}", {"version": 1, "first_name": "X"}, format="json"),
        409,
        "version_conflict",
    )

    response = api_client.delete(f"{BASE}/profiles/{pk}?version=2")
    assert response.status_code == 200 and response.json()["deleted_at"] is not None
    assert [p["id"] for p in api_client.get(f"{BASE}/profiles").json()["results"]] == [dad.pk]
    assert [p["id"] for p in api_client.get(f"{BASE}/profiles?deleted=true").json()["results"]] == [pk]

    response = api_client.post(f"{BASE}/profiles/{pk}/restore", {"version": 3}, format="json")
    assert response.status_code == 200 and response.json()["deleted_at"] is None
    assert_error(api_client.post(f"{BASE}/profiles/{pk}/restore", {}, format="json"), 409, "profile_not_deleted")

    history = api_client.get(f"{BASE}/profiles/{pk}/history").json()
    assert [e["action"] for e in history] == ["create", "update", "delete", "restore"]
    assert history[1]["old_data"] == {"first_name": "Ann"} and history[1]["actor"] == member.username
    assert set(history[0]) >= {"id", "profile", "action", "old_data", "new_data", "actor", "created_at", "undone_at"}


def test_restore_at_a_stale_version_is_409_version_conflict(api_client, tree):
    kid, tenant = tree["kid"], tree["kid"].tenant
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    Profile.objects.restore(kid.pk, tenant=tenant, version=2)
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=3)
    response = api_client.post(f"{BASE}/profiles/{kid.pk}/restore", {"version": 2}, format="json")
    assert_error(response, 409, "version_conflict")
    assert response.json()["error"]["details"] == {"current": 4}
    assert fresh(kid).deleted_at is not None and fresh(kid).version == 4


def test_list_search(api_client, tenant):
    ProfileFactory(tenant=tenant, first_name="Zaid")
    ProfileFactory(tenant=tenant, first_name="Omar")
    names = [p["first_name"] for p in api_client.get(f"{BASE}/profiles?search=zai").json()["results"]]
    assert names == ["Zaid"]


def test_ancestors_and_descendants(api_client, tree):
    kid = tree["kid"]
    ancestors = api_client.get(f"{BASE}/profiles/{kid.pk}/ancestors").json()
    assert [(a["first_name"], a["depth"]) for a in ancestors] == [
        ("Dad", 1),
        ("Mum", 1),
        ("Grandpa", 2),
        ("Grandma", 2),
    ]
    descendants = api_client.get(f"{BASE}/profiles/{tree['grandma'].pk}/descendants?max_depth=1").json()
    assert [d["first_name"] for d in descendants] == ["Dad"]


# --- undo --------------------------------------------------------------------


def entry_after_move(tree):
    kid = tree["kid"]
    other = ProfileFactory(tenant=kid.tenant)
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, father=other.pk)
    return ProfileAuditLog.objects.get(profile=kid, action="update")


def test_undo_with_idempotency_key_replays(api_client, tree):
    entry = entry_after_move(tree)
    url = f"{BASE}/audit-log/{entry.pk}/undo"
    first = api_client.post(url, {"reason": "wrong father"}, format="json", HTTP_IDEMPOTENCY_KEY="u-1")
    assert first.status_code == 200, first.content
    body = first.json()
    assert body["undone"]["id"] == entry.pk and body["undone"]["undone_at"] and body["undone"]["undo_reason"]
    assert body["undo_entry"]["action"] == "undo" and body["profile"]["father"] == tree["dad"].pk
    assert body["undone"]["actor"] is None  # the move was made without a user (a command, say)
    second = api_client.post(url, {"reason": "wrong father"}, format="json", HTTP_IDEMPOTENCY_KEY="u-1")
    assert second.json() == body and second["Idempotent-Replayed"] == "true"
    assert_error(
        api_client.post(url, {"reason": "other"}, format="json", HTTP_IDEMPOTENCY_KEY="u-1"),
        422,
        "idempotency_key_reused",
    )
    assert_error(api_client.post(url, {"reason": "again"}, format="json"), 409, "already_undone")
    assert ProfileAuditLog.objects.filter(action="undo").count() == 1


def test_undo_refusals_in_english_and_arabic(api_client, tree):
    entry = entry_after_move(tree)
    Profile.objects.soft_delete(tree["dad"].pk, tenant=tree["dad"].tenant, version=1)
    url = f"{BASE}/audit-log/{entry.pk}/undo"
    english = assert_error(api_client.post(url, {"reason": "r"}, format="json"), 409, "parent_deleted")
    arabic = assert_error(
        api_client.post(url, {"reason": "r"}, format="json", HTTP_ACCEPT_LANGUAGE="ar"), 409, "parent_deleted"
    )
    assert english["message"] == "The father's profile is deleted. Restore the father first."
    assert arabic["message"] == "الملف الشخصي للأب محذوف. يجب استعادة الأب أولاً."


def test_undo_stale_and_unsupported(api_client, tree):
    kid = tree["kid"]
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, first_name="B")
    entry = ProfileAuditLog.objects.get(profile=kid, action="update")
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=2, first_name="C")
    error = assert_error(
        api_client.post(f"{BASE}/audit-log/{entry.pk}/undo", {"reason": "r"}, format="json"), 409, "stale_version"
    )
    assert error["message"].endswith(": first name.")
    arabic = assert_error(
        api_client.post(f"{BASE}/audit-log/{entry.pk}/undo", {"reason": "r"}, format="json", HTTP_ACCEPT_LANGUAGE="ar"),
        409,
        "stale_version",
    )
    assert arabic["message"].endswith(": الاسم الأول.")  # the field is named in Arabic too
    create_entry = ProfileAuditLog.objects.get(profile=kid, action="create")
    assert_error(
        api_client.post(f"{BASE}/audit-log/{create_entry.pk}/undo", {"reason": "r"}, format="json"),
        409,
        "undo_not_supported",
    )
    arabic = assert_error(
        api_client.post(
            f"{BASE}/audit-log/{create_entry.pk}/undo", {"reason": "r"}, format="json", HTTP_ACCEPT_LANGUAGE="ar"
        ),
        409,
        "undo_not_supported",
    )
    assert arabic["message"] == "لا يمكن التراجع عن قيود من هذا النوع (إنشاء)."


def test_other_tenants_entry_and_profile_are_404(api_client, outsider_client, tree, other_tenant):
    entry = entry_after_move(tree)
    assert_error(
        outsider_client.post(f"{BASE}/audit-log/{entry.pk}/undo", {"reason": "r"}, format="json"), 404, "not_found"
    )
    stranger = ProfileFactory(tenant=other_tenant)
    Profile.objects.update_profile(stranger.pk, tenant=other_tenant, version=1, first_name="Q")
    foreign = ProfileAuditLog.objects.get(profile=stranger, action="update")
    assert_error(
        api_client.post(f"{BASE}/audit-log/{foreign.pk}/undo", {"reason": "r"}, format="json"),
        404,
        "audit_entry_not_found",
    )
    assert_error(api_client.get(f"{BASE}/audit-log/{foreign.pk}"), 404, "audit_entry_not_found")
    assert_error(api_client.get(f"{BASE}/profiles/{stranger.pk}"), 404, "profile_not_found")
    assert_error(api_client.get(f"{BASE}/profiles/{stranger.pk}/history"), 404, "profile_not_found")
    assert_error(
        api_client.patch(f"{BASE}/profiles/{stranger.pk}", {"version": 1, "first_name": "X"}, format="json"),
        404,
        "profile_not_found",
    )
    assert_error(api_client.get(f"{BASE}/profiles/{stranger.pk}/ancestors"), 404, "profile_not_found")


# --- parent rules through the API -------------------------------------------


def test_parent_rule_refusals(api_client, tree):
    kid, dad = tree["kid"], tree["dad"]
    patch = lambda pk, **body: api_client.patch(f"{BASE}/profiles/{pk}", body, format="json")  # noqa: E731
    assert_error(patch(kid.pk, version=1, father=tree["mum"].pk), 400, "parent_wrong_sex")
    assert_error(patch(kid.pk, version=1, mother=dad.pk), 400, "parent_wrong_sex")
    assert_error(patch(dad.pk, version=1, father=dad.pk), 409, "would_create_cycle")
    assert_error(patch(tree["grandpa"].pk, version=1, father=kid.pk), 409, "would_create_cycle")
    assert_error(patch(kid.pk, version=1, father=999999), 400, "parent_not_found")
    assert_error(patch(dad.pk, version=1, sex="female"), 409, "sex_change_conflict")
    assert_error(api_client.delete(f"{BASE}/profiles/{dad.pk}?version=1"), 409, "profile_has_children")
    assert_error(create(api_client, birth_date="2000-01-02", death_date="1999-12-31"), 400, "invalid_dates")
    assert fresh(kid).version == 1


def test_stale_version_details_name_the_fields_by_key_in_every_language(api_client, tree):
    """Details are values for programs, the same in every language (docs/api.md); the message names labels."""
    kid = tree["kid"]
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, first_name="B", last_name="L")
    entry = ProfileAuditLog.objects.get(profile=kid, action="update")
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=2, first_name="C", last_name="M")
    url = f"{BASE}/audit-log/{entry.pk}/undo"
    english = assert_error(api_client.post(url, {"reason": "r"}, format="json"), 409, "stale_version")
    arabic = assert_error(
        api_client.post(url, {"reason": "r"}, format="json", HTTP_ACCEPT_LANGUAGE="ar"), 409, "stale_version"
    )
    assert english["details"] == arabic["details"] == {"fields": "first_name, last_name"}
    assert english["message"].endswith(": first name, last name.")
    assert arabic["message"].endswith(": الاسم الأول، الاسم الأخير.")


def test_a_rule_that_stored_values_break_on_restore_or_undo_is_409_not_400(api_client, tree):
    """A restore or an undo carries no value to correct (DESIGN: 400 is invalid input, 409 refused by the
    current state): when what it would bring back breaks a rule, the code is the rule's, the status 409."""
    kid, dad, tenant = tree["kid"], tree["dad"], tree["kid"].tenant
    # The father's sex changed while his only child was deleted: restoring the child cannot be fixed by the caller.
    Profile.objects.soft_delete(kid.pk, tenant=tenant, version=1)
    Profile.objects.update_profile(dad.pk, tenant=tenant, version=1, sex="female")
    assert_error(api_client.post(f"{BASE}/profiles/{kid.pk}/restore", {}, format="json"), 409, "parent_wrong_sex")
    assert fresh(kid).deleted_at is not None
    # An undo bringing back a date of death before a date of birth written since.
    mum = tree["mum"]
    Profile.objects.update_profile(mum.pk, tenant=tenant, version=1, death_date="2000-01-01")
    Profile.objects.update_profile(mum.pk, tenant=tenant, version=2, death_date="2050-01-01")
    entry = ProfileAuditLog.objects.filter(profile=mum).order_by("-id").first()
    Profile.objects.update_profile(mum.pk, tenant=tenant, version=3, birth_date="2020-01-01")
    response = api_client.post(f"{BASE}/audit-log/{entry.pk}/undo", {"reason": "r"}, format="json")
    assert_error(response, 409, "invalid_dates")
    assert fresh(mum).version == 4 and ProfileAuditLog.objects.get(pk=entry.pk).undone_at is None
    # A request's own values breaking the same rules stay 400.
    assert_error(create(api_client, birth_date="2000-01-02", death_date="1999-12-31"), 400, "invalid_dates")
    grandpa = tree["grandpa"]
    response = api_client.patch(
        f"{BASE}/profiles/{grandpa.pk}", {"version": 1, "father": tree["grandma"].pk}, format="json"
    )
    assert_error(response, 400, "parent_wrong_sex")


# --- bad input never 500 -----------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {"version": "NaN", "first_name": "X"},
        {"version": "Infinity", "first_name": "X"},
        {"version": 10**30, "first_name": "X"},
        {"version": 1.5, "first_name": "X"},
        {"version": -1},
        {"first_name": "X"},
        {"version": 1, "father": "NaN"},
        {"version": 1, "father": 10**30},
        {"version": 1, "father": [1]},
        {"version": 1, "sex": "other"},
        {"version": 1, "birth_date": "1990-13-45"},
        {"version": 1, "first_name": "x" * 500},
        {"version": 1, "first_name": ""},
        {"version": True, "first_name": "X"},
    ],
)
def test_bad_patch_bodies_are_400(api_client, tree, body):
    response = api_client.patch(f"{BASE}/profiles/{tree['kid'].pk}", body, format="json")
    assert_error(response, 400, "invalid_input")


def test_json_nan_literal_is_400(api_client, tree):
    response = api_client.generic(
        "PATCH", f"{BASE}/profiles/{tree['kid'].pk}", '{"version": NaN}', content_type="application/json"
    )
    assert response.status_code == 400, response.content


@pytest.mark.parametrize(
    "query",
    [
        *("", "?version=abc", "?version=NaN", "?version=0", f"?version={10**30}"),
        *("?version=٣", "?version=3.0", "?version=+3", "?version=%203"),  # no integer as the schema writes one
    ],
)
def test_bad_delete_versions_are_400(api_client, tree, query):
    assert_error(api_client.delete(f"{BASE}/profiles/{tree['kid'].pk}{query}"), 400, "invalid_input")


@pytest.mark.parametrize(
    "path",
    ["/profiles/abc", "/profiles/-1", "/profiles/1.5/history", "/audit-log/x/undo", "/profiles/%00"],
)
def test_malformed_ids_are_404(api_client, tenant, path):
    assert_error(api_client.get(f"{BASE}{path}"), 404, "not_found")


def test_unknown_and_huge_ids_are_404(api_client, tenant):
    assert_error(api_client.get(f"{BASE}/profiles/{10**30}"), 404, "profile_not_found")
    assert_error(api_client.get(f"{BASE}/profiles/{10**30}/descendants"), 404, "profile_not_found")
    assert_error(
        api_client.post(f"{BASE}/audit-log/{10**30}/undo", {"reason": "r"}, format="json"), 404, "audit_entry_not_found"
    )
    assert_error(api_client.delete(f"{BASE}/profiles/999999?version=1"), 404, "profile_not_found")


def test_undo_needs_a_reason(api_client, tree):
    entry = entry_after_move(tree)
    assert_error(api_client.post(f"{BASE}/audit-log/{entry.pk}/undo", {}, format="json"), 400, "invalid_input")
    assert_error(
        api_client.post(f"{BASE}/audit-log/{entry.pk}/undo", {"reason": "   "}, format="json"), 400, "invalid_input"
    )


def test_bad_create_bodies(api_client, tenant):
    assert_error(create(api_client, sex=None), 400, "invalid_input")
    assert_error(create(api_client, birth_date=12), 400, "invalid_input")
    assert_error(api_client.post(f"{BASE}/profiles", "[]", content_type="application/json"), 400, "invalid_input")
    assert_error(api_client.get(f"{BASE}/profiles?deleted=maybe"), 400, "invalid_input")
    assert_error(api_client.get(f"{BASE}/profiles/1/ancestors?max_depth=NaN"), 400, "invalid_input")


def test_anonymous_is_401(anon_client, tenant):
    assert anon_client.get(f"{BASE}/profiles").status_code == 401


def test_history_round_trips_do_not_grow_with_entries(api_client, tree):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    kid = tree["kid"]
    url = f"{BASE}/profiles/{kid.pk}/history"
    with CaptureQueriesContext(connection) as few:
        api_client.get(url)
    for version in range(1, 6):
        Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=version, first_name=f"K{version}")
    with CaptureQueriesContext(connection) as many:
        assert len(api_client.get(url).json()) == 6
    assert len(many) == len(few) <= 5, [q["sql"] for q in many.captured_queries]


# --- writes carry the version and never reset what they omit ------------------------


def test_put_is_not_offered_so_no_omitted_field_can_be_reset(api_client, tree):
    kid = tree["kid"]
    response = api_client.put(f"{BASE}/profiles/{kid.pk}", {"version": 1, "first_name": "Only"}, format="json")
    assert response.status_code == 405
    kid = fresh(kid)
    assert (kid.first_name, kid.father_id, kid.mother_id, kid.version) == ("Kid", tree["dad"].pk, tree["mum"].pk, 1)


def test_patch_needs_the_version_and_writes_only_what_it_names(api_client, tree):
    kid = tree["kid"]
    assert_error(
        api_client.patch(f"{BASE}/profiles/{kid.pk}", {"first_name": "X"}, format="json"), 400, "invalid_input"
    )
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, birth_date="2001-02-03")
    # read-only columns in the body are refused by name, and nothing is written
    refused = api_client.patch(
        f"{BASE}/profiles/{kid.pk}",
        {"version": 2, "last_name": "Renamed", "deleted_at": "2020-01-01T00:00:00Z", "tenant": 999},
        format="json",
    )
    assert_error(refused, 400, "invalid_input")
    assert set(refused.json()["error"]["fields"]) == {"deleted_at", "tenant"}
    assert Profile.objects.get(pk=kid.pk).last_name == kid.last_name
    response = api_client.patch(f"{BASE}/profiles/{kid.pk}", {"version": 2, "last_name": "Renamed"}, format="json")
    assert response.status_code == 200, response.content
    body = response.json()
    edited = {"first_name", "last_name", "sex", "birth_date", "death_date", "father", "mother"}
    assert set(body) == edited | {"id", "version", "deleted_at", "created_at"}  # the server's columns; no tenant
    assert (body["first_name"], body["last_name"], body["birth_date"], body["father"], body["mother"]) == (
        "Kid",
        "Renamed",
        "2001-02-03",
        tree["dad"].pk,
        tree["mum"].pk,
    )
    assert body["version"] == 3 and body["deleted_at"] is None
    assert ProfileAuditLog.objects.filter(profile=kid).latest("pk").new_data == {"last_name": "Renamed"}


def test_a_stale_patch_is_409_version_conflict_in_arabic_with_the_current_version(api_client, tree):
    kid = tree["kid"]
    Profile.objects.update_profile(kid.pk, tenant=kid.tenant, version=1, first_name="Moved on")
    response = api_client.patch(
        f"{BASE}/profiles/{kid.pk}", {"version": 1, "first_name": "Stale"}, format="json", HTTP_ACCEPT_LANGUAGE="ar"
    )
    error = assert_error(response, 409, "version_conflict")
    assert error["message"] == "عدّل شخص آخر هذا السجل (النسخة الآن 2). أعد تحميله ثم حاول مرة أخرى."
    assert error["details"] == {"current": 2}
    assert fresh(kid).first_name == "Moved on"
