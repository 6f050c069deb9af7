// Drives the lesion diary (src/skinscan/app/diary*.js) in headless Chromium and prints what it saw as one
// JSON document, for tests/test_app_diary.py. Like drive_app.mjs it starts `skinscan app` itself (so that
// it can stop it for the offline check) and records every request the browser makes.
//
//   node tests/browser/drive_diary.mjs CONFIG.json
//
// CONFIG: {scenario: "diary" | "offline", chromium, server: [argv...], passphrase, lesions: [{photo, lesion,
//          site, date}...] (saved in that order), frozen?: {lesion, site, date} (a frozen camera frame),
//          out: folder for the backup file, screenshots?: folder (docs/app-diary-*.png), viewport?, timeoutMs?}
//
// The raw IndexedDB dumps ("raw*") hold every key and value of the diary's database as stored, byte arrays as
// base64, so that the test can look for anything readable in them.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startServer, stopServer } from './server.mjs';

process.env.PW_EXPERIMENTAL_SERVICE_WORKER_NETWORK_EVENTS = '1'; // report service-worker requests too
const { chromium } = await import('playwright-core');

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const TIMEOUT = config.timeoutMs ?? 60_000;
const step = (message) => process.stderr.write(`[drive_diary] ${message}\n`);
const PHONE = { viewport: config.viewport ?? { width: 390, height: 844 }, deviceScaleFactor: 1, isMobile: true,
  hasTouch: true };

const log = { requests: [], errors: [] };

async function newPage(browser) {
  const context = await browser.newContext({ ...PHONE, permissions: ['camera'], acceptDownloads: true });
  context.on('request', (request) => log.requests.push(request.url()));
  const page = await context.newPage();
  page.on('pageerror', (error) => log.errors.push(String(error)));
  page.on('console', (message) => {
    if (message.type() === 'error') log.errors.push(message.text());
  });
  return { context, page };
}

const waitFor = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: TIMEOUT, polling: 50 });

async function appReady(page, url) {
  await page.goto(url);
  await waitFor(page, () => window.skinscan && window.skinscan.phase !== 'loading' && window.skinscanDiary);
  const phase = await page.evaluate(() => window.skinscan.phase);
  if (phase !== 'ready') throw new Error(`app failed: ${JSON.stringify(await page.evaluate(() => window.skinscan.error))}`);
}

/** Do `action` (a click, a submit, a file choice) and wait until the diary has finished what it started. */
async function settle(page, action) {
  const before = await page.evaluate(() => window.skinscanDiary.settled);
  await action();
  await waitFor(page, (n) => window.skinscanDiary.settled > n && !window.skinscanDiary.busy, before);
  return page.evaluate(() => ({ screen: window.skinscanDiary.screen, message: window.skinscanDiary.message,
    error: window.skinscanDiary.error, title: document.querySelector('#diary-title')?.innerText }));
}

async function submit(page, fields, formId) {
  for (const [selector, value] of Object.entries(fields)) await page.fill(selector, value);
  return settle(page, () => page.click(`#${formId} button[type=submit]`));
}

const clickText = (page, text) => settle(page, () => page.locator('#diary button', { hasText: text }).first().click());

async function screenshot(page, name) {
  if (!config.screenshots) return;
  await page.evaluate(() => document.activeElement?.blur()); // no focus ring, no caret in the picture
  await page.screenshot({ path: join(config.screenshots, `app-diary-${name}.png`) });
}

/** Every key and value of the diary's IndexedDB database, as stored (bytes as base64); null: no database. */
const rawDatabase = (page) => page.evaluate(async () => {
  const names = (await indexedDB.databases()).map((database) => database.name);
  if (!names.includes('skinscan-diary')) return { names, stores: null };
  const asPromise = (req) => new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
  const bytes = (value) => {
    const view = value instanceof ArrayBuffer ? new Uint8Array(value)
      : new Uint8Array(value.buffer, value.byteOffset, value.byteLength);
    let binary = '';
    for (let i = 0; i < view.length; i += 0x8000) binary += String.fromCharCode(...view.subarray(i, i + 0x8000));
    return { base64: btoa(binary) };
  };
  const plain = (value) => {
    if (value instanceof ArrayBuffer || ArrayBuffer.isView(value)) return bytes(value);
    if (Array.isArray(value)) return value.map(plain);
    if (value && typeof value === 'object') return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, plain(v)]));
    return value;
  };
  const db = await asPromise(indexedDB.open('skinscan-diary'));
  const stores = {};
  for (const store of db.objectStoreNames) {
    const tx = db.transaction(store);
    const [keys, values] = await Promise.all([asPromise(tx.objectStore(store).getAllKeys()),
      asPromise(tx.objectStore(store).getAll())]);
    stores[store] = keys.map((key, i) => ({ key, value: plain(values[i]) }));
  }
  db.close();
  return { names, stores };
});

