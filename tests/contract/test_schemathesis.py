"""Schemathesis, as an outside client runs it, against the live schema on a fresh database.

Every phase (examples, coverage, fuzzing, stateful along the schema's OpenAPI links) and every
check, authenticated as a member of the seeded ``demo`` tenant, through a real HTTP server:
0 failures. Settings and the reasons for each narrowing live next to this file:
schemathesis.toml (volume, seed, UTF-8 strings) and contract_hooks.py (which 400s a
schema-valid request may still get). One check is left out, on purpose: ``use_after_free``
reads DELETE as "gone", but deleting a profile is a soft delete that stays readable (with
``deleted_at``) and restorable; hard deletes are asserted to 404 in the domain tests.
"""

import io
import os
import subprocess
import sys
from pathlib import Path

from django.core.management import call_command
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from bookings.models import Package
from profiles.models import Profile
from promos.models import PromoCode, RedemptionSession
from proposals.models import Proposal

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def test_schemathesis_finds_nothing(live_server, transactional_db, settings):
    # Schemathesis probes every operation with bad credentials (ST401) and expects 401 or 403; past 30
    # failures a minute from one address the auth-failure throttle answers 429, as designed (and tested
    # in tests/core/test_throttles.py), which a long stateful phase reaches in some runs. Off here.
    settings.LOCKSTEP_THROTTLE_RATES = {**settings.LOCKSTEP_THROTTLE_RATES, "auth_failure": None}
    call_command("seed_demo", stdout=io.StringIO())
    token = Token.objects.get(user__username="demo-api").key
    seeded = _created()
    assert APIClient().get("/api/t/demo/", HTTP_AUTHORIZATION=f"Bearer {token}").status_code == 200
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{live_server.url}/api/schema/",
        "--checks",
        "all",
        "--exclude-checks",
        "use_after_free",
        "--header",
        f"Authorization: Bearer {token}",
        "--no-color",
    ]
    environment = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.contract.contract_hooks", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=1200)
    summary = run.stdout[run.stdout.find("SUMMARY") :]
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    for phase in ("Examples", "Coverage", "Fuzzing", "Stateful"):
        assert f"✅ {phase}" in summary, summary
    # The fuzzer got past authentication and tenancy into the guarded code: it created things. A
    # proposal needs an active package of the tenant on a future date, which the fuzzer reaches in
    # most runs but not all (the ids it meets depend on the tests before it): four kinds of five.
    created = _created()
    grew = [name for name in created if created[name] > seeded[name]]
    assert len(grew) >= 4 and {"packages", "promo codes", "profiles"} <= set(grew), (seeded, created)


def _created():
    return {
        "packages": Package.objects.count(),
        "proposals": Proposal.objects.count(),
        "promo codes": PromoCode.objects.count(),
        "redemption sessions": RedemptionSession.objects.count(),
        "profiles": Profile.objects.count(),
    }
