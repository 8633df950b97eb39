// The dashboard in headless Chromium (Debian's), driven by playwright-core.
// tests/all/ui.rs starts Spindle, sets the scene through the API and runs
// this with:
//   SPINDLE_URL     the host's base URL
//   APPROVER_KEY    an approver's API key (alice)
//   VIEWER_KEY      a viewer's API key (vic)
//   DIAMOND_RUN     a finished run of the pr-checks diamond
//   SHAPES_RUN      a failed run with a fan-out, a skipped step, a
//                   compensation and an on-failure step
//   OPERATOR_KEY    an operator's API key (carl, who started the fix runs)
//   APPROVE_RUN, REJECT_RUN, VIEWER_RUN, CANCEL_RUN
//                   runs of `fix` parked on the patcher's approval (the
//                   one to reject with a patch that matches risk rules)
//   SCREENSHOT_DIR  where each page's screenshot goes
// It exits non-zero, saying what it expected, on the first failed check.

import assert from 'node:assert/strict';
import path from 'node:path';
import { chromium } from 'playwright-core';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (tests/all/ui.rs sets it)`);
  return v;
};
const base = env('SPINDLE_URL').replace(/\/$/, '');
const shots = env('SCREENSHOT_DIR');
const runs = {
  diamond: env('DIAMOND_RUN'),
  shapes: env('SHAPES_RUN'),
  approve: env('APPROVE_RUN'),
  reject: env('REJECT_RUN'),
  viewer: env('VIEWER_RUN'),
  cancel: env('CANCEL_RUN'),
};

const browser = await chromium.launch({
  executablePath: process.env.SPINDLE_CHROMIUM || '/usr/bin/chromium',
  // Without the background-networking flags Chromium keeps trying hosts
  // this machine cannot reach.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
let step = 'start';

async function newPage(viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport, acceptDownloads: true });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  // Anything the page's script throws, or the CSP refuses, fails the test.
  page.on('pageerror', (e) => problems.push(`${step}: page error: ${e.message}`));
  page.on('console', (m) => {
    // The refusals the test provokes (401, 403, 404) and requests cut off
    // by a navigation are expected; anything else is not.
    if (m.type() === 'error' && !/status of 40[134]|ERR_ABORTED/.test(m.text())) problems.push(`${step}: console error: ${m.text()}`);
  });
  return { context, page };
}

const shot = (page, name, fullPage = true) => page.screenshot({ path: path.join(shots, `${name}.png`), fullPage });
// The top of a page, as the README shows it (docs/images/).
const readmeShot = (page, name, height) => page.screenshot({ path: path.join(shots, `readme-${name}.png`), fullPage: true, clip: { x: 0, y: 0, width: 1280, height } });

async function signIn(page, key) {
  await page.goto(`${base}/`);
  await page.waitForURL(/\/ui\/?$|\/ui\/runs/);
  await page.getByLabel('API key or token').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who-name').waitFor();
}

try {
  // ---- sign-in: a wrong key is refused with the API's own words
  step = 'login';
  const { page } = await newPage();
  const first = await page.goto(`${base}/`);
  assert.match(page.url(), /\/ui\/$/, 'the root sends the browser to /ui/');
  const csp = first.headers()['content-security-policy'];
  assert.ok(csp?.includes("script-src 'self'") && !csp.includes('unsafe-inline'), `a strict CSP, got ${csp}`);
  const timing = await page.evaluate(() => {
    const n = performance.getEntriesByType('navigation')[0];
    return { ttfb: Math.round(n.responseStart - n.requestStart), loaded: Math.round(n.loadEventEnd - n.startTime) };
  });
  console.log(`first page: ${timing.ttfb} ms to the first byte, ${timing.loaded} ms to load (reported, not asserted; scripts/bench measures it)`);
  await page.getByLabel('API key or token').fill('spk_not-a-real-key-but-long-enough-0000000000');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').waitFor();
  assert.match(await page.getByRole('alert').innerText(), /unauthorized|credential|key/i);
  await shot(page, 'login');

  // ---- runs: the diamond's run is listed, with its trigger and actor
  step = 'runs';
  await page.getByLabel('API key or token').fill(env('APPROVER_KEY'));
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'Runs' }).waitFor();
  const row = page.locator(`tr[data-run="${runs.diamond}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-status'), 'succeeded');
  assert.match(await row.innerText(), /pr-checks[\s\S]*succeeded[\s\S]*manual[\s\S]*key:bootstrap/);
  for (const id of [runs.approve, runs.reject, runs.viewer]) {
    assert.equal(await page.locator(`tr[data-run="${id}"]`).getAttribute('data-status'), 'waiting_approval');
  }
  // The filter by workflow narrows the list (and the address says so).
  await page.getByLabel('Workflow').selectOption('pr-checks');
  await page.waitForURL(/workflow=pr-checks/);
  // The list follows: the fix runs go, the diamond stays.
  await page.locator(`tr[data-run="${runs.approve}"]`).waitFor({ state: 'detached' });
  assert.equal(await page.locator(`tr[data-run="${runs.diamond}"]`).count(), 1, 'the pr-checks run stays');
  assert.equal(await page.locator('tr[data-run]').count(), 1, 'only the pr-checks run is listed');
  await page.getByLabel('Workflow').selectOption('');
  await page.locator(`tr[data-run="${runs.approve}"]`).waitFor();
  await shot(page, 'runs');

  // ---- one run: its DAG, each step's state, a step's output
  step = 'run';
  await page.locator(`tr[data-run="${runs.diamond}"] a`).click();
  await page.getByRole('heading', { name: `Run ${runs.diamond}` }).waitFor();
  const nodes = page.locator('svg.dag g.node');
  assert.equal(await nodes.count(), 4, 'four steps drawn');
  for (const id of ['scan', 'compliance', 'review', 'notify']) {
    assert.equal(await page.locator(`svg.dag g.node[data-step="${id}"]`).getAttribute('data-status'), 'succeeded', id);
  }
  assert.equal(await page.locator('svg.dag path.edge').count(), 4, 'edges from needs: scan→compliance, scan→review, both→notify');
  // Rows of the DAG follow the needs: scan above compliance and review, notify below them.
  const y = async (id) => (await page.locator(`svg.dag g.node[data-step="${id}"]`).boundingBox()).y;
  assert.ok(await y('scan') < await y('review') && await y('review') < await y('notify'), 'layered by needs');
  assert.equal(await y('review'), await y('compliance'), 'the two branches side by side');
  assert.ok(await page.locator('#cancel-run').count() === 0, 'no cancel button on a finished run');
  await shot(page, 'run');
  await page.locator('svg.dag g.node[data-step="scan"]').click();
  const panel = page.locator('#step-panel');
  await panel.getByRole('heading', { name: 'Step scan' }).waitFor();
  const text = await panel.innerText();
  assert.match(text, /hardcoded-secret/, 'the scan output shows its finding');
  assert.match(text, /security-scanner v1/);
  const attempts = panel.locator('table.attempts tbody tr');
  assert.equal(await attempts.count(), 1, 'one attempt');
  assert.match(await attempts.first().innerText(), /127\.0\.0\.1:\d+/, 'the worker that ran it');
  // Keyboard: another step, by Enter on its box.
  await page.locator('svg.dag g.node[data-step="review"]').focus();
  await page.keyboard.press('Enter');
  await panel.getByRole('heading', { name: 'Step review' }).waitFor();
  assert.match(await panel.innerText(), /request_changes/);
  // The download gives the stored output.
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    panel.getByRole('button', { name: 'Download output (JSON)' }).click(),
  ]);
  assert.equal(download.suggestedFilename(), `${runs.diamond}-review-output.json`);
  const saved = JSON.parse(await (await import('node:fs/promises')).readFile(await download.path(), 'utf8'));
  assert.equal(saved.verdict, 'request_changes');
  // The run's audit trail.
  const trailText = await page.locator('table.trail').innerText();
  for (const kind of ['run_created', 'step_dispatched', 'step_succeeded', 'run_succeeded']) {
    assert.ok(trailText.includes(kind), `the trail has ${kind}`);
  }
  await shot(page, 'run-step-output');
  await readmeShot(page, 'run', 1400);

  // ---- the shapes the DAG draws apart
  step = 'shapes';
  await page.goto(`${base}/ui/runs/${runs.shapes}`);
  await page.getByRole('heading', { name: `Run ${runs.shapes}` }).waitFor();
  assert.equal(await page.locator('#run-status .st-failed').count(), 1, 'the run failed');
  const node = (id) => page.locator(`svg.dag g.node[data-step="${id}"]`);
  assert.match(await node('each').textContent(), /3\/3 items/, 'a fan-out shows its item count');
  assert.equal(await node('optional').getAttribute('data-status'), 'skipped');
  assert.match(await node('optional').locator('title').textContent(), /skipped: .+/, "a skipped step's reason on hover");
  assert.equal(await node('verify').getAttribute('data-status'), 'failed');
  const lanes = await page.locator('svg.dag text.lane-label').allTextContents();
  assert.deepEqual(lanes, ['Compensation', 'On failure'], 'compensation and on-failure steps in lanes of their own');
  const top = async (id) => (await node(id).boundingBox()).y;
  assert.ok(await top('undo') > await top('verify') && await top('alert') > await top('undo'), 'the lanes below the DAG');
  assert.equal(await page.locator('svg.dag path.edge.compensates').count(), 1, 'apply is joined to its compensation');
  await node('verify').click();
  await page.locator('#step-panel').getByRole('heading', { name: 'Step verify' }).waitFor();
  assert.match(await page.locator('#step-panel').innerText(), /verification failed/, "the failed attempt's stderr");
  await shot(page, 'run-shapes');

  // ---- approvals: approve one while two other tabs watch; reject another
  step = 'approvals';
  // Two viewers' tabs, open before the decision: the run's page and the
  // runs list, both live.
  const watchRun = await newPage();
  await signIn(watchRun.page, env('VIEWER_KEY'));
  await watchRun.page.goto(`${base}/ui/runs/${runs.approve}`);
  await watchRun.page.locator('svg.dag g.node[data-step="patch"][data-status="waiting_approval"]').waitFor();
  const watchList = await newPage();
  await signIn(watchList.page, env('VIEWER_KEY'));
  await watchList.page.locator(`tr[data-run="${runs.approve}"][data-status="waiting_approval"]`).waitFor();

  await page.getByRole('link', { name: 'Approvals', exact: true }).click();
  await page.getByRole('heading', { name: 'Waiting for a decision' }).waitFor();
  const card = (run) => page.locator('article.approval').filter({ has: page.locator(`a:text-is("${run}")`) });
  for (const run of [runs.approve, runs.reject, runs.viewer, runs.cancel]) await card(run).waitFor();
  const mine = card(runs.approve);
  assert.equal(await mine.locator('.diff .add').first().innerText(), '+PORT=8080', 'the preview is drawn as a diff');
  assert.equal(await mine.locator('.diff .file').first().innerText(), 'diff --git a/config/app.env b/config/app.env');
  assert.match(await mine.locator('.time-left').innerText(), /^expires in \d+ h/);
  // The risky one says which rules matched and why.
  const risky = card(runs.reject);
  const rules = risky.locator('ul.rules li');
  assert.ok(await rules.count() >= 1, 'matched rules listed');
  assert.match(await rules.first().innerText(), /^(low|medium|high|critical) \S+ — .{10,}/, 'each rule with its level and reason');
  assert.match(await risky.locator('.badge').first().innerText(), /^(high|critical) risk/);
  await shot(page, 'approvals');
  await readmeShot(page, 'approvals', 1000);
  await mine.getByLabel('Comment').fill('looks right');
  await mine.getByRole('button', { name: 'Approve' }).click();
  await page.waitForFunction((run) => document.getElementById('status').textContent === `Approved: patch of ${run}`, runs.approve);
  // Both watchers see the run finish, without a reload.
  for (const w of [watchRun, watchList]) {
    assert.equal(await w.page.evaluate(() => document.visibilityState), 'visible', 'a hidden tab would not poll');
  }
  await watchRun.page.locator('#run-status .st-succeeded').waitFor({ timeout: 60000 });
  assert.equal(await watchRun.page.locator('svg.dag g.node[data-step="patch"]').getAttribute('data-status'), 'succeeded');
  await watchList.page.locator(`tr[data-run="${runs.approve}"][data-status="succeeded"]`).waitFor({ timeout: 60000 });
  await shot(watchRun.page, 'approved-run');
  await watchRun.context.close();
  await watchList.context.close();

  step = 'reject';
  await risky.getByLabel('Comment').fill('not this release');
  await risky.getByRole('button', { name: 'Reject' }).click();
  await page.waitForFunction((run) => document.getElementById('status').textContent.endsWith(` of ${run}`)
    && document.getElementById('status').textContent.startsWith('Rejected: '), runs.reject);
  await page.locator('table.decided').getByText('not this release', { exact: false }).waitFor();
  await card(runs.reject).waitFor({ state: 'detached' });
  const decidedText = await page.locator('table.decided').innerText();
  assert.ok(decidedText.includes('key:alice: approve (“looks right”)'), decidedText);
  assert.ok(decidedText.includes('key:alice: reject (“not this release”)'), decidedText);

  // ---- overview: the chart has data; workers, events, webhooks, schedules
  step = 'overview';
  await page.getByRole('link', { name: 'Overview' }).click();
  await page.locator('svg.chart rect.bar').first().waitFor({ state: 'attached' });
  assert.equal(await page.locator('svg.chart rect.bar').count(), 7, 'seven days');
  // The week's bars count the runs started above (even across midnight).
  const counted = (await page.locator('svg.chart rect.bar').evaluateAll((bars) => bars.map((b) => Number(b.getAttribute('data-runs')))));
  assert.ok(counted.reduce((a, b) => a + b, 0) >= 6, `the bars count the runs: ${counted}`);
  const tallest = Math.max(...(await page.locator('svg.chart rect.bar').evaluateAll((bars) => bars.map((b) => Number(b.getAttribute('height'))))));
  assert.ok(tallest > 10, `the busiest day's bar is drawn, height ${tallest}`);
  assert.ok(await page.locator('table.top-events tbody tr').count() > 0, 'the most frequent events');
  assert.match(await page.locator('table.top-events tbody tr').first().innerText(), /^[a-z_]+\s+\d+$/, 'each event named with its count');
  assert.match(await page.locator('table.workers').innerText(), /ok[\s\S]*closed/);
  const hook = await page.locator('table.webhooks tbody tr').first().locator('td').allInnerTexts();
  assert.deepEqual([hook[0], hook[3], hook[4]], ['unknown', '0', '1'], `the delivery to an unknown source, refused: ${hook}`);
  assert.match(await page.locator('table.schedules').innerText(), /nightly[\s\S]*fix[\s\S]*0 3 \* \* \*/);
  await page.getByRole('button', { name: '30 days' }).click();
  await page.waitForFunction(() => document.querySelectorAll('svg.chart rect.bar').length === 30);
  await page.getByRole('button', { name: '7 days' }).click();
  await page.waitForFunction(() => document.querySelectorAll('svg.chart rect.bar').length === 7);
  await shot(page, 'overview');

  // ---- registry: the workflow with its DAG, read-only
  step = 'registry';
  await page.getByRole('link', { name: 'Registry' }).click();
  await page.getByRole('link', { name: 'pr-checks' }).click();
  await page.getByRole('heading', { name: 'Workflow pr-checks' }).waitFor();
  assert.equal(await page.locator('svg.dag g.node').count(), 4);
  await shot(page, 'workflow');
  for (const kind of ['Agents', 'Schedules', 'Subscriptions']) {
    await page.getByRole('link', { name: kind, exact: true }).click();
    await page.getByRole('heading', { name: kind }).waitFor();
  }
  assert.equal(await page.locator('button.approve, button.reject, button.danger').count(), 0);

  // ---- a viewer: no decision buttons, and a forced decision is refused
  step = 'viewer';
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByLabel('API key or token').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0, 'signing out forgets the credential');
  await signIn(page, env('VIEWER_KEY'));
  await page.goto(`${base}/ui/approvals`);
  const seen = card(runs.viewer);
  await seen.waitFor();
  assert.equal(await page.getByRole('button', { name: 'Approve' }).count(), 0, 'no approve button for a viewer');
  assert.equal(await page.getByRole('button', { name: 'Reject' }).count(), 0, 'no reject button for a viewer');
  assert.match(await seen.innerText(), /Your role \(viewer\) cannot decide/);
  const approvalId = await seen.getAttribute('data-approval');
  const forced = await page.evaluate(async (id) => {
    const r = await fetch(`/approvals/${encodeURIComponent(id)}/decision`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${sessionStorage.getItem('spindle.credential')}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ decision: 'approve' }),
    });
    return { status: r.status, body: await r.json() };
  }, approvalId);
  assert.equal(forced.status, 403, JSON.stringify(forced.body));
  assert.match(forced.body.type, /forbidden/);
  await shot(page, 'viewer-approvals');
  await page.goto(`${base}/ui/runs/${runs.viewer}`);
  await page.locator('svg.dag g.node[data-step="patch"][data-status="waiting_approval"]').waitFor();
  assert.equal(await page.locator('#cancel-run').count(), 0, 'no cancel button for a viewer');

  // ---- a credential that stops working signs the tab out
  step = 'revoked';
  await page.goto(`${base}/ui/runs`);
  await page.locator(`tr[data-run="${runs.diamond}"]`).waitFor();
  await page.evaluate(() => sessionStorage.setItem('spindle.credential', 'spk_revoked-while-the-page-was-open-0000000'));
  await page.getByText(/^Signed out: /).waitFor({ timeout: 30000 });
  await page.getByLabel('API key or token').waitFor();
  assert.equal(await page.locator('#nav').isVisible(), false, 'no navigation while signed out');

  // ---- an operator cancels a run (two clicks: the second confirms)
  step = 'cancel';
  await signIn(page, env('OPERATOR_KEY'));
  await page.goto(`${base}/ui/runs/${runs.cancel}`);
  const cancel = page.locator('#cancel-run');
  await cancel.waitFor();
  await cancel.click();
  assert.equal(await cancel.innerText(), 'Confirm: cancel this run');
  // A poll passes (the run has not moved: 304) and the confirmation stays armed.
  await page.waitForResponse((r) => r.url().endsWith(`/api/runs/${runs.cancel}`) && r.request().method() === 'GET', { timeout: 30000 });
  assert.equal(await cancel.innerText(), 'Confirm: cancel this run');
  await cancel.click();
  await page.locator('#run-status .st-cancelled').waitFor({ timeout: 30000 });
  assert.equal(await page.locator('#cancel-run').count(), 0, 'no cancel button once it ended');
  await shot(page, 'cancelled-run');

  // ---- a phone: the pages fit the width
  step = 'phone';
  const phone = await newPage({ width: 390, height: 844 });
  await signIn(phone.page, env('VIEWER_KEY'));
  await phone.page.locator(`tr[data-run="${runs.diamond}"]`).waitFor();
  const overflow = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow} px on a phone`);
  await shot(phone.page, 'runs-phone');
  for (const [name, where, ready] of [
    ['run-phone', `/ui/runs/${runs.diamond}`, 'svg.dag g.node'],
    ['approvals-phone', '/ui/approvals', 'article.approval'],
  ]) {
    await phone.page.goto(`${base}${where}`);
    await phone.page.locator(ready).first().waitFor();
    const wide = await phone.page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(wide <= 1, `${where} scrolls sideways by ${wide} px on a phone`);
    await shot(phone.page, name);
  }

  assert.deepEqual(problems, [], 'no script errors and no CSP violations');
  console.log('dashboard: every check passed');
} catch (err) {
  console.error(`failed at ${step}: ${err.stack || err}`);
  if (problems.length) console.error(problems.join('\n'));
  await browser.close();
  process.exit(1);
}
await browser.close();