/** What the list and history screens show. */
const lesionList = (page) => page.evaluate(() => Array.from(document.querySelectorAll('#diary .diary-lesion'),
  (card) => ({ lesion: card.dataset.lesion, text: card.innerText, photoWidth: card.querySelector('img').naturalWidth })));

const historyShown = (page) => page.evaluate(() => ({
  title: document.querySelector('#diary-title').innerText,
  entries: Array.from(document.querySelectorAll('#diary .diary-entry'), (entry) => {
    const img = entry.querySelector('img');
    const box = entry.getBoundingClientRect();
    return { date: entry.querySelector('time').dateTime, answer: entry.querySelector('.diary-answer').innerText,
      photo: [img.naturalWidth, img.naturalHeight], left: box.left, top: box.top };
  }),
  disclaimerVisible: (() => {
    const footer = document.querySelector('.disclaimer');
    const box = footer.getBoundingClientRect();
    const top = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
    return box.height > 0 && box.bottom <= window.innerHeight && footer.contains(top);
  })(),
  pageWidth: document.documentElement.scrollWidth,
}));

async function screenPhoto(page, photo) {
  const before = await page.evaluate(() => window.skinscan.photoResults.length);
  await page.setInputFiles('#gallery', photo);
  await waitFor(page, (n) => window.skinscan.photoResults.length > n, before);
  const result = await page.evaluate(() => window.skinscan.photoResults.at(-1));
  if (result.error) throw new Error(`photo not screened: ${result.error}`);
  return { cannotAssess: result.cannotAssess, reason: result.cannotAssessMessage, top: result.top.map((t) => t.name),
    malignant: result.malignant };
}

/** Screen a photo (or freeze the camera) and save it to the (unlocked) diary. */
async function saveEntry(page, entry, shot) {
  const closed = await page.evaluate(() => document.querySelector('#diary').hidden);
  if (!closed) await page.click('#diary .diary-close');
  let screened;
  if (entry.photo) {
    screened = await screenPhoto(page, entry.photo);
  } else {
    if (await page.locator('#back').isVisible()) await page.click('#back');
    await waitFor(page, () => window.skinscan.stats.frames > 0);
    await page.click('#freeze');
    await waitFor(page, () => window.skinscan.mode === 'frozen' && window.skinscan.lastResult?.source === 'frozen');
    screened = await page.evaluate(() => ({ cannotAssess: window.skinscan.lastResult.cannotAssess }));
  }
  const opened = await settle(page, () => page.click('#diary-save'));
  if (opened.screen !== 'save') throw new Error(`save screen expected: ${JSON.stringify(opened)}`);
  await page.fill('#diary-lesion', entry.lesion);
  await page.fill('#diary-site', entry.site);
  await page.fill('#diary-date', entry.date);
  if (shot) await screenshot(page, 'save');
  const saved = await settle(page, () => page.click('#diary-save-form button[type=submit]'));
  if (!entry.photo) await page.click('#diary .diary-close').then(() => page.click('#freeze')); // resume
  return { screened, saved };
}

/** The text of a valid one-entry backup of a diary whose passphrase is `passphrase`. */
async function otherDiaryBackup(passphrase) {
  const diary = await import(fileURLToPath(new URL('../../src/skinscan/app/diary.js', import.meta.url)));
  const { header, key } = await diary.newHeader(passphrase);
  const id = diary.randomId();
  const entry = await diary.sealJson(key, { lesion: 'Other', site: '', date: '2025-01-01', savedAt: '', photo: '',
    result: { cannotAssess: true, message: 'x' } }, id);
  const pack = ({ iv, data }) => ({ iv: diary.toBase64(iv), data: diary.toBase64(data) });
  return JSON.stringify({ format: diary.BACKUP_FORMAT, version: diary.BACKUP_VERSION, salt: diary.toBase64(header.salt),
    iterations: header.iterations, check: pack(header.check), entries: [{ id, ...pack(entry) }] });
}

