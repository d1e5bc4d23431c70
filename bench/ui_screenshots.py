"""Headless screenshots of the Prefect UI for the README's "what you will see" (not part of make test).

Needs a running ``make up`` (server at http://127.0.0.1:4200 with the deployments) and Debian's
chromium (``make ui-shots`` installs it when missing). Runs ``batch-map/hourly`` once, then saves:

* ``docs/screenshots/deployment-run-form.png``: the typed parameter form of the deployment;
* ``docs/screenshots/summary-artifact.png``: the summary table artifact of that run;
* ``docs/screenshots/flow-run.png``: the finished run: chunk task timeline, progress artifact, logs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
UI = os.environ.get("BATCHFLOWS_UI_URL", "http://127.0.0.1:4200")
API = UI + "/api"
OUT = ROOT / "docs" / "screenshots"


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("chromium is not installed: `apt-get install -y chromium` (make ui-shots does it)")


def shoot(browser: str, url: str, target: Path, *, height: int = 1000) -> None:
    profile = tempfile.mkdtemp(prefix="bf-chromium-")
    cmd = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--force-prefers-reduced-motion",  # no fade-in caught half way
        f"--user-data-dir={profile}", "--hide-scrollbars", f"--window-size=1440,{height}",
        "--virtual-time-budget=30000", f"--screenshot={target}", url,
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    shutil.rmtree(profile, ignore_errors=True)
    print(f"saved {target.relative_to(ROOT)} <- {url}")


def main() -> int:
    browser = chromium()
    try:
        deployment = httpx.get(f"{API}/deployments/name/batch-map/hourly", timeout=10).json()
    except httpx.HTTPError:
        raise SystemExit(f"no Prefect server at {UI}: run `make up` first") from None
    env = {**os.environ, "PREFECT_API_URL": API}
    prefect = str(Path(sys.executable).with_name("prefect"))
    subprocess.run([prefect, "deployment", "run", "batch-map/hourly", "--watch"], env=env, check=True,
                   capture_output=True, timeout=600)
    body = {"sort": "START_TIME_DESC", "limit": 1, "offset": 0, "deployments": {"id": {"any_": [deployment["id"]]}}}
    [flow_run] = httpx.post(f"{API}/flow_runs/filter", json=body, timeout=10).json()
    OUT.mkdir(parents=True, exist_ok=True)
    time.sleep(2)
    # tall: the form lists every parameter with its description
    shoot(browser, f"{UI}/deployments/deployment/{deployment['id']}/run", OUT / "deployment-run-form.png",
          height=3200)
    arts = {"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}, "type": {"any_": ["table"]}}, "limit": 1,
            "offset": 0, "sort": "CREATED_DESC"}
    [table] = httpx.post(f"{API}/artifacts/filter", json=arts, timeout=10).json()
    shoot(browser, f"{UI}/artifacts/artifact/{table['id']}", OUT / "summary-artifact.png")
    shoot(browser, f"{UI}/runs/flow-run/{flow_run['id']}", OUT / "flow-run.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
