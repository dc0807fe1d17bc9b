// The local collector with the real Snowplow trackers, as a Micro user tests with them:
// the node tracker (POST and GET, base64 on and off, batched as it batches by default,
// its builders) and the browser tracker in headless Chromium, on a page of another
// origin (so the CORS preflight, credentials and the collector's cookie are real). The
// checks are those Micro users make (events with a context, with properties, by schema,
// in order), written here.
//   node suite.mjs COLLECTOR_URL CHROMIUM_PATH   (run by tests/micro/trackers.sh)
import assert from "node:assert/strict";
import http from "node:http";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const [collector, chromium] = process.argv.slice(2);
let failures = 0;

async function check(name, body) {
  try {
    await body();
    console.log(`PASS: ${name}`);
  } catch (error) {
    failures += 1;
    console.log(`FAIL: ${name}\n${error.stack ?? error}`);
  }
}

async function micro(path, filter) {
  const answer = await fetch(`${collector}${path}`, filter
    ? { method: "POST", body: JSON.stringify(filter) }
    : {});
  assert.equal(answer.status, 200, path);
  return answer.json();
}

const reset = () => micro("/micro/reset");
const hasContext = (event, schemaPrefix) =>
  event.event.contexts.hasOwnProperty("data") &&
  event.event.contexts.data.some((c) => c.schema.startsWith(schemaPrefix));

// --- the node tracker ---------------------------------------------------------------
const node = require("@snowplow/node-tracker");

async function trackWithNode(method, encodeBase64) {
  const tracker = node.newTracker(
    { namespace: `node-${method}-${encodeBase64}`, appId: "suite", encodeBase64 },
    { endpoint: collector, eventMethod: method },
  );
  const page = {
    schema: "iglu:com.snowplowanalytics.snowplow/web_page/jsonschema/1-0-0",
    data: { id: "2b4e0b2f-5b5c-4f0f-9f5e-1d0e6f7a8b9c" },
  };
  tracker.track(node.buildPageView({ pageUrl: "https://shop.example/", pageTitle: "Shop" }), [page]);
  tracker.track(node.buildStructEvent({ category: "checkout", action: "pay", label: "card", value: 12.5 }));
  tracker.track(node.buildSelfDescribingEvent({
    event: {
      schema: "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",
      data: { targetUrl: "https://shop.example/cart" },
    },
  }), [page]);
  const consent = node.buildConsentGranted({ id: "terms", version: "2", name: "Terms", expiry: "2027-01-01T00:00:00.000Z" });
  tracker.track(consent.event, consent.context);
  tracker.track(node.buildScreenView({ name: "Home", id: "5b1ce3b8-2f2d-4b4c-a7cd-2a0f6f4e2d4b" }));
  tracker.track(node.buildSocialInteraction({ action: "like", network: "example" }));
  tracker.track(node.buildAdImpression({ impressionId: "i1", costModel: "cpm", cost: 1.5 }));
  await tracker.flush();
}

for (const method of ["post", "get"]) {
  for (const encodeBase64 of [true, false]) {
    await check(`node tracker 4.8, ${method}, base64 ${encodeBase64}: every event good, as Micro shows it`, async () => {
      await reset();
      await trackWithNode(method, encodeBase64);
      const all = await micro("/micro/all");
      const bad = await micro("/micro/bad");
      assert.deepEqual(all, { total: 7, good: 7, bad: 0 }, JSON.stringify(bad).slice(0, 2000));
      const good = await micro("/micro/good");
      // In order: newest first, as Micro lists them (a batch too).
      assert.equal(good[0].event.event_name, "ad_impression");
      assert.equal(good[6].event.event, "page_view");
      // With a context, with properties, by schema.
      const pages = good.filter((e) => hasContext(e, "iglu:com.snowplowanalytics.snowplow/web_page/"));
      assert.equal(pages.length, 2);
      const struct = await micro("/micro/good", { event_type: "struct" });
      assert.equal(struct.length, 1);
      assert.equal(struct[0].event.se_category, "checkout");
      assert.equal(struct[0].event.se_value, 12.5);
      const consent = good.find((e) => e.event.event_name === "consent_granted");
      assert.ok(hasContext(consent, "iglu:com.snowplowanalytics.snowplow/consent_document/"), "consent_document");
      const byschema = await micro("/micro/good", { schema: "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1" });
      assert.equal(byschema.length, 1);
      assert.equal(byschema[0].event.unstruct_event.data.data.targetUrl, "https://shop.example/cart");
      // Every column, contexts `{}` when none, the collector's fill-ins.
      for (const event of good) {
        assert.equal(Object.keys(event.event).length, 131);
        assert.ok(typeof event.event.contexts === "object" && event.event.contexts !== null);
        assert.ok(event.event.useragent, "useragent from the User-Agent header");
        assert.equal(event.event.user_ipaddress, "127.0.0.1");
        assert.match(event.event.network_userid, /^[0-9a-f-]{36}$/);
        assert.equal(event.event.contexts.schema ?? "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0",
          "iglu:com.snowplowanalytics.snowplow/contexts/jsonschema/1-0-0");
      }
      const flat = await micro("/micro/events");
      assert.equal(flat.length, 7);
      assert.ok(flat.some((e) => e.unstruct_event_com_snowplowanalytics_snowplow_link_click_1));
    });
  }
}