// ------------------------------------------------------------------------------------------ scenarios
async function diaryScenario(browser) {
  const server = await startServer(config.server);
  const out = { url: server.url };
  try {
    const { page } = await newPage(browser);
    await appReady(page, server.url);
    out.noDiaryRaw = await rawDatabase(page);
    if (config.screenshots) await page.screenshot({ path: join(config.screenshots, 'app-diary-buttons.png') });
    out.nothingToSave = await settle(page, () => page.click('#diary-save'));
    await page.click('#diary .diary-close');

    // Set up: refused passphrases first, then the real one.
    out.setup = await settle(page, () => page.click('#diary-open'));
    await screenshot(page, 'setup');
    out.shortPassphrase = await submit(page, { '#diary-new-pass': 'short', '#diary-new-pass2': 'short' },
      'diary-setup');
    out.mismatch = await submit(page, { '#diary-new-pass': config.passphrase, '#diary-new-pass2': `${config.passphrase}x` },
      'diary-setup');
    out.created = await submit(page, { '#diary-new-pass': config.passphrase, '#diary-new-pass2': config.passphrase },
      'diary-setup');
    step('diary created');

    out.saved = [];
    for (const [i, entry] of config.lesions.entries()) out.saved.push(await saveEntry(page, entry, i === 0));
    if (config.frozen) out.saved.push(await saveEntry(page, config.frozen, false));
    step('entries saved');
    out.history = await historyShown(page);
    if (out.saved[0].saved.screen !== 'history') throw new Error('saving did not show the history');
    const first = config.lesions[0].lesion;
    if (await page.locator('#diary').isVisible()) await page.click('#diary .diary-close');
    await settle(page, () => page.click('#diary-open'));
    out.list = await lesionList(page);
    await screenshot(page, 'list');
    out.histories = {};
    for (const { lesion } of out.list) {
      await settle(page, () => page.click(`#diary .diary-lesion[data-lesion="${lesion}"]`));
      out.histories[lesion] = await historyShown(page);
      await clickText(page, 'All lesions');
    }
    await settle(page, () => page.click(`#diary .diary-lesion[data-lesion="${first}"]`));
    out.history = await historyShown(page);
    await screenshot(page, 'history');
    out.raw = await rawDatabase(page);

    // Locked: a wrong passphrase is refused and changes nothing.
    await clickText(page, 'All lesions');
    out.locked = await clickText(page, 'Lock');
    await page.fill('#diary-pass', 'not the passphrase');
    out.wrongPassphrase = await settle(page, () => page.click('#diary-unlock button[type=submit]'));
    await screenshot(page, 'unlock');
    out.rawAfterWrong = await rawDatabase(page);
    out.unlocked = await submit(page, { '#diary-pass': config.passphrase }, 'diary-unlock');
    step('wrong passphrase refused');

    // Export, delete everything, import: the same entries come back.
    const [download] = await Promise.all([page.waitForEvent('download'), clickText(page, 'Export backup')]);
    out.backupName = download.suggestedFilename();
    out.backup = join(config.out, 'backup.json');
    await download.saveAs(out.backup);
    out.deleteConfirm = await clickText(page, 'Delete everything');
    await screenshot(page, 'delete');
    out.deleted = await clickText(page, 'Yes, delete everything');
    out.rawAfterDelete = await rawDatabase(page);
    out.memoryAfterDelete = await page.evaluate(() => ({ images: document.querySelectorAll('#diary img').length,
      text: document.querySelector('#diary').innerText }));
    step('deleted');

    const corrupt = join(config.out, 'not-a-backup.json');
    writeFileSync(corrupt, JSON.stringify({ hello: 'world' }));
    await settle(page, () => page.setInputFiles('#diary-import-file', corrupt));
    out.corruptImport = await submit(page, { '#diary-import-pass': config.passphrase }, 'diary-import');
    const damaged = join(config.out, 'damaged-backup.json');
    const backup = JSON.parse(readFileSync(out.backup, 'utf8'));
    const flipped = Buffer.from(backup.entries[0].data, 'base64');
    flipped[10] ^= 1;
    writeFileSync(damaged, JSON.stringify({ ...backup, entries: [{ ...backup.entries[0], data: flipped.toString('base64') },
      ...backup.entries.slice(1)] }));
    await clickText(page, 'Cancel');
    await settle(page, () => page.setInputFiles('#diary-import-file', damaged));
    out.damagedImport = await submit(page, { '#diary-import-pass': config.passphrase }, 'diary-import');
    await clickText(page, 'Cancel');
    out.restoreScreen = await settle(page, () => page.setInputFiles('#diary-import-file', out.backup));
    await page.fill('#diary-import-pass', 'not the passphrase');
    await screenshot(page, 'restore');
    out.wrongImport = await settle(page, () => page.click('#diary-import button[type=submit]'));
    out.rawAfterRefusedImports = await rawDatabase(page);
    out.imported = await submit(page, { '#diary-import-pass': config.passphrase }, 'diary-import');
    out.listAfterImport = await lesionList(page);
    await settle(page, () => page.click(`#diary .diary-lesion[data-lesion="${first}"]`));
    out.historyAfterImport = await historyShown(page);
    out.rawAfterImport = await rawDatabase(page);
    // The same backup again, into the diary it came from: nothing doubles.
    await clickText(page, 'All lesions');
    out.importedAgain = await settle(page, () => page.setInputFiles('#diary-import-file', out.backup))
      .then(() => submit(page, { '#diary-import-pass': config.passphrase }, 'diary-import'));
    out.rawAfterImportAgain = await rawDatabase(page);
    step('imported');

    // Reloaded page: the diary is still there and still locked.
    await appReady(page, server.url);
    out.afterReload = await settle(page, () => page.click('#diary-open'));
    // A backup of another diary, with another passphrase (made here in Node with diary.js), is not mixed in.
    const foreign = join(config.out, 'other-diary-backup.json');
    writeFileSync(foreign, await otherDiaryBackup('another passphrase entirely'));
    const rawBefore = await rawDatabase(page);
    await settle(page, () => page.setInputFiles('#diary-import-file', foreign));
    out.otherPassphraseImport = await submit(page, { '#diary-import-pass': 'another passphrase entirely' },
      'diary-import');
    out.otherPassphraseUnchanged = JSON.stringify(await rawDatabase(page)) === JSON.stringify(rawBefore);
    await clickText(page, 'Cancel');
    await clickText(page, 'Delete everything');
    await clickText(page, 'Yes, delete everything');
    out.rawAtEnd = await rawDatabase(page);
  } finally {
    await stopServer(server);
  }
  return out;
}

