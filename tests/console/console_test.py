"""The console in a real browser, as an operator and as a tenant.

Run by broker-server/tests/console.rs, which starts the broker and a
webhook endpoint that fails until healed, sets up the topics, and passes
what it made in the environment (CONSOLE_*). Exits non-zero, saying why,
when the console does not do what a person expects of it.
"""

import json
import os
import sys
import urllib.parse
import urllib.request

from playwright.sync_api import expect, sync_playwright

BASE = os.environ["CONSOLE_BASE"]
ADMIN = os.environ["CONSOLE_ADMIN"]
TENANT = os.environ["CONSOLE_TENANT"]
PUBLISHER = os.environ["CONSOLE_PUBLISHER"]
SUBSCRIBER = os.environ["CONSOLE_SUBSCRIBER"]
MESSAGE = os.environ["CONSOLE_MESSAGE"]
HEAL = os.environ["CONSOLE_HEAL"]
SHOTS = os.environ["CONSOLE_SCREENSHOTS"]
CHROMIUM = os.environ.get("CONSOLE_CHROMIUM", "/usr/bin/chromium")

# Long enough for a loaded 2-core machine; every wait ends as soon as its
# condition holds.
WAIT_MS = 20_000


def step(text):
    print(f"console: {text}", flush=True)


def shot(page, name):
    path = os.path.join(SHOTS, f"{name}.png")
    page.screenshot(path=path, full_page=True)
    step(f"screenshot {path}")


def post(url, body, token=None, content_type="application/json"):
    request = urllib.request.Request(url, data=body.encode(), method="POST")
    request.add_header("Content-Type", content_type)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status, response.read().decode()


def watch_errors(page, errors, who):
    page.on("pageerror", lambda e: errors.append(f"{who}: uncaught {e}"))
    page.on(
        "console",
        lambda m: m.type == "error" and errors.append(f"{who}: console.error {m.text}"),
    )


def check_labels(page, where):
    """Every control has a label a screen reader announces."""
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, textarea')]
            .filter((el) => el.type !== 'hidden')
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
            .map((el) => el.outerHTML.slice(0, 120))"""
    )
    if unlabelled:
        raise AssertionError(f"{where}: controls without a label: {unlabelled}")


def check_fits(page, where):
    """Nothing wider than the window but the tables' own scrollers."""
    overflow = page.evaluate(
        "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
    )
    if overflow > 1:
        raise AssertionError(f"{where}: the page is {overflow}px wider than the window")