// --- Micro 3.0's API, as its users call it -----------------------------------------
await check("Micro 3.0's API: /health, the pixel's caching, unknown filter keys, no CORS on /micro", async () => {
  const health = await fetch(`${collector}/health`);
  assert.equal(await health.text(), "ok");
  const pixel = await fetch(`${collector}/i?e=pv&p=web&tv=t&url=http%3A%2F%2Fx%2F`, {
    headers: { origin: "http://127.0.0.1:1" },
  });
  assert.equal(pixel.headers.get("cache-control"), "no-cache, no-store, must-revalidate");
  assert.equal(pixel.headers.get("access-control-allow-origin"), "http://127.0.0.1:1");
  const filtered = await fetch(`${collector}/micro/good`, {
    method: "POST",
    body: JSON.stringify({ limit: 1, not_a_micro_filter: true }),
    headers: { origin: "http://127.0.0.1:1" },
  });
  assert.equal(filtered.status, 200);
  assert.equal(filtered.headers.get("access-control-allow-origin"), null, "no other page may read the store");
});

// --- enrich's rules, both ways, with the node tracker and a webhook client ------------
await check("enrich's rules: atomicFieldsLimits, payload_data whole, what enrich takes, the Iglu webhook", async () => {
  await reset();
  const tracker = node.newTracker(
    { namespace: "rules", appId: "suite", encodeBase64: false },
    { endpoint: collector, eventMethod: "post", bufferSize: 1 },
  );
  // Bad in enrich: a user id over 255, a currency over 3 (good on 582e716).
  tracker.setUserId("u".repeat(256));
  tracker.track(node.buildPageView({ pageUrl: "https://shop.example/" }));
  tracker.setUserId("u".repeat(255));
  tracker.track(node.buildEcommerceTransaction({ orderId: "o1", total: 9.5, currency: "EURO" }));
  // Good in enrich: a struct event with a category only; a transaction without a total.
  tracker.track(node.buildStructEvent({ category: "checkout" }));
  await tracker.flush();
  // The Iglu webhook, as a webhook client posts to it.
  const webhook = await fetch(`${collector}/com.snowplowanalytics.iglu/v1?aid=hooks`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      schema: "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",
      data: { targetUrl: "https://shop.example/hook" },
    }),
  });
  assert.equal(webhook.status, 200);
  // A cache-buster on the pixel is kept; a body with one item that is not an event is
  // one bad event, as enrich's tp2 adapter judges the body whole.
  await fetch(`${collector}/i?e=pv&p=web&tv=t&url=http%3A%2F%2Fx%2F&cb=1`);
  await fetch(`${collector}/com.snowplowanalytics.snowplow/tp2`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({
      schema: "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
      data: [{ e: "pv", p: "web", tv: "t" }, 1, { e: "pv", p: "web", tv: "t" }],
    }),
  });
  const all = await micro("/micro/all");
  const bad = await micro("/micro/bad");
  assert.deepEqual(all, { total: 6, good: 3, bad: 3 }, JSON.stringify(bad).slice(0, 3000));
  const errors = JSON.stringify(bad.map((b) => b.errors));
  assert.match(errors, /user_id is longer than the maximum allowed size 255/);
  assert.match(errors, /tr_currency is longer than the maximum allowed size 3/);
  assert.match(errors, /payload_data: data\/1: an event must be a JSON object/);
  const hooks = await micro("/micro/good", { schema: "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1" });
  assert.equal(hooks.length, 1);
  assert.equal(hooks[0].event.app_id, "hooks");
  assert.equal(hooks[0].event.v_tracker, "com.snowplowanalytics.iglu-v1");
  const struct = await micro("/micro/good", { event_type: "struct" });
  assert.equal(struct.length, 1);
});