async function offlineScenario(browser) {
  const server = await startServer(config.server);
  const out = { url: server.url };
  try {
    const { page } = await newPage(browser);
    await appReady(page, server.url);
    await waitFor(page, () => navigator.serviceWorker.ready.then(() => navigator.serviceWorker.controller !== null
      || true));
    await waitFor(page, async () => (await caches.keys()).length > 0
      && Boolean(await (await caches.open((await caches.keys())[0])).match('diary-view.js')));
    await stopServer(server);
    step('server stopped');
    await appReady(page, server.url);
    out.offlineShell = await page.evaluate(() => fetch('diary.js').then((r) => r.ok, () => false));
    await settle(page, () => page.click('#diary-open'));
    out.created = await submit(page, { '#diary-new-pass': config.passphrase, '#diary-new-pass2': config.passphrase },
      'diary-setup');
    out.saved = [];
    for (const entry of config.lesions) out.saved.push(await saveEntry(page, entry, false));
    out.history = await historyShown(page);
    await clickText(page, 'All lesions');
    out.locked = await clickText(page, 'Lock');
    out.unlocked = await submit(page, { '#diary-pass': config.passphrase }, 'diary-unlock');
    out.list = await lesionList(page);
    const [download] = await Promise.all([page.waitForEvent('download'), clickText(page, 'Export backup')]);
    out.backup = join(config.out, 'offline-backup.json');
    await download.saveAs(out.backup);
    await clickText(page, 'Delete everything');
    out.deleted = await clickText(page, 'Yes, delete everything');
    out.rawAfterDelete = await rawDatabase(page);
  } finally {
    await stopServer(server);
  }
  return out;
}

const scenarios = { diary: diaryScenario, offline: offlineScenario };
const browser = await chromium.launch({ executablePath: config.chromium, headless: true,
  args: ['--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream'] });
const version = browser.version();
let result;
try {
  result = { ok: true, ...(await scenarios[config.scenario](browser)) };
} catch (error) {
  result = { ok: false, failure: String(error.stack || error) };
} finally {
  await browser.close();
}
console.log(JSON.stringify({ ...result, ...log, browser: version }));