def operator(browser, errors):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    watch_errors(page, errors, "operator")

    step("the operator opens /ui#token=…")
    page.goto(f"{BASE}/ui/#token={urllib.parse.quote(ADMIN)}")
    page.wait_for_function("() => !location.hash.includes('token=')", timeout=WAIT_MS)
    topics = page.locator("[data-testid=topics]")
    expect(topics.locator('[data-topic="shop.orders"]')).to_be_visible(timeout=WAIT_MS)
    expect(topics.locator('[data-topic="globex.billing"]')).to_be_visible(timeout=WAIT_MS)
    expect(topics.locator('[data-topic="broker.events"]')).to_be_visible(timeout=WAIT_MS)
    check_labels(page, "overview")
    shot(page, "operator-overview-1400")

    step("…opens the topic from the keyboard")
    link = topics.locator('[data-topic="shop.orders"] a').first
    link.focus()
    page.keyboard.press("Enter")
    page.wait_for_function(
        "() => location.hash.startsWith('#/topics/shop.orders')", timeout=WAIT_MS
    )
    row = page.locator(f'[data-testid=subscribers] [data-subscriber="{SUBSCRIBER}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    expect(page.locator("[data-testid=test-message]")).to_be_visible()
    expect(page.locator("[data-testid=groups]")).to_contain_text("fulfilment", timeout=WAIT_MS)
    check_labels(page, "topic")
    shot(page, "operator-topic-1400")

    step("…opens the failing subscriber")
    row.locator("a").first.click()
    attempts = page.locator("[data-testid=attempts]")
    expect(attempts).to_contain_text("500", timeout=WAIT_MS)
    # The endpoint's response body, as the attempt log kept it.
    expect(attempts).to_contain_text("database down", timeout=WAIT_MS)
    dead = page.locator(f'[data-testid=dead-letters] [data-dead-letter="{MESSAGE}"]')
    expect(dead).to_be_visible(timeout=WAIT_MS)
    check_labels(page, "subscriber")
    shot(page, "operator-subscriber-failing-1400")

    step("…heals the endpoint and presses Redrive on the dead letter")
    status, _ = post(HEAL, "")
    assert status == 200
    dead.get_by_role("button", name="Redrive").click()
    expect(dead).to_have_count(0, timeout=WAIT_MS)
    expect(attempts).to_contain_text("200", timeout=WAIT_MS)
    shot(page, "operator-subscriber-redriven-1400")

    step("…watches the live tail while a message is published")
    page.goto(f"{BASE}/ui/#/topics/shop.orders")
    tail = page.locator("[data-testid=live-tail]")
    expect(tail.locator(".stream-live")).to_be_visible(timeout=WAIT_MS)
    status, body = post(
        f"{BASE}/v1/topics/shop.orders/messages",
        '{"order":2,"note":"published meanwhile"}',
        token=PUBLISHER,
    )
    assert status == 202, body
    expect(tail).to_contain_text("published meanwhile", timeout=WAIT_MS)
    expect(tail).to_contain_text(json.loads(body)["id"], timeout=WAIT_MS)
    shot(page, "operator-live-tail-1400")

    step("…sends a test message from the form")
    form = page.locator("[data-testid=test-message]")
    # The admin token is not a publisher's: the form registers one.
    form.get_by_role("button", name="Register a console publisher").click()
    expect(form).to_contain_text("console", timeout=WAIT_MS)
    expect(form.get_by_label("Publisher token")).not_to_have_value("", timeout=WAIT_MS)
    form.get_by_label("Payload").fill('{"from":"the console form"}')
    form.get_by_role("button", name="Send", exact=True).click()
    expect(form).to_contain_text("msg_", timeout=WAIT_MS)
    expect(tail).to_contain_text("the console form", timeout=WAIT_MS)

    step("…reads the operational events")
    page.get_by_role("link", name="Events").click()
    feed = page.locator("[data-testid=events-feed]")
    expect(feed).to_contain_text("message.dead_lettered", timeout=WAIT_MS)
    shot(page, "operator-events-1400")

    step("…and at 390 px wide")
    page.set_viewport_size({"width": 390, "height": 844})
    for name, hash_, ready in [
        ("overview", "#/", '[data-testid=topics] [data-topic="shop.orders"]'),
        ("topic", "#/topics/shop.orders", f'[data-subscriber="{SUBSCRIBER}"]'),
        (
            "subscriber",
            f"#/topics/shop.orders/subscribers/{SUBSCRIBER}",
            "[data-testid=attempts] td",
        ),
    ]:
        page.goto(f"{BASE}/ui/{hash_}")
        page.locator(ready).first.wait_for(timeout=WAIT_MS)
        check_fits(page, f"{name} at 390px")
        shot(page, f"operator-{name}-390")
    context.close()


def tenant(browser, errors):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    watch_errors(page, errors, "tenant")
    step("a tenant opens its portal with a minted token")
    page.goto(f"{BASE}/ui/#token={urllib.parse.quote(TENANT)}")
    topics = page.locator("[data-testid=topics]")
    expect(topics.locator('[data-topic="shop.orders"]')).to_be_visible(timeout=WAIT_MS)
    expect(topics.locator('[data-topic="globex.billing"]')).to_have_count(0)
    expect(topics.locator('[data-topic="broker.events"]')).to_have_count(0)
    expect(page.get_by_role("link", name="Events")).to_have_count(0)
    shot(page, "tenant-overview-1400")
    topics.locator('[data-topic="shop.orders"] a').first.click()
    row = page.locator(f'[data-testid=subscribers] [data-subscriber="{SUBSCRIBER}"]')
    expect(row).to_be_visible(timeout=WAIT_MS)
    row.locator("a").first.click()
    expect(page.locator("[data-testid=attempts]")).to_contain_text("200", timeout=WAIT_MS)
    shot(page, "tenant-subscriber-1400")
    context.close()


def main():
    os.makedirs(SHOTS, exist_ok=True)
    errors = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        try:
            operator(browser, errors)
            tenant(browser, errors)
        finally:
            browser.close()
    if errors:
        raise AssertionError("errors in the browser:\n" + "\n".join(errors))
    step("all good")


if __name__ == "__main__":
    try:
        main()
    except Exception as error:  # noqa: BLE001 - the test's verdict
        print(f"console: FAILED: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
