"""The web console in a real browser (Debian's chromium, driven by Playwright)
against a real Tidings: kube-apiserver with RBAC, the operator, a dispatcher
and `tidings console` on the test-env Redis. Viewers sign in with real
ServiceAccount tokens (TokenReview) and every page and action is checked with
SubjectAccessReviews. The tests run in order, as a day with the console goes.

TIDINGS_CONSOLE_SCREENSHOTS=1 writes the screenshots into docs/console/."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from console_harness import Stack, eventually

from tidings.api import keys

pytestmark = pytest.mark.integration

DESKTOP = {"width": 1100, "height": 760}


def send(stack: Stack, namespace: str, source: str, event_id: str, data: Any) -> None:
    request = urllib.request.Request(
        f"{stack.ingest_url}/sources/{namespace}/{source}",
        data=json.dumps(data).encode(),
        method="POST",
        headers={
            "Content-Type": "application/json",
            "ce-specversion": "1.0",
            "ce-id": event_id,
            "ce-type": "com.shop.order.created",
            "ce-source": "/test",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 202


def raw_post(base: str, path: str, form: dict[str, str], token: str) -> tuple[int, str]:
    request = urllib.request.Request(
        base + path,
        data=urllib.parse.urlencode(form).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Viewer:
    """A browser tab signed in as a ServiceAccount of namespace A."""

    def __init__(self, browser: Any, stack: Stack, account: str, **context: Any) -> None:
        self.stack = stack
        self.context = browser.new_context(viewport=context.pop("viewport", DESKTOP), **context)
        self.page = self.context.new_page()
        self.page.goto(stack.console_url)
        assert "/login" in self.page.url, "an anonymous visit goes to the sign-in page"
        self.token = stack.token(account)
        self.page.fill("#token", self.token)
        self.page.click("button[type=submit]")
        self.page.wait_for_url(stack.console_url)

    def open(self, path: str) -> Any:
        return self.page.goto(self.stack.console_url + path)

    def shot(self, name: str, *, whole: bool = False) -> None:
        self.page.screenshot(path=str(self.stack.shots / f"{name}.png"), full_page=whole)

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def editor(browser: Any, stack: Stack) -> Iterator[Viewer]:
    viewer = Viewer(browser, stack, "editor")
    yield viewer
    viewer.close()


def test_sign_in_page_and_an_unknown_token_is_refused(browser: Any, stack: Stack) -> None:
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    page.goto(stack.console_url)
    assert page.url.startswith(stack.console_url + "login")
    page.screenshot(path=str(stack.shots / "login.png"))
    page.fill("#token", "not-a-real-token")
    page.click("button[type=submit]")
    assert "does not accept this token" in page.text_content("#error-message")
    context.close()


def test_overview_lists_what_exists_with_the_right_states(editor: Viewer, stack: Stack) -> None:
    violations: list[str] = []
    editor.page.on(
        "console", lambda m: violations.append(m.text) if "Content Security" in m.text else None
    )
    response = editor.open("")
    page = editor.page
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"

    def row(trigger: str) -> Any:
        return page.locator(f'tr[data-trigger="{trigger}"]')

    a, b = stack.ns_a, stack.ns_b
    eventually(lambda: row(f"{a}/archive").count() == 1)
    assert "Paused" in row(f"{a}/archive").locator("td.state").inner_text()
    assert "Delivering" in row(f"{a}/receipts").locator("td.state").inner_text()
    assert "Ready" in row(f"{a}/receipts").locator("td.ready").inner_text()
    assert row(f"{b}/ledger").count() == 1, "the editor may see both namespaces"
    assert not violations, f"the page broke its own Content-Security-Policy: {violations}"
    sources = page.locator("#sources").inner_text()
    assert f"{a}/orders" in sources and f"{b}/payments" in sources
    assert "http" in sources


def test_a_failing_subscriber_shows_failed_attempts_within_seconds(
    editor: Viewer, stack: Stack
) -> None:
    stack.subscriber.status = 500
    editor.open(f"t/{stack.ns_a}/mailer")
    page = editor.page
    assert page.locator("#attempts tr.failed").count() == 0
    for n in range(3):
        send(stack, stack.ns_a, "orders", f"order-{n}", {"order": n})
    # No reload: the page's live regions refresh themselves.
    eventually(lambda: page.locator("#attempts tr.failed").count() >= 1, within=15)
    first = page.locator("#attempts tr.failed").first.inner_text()
    assert "500" in first and "mailer is down" in first
    page.check("#attempts-filter input[name=failed]")
    page.wait_for_url("**failed=1**")
    outcomes = page.locator("#attempts tbody tr td:nth-child(4)").all_inner_texts()
    assert outcomes and all(o.strip() in ("retry", "dead", "refused", "expired") for o in outcomes)


def test_the_dead_letters_show_on_the_trigger_and_the_overview(
    editor: Viewer, stack: Stack
) -> None:
    editor.open(f"t/{stack.ns_a}/mailer")
    page = editor.page
    eventually(lambda: page.text_content("#dead-count") == "3", within=30)
    page.reload()
    assert page.locator("#dead-letters tbody tr").count() == 3
    assert "Backoff" in page.text_content("#delivery-state") or "Delivering" in (
        page.text_content("#delivery-state") or ""
    )
    editor.shot("trigger", whole=True)
    editor.open("")
    eventually(
        lambda: page.locator(f'tr[data-trigger="{stack.ns_a}/mailer"] td.dead').inner_text() == "3"
    )
    editor.shot("overview")


def test_replay_delivers_the_dead_letters_to_a_subscriber_that_now_answers_200(
    editor: Viewer, stack: Stack
) -> None:
    """In a cluster the button creates a Replay (--replay object, the default): the
    operator compiles it, a dispatcher runs it, the page follows its status."""
    stack.subscriber.status = 200
    editor.open(f"t/{stack.ns_a}/mailer")
    page = editor.page
    page.click("#replay-all")
    assert "Replay 3 dead letters" in page.text_content("h1")
    editor.shot("replay-confirm")
    page.click("#confirm-replay")
    assert "Created Replay mailer-console-" in page.text_content("#flash")
    eventually(
        lambda: {"order-0", "order-1", "order-2"} <= set(stack.subscriber.delivered("/bad")),
        within=60,
    )
    eventually(lambda: page.text_content("#dead-count") == "0", within=30)
    eventually(lambda: "Succeeded" in (page.text_content("#replays") or ""), within=60)
    replays = json.loads(stack.kubectl("get", "replays", "-n", stack.ns_a, "-o", "json").stdout)[
        "items"
    ]
    assert [r["spec"] for r in replays] == [{"trigger": "mailer", "from": {"deadLetters": {}}}]
    page.reload()  # the dead-letter list is not live (a selection must not vanish)
    assert page.locator("#dead-letters").count() == 0
    editor.shot("trigger-replayed", whole=True)


def test_pause_and_resume_change_the_trigger(editor: Viewer, stack: Stack) -> None:
    editor.open(f"t/{stack.ns_a}/receipts")
    page = editor.page
    assert "GitOps" in page.text_content("#pause-note")
    page.click("#pause-button")
    assert "Paused" in page.text_content("#flash")
    trigger = stack.trigger(stack.ns_a, "receipts")
    assert trigger["spec"]["paused"] is True
    annotations = trigger["metadata"].get("annotations") or {}
    assert annotations.get("tidings.dev/paused-by", "").endswith(f"{stack.ns_a}:editor")
    assert page.text_content("#pause-button") == "Resume"
    page.click("#pause-button")
    assert "Resumed" in page.text_content("#flash")
    assert stack.trigger(stack.ns_a, "receipts")["spec"]["paused"] is False


def test_a_viewer_of_one_namespace_sees_nothing_of_another_and_cannot_replay_there(
    browser: Any, stack: Stack
) -> None:
    a, b = stack.ns_a, stack.ns_b
    stack.subscriber.status = 500
    send(stack, b, "payments", "payment-1", {"amount": 12})
    dlq = keys.dead_letters(b, "payments", "ledger")
    client = redis.Redis.from_url(stack.redis_url)
    eventually(lambda: client.xlen(dlq) == 1, within=20)
    viewer = Viewer(browser, stack, "viewer")
    page = viewer.page
    try:
        viewer.open("")
        text = page.text_content("main") or ""
        assert f"{a}/mailer" in text
        assert b not in text, "nothing of the other namespace is shown"
        response = viewer.open(f"t/{b}/ledger")
        assert response.status == 403
        assert "may not get triggers" in page.text_content("#error-message")
        viewer.shot("forbidden")
        response = viewer.open(f"s/{b}/payments")
        assert response.status == 403
        # The viewer may read namespace A but not patch there: the button says so.
        viewer.open(f"t/{a}/mailer")
        assert page.is_disabled("#pause-button")
        csrf = page.get_attribute("input[name=csrf]", "value")
        # The raw endpoint, with a valid CSRF token of the viewer's own session.
        answer = page.request.post(
            f"{stack.console_url}t/{b}/ledger/replay",
            form={"csrf": csrf, "all": "1", "confirm": "yes"},
        )
        assert answer.status == 403
        assert "may not" in answer.text()
        status, body = raw_post(
            stack.console_url,
            f"t/{b}/ledger/replay",
            {"csrf": csrf, "all": "1", "confirm": "yes"},
            viewer.token,
        )
        assert status == 403, body
        assert "may not" in body
        assert client.xlen(dlq) == 1, "the refused replay changed nothing"
    finally:
        viewer.close()
        stack.subscriber.status = 200


def test_posts_without_a_csrf_token_are_refused(editor: Viewer, stack: Stack) -> None:
    token = stack.token("editor")
    path = f"t/{stack.ns_a}/receipts/pause"
    status, body = raw_post(stack.console_url, path, {"paused": "true"}, token)
    assert status == 403 and "CSRF" in body
    status, body = raw_post(stack.console_url, path, {"paused": "true", "csrf": "0" * 64}, token)
    assert status == 403 and "CSRF" in body
    answer = editor.page.request.post(stack.console_url + path, form={"paused": "true"})
    assert answer.status == 403
    assert stack.trigger(stack.ns_a, "receipts")["spec"].get("paused") is False


def test_a_payload_containing_script_is_shown_as_text(editor: Viewer, stack: Stack) -> None:
    hostile = "<script>document.title='pwned'</script><img src=x onerror=\"document.title='img'\">"
    send(stack, stack.ns_a, "orders", "hostile-1", {"note": hostile})
    editor.open("event")
    page = editor.page
    page.select_option("#source", f"{stack.ns_a}/orders")
    page.fill("#event-id", "hostile-1")
    page.click("form.search button")
    payload = page.text_content("#payload") or ""
    assert hostile.replace('"', '\\"') in payload
    assert page.locator("#payload script, #payload img").count() == 0
    assert "pwned" not in page.title() and "img" not in page.title()

    def traced() -> bool:
        page.reload()
        text = page.locator("#trace").inner_text()
        return "receipts" in text and "delivered" in text and "archive" in text

    eventually(traced, within=15)
    editor.shot("event", whole=True)


def unlabelled(page: Any) -> list[str]:
    """Form controls with neither a <label> nor an aria-label."""
    found: list[str] = page.evaluate(
        """[...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
           .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
           .map(e => e.outerHTML)"""
    )
    return found


def test_source_page_and_a_narrow_screen(browser: Any, editor: Viewer, stack: Stack) -> None:
    editor.open(f"s/{stack.ns_a}/orders")
    page = editor.page
    assert "curl -X POST" in page.text_content("#curl-example")
    assert f"/sources/{stack.ns_a}/orders" in page.text_content("#curl-example")
    assert page.locator("#recent-events tbody tr").count() >= 1
    editor.shot("source")
    narrow = Viewer(browser, stack, "editor", viewport={"width": 390, "height": 844})
    try:
        narrow.open("")
        width = narrow.page.evaluate("document.documentElement.scrollWidth")
        assert width <= 392, f"the page is {width}px wide on a 390px screen"
        assert unlabelled(narrow.page) == [], "every control has a label"
        narrow.open(f"t/{stack.ns_a}/mailer")
        assert unlabelled(narrow.page) == [], "every control has a label"
        narrow.open("")
        narrow.page.keyboard.press("Tab")
        focused = narrow.page.evaluate("document.activeElement.textContent")
        assert focused == "Skip to content"
        narrow.shot("overview-narrow")
    finally:
        narrow.close()


def test_a_schedule_source_page_shows_its_adapter_health(editor: Viewer, stack: Stack) -> None:
    editor.open(f"s/{stack.ns_a}/ticks")
    page = editor.page
    assert page.locator("#curl-example").count() == 0, "nothing posts to a schedule source"
    health = page.locator("#adapter-health")
    # Live: the adapter's report appears without a reload.
    eventually(lambda: health.count() == 1 and "Running" in health.inner_text(), within=30)
    text = health.inner_text()
    assert "Scheduled" in text and "@hourly in UTC" in text
    assert "Last error" not in text, "a running adapter's message is no error"
    editor.shot("source-adapter")


def test_replay_direct_hands_the_chosen_dead_letter_back_in_redis(stack: Stack) -> None:
    """--replay direct: the console hands the chosen dead letter back itself (the
    script `tidings replay` uses), no Replay object. Checked on the raw endpoints."""
    from console_harness import Process, free_port, wait_http

    port = free_port()
    console = Process(
        "console-replay-direct",
        ["console", "--listen", f"127.0.0.1:{port}", "--redis-url", stack.redis_url,
         "--kubeconfig", str(stack.console_kubeconfig), "--replay", "direct"],
        stack.logs / "console-replay-direct.log",
        {"TIDINGS_CONSOLE_CSRF_KEY": stack.csrf_key},  # the key of the first: two replicas
    ).start()  # fmt: skip
    base = f"http://127.0.0.1:{port}/"
    token = stack.token("editor")
    stack.subscriber.status = 200
    try:
        wait_http(base + "healthz")
        page = f"t/{stack.ns_b}/ledger"
        # The form as the first console served it, posted to this one (a second
        # replica: the same CSRF key, as the chart's Secret gives them).
        request = urllib.request.Request(
            stack.console_url + page, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            html = response.read().decode()
        found = re.search(r'name="csrf" value="([0-9a-f]+)"', html)
        dead = re.search(r'name="id" value="(\d+-\d+)"', html)
        assert found and dead, "the ledger's page offers its dead letter"
        form = {"csrf": found.group(1), "id": dead.group(1), "confirm": "yes"}
        status, body = raw_post(base, page + "/replay", form, token)
        assert status == 200, body
        assert json.loads(body) == {"replayed": 1, "kept": 0}
        eventually(lambda: "payment-1" in stack.subscriber.delivered("/bad"), within=30)
        listed = stack.kubectl("get", "replays", "-n", stack.ns_b, "-o", "json")
        assert json.loads(listed.stdout)["items"] == [], "no Replay object in direct mode"
    finally:
        console.stop()