// --- the browser tracker in headless Chromium, on a page of another origin -----------
const tracker = readFileSync(require.resolve("@snowplow/browser-tracker/dist/index.umd.min.js"));
const page = (label) => `<!doctype html><title>${label}</title>
<script src="/sp.js"></script>
<script>
  const sp = snowplowBrowserTracking;
  const anonymous = ${JSON.stringify(label.startsWith("/anonymous"))};
  sp.newTracker("sp", ${JSON.stringify(collector)}, { appId: "web", bufferSize: 1,
    ...(anonymous ? { anonymousTracking: { withServerAnonymisation: true } } : {}) });
  sp.trackPageView();
  sp.trackStructEvent({ category: "video", action: "play", label: ${JSON.stringify(label)} });
  sp.trackSelfDescribingEvent({ event: {
    schema: "iglu:com.snowplowanalytics.snowplow/link_click/jsonschema/1-0-1",
    data: { targetUrl: "https://elsewhere.example/" } } });
</script>`;
const site = http.createServer((request, response) => {
  if (request.url === "/sp.js") {
    response.writeHead(200, { "content-type": "text/javascript" }).end(tracker);
  } else {
    response.writeHead(200, { "content-type": "text/html" }).end(page(request.url));
  }
});
await new Promise((done) => site.listen(0, "127.0.0.1", done));
const origin = `http://127.0.0.1:${site.address().port}`;

await check("browser tracker 4.6 in Chromium, another origin: default events good, web_page on each, one network user id", async () => {
  await reset();
  const puppeteer = (await import("puppeteer-core")).default;
  const browser = await puppeteer.launch({
    executablePath: chromium,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run"],
  });
  try {
    const tab = await browser.newPage();
    for (const path of ["/first", "/second"]) {
      await tab.goto(`${origin}${path}`, { waitUntil: "networkidle0" });
    }
    const deadline = Date.now() + 20_000;
    let all;
    while (Date.now() < deadline) {
      all = await micro("/micro/all");
      if (all.total >= 6) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const bad = await micro("/micro/bad");
    assert.deepEqual(all, { total: 6, good: 6, bad: 0 }, JSON.stringify(bad).slice(0, 2000));
    const good = await micro("/micro/good");
    for (const event of good) {
      // The default configuration's web_page entity on every event (582e716: all bad).
      assert.ok(hasContext(event, "iglu:com.snowplowanalytics.snowplow/web_page/"), "web_page");
      assert.match(event.event.useragent, /HeadlessChrome|Chrome/);
      // Whole (582e716 cut header values at 64 bytes).
      assert.ok(event.rawEvent.context.headers.some((h) => h === `user-agent: ${event.event.useragent}`));
      assert.ok(event.event.useragent.length > 64, event.event.useragent);
      assert.equal(event.event.platform, "web");
    }
    // The collector's cookie, set on the first answer, comes back with the second page's
    // events (credentials across origins): one network user id for all six.
    const ids = new Set(good.map((e) => e.event.network_userid));
    assert.equal(ids.size, 1, [...ids].join(", "));
    const [nuid] = ids;
    assert.match(nuid, /^[0-9a-f-]{36}$/);
    const cookies = await tab.cookies(collector);
    assert.ok(cookies.some((c) => c.name === "sp" && c.value === nuid), JSON.stringify(cookies));
    const plays = await micro("/micro/good", { event_type: "struct" });
    assert.deepEqual(plays.map((e) => e.event.se_label), ["/second", "/first"], "newest first");

    // Server-side anonymisation (the tracker sends SP-Anonymous): nothing of the client
    // kept, the all-zero id, no cookie set (the browser keeps the first one).
    await reset();
    await tab.goto(`${origin}/anonymous`, { waitUntil: "networkidle0" });
    let anonymous = [];
    while (Date.now() < deadline + 20_000 && anonymous.length < 3) {
      anonymous = await micro("/micro/good");
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(anonymous.length, 3, JSON.stringify(await micro("/micro/bad")).slice(0, 2000));
    for (const event of anonymous) {
      assert.equal(event.event.user_ipaddress, null);
      assert.equal(event.rawEvent.context.ipAddress, null);
      assert.equal(event.event.network_userid, "00000000-0000-0000-0000-000000000000");
      assert.ok(!event.rawEvent.context.headers.some((h) => /^(cookie|x-forwarded-for|x-real-ip):/i.test(h)));
    }
    const after = await tab.cookies(collector);
    assert.ok(after.some((c) => c.name === "sp" && c.value === nuid), "the cookie left as it was");
  } finally {
    await browser.close();
  }
});

site.close();
console.log(failures === 0 ? "trackers: all checks passed" : `trackers: ${failures} check(s) failed`);
process.exit(failures === 0 ? 0 : 1);
