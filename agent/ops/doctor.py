"""``python -m agent doctor``: is every configured provider usable, and if not, why.

Settings were already validated on the way in (a bad value never gets here). Doctor then asks
each provider's account API, with the configured key and base URL, whether the key is accepted
and how much credit is left, and checks what can be checked offline (the Google credentials
file, and what the worker itself needs to start: the LiveKit settings, a usable DATA_DIR and
the journal key, with the very checks ``start`` runs). One line per provider; one line per
problem, naming what to do; exit 1 if there is any problem. Keys are only ever shown masked.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent.journal.crypto import JournalKeyError, key_file, read_key_file
from agent.settings import Settings
from agent.startup import StartupError, check_data_dir, check_livekit
from plugins.catalog import CATALOG
from plugins.observability.account import CreditReport, mask
from plugins.observability.credit import check_credit
from plugins.spec import ProviderSpec

GHL_VERSION = "2021-07-28"


@dataclass(frozen=True)
class Finding:
    subject: str
    ok: bool
    text: str


def _credit_text(r: CreditReport) -> str:
    if r.remaining is None:
        return "key accepted"
    amount = f"{r.remaining:,.2f}" if r.unit == "usd" else f"{r.remaining:,.0f}"
    limit = f" of {r.limit:,.0f}" if r.limit and r.unit != "usd" else ""
    reset = (
        time.strftime(", resets %Y-%m-%d %H:%M UTC", time.gmtime(r.reset_at)) if r.reset_at else ""
    )
    return f"key accepted, {amount}{limit} {r.unit} left{reset}"


async def _check_ghl(settings: Settings, http: aiohttp.ClientSession) -> Finding:
    key = settings.secret("ghl_api_key")
    if not settings.ghl_location_id:
        return Finding("crm:ghl", False, "GHL_API_KEY is set but GHL_LOCATION_ID is not; set it")
    url = f"{str(settings.ghl_base_url).rstrip('/')}/locations/{settings.ghl_location_id}"
    headers = {
        "Authorization": f"Bearer {key}",
        "Version": GHL_VERSION,
        "Accept": "application/json",
    }
    try:
        async with asyncio.timeout(5), http.get(url, headers=headers) as resp:
            status = resp.status
    except (aiohttp.ClientError, TimeoutError) as e:
        return Finding("crm:ghl", False, f"GHL unreachable at {url} ({type(e).__name__})")
    if status in (401, 403):
        return Finding(
            "crm:ghl",
            False,
            f"GHL token {mask(key)} rejected ({status}); create a new private integration token",
        )
    if status == 404:
        return Finding("crm:ghl", False, f"GHL location {settings.ghl_location_id} not found")
    if status != 200:
        return Finding("crm:ghl", False, f"GHL answered {status}; try later")
    return Finding("crm:ghl", True, f"token {mask(key)} accepted for the location")


async def _check_spec(spec: ProviderSpec, http: aiohttp.ClientSession) -> Finding:
    """What the provider's definition can tell: offline first, then its account API."""
    provider = CATALOG.lookup(spec.slot, spec.name)
    if provider.local:
        return Finding(spec.key, True, "local, always available")
    if not provider.has_key(spec):
        return Finding(spec.key, True, f"skipped: {provider.key_hint or 'no key'} not set")
    if provider.offline_check is not None:
        problem = provider.offline_check(spec)
        if problem:
            return Finding(spec.key, False, problem)
        if provider.credit is None:
            return Finding(spec.key, True, f"{provider.key_hint} looks valid")
    report = await check_credit(spec, http)
    if report is None:
        return Finding(spec.key, True, f"key {mask(spec.api_key)} set (no account API to check)")
    if report.problem:
        return Finding(spec.key, False, report.problem)
    return Finding(spec.key, True, f"{mask(spec.api_key)}: {_credit_text(report)}")


def worker_findings(settings: Settings) -> list[Finding]:
    """What ``start`` needs besides providers, judged by the checks ``start`` itself runs."""
    findings = []
    try:
        check_livekit(settings)
        key = settings.secret("livekit_api_key") or ""
        findings.append(Finding("livekit", True, f"{settings.livekit_url} with key {mask(key)}"))
    except StartupError as e:
        findings.append(Finding("livekit", False, f"{e} (`console` runs without LiveKit)"))
    try:
        check_data_dir(Path(settings.data_dir))
        findings.append(Finding("data_dir", True, f"{settings.data_dir} is writable"))
    except StartupError as e:
        findings.append(Finding("data_dir", False, str(e)))
    findings.append(_journal_key(settings))
    return findings


def _journal_key(settings: Settings) -> Finding:
    if settings.secret("encryption_key"):
        return Finding("journal", True, "ENCRYPTION_KEY set: leads and transcripts are kept")
    try:
        in_file = read_key_file(settings.data_dir)
    except JournalKeyError as e:
        return Finding("journal", False, str(e))
    if in_file is not None:
        return Finding(
            "journal",
            True,
            f"key file {key_file(settings.data_dir)} in use (made by console/dev); in "
            "production set ENCRYPTION_KEY, kept apart from DATA_DIR",
        )
    return Finding(
        "journal",
        False,
        "ENCRYPTION_KEY is not set: `start` refuses to run, since leads and transcripts could "
        "not be kept; set 32 characters (python -c 'import secrets; "
        "print(secrets.token_hex(16))')",
    )


async def _check_store(settings: Settings) -> Finding:
    """A real read and write on the shared health store, under a deadline."""
    from agent.ops.status import store_fault_text
    from plugins.resilience.store import open_store

    store = open_store(settings.redis_url, settings.data_dir)
    try:
        async with asyncio.timeout(5):
            await store.ping()
            providers = len(await store.all_health())
    except Exception as e:
        return Finding("health-store", False, store_fault_text(settings, e))
    finally:
        with contextlib.suppress(Exception):
            await store.aclose()
    return Finding(
        "health-store", True, f"{store.where}: read and write ok, {providers} providers known"
    )


def _plugin_findings() -> list[Finding]:
    """Provider packages that are installed but could not be loaded."""
    return [
        Finding(
            f"plugin:{name}", False, f"provider package failed to load ({why}); fix or uninstall it"
        )
        for name, why in sorted(CATALOG.broken.items())
    ]


async def diagnose(settings: Settings) -> list[Finding]:
    specs = [s for slot in ("stt", "llm", "tts") for s in settings.provider_specs(slot)]  # type: ignore[arg-type]
    async with aiohttp.ClientSession() as http:
        findings = list(await asyncio.gather(*(_check_spec(s, http) for s in specs)))
        findings.extend(_plugin_findings())
        findings.append(await _check_store(settings))
        if settings.secret("ghl_api_key"):
            findings.append(await _check_ghl(settings, http))
    findings.extend(worker_findings(settings))
    return findings


def run(argv: list[str], settings: Settings) -> int:
    parser = argparse.ArgumentParser(prog="python -m agent doctor", description=__doc__)
    parser.parse_args(argv)
    findings = asyncio.run(diagnose(settings))
    width = max(len(f.subject) for f in findings)
    for f in findings:
        sys.stdout.write(f"{'ok ' if f.ok else 'BAD'}  {f.subject.ljust(width)}  {f.text}\n")
    problems = sum(not f.ok for f in findings)
    sys.stdout.write(
        f"{problems} problem{'s' if problems != 1 else ''} found\n" if problems else "All good.\n"
    )
    return 1 if problems else 0
